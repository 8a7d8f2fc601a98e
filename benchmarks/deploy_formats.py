"""Deployable formats side by side: ONNX fp32, ONNX int8 (trained scales and re-calibrated), LiteRT fp32 and
LiteRT int8, for a searched model and its original, timed in one interleaved run at 1 and 2 threads.

    python benchmarks/deploy_formats.py --config configs/default.yaml --variant resnet20
    python benchmarks/deploy_formats.py --config configs/mobilenetv2-0.5-fmnist.yaml --variant mobilenetv2-0.5

1. ``edgecompress search`` with the config (Optuna TPE, ``--trials``; the config's budget, techniques, fill).
2. Two 8-bit policies on the same layers: the original (keep 1.0) and the searched one, each with 8-bit
   weights and activations on every prunable layer; ``edgecompress replay`` each (distillation from the base).
3. ``edgecompress export`` each replayed model in the five formats (each verified on the whole test split).
4. All ten files timed round-robin, batch 1, ``--rounds`` rounds at 1 thread then 2 threads; per-round ratios
   against the original's ONNX fp32 file, medians over rounds.

Folder: benchmarks/runs/deploy-VARIANT (resumable: finished steps are skipped). Result:
benchmarks/results/deploy_formats__VARIANT.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import result_path, write_result

FORMATS = {  # label -> (export format, extra flags, file suffix, runtime)
    "onnx-fp32": ("onnx", [], "onnx", "onnxruntime"),
    "onnx-int8-trained": ("onnx-int8", ["--scales", "trained"], "trained.onnx", "onnxruntime"),
    "onnx-int8-calibrated": ("onnx-int8", ["--scales", "calibrated"], "calibrated.onnx", "onnxruntime"),
    "litert-fp32": ("tflite", [], "tflite", "litert"),
    "litert-int8": ("tflite-int8", [], "int8.tflite", "litert"),
}


def edgecompress(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "edgecompress", *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--variant", required=True)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--max-batches", type=int, default=150)
    parser.add_argument("--replay-lr", type=float, default=None, help="replay's --lr (default: the config's)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=100)
    args = parser.parse_args()
    from edgecompress.compressors import Policy
    from edgecompress.latency_models.profiler import time_onnx_interleaved

    run = Path(f"benchmarks/runs/deploy-{args.variant}")
    run.mkdir(parents=True, exist_ok=True)
    started = time.time()
    search = run / "search"
    reused: list[str] = []  # steps finished by an earlier, interrupted run of this command (resumed)
    if (search / "best_policy.json").exists():
        reused.append("search")
    else:
        edgecompress("search", "--config", args.config, "--agent", "optuna", "--trials", str(args.trials),
                     "--out", str(search))  # fmt: skip
    found = Policy.load(search / "best_policy.json")
    eight = {name: replace(lp, wbits=8, abits=8) for name, lp in found.layers.items() if not lp.drop}
    policies = {
        "searched": found.replace(layers={**found.layers, **eight}),
        "original": found.replace(layers={name: replace(lp, keep=1.0) for name, lp in eight.items()}),
    }
    files: dict[str, Path] = {}
    runtimes: dict[str, str] = {}
    exports: dict[str, dict] = {}
    for variant, policy in policies.items():
        policy_path = policy.save(run / f"policy-{variant}-8bit.json")
        replayed = run / f"replay-{variant}"
        if (replayed / "report.json").exists():
            reused.append(f"replay {variant}")
        else:
            edgecompress(
                "replay", "--policy", str(policy_path), "--out", str(replayed), "--force",
                "--finetune-epochs", str(args.finetune_epochs), "--max-batches", str(args.max_batches),
                *(["--lr", str(args.replay_lr)] if args.replay_lr is not None else []),
            )  # fmt: skip
        for label, (fmt, flags, suffix, runtime) in FORMATS.items():
            target = run / f"{variant}.{suffix}"
            record = run / f"{variant}.{label}.json"
            name = f"{variant} {label}"
            if record.exists():
                reused.append(f"export {name}")
            else:
                done = subprocess.run(
                    [sys.executable, "-m", "edgecompress", "export", "--model", str(replayed), "--format", fmt,
                     "--out", str(target), "--force", "--json", *flags],
                    check=False, capture_output=True, text=True,
                )  # fmt: skip
                if done.returncode:  # a file that cannot be made is a result too: recorded with its error
                    error = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
                    record.write_text(json.dumps({"error": error, "returncode": done.returncode}))
                else:
                    record.write_text(done.stdout[done.stdout.index("{") :])
            r = json.loads(record.read_text())
            if "error" in r:
                print(f"{name}: export failed: {r['error']}", flush=True)
                exports[name] = {"error": r["error"]}
                continue
            files[name], runtimes[name] = target, runtime
            exports[name] = {
                "bytes": r["bytes"], "top1": r["parity"]["top1"], "test_images": r["parity"]["samples"],
                "top1_agreement_with_pytorch": r["parity"]["top1_agreement"],
                "max_abs_diff": r["parity"]["max_abs_diff"], "accuracy_pytorch": r["accuracy_pytorch"],
            }  # fmt: skip
    import torch

    shape = tuple(found.base["input_shape"])
    feeds = dict.fromkeys(files, torch.randn((1, *shape[1:])).numpy())
    models = {name: str(path) for name, path in files.items()}
    timing = {}
    for threads in (1, 2):
        times = time_onnx_interleaved(models, feeds, threads, args.rounds, 10, args.repeats, runtime=runtimes)
        reference = times["original onnx-fp32"]
        timing[f"{threads}_thread{'s' if threads > 1 else ''}"] = {
            name: {"ms": statistics.median(t),
                   "speedup_vs_original_onnx_fp32": statistics.median(r / m for r, m in zip(reference, t, strict=True))}
            for name, t in times.items()
        }  # fmt: skip
    reports = {v: json.loads((run / f"replay-{v}" / "report.json").read_text()) for v in policies}
    write_result(
        result_path("deploy_formats", args.variant),
        {
            "benchmark": "deploy_formats",
            "variant": args.variant,
            "what": "ONNX fp32 / int8 (trained scales, re-calibrated) and LiteRT fp32 / int8 of one searched model "
            "and its original, both with 8-bit weights and activations on every prunable layer, replayed with "
            "distillation; accuracy on the whole test split from each export's own verification; batch-1 "
            "latency on this machine, all files round-robin, median over rounds",
            "search": {"config": args.config, "agent": "optuna (TPE)", "trials": args.trials},
            "replay": {
                "lr": args.replay_lr if args.replay_lr is not None else "the config's train.lr",
                "finetune_epochs": args.finetune_epochs,
                "max_batches": args.max_batches,
                "top1": {v: r["accuracy"]["after_finetune"]["top1"] for v, r in reports.items()},
                "base_top1": reports["original"]["accuracy"]["base"]["top1"],
            },
            "exports": exports,
            "latency": {"rounds": args.rounds, "repeats": args.repeats, "batch": 1, **timing},
            "seconds": time.time() - started,
            "reused_from_an_earlier_run": reused,
        },
    )


if __name__ == "__main__":
    main()
