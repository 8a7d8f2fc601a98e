"""Search on the host profile, replay with distillation, export, and measure in ONNX Runtime (issue 7).

    python benchmarks/replay_export.py --models resnet20 mobilenetv2 --episodes 60 --finetune-epochs 1

Per model, in one run:

1. a DDPG search (``keep`` per coupled group, channels rounded to 8, BatchNorm
   recalibrated on 4 batches) at 0.5 x the base model's latency predicted by
   the ``host`` table (this machine's profile);
2. ``replay`` of the best policy: distillation from the base model for
   ``--finetune-epochs``, test-split accuracy;
3. what a user would do without us: Torch-Pruning uniform keep 0.5 (the same
   structured pruner), the same distillation;
4. ``export`` of the original, the searched and the uniform model as fp32 ONNX
   and as int8 QDQ ONNX (every layer: the policies choose no 8-bit
   activations, so "mixed" int8 here is all-int8), each verified on the full
   test split in ONNX Runtime and timed (2 threads, median; batch 1 and 64);
5. predicted (host table) vs measured speed-up.

Writes benchmarks/results/replay_export.json; run folders under
benchmarks/runs/replay_export/.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result
from rich.console import Console
from rich.table import Table

from edgecompress.checkpoint import load_checkpoint, save_compressed
from edgecompress.compressors import LayerPolicy, Policy
from edgecompress.config import load_config
from edgecompress.export import export_model
from edgecompress.latency_models import estimate_latency
from edgecompress.replay import replay

CONFIGS = {"resnet20": "configs/resnet20-fmnist.yaml", "mobilenetv2": "configs/mobilenetv2-fmnist.yaml"}
console = Console(width=160)


def exports(model_file: Path, folder: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for fmt, kwargs in (("onnx", {}), ("onnx-int8", {"all_layers": True})):
        target = folder / f"model.{fmt}.onnx"
        r = export_model(model_file, fmt, target, force=True, repeats=200, **kwargs)
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


def bench(model: str, episodes: int, epochs: int, root: Path, fresh: bool, measure_only: bool) -> dict[str, Any]:
    import json

    from edgecompress.agents.driver import run_ddpg_search

    folder = root / model
    if fresh and folder.exists() and not measure_only:
        shutil.rmtree(folder)
    cfg = load_config(
        CONFIGS[model],
        {
            "name": f"{model}-host",
            "out": str(folder / "search"),
            "device": "host",
            "search.agent": "ddpg",
            "search.episodes": episodes,
            "search.warmup_episodes": max(1, episodes // 3),
            "search.budget_ratio": 0.5,
            "data.val_samples": 1000,
            "search.round_to": 8,
            "search.bn_batches": 4,
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
        search = run_ddpg_search(cfg, console, progress=False)
        searched = replay(best, folder / "searched", finetune_epochs=epochs, force=True, progress=False)
        policy = Policy.load(best)
        uniform = Policy(
            {name: LayerPolicy(keep=0.5) for name in policy.layers if "keep" in policy.layers[name].to_dict()},
            base=dict(policy.base),
        )
        uniform_path = uniform.save(folder / "uniform_keep0.5.json")
        baseline = replay(uniform_path, folder / "uniform", finetune_epochs=epochs, force=True, progress=False)
    assert policy is not None
    (folder / "original").mkdir(parents=True, exist_ok=True)
    original_file = save_compressed(
        folder / "original" / "model.pt", base, spec, Policy({}, base=dict(policy.base)), round_to=1
    )
    measured = {
        "original": exports(original_file, folder / "original"),
        "searched": exports(folder / "searched" / "model.pt", folder / "searched"),
        "uniform": exports(folder / "uniform" / "model.pt", folder / "uniform"),
    }
    base_pred = estimate_latency(base, spec.input_shape, "host").total_ms
    row: dict[str, Any] = {
        "search": {
            "episodes": search["episodes"],
            "budget_ms": search["budget_ms"],
            "base_latency_ms": search["base_latency_ms"],
            "best": search["best"]["accuracy"] if search["best"] else None,
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
        "predicted_host_ms": {
            "original": base_pred,
            "searched": searched["predicted_latency"]["host"]["compressed_ms"],
            "uniform": baseline["predicted_latency"]["host"]["compressed_ms"],
        },
        "finetune_epochs": epochs,
    }
    o = measured["original"]["onnx"]["batch1_ms"]
    row["speedup_batch1"] = {
        "searched_fp32_measured": o / measured["searched"]["onnx"]["batch1_ms"],
        "searched_int8_measured": o / measured["searched"]["onnx-int8"]["batch1_ms"],
        "uniform_fp32_measured": o / measured["uniform"]["onnx"]["batch1_ms"],
        "uniform_int8_measured": o / measured["uniform"]["onnx-int8"]["batch1_ms"],
        "searched_predicted": base_pred / row["predicted_host_ms"]["searched"],
        "uniform_predicted": base_pred / row["predicted_host_ms"]["uniform"],
    }
    o64 = measured["original"]["onnx"]["batch64_ms"]
    row["speedup_batch64"] = {
        k: o64 / measured[k.split("_")[0]]["onnx" if "fp32" in k else "onnx-int8"]["batch64_ms"]
        for k in ("searched_fp32", "searched_int8", "uniform_fp32", "uniform_int8")
    }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(CONFIGS))
    parser.add_argument("--episodes", type=int, default=60)
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--root", default="benchmarks/runs/replay_export")
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--measure-only", action="store_true", help="reuse the run folders; only export and time")
    parser.add_argument("--out", default="benchmarks/results/replay_export.json")
    args = parser.parse_args()
    results = {
        m: bench(m, args.episodes, args.finetune_epochs, Path(args.root), args.fresh, args.measure_only)
        for m in args.models
    }
    table = Table(title="ONNX Runtime, 2 threads, batch 1 (speed-up vs the original fp32)")
    for col in ("model", "variant", "test top-1", "b1 ms", "b64 ms", "speed-up b1", "predicted"):
        table.add_column(col)
    for m, r in results.items():
        for variant in ("original", "searched", "uniform"):
            for fmt in ("onnx", "onnx-int8"):
                meas = r["measured"][variant][fmt]
                sp = r["measured"]["original"]["onnx"]["batch1_ms"] / meas["batch1_ms"]
                pred = r["predicted_host_ms"]["original"] / r["predicted_host_ms"][variant] if fmt == "onnx" else None
                table.add_row(
                    m,
                    f"{variant} {fmt}",
                    f"{meas['top1']:.4f}",
                    f"{meas['batch1_ms']:.4f}",
                    f"{meas['batch64_ms']:.3f}",
                    f"{sp:.2f}x",
                    f"{pred:.2f}x" if pred else "-",
                )
    console.print(table)
    console.print(f"wrote {write_result(args.out, {'results': results})}")


if __name__ == "__main__":
    main()
