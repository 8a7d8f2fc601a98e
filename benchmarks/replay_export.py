"""Search on the host profile, replay with distillation, export, and measure in ONNX Runtime (issue 7).

    python benchmarks/replay_export.py --models resnet20 mobilenetv2 --episodes 40 --finetune-epochs 4

Per model, in one run:

1. a DDPG search (``keep`` per coupled group, channels rounded to ``--round-to``,
   8 by default; BatchNorm recalibrated on 4 batches) at ``--budget-ratio``
   (0.5 by default, the issue's) x the base model's latency predicted by the
   ``host`` table (this machine's profile); ``--finetune-batches N`` distils
   each policy for N steps before it is scored. Entries and run folders of
   other settings are named ``MODEL-budgetR`` and ``...-ftN``.
   On the host table profiled 2026-11-25 the strongest keep-only ResNet-20
   policy (keep 0.2 everywhere) reaches 0.498 x base at round-to 8, so a 0.5
   budget leaves the search one policy, and 0.61 x base at 16 (this CPU has
   AVX-512; ONNX Runtime's blocked NCHWc convolutions work on 16-channel
   blocks), where a 0.5 budget cannot be met;
2. ``replay`` of the best policy: distillation from the base model for
   ``--finetune-epochs``, test-split accuracy;
3. what a user would do without us: Torch-Pruning uniform keep 0.5 (the same
   structured pruner), the same distillation;
4. ``export`` of the original, the searched and the uniform model as fp32 ONNX
   and as int8 QDQ ONNX (every layer: the policies choose no 8-bit
   activations, so "mixed" int8 here is all-int8), each verified on the full
   test split in ONNX Runtime;
5. all six files timed round-robin (``--rounds`` rounds; 2 threads, median of
   200 runs at batch 1 and 20 at batch 64 per round; then batch 1 on one
   thread), speed-ups taken per round against the original timed in the same
   round; predicted (host table, 2 threads) vs measured speed-up.

``--measure-only`` re-exports and re-times an earlier run's models (search and
replays reused), for a quiet machine. Writes one file per model and setting,
benchmarks/results/replay_export__<entry>-ep<finetune epochs>.json (``--out``: the whole
run in one file); run folders under benchmarks/runs/replay_export/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import result_path, write_result
from rich.console import Console
from rich.table import Table

from edgecompress.analysis import analyze_model
from edgecompress.artifacts.checkpoint import load_checkpoint
from edgecompress.artifacts.compressed import load_compressed, save_compressed
from edgecompress.artifacts.export import export_model
from edgecompress.compressors import LayerPolicy, Policy
from edgecompress.latency_models import estimate_latency, load_device
from edgecompress.search.objective import policy_latency
from edgecompress.workflows.config import load_run_config as load_config
from edgecompress.workflows.replay import replay
from edgecompress.workflows.search import run_search

CONFIGS = {
    "resnet20": "configs/resnet20-fmnist.yaml",
    "mobilenetv2": "configs/mobilenetv2-fmnist.yaml",
    "mobilenetv2-0.5": "configs/mobilenetv2-0.5-fmnist.yaml",
}
console = Console(width=200)


def exports(model_file: Path, folder: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for fmt, all_layers in (("onnx", False), ("onnx-int8", True)):
        target = folder / f"model.{fmt}.onnx"
        r = export_model(model_file, fmt, target, force=True, repeats=200, all_layers=all_layers)
        out[fmt] = {
            "top1": r["parity"]["top1"],
            "top1_agreement_vs_pytorch": r["parity"]["top1_agreement"],
            "max_abs_diff": r["parity"]["max_abs_diff"],
            "batch1_ms": r["measured"]["batch1_ms"],
            "batch64_ms": r["measured"]["batch64_ms"],
            "bytes": r["bytes"],
        }
        console.print(
            f"  {model_file.parent.name} {fmt}: top-1 {out[fmt]['top1']:.4f}, "
            f"b1 {out[fmt]['batch1_ms']:.4f} ms, b64 {out[fmt]['batch64_ms']:.3f} ms"
        )
    return out


def entry_name(
    model: str,
    budget_ratio: float,
    finetune_batches: int = 0,
    latency: str = "table",
    device: str = "host",
    fill: bool = False,
    techniques: tuple[str, ...] = ("keep",),
) -> str:
    """Results key and run folder: the model's name at the issue's 0.5 budget and AMC's scoring without
    fine-tuning, else with the budget, the fine-tuning steps per scored policy and
    ``-measured`` where each policy's latency was measured during the search, ``-fill`` where policies were
    widened into their unused budget, ``-keep-drop`` (the techniques) where they are not ``keep`` alone, and
    the device table last."""
    name = model if budget_ratio == 0.5 else f"{model}-budget{budget_ratio:g}"
    name = f"{name}-ft{finetune_batches}" if finetune_batches else name
    name = f"{name}-measured" if latency == "measured" else name
    name = f"{name}-fill" if fill else name
    name = name if tuple(techniques) == ("keep",) else f"{name}-{'-'.join(techniques)}"
    # Results without a device suffix predate 2026-12-04 and used the then `host`, the 2-thread table.
    return f"{name}-{device}"


def interleaved(files: dict[str, Path], rounds: int) -> dict[str, Any]:
    """Every exported file timed round-robin (batch 1 and 64): per-round medians and per-round speed-ups.

    The files are timed in turn, ``rounds`` times over, so the machine's drift
    hits all of them alike; speed-ups are the median over rounds of the ratio
    between the original fp32 model and a variant timed in the same round.
    """
    import statistics

    import numpy as np

    from edgecompress.latency_models.profiler import time_onnx_interleaved

    out: dict[str, Any] = {"rounds": rounds}
    # Batch 1 and 64 on 2 threads (the setting), then batch 1 on one thread: a pruned small
    # model may gain nothing from the second thread while the original does.
    for label, batch, threads, repeats in (
        ("batch1", 1, 2, 200),
        ("batch64", 64, 2, 20),
        ("batch1_1thread", 1, 1, 200),
    ):
        x = np.random.default_rng(0).standard_normal((batch, 1, 28, 28)).astype(np.float32)
        ms = time_onnx_interleaved(
            {k: str(v) for k, v in files.items()}, dict.fromkeys(files, x), threads, rounds, 10, repeats
        )
        ref = ms["original onnx"]
        out[label] = {
            k: {
                "median_ms": statistics.median(v),
                "round_ms": v,
                "speedup": statistics.median(r / t for r, t in zip(ref, v, strict=True)),
            }
            for k, v in ms.items()
        }
    return out


def bench(
    model: str,
    episodes: int,
    epochs: int,
    root: Path,
    fresh: bool,
    measure_only: bool,
    round_to: int,
    rounds: int,
    max_batches: int | None = None,
    budget_ratio: float = 0.5,
    finetune_batches: int = 0,
    latency: str = "table",
    device: str = "host",
    fill: bool = False,
    techniques: tuple[str, ...] = ("keep",),
) -> dict[str, Any]:

    folder = root / entry_name(model, budget_ratio, finetune_batches, latency, device, fill, techniques)
    if fresh and folder.exists() and not measure_only:
        shutil.rmtree(folder)
    cfg = load_config(
        CONFIGS[model],
        {
            "name": f"{model}-host",
            "out": str(folder / "search"),
            "device": device,
            "search.agent": "ddpg",
            "search.episodes": episodes,
            "search.warmup_episodes": max(1, episodes // 3),
            "search.budget_ratio": budget_ratio,
            "data.val_samples": 1000,
            "search.round_to": round_to,
            "search.bn_batches": 4,
            "search.finetune_batches": finetune_batches,
            "search.latency": latency,
            "search.fill_budget": fill,
            "search.techniques": list(techniques),
        },
    )
    best = folder / "search" / "best_policy.json"
    base, spec = load_checkpoint(cfg.model.checkpoint or "")
    policy = Policy.load(best) if measure_only else None
    if measure_only:  # re-measure the exports of an earlier run on a quiet machine; search and replays reused
        ref = json.loads((folder / "search" / "reference.json").read_text())
        search = {
            "episodes": len((folder / "search" / "episodes.jsonl").read_text().splitlines()),
            "budget_ms": ref["budget_ms"],
            "base_latency_ms": ref["base"]["latency_ms"],
            "best": policy.meta["scores"] if policy else None,
            "seconds": None,
        }
        searched = json.loads((folder / "searched" / "report.json").read_text())
        baseline = json.loads((folder / "uniform" / "report.json").read_text())
    else:
        search = run_search(cfg, console, progress=False)
        searched = replay(
            best, folder / "searched", finetune_epochs=epochs, max_batches=max_batches, force=True, progress=False
        )
        policy = Policy.load(best)
        prunable = [s.name for s in analyze_model(base, spec.input_shape).layers if s.prunable]
        uniform = Policy(
            {name: LayerPolicy(keep=0.5) for name in prunable}, base=dict(policy.base), round_to=policy.round_to
        )
        uniform_path = uniform.save(folder / "uniform_keep0.5.json")
        baseline = replay(
            uniform_path, folder / "uniform", finetune_epochs=epochs, max_batches=max_batches, force=True,
            progress=False,
        )  # fmt: skip
    assert policy is not None
    (folder / "original").mkdir(parents=True, exist_ok=True)
    original_file = save_compressed(folder / "original" / "model.pt", base, spec, Policy({}, base=dict(policy.base)))
    measured = {
        "original": exports(original_file, folder / "original"),
        "searched": exports(folder / "searched" / "model.pt", folder / "searched"),
        "uniform": exports(folder / "uniform" / "model.pt", folder / "uniform"),
    }
    files = {f"{v} {fmt}": folder / v / f"model.{fmt}.onnx" for v in measured for fmt in ("onnx", "onnx-int8")}
    timing = interleaved(files, rounds)
    # Predicted now, from the host table as it is, for all three models alike (a replay report keeps the
    # prediction of the table it was replayed with; under --measure-only that may be an older one).
    host = load_device(device)
    base_pred = estimate_latency(base, spec.input_shape, host).total_ms
    predicted = {"original": base_pred}
    for variant in ("searched", "uniform"):
        model_v, spec_v, policy_v, _ = load_compressed(folder / variant / "model.pt")
        predicted[variant] = policy_latency(model_v, policy_v, spec_v.input_shape, device)[0].total_ms
    row: dict[str, Any] = {
        "model": model,
        "budget_ratio": budget_ratio,
        "search_finetune_batches": finetune_batches,
        "search_latency": latency,
        "device": device,
        "fill_budget": fill,
        "techniques": list(techniques),
        "predicted_threads": host.meta.get("threads"),
        "round_to": round_to,
        "search": {
            "episodes": search["episodes"],
            "budget_ms": search["budget_ms"],
            "base_latency_ms": search["base_latency_ms"],
            "best": search["best"]["accuracy"] if search["best"] else None,
            "best_latency_ms": search["best"].get("latency_ms") if search["best"] else None,
            "best_latency_source": search["best"].get("latency_source") if search["best"] else None,
            "seconds": search["seconds"],
        },
        "accuracy_test": {
            "original": searched["accuracy"]["base"]["top1"],
            "searched_before_finetune": searched["accuracy"]["before_finetune"]["top1"],
            "searched": searched["accuracy"]["after_finetune"]["top1"],
            "uniform_before_finetune": baseline["accuracy"]["before_finetune"]["top1"],
            "uniform": baseline["accuracy"]["after_finetune"]["top1"],
        },
        "measured": measured,
        "interleaved": timing,
        "predicted_host_ms": predicted,
        "host_table": {
            "updated": host.meta.get("updated"),
            "context": host.meta.get("context", {}).get("factors"),
            "overhead_per_op_ms": host.meta.get("overhead_per_op_ms", 0.0),
            "channel_block": host.meta.get("channel_block", 1),
        },
        "finetune_epochs": searched["finetune"]["epochs"],  # as replayed (also under --measure-only)
        "finetune_max_batches_per_epoch": searched["finetune"]["max_batches"],
    }
    row["speedup_batch1"] = {
        **{f"{k.replace(' onnx-int8', '_int8').replace(' onnx', '_fp32')}_measured": v["speedup"]
           for k, v in timing["batch1"].items() if k != "original onnx"},
        "searched_predicted": base_pred / row["predicted_host_ms"]["searched"],
        "uniform_predicted": base_pred / row["predicted_host_ms"]["uniform"],
    }  # fmt: skip
    for label in ("batch64", "batch1_1thread"):
        row[f"speedup_{label}"] = {
            f"{k.replace(' onnx-int8', '_int8').replace(' onnx', '_fp32')}_measured": v["speedup"]
            for k, v in timing[label].items() if k != "original onnx"
        }  # fmt: skip
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(CONFIGS))
    parser.add_argument("--episodes", type=int, default=60)
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--root", default="benchmarks/runs/replay_export")
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--measure-only", action="store_true", help="reuse the run folders; only export and time")
    parser.add_argument("--round-to", type=int, default=8, help="channel multiple of the searched models")
    parser.add_argument("--rounds", type=int, default=9, help="round-robin timing rounds")
    parser.add_argument("--max-batches", type=int, default=None, help="cap each fine-tuning epoch at N batches")
    parser.add_argument("--budget-ratio", type=float, default=0.5, help="search budget, x base latency on host")
    parser.add_argument("--finetune-batches", type=int, default=0, help="distillation steps per scored policy")
    parser.add_argument(
        "--latency", choices=("table", "measured"), default="table",
        help="search.latency: predict each policy from the host table, or measure it here against the base",
    )  # fmt: skip
    parser.add_argument(
        "--device", default="host",
        help="the table the search budgets and predicts with: host (1 thread; before 2026-12-04 the 2-thread "
        "table, now host-2thread, and results without a device suffix used that one) or host-2thread",
    )  # fmt: skip
    parser.add_argument(
        "--fill-budget", action="store_true", help="search.fill_budget: widen policies into their unused budget"
    )
    parser.add_argument(
        "--techniques", default="keep", help="search.techniques, comma list (keep,drop: prune and remove blocks)"
    )
    parser.add_argument(
        "--out", default=None, help="one file for the whole run (default: replay_export__<entry>-ep<N>.json each)"
    )
    args = parser.parse_args()
    if not 0.0 < args.budget_ratio <= 1.0:
        parser.error(f"--budget-ratio must be in (0, 1], got {args.budget_ratio}")
    techniques = tuple(args.techniques.split(","))
    results = {
        entry_name(m, args.budget_ratio, args.finetune_batches, args.latency, args.device, args.fill_budget,
                   techniques): bench(
            m, args.episodes, args.finetune_epochs, Path(args.root), args.fresh, args.measure_only, args.round_to,
            args.rounds, args.max_batches, args.budget_ratio, args.finetune_batches, args.latency, args.device,
            args.fill_budget, techniques,
        )
        for m in args.models
    }  # fmt: skip
    table = Table(
        title=(
            "ONNX Runtime, 2 threads (last two columns: 1 thread), interleaved rounds "
            "(speed-up vs the original fp32, same round)"
        )
    )
    columns = ("model", "variant", "test top-1", "b1 ms", "b64 ms", "speed-up b1", "predicted b1", "speed-up b64",
               "b1 1 thread ms", "speed-up b1 1 thread")  # fmt: skip
    for col in columns:
        table.add_column(col)
    for m, r in results.items():
        t = r["interleaved"]
        for variant in ("original", "searched", "uniform"):
            for fmt in ("onnx", "onnx-int8"):
                key = f"{variant} {fmt}"
                pred = r["predicted_host_ms"]["original"] / r["predicted_host_ms"][variant] if fmt == "onnx" else None
                table.add_row(
                    m, key, f"{r['measured'][variant][fmt]['top1']:.4f}",
                    f"{t['batch1'][key]['median_ms']:.4f}", f"{t['batch64'][key]['median_ms']:.3f}",
                    f"{t['batch1'][key]['speedup']:.2f}x", f"{pred:.2f}x" if pred else "-",
                    f"{t['batch64'][key]['speedup']:.2f}x", f"{t['batch1_1thread'][key]['median_ms']:.4f}",
                    f"{t['batch1_1thread'][key]['speedup']:.2f}x",
                )  # fmt: skip
    console.print(table)
    if args.out:
        console.print(f"wrote {write_result(args.out, {'results': results})}")
        return
    for key, row in results.items():  # one file per entry; the epochs are those replayed (also --measure-only)
        out = result_path("replay_export", f"{key}-ep{row['finetune_epochs']}")
        console.print(f"wrote {write_result(out, {'results': {key: row}})}")


if __name__ == "__main__":
    main()
