"""Compressor figures: Deep-Compression-style LeNet-5, ResNet-20 at keep 0.5, and compress() cost.

    python benchmarks/compressors.py [--quick]

1. LeNet-5 on Fashion-MNIST, Deep Compression's recipe: magnitude pruning ->
   distillation from the base model -> weight sharing (k-means codebooks) ->
   distillation of the centroids; stored size with Huffman coding vs dense fp32,
   and the test-accuracy change.
2. ResNet-20 at uniform keep 0.5 (structured): params and MACs ratios, and the
   measured PyTorch forward-time ratio on this CPU at batch 1 and 64.
3. Wall time of one compress() call on resnet20 and mobilenetv2 (median).

Needs the base checkpoints (`python benchmarks/train_base_models.py`); writes
benchmarks/results/compressors.json (``--quick``: compressors__quick.json).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from edgecompress._progress import make_console

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import result_path, write_result

from edgecompress import LayerPolicy, Policy, compress, distill
from edgecompress.analysis import analyze_model
from edgecompress.artifacts.checkpoint import load_checkpoint
from edgecompress.compressors.constraints import bake
from edgecompress.data import load_dataset
from edgecompress.models import create_model
from edgecompress.training import evaluate

console = make_console()
# Per-layer sparsity in the spirit of Han et al.'s LeNet-5 (the big fully connected layer pruned hardest).
LENET_SPARSITY = {"conv1": 0.4, "conv2": 0.85, "fc1": 0.96, "fc2": 0.9, "fc3": 0.7}


def deep_compression(args: argparse.Namespace) -> dict[str, Any]:
    base, spec = load_checkpoint(args.lenet)
    data = load_dataset(spec.dataset)
    acc0 = evaluate(base, data.test)["top1"]
    shape = {"input_shape": list(spec.input_shape)}
    t0 = time.perf_counter()
    prune = Policy({n: LayerPolicy(sparsity=s) for n, s in LENET_SPARSITY.items()}, base=shape)
    student, _ = compress(base, prune)
    acc_pruned = evaluate(student, data.test)["top1"]
    distill(student, base, data.train, epochs=args.prune_epochs, lr=0.02, progress=False)
    acc_pruned_ft = evaluate(student, data.test)["top1"]
    bake(student)  # the fine-tuned sparse weights become the next stage's starting point
    full = Policy({n: LayerPolicy(sparsity=s, clusters=args.clusters) for n, s in LENET_SPARSITY.items()}, base=shape)
    final, report = compress(student, full)
    acc_shared = evaluate(final, data.test)["top1"]
    distill(final, base, data.train, epochs=args.share_epochs, lr=0.02, progress=False)
    acc_final = evaluate(final, data.test)["top1"]
    # Sizes against the *base* model's dense fp32 weights (the student has the same shapes).
    t = report.totals
    return {
        "model": "lenet5",
        "checkpoint": str(args.lenet),
        "policy": {n: {"sparsity": s, "clusters": args.clusters} for n, s in LENET_SPARSITY.items()},
        "distill_epochs": [args.prune_epochs, args.share_epochs],
        "test_acc_base": acc0,
        "test_acc_pruned_no_ft": acc_pruned,
        "test_acc_pruned_ft": acc_pruned_ft,
        "test_acc_shared_no_ft": acc_shared,
        "test_acc_final": acc_final,
        "test_acc_change_points": round(100 * (acc_final - acc0), 2),
        "dense_fp32_bytes": t["dense_bytes_before"],
        "stored_bytes_fixed_width": t["stored_bytes_after"],
        "stored_bytes_huffman": t["huffman_bytes_after"],
        "ratio_fixed_width": t["dense_bytes_before"] / t["stored_bytes_after"],
        "ratio_huffman": t["dense_bytes_before"] / t["huffman_bytes_after"],
        "layers": [
            {
                "name": r.name,
                "params": r.params_before,
                "nonzero": r.nonzero_after,
                "encoding": r.encoding,
                "stored": r.stored_bytes_after,
                "huffman": r.huffman_bytes_after,
            }
            for r in report.layers
        ],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _median_ms(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    model.eval()
    times = []
    with torch.inference_mode():
        for _ in range(max(3, repeats // 10)):
            model(x)
        for _ in range(repeats):
            t = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def resnet20_keep_half(args: argparse.Namespace) -> dict[str, Any]:
    if Path(args.resnet20).exists():
        base, spec = load_checkpoint(args.resnet20)
        shape, source = spec.input_shape, str(args.resnet20)
    else:
        base, shape, source = create_model("resnet20").eval(), (1, 1, 28, 28), "random init (no checkpoint)"
    small, report = compress(base, Policy.uniform(base, keep=0.5, base={"input_shape": list(shape)}))
    out: dict[str, Any] = {"model": "resnet20", "weights": source, "policy": "uniform keep 0.5"}
    out.update({f"{k}_ratio": v for k, v in report.ratios().items() if k in ("params", "macs")})
    out["model_params_before"], out["model_params_after"] = report.model_params_before, report.model_params_after
    for batch in (1, 64):
        x = torch.randn(batch, *shape[1:])
        reps = args.repeats if batch == 1 else max(10, args.repeats // 10)
        before, after = _median_ms(base, x, reps), _median_ms(small, x, reps)
        out[f"batch{batch}"] = {"base_ms": before, "pruned_ms": after, "speedup": before / after, "repeats": reps}
    out["timing"] = f"PyTorch eager, {torch.get_num_threads()} threads, median of repeats, inference_mode"
    return out


def compress_cost(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    policies = {
        "keep 0.5": {"keep": 0.5},
        "mixed (keep 0.6, rank 0.7, sparsity 0.4, wbits 8, abits 8)": {
            "keep": 0.6, "rank": 0.7, "sparsity": 0.4, "wbits": 8, "abits": 8,
        },
        "sparsity 0.7 + clusters 16": {"sparsity": 0.7, "clusters": 16},
    }  # fmt: skip
    for name in ("resnet20", "mobilenetv2"):
        model = create_model(name).eval()
        shape = (1, 1, 28, 28)
        t = time.perf_counter()
        analysis = analyze_model(model, shape)
        analysis_s = time.perf_counter() - t
        calib = [torch.randn(32, 1, 28, 28)]
        for label, fields in policies.items():
            policy = Policy.uniform(model, **fields)
            times = []
            for _ in range(args.compress_repeats):
                t = time.perf_counter()
                compress(model, policy, calib, analysis=analysis)
                times.append(time.perf_counter() - t)
            rows.append({"model": name, "policy": label, "median_s": statistics.median(times),
                         "min_s": min(times), "repeats": len(times), "analysis_s": analysis_s})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lenet", type=Path, default=Path("checkpoints/lenet5-fashion-mnist.pt"))
    parser.add_argument("--resnet20", type=Path, default=Path("checkpoints/resnet20-fashion-mnist.pt"))
    parser.add_argument("--clusters", type=int, default=32)
    parser.add_argument("--prune-epochs", type=int, default=10)
    parser.add_argument("--share-epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--compress-repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="1+1 distillation epochs, fewer repeats (smoke run)")
    parser.add_argument("--out", default=None, help="default: benchmarks/results/compressors[__quick].json")
    args = parser.parse_args()
    if args.out is None:
        args.out = result_path("compressors", "quick" if args.quick else "")
    if args.quick:
        args.prune_epochs, args.share_epochs, args.repeats, args.compress_repeats = 1, 1, 20, 2
    torch.set_num_threads(2)
    result: dict[str, Any] = {"settings": {k: str(v) for k, v in vars(args).items()}}
    console.print("[bold]1/3 LeNet-5 Deep Compression[/]")
    result["lenet5_deep_compression"] = dc = deep_compression(args)
    console.print(
        f"  stored {dc['stored_bytes_huffman']:,} B with Huffman ({dc['ratio_huffman']:.1f}x; fixed width "
        f"{dc['ratio_fixed_width']:.1f}x) vs {dc['dense_fp32_bytes']:,} B dense fp32; test accuracy "
        f"{dc['test_acc_base']:.4f} -> {dc['test_acc_final']:.4f} ({dc['test_acc_change_points']:+.2f} points)"
    )
    console.print("[bold]2/3 ResNet-20 keep 0.5[/]")
    result["resnet20_keep_0.5"] = rn = resnet20_keep_half(args)
    console.print(
        f"  params {rn['params_ratio']:.2f}x fewer, MACs {rn['macs_ratio']:.2f}x fewer; forward speed-up "
        f"{rn['batch1']['speedup']:.2f}x at batch 1 ({rn['batch1']['base_ms']:.2f} -> {rn['batch1']['pruned_ms']:.2f}"
        f" ms), {rn['batch64']['speedup']:.2f}x at batch 64"
    )
    console.print("[bold]3/3 compress() wall time[/]")
    result["compress_seconds"] = rows = compress_cost(args)
    for r in rows:
        console.print(f"  {r['model']:12s} {r['policy']:60s} median {r['median_s'] * 1000:7.1f} ms")
    console.print(f"wrote {write_result(args.out, result)}")


if __name__ == "__main__":
    main()
