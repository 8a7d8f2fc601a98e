"""Weights trained elsewhere through the CLI: import into RUN/base.pt, search, resume, replay, export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edgecompress.artifacts.checkpoint import load_checkpoint
from edgecompress.cli import main


@pytest.fixture(scope="module")
def lightning_style_weights(lenet_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained LeNet-5 saved the way a Lightning run saves it: nested under state_dict, keys prefixed model."""
    state = torch.load(lenet_checkpoint, weights_only=True)["state_dict"]
    path = tmp_path_factory.mktemp("byo") / "lightning.ckpt"
    torch.save({"epoch": 3, "state_dict": {f"model.{k}": v for k, v in state.items()}}, path)
    return path


def _cli(argv: list[str]) -> None:
    """Run the CLI in-process; typer ends a successful command with SystemExit(0)."""
    try:
        main(argv)
    except SystemExit as done:
        if done.code not in (0, None):
            raise


def _search(weights: Path, data: Path, out: Path, trials: int, *extra: str) -> None:
    config = out.parent / "tiny.yaml"
    config.write_text("data:\n  val_size: 60\n")
    _cli([
        "search", "--config", str(config), "--model", "lenet5", "--weights", str(weights), "--data-dir", str(data),
        "--agent", "optuna", "--trials", str(trials), "--val-samples", "40", "--budget-ratio", "0.95",
        "--out", str(out), *extra,
    ])  # fmt: skip


def test_weights_from_elsewhere_search_resume_replay_export(  # type: ignore[no-untyped-def]
    lightning_style_weights, tiny_fmnist_shared, tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("EDGECOMPRESS_DATA", str(tiny_fmnist_shared))
    out = tmp_path / "run"
    _search(lightning_style_weights, tiny_fmnist_shared, out, 2)
    text = " ".join(capsys.readouterr().out.split())
    assert "took the state_dict under 'state_dict'" in text or "key 'state_dict'" in text
    assert "stripped the prefix 'model.'" in text
    _, spec = load_checkpoint(out / "base.pt")
    assert spec.model == "lenet5" and spec.source["format"].startswith("checkpoint dict")
    assert spec.source["file"] == str(lightning_style_weights) and len(spec.source["sha256"]) == 64
    assert spec.metrics["val_samples"] == 40 and spec.metrics["val_acc"] > 0.5  # trained weights, not chance
    policy = json.loads((out / "best_policy.json").read_text())
    assert policy["base"]["checkpoint"] == str(out / "base.pt")
    # The same command with more trials resumes on the imported checkpoint.
    capsys.readouterr()
    _search(lightning_style_weights, tiny_fmnist_shared, out, 3)
    assert len((out / "episodes.jsonl").read_text().splitlines()) == 3
    assert "3 trials (1 this run) in" in " ".join(capsys.readouterr().out.split())  # not the earlier two again
    # Replay and export read the run's base.pt.
    _cli(["replay", "--policy", str(out / "best_policy.json"), "--out", str(out / "replay"), "--finetune-epochs",
          "1", "--max-batches", "2", "--test-samples", "30", "--val-size", "60",
          "--data-dir", str(tiny_fmnist_shared)])  # fmt: skip
    report = json.loads((out / "replay" / "report.json").read_text())
    assert report["checkpoint"] == str(out / "base.pt")
    assert report["accuracy"]["source"] == "measured on the fashion-mnist test split (the first 30 of 50 images)"
    _cli(["export", "--model", str(out / "replay"), "--format", "onnx", "--out", str(out / "m.onnx"), "--val-size",
          "60", "--data-dir", str(tiny_fmnist_shared)])  # fmt: skip
    assert (out / "m.onnx").stat().st_size > 0


def test_other_weights_on_the_same_run_folder_are_refused(  # type: ignore[no-untyped-def]
    lightning_style_weights, tiny_fmnist_shared, tmp_path, capsys
) -> None:
    out = tmp_path / "run"
    _search(lightning_style_weights, tiny_fmnist_shared, out, 1)
    other = tmp_path / "other.pt"
    sd = torch.load(lightning_style_weights, weights_only=True)["state_dict"]
    torch.save({k.removeprefix("model."): v + 0.01 for k, v in sd.items()}, other)
    with pytest.raises(SystemExit) as done:
        _search(other, tiny_fmnist_shared, out, 1)
    assert done.value.code == 2
    message = " ".join(capsys.readouterr().err.split())
    assert f"{out / 'base.pt'} was imported from {lightning_style_weights}" in message
    assert "use another --out for other weights" in message


def test_a_refused_budget_leaves_the_folder_free_for_the_one_it_suggests(  # type: ignore[no-untyped-def]
    lightning_style_weights, tiny_fmnist_shared, tmp_path, capsys
) -> None:
    out = tmp_path / "run"
    config = tmp_path / "tiny.yaml"
    config.write_text("data:\n  val_size: 60\n")
    args = ["search", "--config", str(config), "--model", "lenet5", "--weights", str(lightning_style_weights),
            "--data-dir", str(tiny_fmnist_shared), "--agent", "optuna", "--trials", "1", "--val-samples", "40",
            "--out", str(out)]  # fmt: skip
    with pytest.raises(SystemExit) as refused:
        main([*args, "--budget-ratio", "0.01"])
    err = " ".join(capsys.readouterr().err.split())
    assert refused.value.code == 2 and "cannot be met" in err and "raise the budget" in err
    assert not (out / "config.yaml").exists()  # what the refused run wrote about itself is gone
    _cli([*args, "--budget-ratio", "0.95"])  # the budget the error suggests, on the same folder
    assert len((out / "episodes.jsonl").read_text().splitlines()) == 1
