"""How a convolution's time steps with its channel counts in ONNX Runtime's CPU provider, fp32 against int8 (QDQ).

    python benchmarks/channel_steps.py

A 3x3 convolution at 14x14, batch 1, 1 thread: output channels 8..96 in steps of 4 at 32 input channels, and input
channels 8..96 at 32 output channels, each in fp32 and int8, all timed in interleaved rounds (a new session each
round; the median over rounds is kept). On x86, MLAS computes float convolutions in blocks of SIMD-width channels
(the table's ``channel_block``), and int8 ones as im2col and a quantized matrix product: the steps show which
channel counts a table lookup should round (``LatencyTable.blocked_channels``).
Result: benchmarks/results/channel_steps.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import result_path, write_result

VALUES = list(range(8, 97, 4))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", default=result_path("channel_steps"))
    args = parser.parse_args()
    import torch

    from edgecompress.latency_models import profiler

    models, feeds = {}, {}
    for sweep in ("cout", "cin"):
        for v in VALUES:
            cin, cout = (32, v) if sweep == "cout" else (v, 32)
            torch.manual_seed(0)
            module, x = profiler.build_op(profiler.parse_key(f"conv|{cin}|{cout}|3|1|1|14|14|fp32"))
            fp32 = profiler._export(module, x)
            for precision, model in (("fp32", fp32), ("int8", profiler.quantize_qdq(fp32, x))):
                models[f"{sweep}|{v}|{precision}"] = model
                feeds[f"{sweep}|{v}|{precision}"] = x.numpy()
    times = profiler.time_onnx_interleaved(models, feeds, 1, args.rounds, 20, args.repeats)
    ms = {k: statistics.median(t) for k, t in times.items()}
    sweeps = {
        sweep: {p: {v: round(ms[f"{sweep}|{v}|{p}"], 5) for v in VALUES} for p in ("fp32", "int8")}
        for sweep in ("cout", "cin")
    }
    write_result(args.out, {
        "what": "median ms of a 3x3 convolution at 14x14, batch 1, 1 thread, ONNX Runtime CPU provider; "
        "cout: output channels at 32 input channels; cin: input channels at 32 output channels",
        "channel_block": profiler.channel_block(), "rounds": args.rounds, "repeats": args.repeats, "ms": sweeps,
    })  # fmt: skip
    for sweep, by in sweeps.items():
        for v in VALUES:
            print(f"{sweep} {v:3d}: fp32 {by['fp32'][v]:.4f}  int8 {by['int8'][v]:.4f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
