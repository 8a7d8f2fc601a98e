from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from edgecompress.cli import main
from edgecompress.latency_models import load_device


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def test_analyze_json(capsys) -> None:
    code, out, _ = run_cli(["analyze", "--model", "lenet5", "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert doc["totals"]["params"] == 61_706 and doc["totals"]["macs"] == 416_520
    assert [row["name"] for row in doc["layers"]] == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    assert doc["layers"][0]["out_hw"] == [28, 28]


def test_analyze_and_latency_take_weights_trained_elsewhere(tmp_path, capsys) -> None:
    """A plain state_dict (what a user brings) loads with --weights and --model, classes and channels read from
    the file; --channels is the same option as --in-channels, as on search."""
    import torch

    from edgecompress.models import create_model

    torch.manual_seed(0)
    weights = tmp_path / "mbv2.pt"
    torch.save(create_model("mobilenetv2-0.5", 7, 3, input_size=32).state_dict(), weights)
    code, out, _ = run_cli(["analyze", "--model", "mobilenetv2-0.5", "--weights", str(weights), "--input-size", "32",
                            "--json"], capsys)  # fmt: skip
    doc = json.loads(out)
    assert code == 0 and doc["input_shape"] == [1, 3, 32, 32] and doc["layers"][-1]["out_channels"] == 7
    code, out, _ = run_cli(["latency", "--model", "mobilenetv2-0.5", "--weights", str(weights), "--input-size",
                            "32", "--device", "raspberry-pi-4", "--json"], capsys)  # fmt: skip
    assert code == 0 and json.loads(out)["total_ms"] > 0
    code, _, err = run_cli(["analyze", "--weights", str(weights)], capsys)
    assert code == 2 and "--weights needs --model NAME" in err
    code, _, err = run_cli(["analyze", "--checkpoint", str(weights)], capsys)
    assert code == 2 and "load with --weights and --model NAME instead" in " ".join(err.split())
    code, out, _ = run_cli(["analyze", "--model", "lenet5", "--channels", "3", "--json"], capsys)
    assert code == 0 and json.loads(out)["input_shape"] == [1, 3, 28, 28]


def test_analyze_table_shows_groups(capsys) -> None:
    code, out, _ = run_cli(["analyze", "--model", "resnet20"], capsys)
    assert code == 0
    assert "group 0: conv1, layers.0.conv2, layers.1.conv2, layers.2.conv2" in out
    assert "31,021,952" in out  # total MACs


def test_unknown_model_is_one_clean_line(capsys) -> None:
    code, _out, err = run_cli(["analyze", "--model", "lenet"], capsys)
    assert code == 2
    assert err.startswith("error: unknown model 'lenet'. Did you mean 'lenet5'?")
    assert "Traceback" not in err


def test_train_then_analyze_checkpoint(tmp_path, tiny_fmnist, capsys) -> None:
    ckpt = tmp_path / "m.pt"
    cfg = tmp_path / "small.yaml"
    cfg.write_text("data:\n  val_size: 40\n")
    args = ["train", "--model", "lenet5", "--dataset", "fashion-mnist", "--epochs", "1", "--out", str(ckpt),
            "--data-dir", str(tiny_fmnist), "--max-batches", "2", "--seed", "3", "--config", str(cfg)]  # fmt: skip
    code, out, _ = run_cli(args, capsys)
    assert code == 0 and ckpt.exists()
    assert "test accuracy" in out and "measured after training on the test split" in out
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "already exists; pass --force to replace it" in err
    code, out, _ = run_cli(["analyze", "--checkpoint", str(ckpt), "--json"], capsys)
    assert code == 0 and json.loads(out)["model"] == f"lenet5 from {ckpt}"
    code, _, err = run_cli(["analyze", "--checkpoint", str(ckpt), "--model", "resnet20"], capsys)
    assert code == 2 and "does not match checkpoint" in err


def test_run_pipeline_writes_a_self_describing_folder(tmp_path, tiny_fmnist, capsys) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "name": "t",
                "out": str(tmp_path / "run"),
                "model": {"name": "lenet5", "checkpoint": str(tmp_path / "base.pt"), "train_if_missing": True},
                "data": {"data_dir": str(tiny_fmnist), "val_size": 40, "val_samples": 20},
                "train": {"epochs": 1, "batch_size": 32},
            }
        )
    )
    code, out, _ = run_cli(["run", "--config", str(cfg)], capsys)
    assert code == 0
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} == {"config.yaml", "analysis.json", "summary.json"}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["trained_now"] is True and summary["params"] == 61_706
    assert summary["val_subset_samples"] == 20 and "accuracy" in summary["sources"]
    assert "measured now, full test split" in out
    # Same command again: resumes, loading the checkpoint instead of retraining.
    code, _, _ = run_cli(["run", "--config", str(cfg)], capsys)
    assert code == 0 and json.loads((run / "summary.json").read_text())["trained_now"] is False
    # A different config for the same folder is refused.
    cfg.write_text(cfg.read_text().replace("epochs: 1", "epochs: 2"))
    code, _, err = run_cli(["run", "--config", str(cfg)], capsys)
    assert code == 2 and "different config (changed: train.epochs)" in err


