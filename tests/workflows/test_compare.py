"""``edgecompress compare`` and ``edgecompress compress`` on a tiny data set (behaviour, not figures)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from edgecompress.compressors import Policy, compress
from edgecompress.config import load_config
from edgecompress.data import load_dataset
from edgecompress.errors import ConfigError
from edgecompress.latency_models import estimate_latency
from edgecompress.latency_models.estimate import estimate_energy
from edgecompress.search.objective import policy_latency
from edgecompress.workflows import compare as compare_mod
from edgecompress.workflows.compare import CompareSettings, run_compare
from edgecompress.workflows.train import train_base_model

QUIET = Console(quiet=True)


@pytest.fixture(scope="module")
def resnet_checkpoint(tiny_fmnist_shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ResNet-20 trained one epoch on the tiny data set (shared: do not modify it)."""
    path = tmp_path_factory.mktemp("r20") / "resnet20.pt"
    cfg = _cfg(tiny_fmnist_shared, path, path.parent / "unused", train_epochs=1)
    train_base_model(cfg, path, bundle=load_dataset("fashion-mnist", tiny_fmnist_shared, val_size=60), progress=False)
    return path


def _cfg(data: Path, ckpt: Path, out: Path, train_epochs: int = 1, **extra: Any):  # type: ignore[no-untyped-def]
    return load_config(
        None,
        {
            "model.name": "resnet20", "model.checkpoint": str(ckpt), "data.data_dir": str(data), "data.val_size": 60,
            "data.val_samples": 60, "train.epochs": train_epochs, "train.batch_size": 32, "out": str(out),
            "search.agent": "random", "search.episodes": 3, "search.finetune_batches": 0, "search.bn_batches": 1,
            **extra,
        },
    )  # fmt: skip


