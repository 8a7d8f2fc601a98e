"""Random vs TPE vs NSGA-II vs DDPG at the same number of evaluations (issue 6), and Ray Tune throughput.

    python benchmarks/search_agents.py --models lenet5 resnet20 --evals 60 --seeds 0 1 2
    python benchmarks/search_agents.py --ray-throughput --models lenet5 --evals 24

Every method searches the same policy space (``keep`` per coupled channel
group, the env's range) with the same objective (validation subset of
``--val-samples``, predicted raspberry-pi-4 latency, budget 0.5 x the base
model's), through the real drivers and run folders under
``benchmarks/runs/search_agents/``. Reported per model and method: best
validation accuracy within budget per seed, its mean, the accuracy-latency
hypervolume (``edgecompress.search.report``), evaluations per minute; plus
the largest uniform keep ratio within budget. ``--ray-throughput`` times Ray
Tune with 1 and 2 workers (trials per minute, Ray start-up included and
excluded). Results: one file per model and mode, benchmarks/results/search_agents__<model>.json
(``__<model>-ray-throughput`` with ``--ray-throughput``; ``-<methods>`` appended where
``--methods`` is not all four); ``--out`` writes every model of the run to one file instead.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import result_path, write_result
from rich.console import Console

from edgecompress.workflows.config import load_run_config as load_config
from edgecompress.workflows.report import load_run, summarize
from edgecompress.workflows.search import run_search

CONFIGS = {"lenet5": "configs/lenet5-fmnist.yaml", "resnet20": "configs/resnet20-fmnist.yaml"}
METHODS = {
    "random": ("optuna", "random"),
    "tpe": ("optuna", "tpe"),
    "nsga2": ("optuna", "nsga2"),
    "ddpg": ("ddpg", "tpe"),
}
console = Console(width=160)


def run_one(
    model: str, method: str, seed: int, evals: int, val_samples: int, root: Path, fresh: bool
) -> dict[str, Any]:
    agent, sampler = METHODS[method]
    out = root / f"{model}-{method}-s{seed}"
    if fresh and out.exists():
        shutil.rmtree(out)
    cfg = load_config(
        CONFIGS[model],
        {
            "name": out.name,
            "out": str(out),
            "search.agent": agent,
            "search.sampler": sampler,
            "search.episodes": evals,
            "search.seed": seed,
            "search.budget_ratio": 0.5,
            "search.budget_ms": None,
            "search.warmup_episodes": max(1, evals // 3),
            "data.val_samples": val_samples,
        },
    )
    started = time.perf_counter()
    result = run_search(cfg, console, progress=False)
    minutes = (time.perf_counter() - started) / 60
    summary = summarize(load_run(out))
    return {
        "seed": seed,
        "best_accuracy": summary["best"]["accuracy"] if summary["best"] else None,
        "best_latency_ms": summary["best"]["latency_ms"] if summary["best"] else None,
        "hypervolume": summary["hypervolume"],
        "feasible": summary["feasible"],
        "evaluations": result["episodes"],
        "evals_per_minute": result["episodes"] / minutes,
        "budget_ms": result["budget_ms"],
        "base_latency_ms": result["base_latency_ms"],
        "base_accuracy": result["base_accuracy"],
        "uniform_within_budget": summary["uniform_within_budget"],
        "seconds": minutes * 60,
        "scoring_seconds": result["scoring_seconds"],
        "cache_hits": result["cache_hits"],
        "run": str(out),
    }


def time_split(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Share of the search's wall time per scoring phase; the rest is the agent, the driver and the logs."""
    total = sum(r["seconds"] for r in runs)
    split = {k: sum(r["scoring_seconds"][k] for r in runs) / total for k in runs[0]["scoring_seconds"]}
    split["agent_driver_logging"] = 1 - sum(split.values())
    return split


def ray_throughput(model: str, evals: int, val_samples: int, root: Path) -> dict[str, Any]:
    import ray

    rows = {}
    for workers in (1, 2):
        out = root / f"{model}-ray-w{workers}"
        if out.exists():
            shutil.rmtree(out)
        cfg = load_config(
            CONFIGS[model],
            {
                "name": out.name,
                "out": str(out),
                "search.agent": "ray",
                "search.sampler": "tpe",
                "search.episodes": evals,
                "search.workers": workers,
                "search.budget_ratio": 0.5,
                "data.val_samples": val_samples,
            },
        )
        started = time.perf_counter()
        result = run_search(cfg, console, progress=False)
        total = time.perf_counter() - started
        records = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
        ray.shutdown()
        rows[f"workers_{workers}"] = {
            "trials": result["episodes"],
            "seconds_total": total,
            "trials_per_minute": result["episodes"] / (total / 60),
            "best_accuracy": (result["best"] or {}).get("accuracy"),
            "errors": result["errors"],
            "records": len(records),
        }
        console.print(
            f"ray {model} workers={workers}: {result['episodes']} trials in {total:.0f} s "
            f"({result['episodes'] / (total / 60):.1f} trials/min)"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(CONFIGS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--evals", type=int, default=60)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--val-samples", type=int, default=1000)
    parser.add_argument("--root", default="benchmarks/runs/search_agents")
    parser.add_argument("--fresh", action="store_true", help="delete earlier run folders first (else they resume)")
    parser.add_argument("--ray-throughput", action="store_true")
    parser.add_argument("--out", default=None, help="one file for the whole run (default: one per model)")
    args = parser.parse_args()
    root = Path(args.root)
    results: dict[str, Any] = {}
    for model in args.models:
        row: dict[str, Any] = {}
        if args.ray_throughput:
            row["ray_throughput"] = ray_throughput(model, args.evals, args.val_samples, root)
            results[model] = row
            continue
        row.update(
            {"evals": args.evals, "val_samples": args.val_samples, "budget_ratio": 0.5, "device": "raspberry-pi-4"}
        )
        for method in args.methods:
            runs = [run_one(model, method, seed, args.evals, args.val_samples, root, args.fresh) for seed in args.seeds]
            bests = [r["best_accuracy"] for r in runs]
            ok = [b for b in bests if b is not None]
            hvs = [r["hypervolume"] for r in runs if r["hypervolume"] is not None]
            row[method] = {
                "best_accuracy_per_seed": bests,
                "mean": statistics.mean(ok) if ok else None,
                "hypervolume_per_seed": hvs,
                "hypervolume_mean": statistics.mean(hvs) if hvs else None,
                "evals_per_minute": statistics.mean(r["evals_per_minute"] for r in runs),
                "time_split": time_split(runs),
            }
            row["uniform_within_budget"] = runs[0]["uniform_within_budget"]
            row["base_accuracy"], row["budget_ms"] = runs[0]["base_accuracy"], runs[0]["budget_ms"]
            row["base_latency_ms"] = runs[0]["base_latency_ms"]
            console.print(
                f"{model} {method}: best within budget {[round(b, 4) if b else b for b in bests]}, "
                f"hypervolume {[round(h, 4) for h in hvs]}, "
                f"{row[method]['evals_per_minute']:.1f} evals/min"
            )
        results[model] = row
        console.print(f"{model} uniform within budget: {row['uniform_within_budget']}")
    if args.out:
        console.print(f"wrote {write_result(args.out, {'results': results})}")
        return
    methods = "" if sorted(args.methods) == sorted(METHODS) else "-" + "+".join(args.methods)
    for model, row in results.items():
        variant = f"{model}-ray-throughput" if args.ray_throughput else f"{model}{methods}"
        console.print(f"wrote {write_result(result_path('search_agents', variant), {'results': {model: row}})}")


if __name__ == "__main__":
    main()