def test_python_dash_m_entry_point() -> None:
    res = subprocess.run([sys.executable, "-m", "edgecompress", "models"], capture_output=True, text=True, check=True)
    assert "resnet20" in res.stdout and "torchvision:NAME" in res.stdout


def test_analyze_policy_side_by_side(tmp_path, capsys) -> None:
    from edgecompress import Policy
    from edgecompress.models import create_model

    policy = Policy.uniform(create_model("lenet5"), keep=0.5, sparsity=0.5, wbits=4)
    path = policy.save(tmp_path / "p.json")
    code, out, _ = run_cli(["analyze", "--model", "lenet5", "--policy", str(path), "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert doc["totals"]["params_before"] == 61_706 and doc["totals"]["params_after"] < 61_706 / 3
    assert doc["skipped"] == [
        {"layer": "fc3", "technique": "structured", "reason": "its output channels are the network's outputs "
         "(classifier)"}
    ]  # fmt: skip
    code, out, _ = run_cli(["analyze", "--model", "lenet5", "--policy", str(path)], capsys)
    assert code == 0 and "ratios: params" in out and "skipped fc3 (structured)" in out
    bad = tmp_path / "bad.json"
    bad.write_text(path.read_text().replace('"wbits": 4', '"wbits": 5'))
    code, _, err = run_cli(["analyze", "--model", "lenet5", "--policy", str(bad)], capsys)
    assert code == 2 and "layer 'conv1': wbits = 5 is invalid; valid: 32, 16, 8, 6, 4, 2" in err


def test_devices_and_latency(capsys) -> None:
    code, out, _ = run_cli(["devices"], capsys)
    assert code == 0 and "raspberry-pi-4" in out and "Spearman" in out
    code, out, _ = run_cli(["latency", "--model", "resnet20", "--device", "raspberry-pi-4", "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert doc["device"] == "raspberry-pi-4" and doc["total_ms"] > 0
    assert doc["source"].startswith("predicted by device model raspberry-pi-4")
    code, _, err = run_cli(["latency", "--model", "resnet20", "--device", "pi4"], capsys)
    assert code == 2 and "unknown device 'pi4'" in err
    code, out, _ = run_cli(["latency", "--model", "resnet20", "--device", "jetson-tx2", "--json"], capsys)
    energy = json.loads(out)["energy"]
    assert energy["device"] == "jetson-tx2" and energy["mj"] > 0
    assert energy["source"].startswith("predicted by the jetson-tx2 energy model")
    code, out, _ = run_cli(["devices"], capsys)
    assert "energy (mJ, hwnb_edgegpu_tx2_cifar10_mJ)" in " ".join(out.split())
    assert load_device("jetson-nano-fp16").merges and "merge_conv" in out  # the Nano fp16's merge group
    code, _, err = run_cli(["latency", "--model", "resnet20"], capsys)
    assert code == 2 and "give --device NAME" in err


def test_latency_with_policy_is_lower(tmp_path, capsys) -> None:
    from edgecompress import Policy
    from edgecompress.models import create_model

    path = Policy.uniform(create_model("resnet20"), keep=0.5, abits=8).save(tmp_path / "p.json")
    base = ["latency", "--model", "resnet20", "--device", "jetson-nano", "--json"]
    _, out, _ = run_cli(base, capsys)
    _, out2, _ = run_cli([*base, "--policy", str(path)], capsys)
    assert json.loads(out2)["total_ms"] < json.loads(out)["total_ms"]


def test_latency_validate(tmp_path, capsys) -> None:
    from edgecompress.latency_models.device_model import default_data_dir

    if not (default_data_dir() / "nb201_latency.csv").is_file():
        pytest.skip("shared/latency-data not present")
    plot = tmp_path / "nano.png"
    code, out, _ = run_cli(["latency", "validate", "--device", "jetson-nano", "--json", "--plot", str(plot)], capsys)
    assert code == 0 and plot.stat().st_size > 10_000
    doc = json.loads(out)["fp32"]
    assert doc["rows"] == "holdout (arch_index % 5 == 0)" and doc["spearman"] > 0.9


def test_validate_table_on_a_small_table(tmp_path, capsys) -> None:
    from edgecompress.latency_models import profiler
    from edgecompress.latency_models.host import passes_since_fit
    from edgecompress.latency_models.ops import trace_ops
    from edgecompress.latency_models.table import LatencyTable, reachable_keys
    from edgecompress.models import create_model

    keys = reachable_keys(trace_ops(create_model("resnet20"), (1, 1, 28, 28)))
    table = tmp_path / "t.json"
    profiler.run(keys, table, repeats=3, warmup=1)
    plot = tmp_path / "v.png"
    args = ["latency", "validate-table", "--device", str(table), "--per-model", "2", "--plot", str(plot), "--json"]
    code, out, _ = run_cli([*args, "--save"], capsys)
    assert code == 0 and plot.stat().st_size > 5_000
    doc = json.loads(out)
    # --save stores the figures shown and adds the pass to the table's record of passes.
    saved = LatencyTable.load(table)
    assert saved.meta["validation"]["median_abs_error"] == doc["median_abs_error"]
    [record] = passes_since_fit(saved)["fp32, rounded to 8"]
    assert record["n"] == 4 and record["spearman"] == doc["spearman"] and record["at"] == doc["at"]
    assert record["source"] == "edgecompress latency validate-table"
    assert doc["n"] == 4 and {r["model"] for r in doc["rows"]} == {"resnet20", "mobilenetv2"}
    assert doc["rows"][0]["missing"] == 0  # resnet20's reachable signatures were all profiled
    # Speed-ups are against the unchanged model timed in the same rounds (not a row itself).
    assert set(doc["base_measured_ms"]) == {"resnet20", "mobilenetv2"}
    for r in doc["rows"]:
        assert r["speedup_predicted"] == pytest.approx(doc["base_estimated_ms"][r["model"]] / r["estimated_ms"])
        assert r["speedup_measured"] > 0


def test_devices_shows_the_worst_validation_pass_since_the_fit() -> None:
    """A table's record keeps every pass; `devices` shows the worst figures since the table's fit, so one good
    pass cannot stand for a table that missed in another, and passes from before a refit no longer count."""
    from edgecompress.cli import _passes_text
    from edgecompress.latency_models.host import passes_since_fit, record_pass
    from edgecompress.latency_models.table import LatencyTable

    table = LatencyTable({"updated": "2026-12-04 18:07:08"}, {})
    for at, err, rho, int8 in (
        ("2026-12-04 17:57 UTC", 0.30, 0.90, None),  # before the fit: not shown
        ("2026-12-04 18:14 UTC", 0.05, 0.98, None),
        ("2026-12-04 19:18 UTC", 0.07, 0.96, None),
        ("2026-12-04 19:18 UTC", 0.18, 0.937, "mixed"),
    ):
        record_pass(table, {"at": at, "n": 32, "round_to": 8, "int8": int8, "median_abs_error": err,
                            "spearman": rho}, "test")  # fmt: skip
    assert len(table.meta["validation_passes"]) == 4
    passes = passes_since_fit(table)
    assert [len(v) for v in passes.values()] == [2, 1]
    assert _passes_text(passes) == (
        ". Worst median |error| / lowest Spearman over the passes since its fit (2026-12-04 18:14 UTC to "
        "2026-12-04 19:18 UTC): fp32, rounded to 8 7.0% / 0.960 (2 passes); int8, half the layers 18.0% / 0.937 "
        "(1 pass)"
    )
    assert _passes_text({}) == ""


def test_search_flags_are_checked_before_any_work(capsys, tmp_path) -> None:
    code, _out, err = run_cli(["search", "--episodes", "5", "--trials", "6", "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "--episodes 5 and --trials 6 disagree; give one" in err
    code, _out, err = run_cli(["search", "--agent", "hyperopt", "--out", str(tmp_path / "y")], capsys)
    assert code == 2 and "search.agent = 'hyperopt'" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_ctrl_c_says_interrupted(capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Typer turns Ctrl-C into a silent exit 130; the CLI says what happened."""
    import edgecompress.latency_models as lm

    def interrupted() -> list[str]:
        raise KeyboardInterrupt

    monkeypatch.setattr(lm, "list_devices", interrupted)
    code, _out, err = run_cli(["devices"], capsys)
    assert code == 130 and "interrupted (what finished is kept: the same command resumes a search)" in err
