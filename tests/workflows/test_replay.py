"""Replay: rebuild a policy, distil, evaluate, report (and the CLI from replay to export)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edgecompress.artifacts.compressed import load_compressed
from edgecompress.errors import ConfigError, PolicyError
from edgecompress.training import evaluate
from edgecompress.workflows.replay import replay

DEVICES = ["raspberry-pi-4"]


def test_replay_writes_model_and_reports(replayed) -> None:  # type: ignore[no-untyped-def]
    r = replayed["report"]
    out = replayed["out"]
    assert (out / "model.pt").is_file() and (out / "report.json").is_file()
    md = (out / "report.md").read_text()
    assert "| parameters |" in md and "raspberry-pi-4" in md and "Measured latency" in md
    assert set(r["accuracy"]) == {"source", "base", "before_finetune", "after_finetune"}
    assert set(r["accuracy"]["after_finetune"]) == {"top1", "top5"}
    assert r["size"]["params_after"] < r["size"]["params_before"]
    assert r["size"]["stored_bytes_after"] < r["size"]["dense_bytes_before"] / 4
    assert (
        r["predicted_latency"]["raspberry-pi-4"]["compressed_ms"] < r["predicted_latency"]["raspberry-pi-4"]["base_ms"]
    )
    assert r["measured_latency"]["batch1"]["compressed_ms"] > 0
    assert r["finetune"]["distill"] is True and len(r["finetune"]["history"]) == 1
    # The saved model is the evaluated one.
    model, _spec, _policy, metrics = load_compressed(out)
    from edgecompress.data import load_dataset

    test = load_dataset("fashion-mnist", replayed["data"], val_size=60).test
    assert evaluate(model, test, topk=(1,))["top1"] == metrics["test_top1"] == r["accuracy"]["after_finetune"]["top1"]


def test_replay_is_deterministic(replayed) -> None:  # type: ignore[no-untyped-def]
    out = replayed["root"] / "r2"
    again = replay(
        replayed["policy"],
        out,
        finetune_epochs=1,
        data_dir=replayed["data"],
        val_size=60,
        devices=DEVICES,
        measure=False,
        progress=False,
    )
    assert again["accuracy"] == replayed["report"]["accuracy"]
    a = torch.load(replayed["out"] / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_replay_with_augmented_batches_trains_on_other_inputs(replayed) -> None:  # type: ignore[no-untyped-def]
    out = replayed["root"] / "r_aug"
    aug = replay(
        replayed["policy"], out, finetune_epochs=1, augment=True, data_dir=replayed["data"], val_size=60,
        devices=DEVICES, measure=False, progress=False,
    )  # fmt: skip
    assert aug["finetune"]["augment"] is True and replayed["report"]["finetune"]["augment"] is False
    assert aug["finetune"]["history"][0]["train_loss"] != replayed["report"]["finetune"]["history"][0]["train_loss"]
    assert "augmented batches" in (out / "report.md").read_text()


def test_replay_refuses_existing_output_and_mismatched_policy(replayed) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="already holds a replayed model"):
        replay(
            replayed["policy"], replayed["out"], data_dir=replayed["data"], val_size=60, devices=DEVICES, progress=False
        )
    data = json.loads(Path(replayed["policy"]).read_text())
    data["base"]["model"] = "resnet20"
    other = replayed["root"] / "resnet-policy.json"
    other.write_text(json.dumps(data))
    with pytest.raises(PolicyError, match=r"was made for model 'resnet20', but checkpoint .* holds 'lenet5'"):
        replay(other, replayed["root"] / "r3", data_dir=replayed["data"], val_size=60, devices=DEVICES, progress=False)


def test_cli_replay_and_export(replayed, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    from edgecompress.cli import main

    with pytest.raises(SystemExit) as done:
        main(
            [
                "replay",
                "--policy",
                str(replayed["policy"]),
                "--out",
                str(tmp_path / "rr"),
                "--max-batches",
                "2",
                "--no-distill",
                "--data-dir",
                replayed["data"],
                "--val-size",
                "60",
            ]
        )
    assert done.value.code == 0
    assert "compressed, after fine-tuning" in capsys.readouterr().out
    assert json.loads((tmp_path / "rr" / "report.json").read_text())["finetune"]["distill"] is False
    with pytest.raises(SystemExit) as done:
        main(
            [
                "export",
                "--model",
                str(replayed["out"]),
                "--format",
                "archive",
                "--out",
                str(tmp_path / "a.ecar"),
                "--data-dir",
                replayed["data"],
                "--val-size",
                "60",
            ]
        )
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "bytes of coded layers (= the report's Huffman size)" in text and "agreement with PyTorch 100.00%" in text
    with pytest.raises(SystemExit) as exc:
        main(["export", "--model", str(replayed["out"]), "--format", "tflite", "--out", str(tmp_path / "b")])
    assert exc.value.code == 2
    assert "unknown export format 'tflite'; valid formats: onnx, onnx-fp16, onnx-int8, torchscript, archive" in (
        capsys.readouterr().err.replace("\n", "")
    )
