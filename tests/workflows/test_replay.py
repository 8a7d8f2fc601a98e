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
    assert "5 rounds of 100 runs with the two models in turn" in r["measured_latency"]["source"]  # side by side
    assert r["predicted_latency"]["raspberry-pi-4"]["unpriced_operators"] == 0
    e = r["predicted_energy"]["jetson-tx2"]  # the pruned LeNet-5 costs less energy, and says where that comes from
    assert 0 < e["compressed_mj"] < e["base_mj"] and e["source"].startswith("predicted by the jetson-tx2 energy model")
    assert "Predicted energy per inference on jetson-tx2" in md
    assert r["finetune"]["distill"] is True and len(r["finetune"]["history"]) == 1
    # The saved model is the evaluated one.
    model, _spec, _policy, metrics = load_compressed(out)
    from edgecompress.data import load_dataset

    test = load_dataset("fashion-mnist", replayed["data"], val_size=60).test
    assert evaluate(model, test, topk=(1,))["top1"] == metrics["test_top1"] == r["accuracy"]["after_finetune"]["top1"]


def test_a_device_that_left_operators_out_shows_no_latency(replayed) -> None:  # type: ignore[no-untyped-def]
    """A table that lacks some operators sums the rest: the report says so instead of printing that sum."""
    from edgecompress.workflows.replay import report_markdown

    r = json.loads(json.dumps(replayed["report"]))  # a copy
    r["predicted_latency"] = {
        "host": {"base_ms": 0.0119, "compressed_ms": 0.0115, "speedup": 1.04, "source": "looked up",
                 "unpriced_operators": 63, "warnings": []},
        "raspberry-pi-4": {"base_ms": 2.0, "compressed_ms": 1.0, "speedup": 2.0, "source": "predicted",
                           "unpriced_operators": 0, "warnings": []},
    }  # fmt: skip
    md = report_markdown(r)
    row = (
        "| host | n/a | n/a | n/a | 63 operator signatures are not in host's table (profile them: "
        "`edgecompress profile`) |"
    )
    assert row in md
    assert "| raspberry-pi-4 | 2.0000 | 1.0000 | 2.00x | predicted |" in md and "0.0115" not in md


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
        main(["export", "--model", str(replayed["out"]), "--format", "coreml", "--out", str(tmp_path / "b")])
    assert exc.value.code == 2
    assert (
        "unknown export format 'coreml'; valid formats: onnx, onnx-fp16, onnx-int8, tflite, tflite-int8, "
        "torchscript, archive"
    ) in (capsys.readouterr().err.replace("\n", ""))


def test_replay_student_distils_a_compact_architecture_that_exports(replayed, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """`replay --student resnet8 --checkpoint TEACHER`: a different, smaller architecture trained from scratch
    by distillation; its replay folder loads and exports like any compressed model."""
    from edgecompress.artifacts.checkpoint import ModelSpec, save_checkpoint
    from edgecompress.artifacts.export import export_model
    from edgecompress.cli import main

    torch.manual_seed(0)
    teacher = ModelSpec("resnet20", 10, 1, 28, "fashion-mnist", 0)
    ckpt = save_checkpoint(tmp_path / "teacher.pt", teacher.build().eval(), teacher)
    out = tmp_path / "student"
    with pytest.raises(SystemExit) as done:
        main(["replay", "--student", "resnet8", "--checkpoint", str(ckpt), "--out", str(out), "--max-batches", "2",
              "--data-dir", replayed["data"], "--val-size", "60"])  # fmt: skip
    assert done.value.code == 0
    r = json.loads((out / "report.json").read_text())
    assert r["model"] == "resnet8" and r["student"] == {"architecture": "resnet8", "teacher": {
        "model": "resnet20", "checkpoint": str(ckpt)}}  # fmt: skip
    assert r["finetune"]["distill"] is True and len(r["finetune"]["history"]) == 1
    assert r["size"]["params_after"] < r["size"]["params_before"] / 3  # resnet8 vs resnet20
    assert r["size"]["macs_after"] < r["size"]["macs_before"]
    assert "student resnet8 distilled from resnet20" in capsys.readouterr().out
    model, spec, policy, metrics = load_compressed(out)
    assert (
        spec.model == "resnet8"
        and policy.layers == {}
        and metrics["test_top1"] == r["accuracy"]["after_finetune"]["top1"]
    )
    assert sum(p.numel() for p in model.parameters()) == r["size"]["params_after"]
    e = export_model(out, "onnx", tmp_path / "s.onnx", data_dir=replayed["data"], val_size=60, measure=False)
    assert e["parity"]["top1_agreement"] >= 0.995


def test_replay_takes_a_policy_or_a_student(replayed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=r"replay takes a policy file \(--policy\) or .* both were given"):
        replay(replayed["policy"], tmp_path / "x", student="resnet8", checkpoint=replayed["ckpt"])
    with pytest.raises(ConfigError, match=r"--student resnet8 is distilled from a base model: pass its --checkpoint"):
        replay(None, tmp_path / "x", student="resnet8")
    with pytest.raises(ConfigError, match=r"--student: unknown model 'resnet7'"):
        replay(None, tmp_path / "x", student="resnet7", checkpoint=replayed["ckpt"], data_dir=replayed["data"],
               val_size=60, progress=False)  # fmt: skip
    assert not (tmp_path / "x").exists()