def _settings(**changes: Any) -> CompareSettings:
    base = {
        "budget_ratios": [0.6], "size_ratios": [0.2], "techniques": ["prune-l1", "drop", "magnitude", "quant"],
        "finetune_epochs": 1, "max_batches": 2, "batch_size": 32, "bn_batches": 2, "test_samples": 40,
        "measure_rounds": 1,
    }  # fmt: skip
    base.update(changes)
    return CompareSettings(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def compared(tiny_fmnist_shared: Path, resnet_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("cmp") / "run"
    cfg = _cfg(tiny_fmnist_shared, resnet_checkpoint, out)
    return out, run_compare(cfg, _settings(), QUIET)


def test_compare_writes_its_files_and_one_row_per_technique_and_budget(compared) -> None:  # type: ignore[no-untyped-def]
    out, r = compared
    for name in ("compare.json", "compare.md", "rows.jsonl", "settings.json", "config.yaml",
                 "accuracy_vs_latency.png", "accuracy_vs_size.png"):  # fmt: skip
        assert (out / name).is_file(), name
    keys = sorted(row["key"] for row in r["rows"])
    assert keys == sorted(
        f"{t}@{kind}" for t in ("prune-l1", "drop", "magnitude", "quant")
        for kind in ("latency_ratio:0.6", "size_ratio:0.2")
    )  # fmt: skip
    # latency techniques are not offered size budgets and size techniques not latency budgets, said so
    by_key = {row["key"]: row for row in r["rows"]}
    assert by_key["magnitude@latency_ratio:0.6"]["met"] is None
    assert "do not buy latency" not in by_key["magnitude@latency_ratio:0.6"]["reason"]
    assert "not the work of the dense kernels" in by_key["magnitude@latency_ratio:0.6"]["reason"]
    assert by_key["prune-l1@size_ratio:0.2"]["met"] is None
    md = (out / "compare.md").read_text()
    assert "| prune-l1 | 0.6x |" in md and "| base |" in md


def test_every_met_row_meets_its_budget_re_estimated(compared, resnet_checkpoint: Path) -> None:  # type: ignore[no-untyped-def]
    from edgecompress.artifacts.checkpoint import load_checkpoint

    _, r = compared
    base, spec = load_checkpoint(resnet_checkpoint)
    base_ms = estimate_latency(base, spec.input_shape, "raspberry-pi-4").total_ms
    assert r["base"]["latency_ms"] == pytest.approx(base_ms)
    met = [row for row in r["rows"] if row["met"]]
    assert {row["technique"] for row in met} >= {"prune-l1", "drop", "magnitude"}
    for row in met:
        policy = Policy.from_dict(row["policy"])
        method = "lookahead" if row["technique"] == "lookahead" else "magnitude"
        model, report = compress(base, policy, input_shape=spec.input_shape, unstructured=method)
        if row["budget"]["kind"] == "size_ratio":
            assert report.totals["huffman_bytes_after"] <= 0.2 * r["base"]["stored_bytes"]
            assert report.totals["huffman_bytes_after"] == row["huffman_bytes"]
        else:
            ms = policy_latency(model, policy, spec.input_shape, "raspberry-pi-4")[0].total_ms
            assert ms <= 0.6 * base_ms
            assert ms == pytest.approx(row["latency_ms"])
        a = row["accuracy"]
        assert 0 <= a["top1"] <= a["top5"] <= 1
        assert {"precision", "recall", "f1"} <= set(a)
        assert row["measured"]["batch1"]["ms"] > 0 and row["measured"]["batch64"]["ms"] > 0
        # Energy: the TX2 energy model's prediction for this very model, with its source
        want = estimate_energy(model, spec.input_shape, "jetson-tx2")
        assert row["energy_mj"] == pytest.approx(want.mj) and row["energy"]["jetson-tx2"]["mj"] == row["energy_mj"]
        assert row["energy_source"].startswith("predicted by the jetson-tx2 energy model")
        assert (row["energy_mj"] < r["base"]["energy_mj"]) == (row["macs"] < r["base"]["macs"]) or row["technique"] in (
            "magnitude", "lookahead", "quant", "sharing", "deep-compression")  # fmt: skip


def test_the_mildest_setting_is_chosen(compared, resnet_checkpoint: Path) -> None:  # type: ignore[no-untyped-def]
    """One grid step milder than the chosen keep misses the budget: the bisection stops at the boundary."""
    from edgecompress.artifacts.checkpoint import load_checkpoint

    _, r = compared
    base, spec = load_checkpoint(resnet_checkpoint)
    row = next(x for x in r["rows"] if x["technique"] == "prune-l1" and x["met"])
    grid = compare_mod._grid(1.0, 0.05)
    i = grid.index(row["setting"]["keep"])
    assert i > 0
    policy = Policy.from_dict(row["policy"])
    milder = policy.replace(layers={n: type(lp)(keep=grid[i - 1]) for n, lp in policy.layers.items()})
    model, _ = compress(base, milder, input_shape=spec.input_shape)
    assert policy_latency(model, milder, spec.input_shape, "raspberry-pi-4")[0].total_ms > row["budget"]["ms"]


def test_a_rerun_skips_finished_rows_and_a_killed_one_resumes(
    tiny_fmnist_shared: Path, resnet_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _cfg(tiny_fmnist_shared, resnet_checkpoint, tmp_path / "run")
    settings = _settings(techniques=["prune-l1", "quant"], size_ratios=[0.2])
    real = compare_mod._one_row
    calls: list[str] = []

    def dies_after_one(ctx, technique, budget):  # type: ignore[no-untyped-def]
        if calls:
            raise KeyboardInterrupt  # the kill
        calls.append(f"{technique}@{budget['label']}")
        return real(ctx, technique, budget)

    monkeypatch.setattr(compare_mod, "_one_row", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        run_compare(cfg, settings, QUIET)
    lines = (tmp_path / "run" / "rows.jsonl").read_text().splitlines()
    assert len(lines) == 2  # the base row and the one finished row
    first = json.loads(lines[1])["key"]

    redone: list[str] = []

    def counts(ctx, technique, budget):  # type: ignore[no-untyped-def]
        redone.append(compare_mod._row_key(technique, budget))
        return real(ctx, technique, budget)

    monkeypatch.setattr(compare_mod, "_one_row", counts)
    r = run_compare(cfg, settings, QUIET)
    assert first not in redone and len(redone) == 3 and len(r["rows"]) == 4
    redone.clear()
    run_compare(cfg, settings, QUIET)
    assert redone == []  # everything finished: nothing recomputed


def test_other_settings_for_the_same_folder_are_refused(
    tiny_fmnist_shared: Path, resnet_checkpoint: Path, compared
) -> None:  # type: ignore[no-untyped-def]
    out, _ = compared
    cfg = _cfg(tiny_fmnist_shared, resnet_checkpoint, out)
    with pytest.raises(ConfigError, match="other settings \\(finetune_epochs differ\\)"):
        run_compare(cfg, _settings(finetune_epochs=2), QUIET)


def test_bad_settings_are_refused_before_any_work(tmp_path: Path) -> None:
    cfg = load_config(None, {"out": str(tmp_path / "x")})
    with pytest.raises(ConfigError, match="unknown technique\\(s\\) pruning; valid: prune-l1"):
        run_compare(cfg, CompareSettings(techniques=["pruning"]), QUIET)
    with pytest.raises(ConfigError, match="budget ratio 1.5 is invalid"):
        run_compare(cfg, CompareSettings(budget_ratios=[1.5]), QUIET)
    with pytest.raises(ConfigError, match="size ratio 2.0 is invalid"):
        run_compare(cfg, CompareSettings(size_ratios=[2.0]), QUIET)
    with pytest.raises(ConfigError, match=r"--student resnet9 names the architecture of the 'student' rows, but "
                                          r"--techniques \(prune-l1\) has no student"):  # fmt: skip
        run_compare(cfg, CompareSettings(techniques=["prune-l1"], student="resnet9"), QUIET)
    with pytest.raises(ConfigError, match="distill_alpha 1.2 is invalid; valid: 0 \\(labels only\\) to 1"):
        run_compare(cfg, CompareSettings(distill_alpha=1.2), QUIET)
    assert not (tmp_path / "x").exists()


def test_every_row_distils_with_the_given_alpha(
    tiny_fmnist_shared: Path, resnet_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edgecompress.workflows.compare as compare_module

    alphas: list[float] = []
    real = compare_module.distill

    def recording(*args: Any, **kwargs: Any) -> Any:
        alphas.append(kwargs["alpha"])
        return real(*args, **kwargs)

    monkeypatch.setattr(compare_module, "distill", recording)
    cfg = _cfg(tiny_fmnist_shared, resnet_checkpoint, tmp_path / "alpha")
    r = run_compare(cfg, _settings(techniques=["deep-compression", "quant"], budget_ratios=[], size_ratios=[0.2],
                                   deep_stages=2, distill_alpha=0.5), QUIET)  # fmt: skip
    assert len(r["rows"]) == 2 and alphas == [0.5] * 4  # two stages and two rows
    assert json.loads((tmp_path / "alpha" / "settings.json").read_text())["distill_alpha"] == 0.5


def test_a_budget_no_setting_meets_is_a_row_saying_the_floor(
    tiny_fmnist_shared: Path, resnet_checkpoint: Path, tmp_path: Path
) -> None:
    cfg = _cfg(tiny_fmnist_shared, resnet_checkpoint, tmp_path / "run")
    r = run_compare(cfg, _settings(techniques=["drop"], budget_ratios=[0.05], size_ratios=[]), QUIET)
    (row,) = r["rows"]
    assert row["met"] is False
    # ResNet-20's 7 identity-shortcut blocks are removable (the 2 with projection shortcuts are not)
    assert re.match(
        r"cannot meet the budget: the strongest setting \(all 7 removable blocks removed\) is predicted at "
        r"[0-9.]+ ms on raspberry-pi-4",
        row["reason"],
    )


def test_student_rows_train_a_compact_student(
    tiny_fmnist_shared: Path, resnet_checkpoint: Path, tmp_path: Path
) -> None:
    cfg = _cfg(tiny_fmnist_shared, resnet_checkpoint, tmp_path / "run")
    r = run_compare(cfg, _settings(techniques=["student"], budget_ratios=[0.5], size_ratios=[]), QUIET)
    (row,) = r["rows"]
    assert row["met"] and row["trained_from_scratch"]
    assert row["setting"]["student"] in row["setting"]["candidates"]
    assert row["latency_ms"] <= 0.5 * r["base"]["latency_ms"]
    assert row["params"] < r["base"]["params"]


def test_gradual_deep_compression_rows_meet_the_size_budget_after_their_stages(
    tiny_fmnist_shared: Path, resnet_checkpoint: Path, tmp_path: Path
) -> None:
    """``deep_stages`` 2: pruned in two stages with distillation between them, then shared with fp16 biases; the
    row's model (re-counted after the stages) meets the budget, and the row says its policy alone is one-shot."""
    cfg = _cfg(tiny_fmnist_shared, resnet_checkpoint, tmp_path / "run")
    settings = _settings(techniques=["deep-compression"], budget_ratios=[], size_ratios=[0.1], deep_stages=2,
                         deep_bias_bits=16, deep_clusters=8)  # fmt: skip
    r = run_compare(cfg, settings, QUIET)
    (row,) = [row for row in r["rows"] if row["technique"] == "deep-compression"]
    assert row["met"] and row["huffman_bytes"] <= 0.1 * r["base"]["stored_bytes"]
    assert row["setting"]["stages"] == 2 and row["setting"]["bias_bits"] == 16 and row["setting"]["clusters"] == 8
    assert row["setting"]["sparsity"] >= row["setting"]["one_shot_sparsity"]
    assert all(lp.get("bias_bits") == 16 and lp.get("clusters") == 8 for lp in row["policy"]["layers"].values())
    assert row["policy_note"].startswith("pruned in 2 stages with distillation between them")
    with pytest.raises(ConfigError, match="deep_stages must be >= 1 \\(1: one-shot pruning\\), got 0"):
        run_compare(cfg, CompareSettings(deep_stages=0), QUIET)
    with pytest.raises(ConfigError, match="deep_clusters 12 is invalid; valid: 2, 4, 8, 16, 32, 64, 128, 256"):
        run_compare(cfg, CompareSettings(deep_clusters=12), QUIET)
    # Without distillation the stages only prune (no training run is started with 0 epochs).
    cfg = _cfg(tiny_fmnist_shared, resnet_checkpoint, tmp_path / "no-ft")
    r = run_compare(cfg, _settings(techniques=["deep-compression"], budget_ratios=[], size_ratios=[0.1],
                                   deep_stages=2, finetune_epochs=0), QUIET)  # fmt: skip
    (row,) = r["rows"]
    assert row["met"] and row["setting"]["stages"] == 2 and row["setting"]["bias_bits"] == 32
