"""``edgecompress compress``: search -> replay -> export -> timing, resumable; and ``compress_for`` in Python."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch.nn as nn
from rich.console import Console

from edgecompress.config import load_config
from edgecompress.data import load_dataset
from edgecompress.errors import ConfigError
from edgecompress.workflows import compress as compress_mod
from edgecompress.workflows.compress import compress_for, natural_format, run_compress

QUIET = Console(quiet=True)


def _cfg(data: Path, ckpt: Path, out: Path, **extra: object):  # type: ignore[no-untyped-def]
    return load_config(
        None,
        {
            "model.checkpoint": str(ckpt), "data.data_dir": str(data), "data.val_size": 60, "data.val_samples": 60,
            "out": str(out), "search.agent": "random", "search.episodes": 3, "search.round_to": 1,
            "search.budget_ratio": 0.8, "search.finetune_batches": 0, **extra,
        },
    )  # fmt: skip


OPTIONS = {"formats": ["onnx", "archive"], "finetune_epochs": 1, "max_batches": 2, "test_samples": 40, "rounds": 1,
           "progress": False}  # fmt: skip


def test_compress_writes_every_promised_file_and_resumes(
    tiny_fmnist_shared: Path, lenet_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    s = run_compress(_cfg(tiny_fmnist_shared, lenet_checkpoint, out), QUIET, **OPTIONS)  # type: ignore[arg-type]
    for name in ("config.yaml", "episodes.jsonl", "best_policy.json", "replay/model.pt", "replay/report.json",
                 "replay/report.md", "model.onnx", "model.ecar", "exports.json", "compress.json"):  # fmt: skip
        assert (out / name).is_file(), name
    assert set(s["files"]) == {"policy", "compressed_model", "replay_report", "onnx", "archive"}
    for path in s["files"].values():
        assert Path(path).is_file(), path
    assert s["predicted"]["compressed_ms"] <= s["budget_ms"] + 1e-9
    assert s["measured"]["speedup"] > 0 and "1 thread(s)" in s["measured"]["source"]
    assert json.loads((out / "compress.json").read_text())["files"] == s["files"]

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished step ran again")

    monkeypatch.setattr(compress_mod, "replay", must_not_run)
    monkeypatch.setattr(compress_mod, "export_model", must_not_run)
    again = run_compress(_cfg(tiny_fmnist_shared, lenet_checkpoint, out), QUIET, **OPTIONS)  # type: ignore[arg-type]
    assert again["accuracy"] == s["accuracy"]


def test_compress_refuses_a_budget_below_the_floor_it_found(
    tiny_fmnist_shared: Path, lenet_checkpoint: Path, tmp_path: Path
) -> None:
    cfg = _cfg(tiny_fmnist_shared, lenet_checkpoint, tmp_path / "run", **{"search.budget_ms": 1e-6})
    with pytest.raises(ConfigError, match=r"budget 0.0000 ms cannot be met: the strongest compression allowed "
                       r"reaches [0-9.]+ ms on raspberry-pi-4"):  # fmt: skip
        run_compress(cfg, QUIET, **OPTIONS)  # type: ignore[arg-type]


def test_bad_compress_options_are_refused(tiny_fmnist_shared: Path, lenet_checkpoint: Path, tmp_path: Path) -> None:
    cfg = _cfg(tiny_fmnist_shared, lenet_checkpoint, tmp_path / "run")
    with pytest.raises(ConfigError, match="--speedup 0.5 is invalid; valid: a number > 1"):
        run_compress(cfg, QUIET, speedup=0.5)
    with pytest.raises(ConfigError, match="unknown format\\(s\\) coreml; valid: onnx, onnx-fp16, onnx-int8, tflite"):
        run_compress(cfg, QUIET, formats=["coreml"])
    assert not (tmp_path / "run").exists()


def test_the_natural_format_of_each_device() -> None:
    assert natural_format("jetson-nano") == "onnx-fp16"
    assert natural_format("raspberry-pi-4") == "onnx-int8"
    assert natural_format("host") == "onnx"


def test_compress_for_returns_a_module_and_its_report(tiny_fmnist_shared: Path, lenet_checkpoint: Path,
                                                      tmp_path: Path) -> None:  # fmt: skip
    from edgecompress.artifacts.checkpoint import load_checkpoint

    base, _ = load_checkpoint(lenet_checkpoint)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    data = load_dataset("fashion-mnist", tiny_fmnist_shared, val_size=60)
    r = compress_for(base, data, device="raspberry-pi-4", speedup=1.25, agent="random", episodes=3,
                     round_to=1, max_batches=2, test_samples=40, out=tmp_path / "py")  # fmt: skip
    assert isinstance(r.model, nn.Module) and not r.model.training
    p = r.report["predicted_latency"]
    assert p["compressed_ms"] <= p["base_ms"] / 1.25 + 1e-9
    assert all((v == base.state_dict()[k]).all() for k, v in before.items())  # the input model is not modified
    assert (tmp_path / "py" / "best_policy.json").is_file()


def test_every_export_format_has_a_file_name() -> None:
    from edgecompress.artifacts.export import FORMATS
    from edgecompress.workflows.compress import FILE_NAMES

    assert set(FILE_NAMES) == set(FORMATS)
    assert len(set(FILE_NAMES.values())) == len(FORMATS)
