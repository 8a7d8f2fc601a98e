"""How stable is a batch-1 ONNX Runtime timing on this machine, per thread setting?

    python benchmarks/thread_states.py --samples 12

ResNet-20 as trained and pruned to keep 0.2 (channels rounded to 8: 8/8/16),
both fp32 ONNX. Each sample creates a new session for each model (the
original, then the pruned one), warms up, and takes the median of 200 runs;
samples are a few seconds apart. Settings:

* ``2 threads``: ONNX Runtime's default placement (the issue's setting);
* ``2 threads, no spinning``: ``session.intra_op.allow_spinning = 0``;
* ``2 threads, pinned``: the process on CPU 0, the intra-op worker on CPU 1
  (``session.intra_op_thread_affinities``);
* ``1 thread``.

Reports, per setting, every sample's original ms and speed-up, and their
spread. On the 2-core development VM (2026-11-25) the 2-thread settings
swing from one session to the next (pruned model about 2.0x or 1.1x
faster, for seconds to minutes at a time); one thread does not. Writes
benchmarks/results/thread_states.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
from _common import write_result

SETTINGS = ("2 threads", "2 threads, no spinning", "2 threads, pinned", "1 thread")


def time_session(model: bytes, setting: str, x: np.ndarray, repeats: int) -> float:
    from edgecompress.latency_models.profiler import time_onnx

    config = {
        "2 threads, no spinning": {"session.intra_op.allow_spinning": "0"},
        "2 threads, pinned": {"session.intra_op_thread_affinities": "2"},  # 1-based logical processor
    }.get(setting, {})
    threads = 1 if setting == "1 thread" else 2
    return float(time_onnx(model, x, threads, 10, repeats, config=config))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--checkpoint", default="checkpoints/resnet20-fashion-mnist.pt")
    parser.add_argument("--out", default="benchmarks/results/thread_states.json")
    args = parser.parse_args()
    if os.cpu_count() is None or os.cpu_count() < 2:  # type: ignore[operator]
        sys.exit("needs at least 2 CPUs")

    from edgecompress.artifacts.checkpoint import load_checkpoint
    from edgecompress.compressors import Policy, compress
    from edgecompress.latency_models.onnx import to_onnx

    base, spec = load_checkpoint(args.checkpoint)
    shape = spec.input_shape
    pruned = compress(base, Policy.uniform(base, keep=0.2, exclude=["fc"], round_to=8), input_shape=shape)[0]
    models = {"original": to_onnx(base, shape), "keep 0.2": to_onnx(pruned, shape)}
    x = np.zeros(shape, np.float32)
    result: dict[str, Any] = {"checkpoint": args.checkpoint, "repeats": args.repeats, "settings": {}}
    all_cpus = os.sched_getaffinity(0)
    for setting in SETTINGS:
        os.sched_setaffinity(0, {min(all_cpus)} if setting == "2 threads, pinned" else all_cpus)
        samples = []
        for _ in range(args.samples):
            orig = time_session(models["original"], setting, x, args.repeats)
            small = time_session(models["keep 0.2"], setting, x, args.repeats)
            samples.append({"original_ms": orig, "pruned_ms": small, "speedup": orig / small})
            time.sleep(2)
        os.sched_setaffinity(0, all_cpus)
        speedups = [s["speedup"] for s in samples]
        result["settings"][setting] = {
            "samples": samples,
            "speedup_min": min(speedups),
            "speedup_median": statistics.median(speedups),
            "speedup_max": max(speedups),
            "original_ms_median": statistics.median(s["original_ms"] for s in samples),
            "pruned_ms_median": statistics.median(s["pruned_ms"] for s in samples),
        }
        print(
            f"{setting:24s} speed-up {min(speedups):.2f}-{max(speedups):.2f} "
            f"(median {statistics.median(speedups):.2f}); "
            f"samples: {' '.join(f'{s:.2f}' for s in speedups)}; original median "
            f"{result['settings'][setting]['original_ms_median']:.3f} ms",
            flush=True,
        )
    print(f"wrote {write_result(args.out, result)}")


if __name__ == "__main__":
    main()
