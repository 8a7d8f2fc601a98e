"""Bring your own model: weights trained elsewhere -> search -> replay with distillation -> ONNX, at real sizes.

The weights come from ``benchmarks/byo_train.py`` (plain torch + torchvision,
``torch.save(model.state_dict())``, no edgecompress). This script runs the
three CLI commands a user would, each as its own process (so its peak memory
is its own), then times the base and the exported compressed model in ONNX
Runtime here, interleaved, at 1 thread (batch 1):

    python benchmarks/byo_model.py --arch mobilenet_v2 --size 96 --weights checkpoints/byo-mobilenet_v2-96.pt

Reported: base and compressed accuracy (test split), predicted Raspberry Pi 4
speed-up, measured speed-up here, evaluations per minute and where the search
time goes (the run log's per-phase seconds), peak resident memory of each step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import result_path, write_result

MEAN, STD = "0.286,0.286,0.286", "0.353,0.353,0.353"  # what byo_train.py normalised with, per RGB channel


def run(argv: list[str]) -> tuple[float, int]:
    """Run an edgecompress command; return (wall seconds, peak RSS in MiB of that process: os.wait4's rusage)."""
    start = time.perf_counter()
    print("+ edgecompress " + " ".join(argv), flush=True)
    child = subprocess.Popen([sys.executable, "-m", "edgecompress", *argv])
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"edgecompress {argv[0]} failed with status {child.returncode}")
    return time.perf_counter() - start, usage.ru_maxrss // 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", required=True)
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--val-samples", type=int, default=500)
    ap.add_argument("--finetune-batches", type=int, default=4)
    ap.add_argument("--bn-batches", type=int, default=4)
    ap.add_argument("--replay-batches", type=int, default=100, help="fine-tuning batches (of 128) in replay")
    ap.add_argument("--replay-batch-size", type=int, default=128)
    ap.add_argument("--finetune-lr", type=float, default=0.01, help="search and replay distillation learning rate")
    ap.add_argument("--test-samples", type=int, default=None, help="replay scores the first N test images")
    ap.add_argument("--verify-samples", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    ap.add_argument("--accelerator", default="cpu")
    ap.add_argument("--out", default=None)
    ap.add_argument(
        "--train-command", default=None, help="the byo_train.py command that wrote --weights (recorded, re-run first)"
    )
    args = ap.parse_args()
    variant = f"{args.arch}-{args.size}"
    run_dir = Path(f"runs/byo-{variant}")
    model = f"torchvision:{args.arch}"
    data = ["--channels", "3", "--input-size", str(args.size), "--mean", MEAN, "--std", STD]
    search_s, search_mb = run([
        "search", "--model", model, "--weights", args.weights, *data, "--device", "raspberry-pi-4",
        "--budget-ratio", "0.5", "--agent", "optuna", "--trials", str(args.trials), "--val-samples",
        str(args.val_samples), "--finetune-batches", str(args.finetune_batches), "--bn-batches", str(args.bn_batches),
        "--finetune-lr", str(args.finetune_lr),
        "--accelerator", args.accelerator, "--out", str(run_dir),
    ])  # fmt: skip
    records = [json.loads(line) for line in (run_dir / "episodes.jsonl").read_text().splitlines()]
    phases: dict[str, float] = {}
    for r in records:
        for k, v in r.get("phases", {}).items():
            phases[k] = phases.get(k, 0.0) + v
    per_eval = statistics.median(r["seconds"] for r in records)
    replay_dir = run_dir / "replay"
    replay_s, replay_mb = run([
        "replay", "--policy", str(run_dir / "best_policy.json"), "--out", str(replay_dir), "--finetune-epochs", "1",
        "--max-batches", str(args.replay_batches), "--batch-size", str(args.replay_batch_size),
        "--lr", str(args.finetune_lr),
        "--accelerator", args.accelerator, "--force",
        *(["--test-samples", str(args.test_samples)] if args.test_samples else []),
    ])  # fmt: skip
    report = json.loads((replay_dir / "report.json").read_text())
    onnx_path = run_dir / "model.onnx"
    export_s, export_mb = run([
        "export", "--model", str(replay_dir), "--format", "onnx", "--out", str(onnx_path), "--force",
        "--verify-samples", str(args.verify_samples), "--json",
    ])  # fmt: skip
    timing = interleaved(run_dir / "base.pt", onnx_path, args.size, args.rounds)
    best_file = run_dir / "best_policy.json"
    best = json.loads(best_file.read_text())["meta"]["scores"] if best_file.is_file() else None  # the search's pick
    pi4 = report["predicted_latency"]["raspberry-pi-4"]
    acc = report["accuracy"]
    payload: dict[str, Any] = {
        **({"prerequisite_commands": [args.train_command]} if args.train_command else {}),
        "benchmark": "byo_model",
        "variant": variant,
        "weights": {
            "file": args.weights,
            "trained_by": "benchmarks/byo_train.py (plain torch, no edgecompress)",
            **json.loads(Path(args.weights).with_suffix(".json").read_text()),
        },
        "search": {
            "trials": len(records),
            "seconds": round(search_s, 1),
            "peak_rss_mib": search_mb,
            "evaluations_per_minute": round(60 / per_eval, 2),
            "median_seconds_per_evaluation": round(per_eval, 2),
            "phase_seconds": {k: round(v, 1) for k, v in phases.items()},
            "val_samples": args.val_samples,
            "finetune_batches": args.finetune_batches,
            "bn_batches": args.bn_batches,
            "best": best,
            "scores_of_all_trials": sorted({round(r["accuracy"], 4) for r in records}),
        },
        "replay": {
            "seconds": round(replay_s, 1),
            "peak_rss_mib": replay_mb,
            "finetune_batches": args.replay_batches,
            "finetune_batch_size": args.replay_batch_size,
            "test_top1_base": acc["base"]["top1"],
            "test_top1_before_finetune": acc["before_finetune"]["top1"],
            "test_top1_after_finetune": acc["after_finetune"]["top1"],
            "accuracy_source": acc["source"],
            "params_before": report["size"]["params_before"],
            "params_after": report["size"]["params_after"],
            "macs_before": report["size"]["macs_before"],
            "macs_after": report["size"]["macs_after"],
        },
        "predicted_raspberry_pi_4": {
            "base_ms": pi4["base_ms"],
            "compressed_ms": pi4["compressed_ms"],
            "speedup": pi4["speedup"],
            "source": pi4["source"],
        },
        "export": {"seconds": round(export_s, 1), "peak_rss_mib": export_mb, "file": str(onnx_path)},
        "measured_here": timing,
        "accelerator": args.accelerator,
    }
    path = write_result(args.out or result_path("byo_model", variant), payload)
    print(json.dumps(payload, indent=2))
    print(f"wrote {path}")


def interleaved(base_ckpt: Path, onnx_path: Path, size: int, rounds: int) -> dict[str, Any]:
    """Base (fp32 ONNX of the imported checkpoint) vs the exported compressed model, round-robin, 1 thread."""
    import torch

    from edgecompress.artifacts.checkpoint import load_checkpoint
    from edgecompress.latency_models.onnx import to_onnx
    from edgecompress.latency_models.profiler import time_onnx_interleaved

    base, spec = load_checkpoint(base_ckpt, trust_factory=None)
    models: dict[str, bytes | str] = {"base": to_onnx(base, spec.input_shape), "compressed": str(onnx_path)}
    x = torch.randn(spec.input_shape).numpy()
    times = time_onnx_interleaved(models, dict.fromkeys(models, x), 1, rounds, 10, 50)
    ratios = [b / c for b, c in zip(times["base"], times["compressed"], strict=True)]
    return {
        "base_ms_median": round(statistics.median(times["base"]), 3),
        "compressed_ms_median": round(statistics.median(times["compressed"]), 3),
        "speedup_median_of_round_ratios": round(statistics.median(ratios), 3),
        "round_ratios": [round(r, 3) for r in ratios],
        "source": (
            f"measured on this machine: ONNX Runtime CPU provider, 1 thread, batch 1 ({size}x{size}), fp32, "
            f"{rounds} interleaved rounds of 50 runs after 10 warm-up, a new session per round"
        ),
    }


if __name__ == "__main__":
    main()
