"""The two ONNX exporters on the zoo models: wall time per export and output parity.

    python benchmarks/onnx_exporters.py --models lenet5 resnet20 mobilenetv2-0.5 --repeats 3

For each model (random weights, 28x28 input), ``to_onnx`` with the
TorchScript exporter and with the dynamo exporter (onnxscript), in turn,
``--repeats`` times each (the first call of each warms its imports and is
reported apart); then both graphs run in ONNX Runtime on the same batch and
the largest output difference and the node counts are recorded. Why the
TorchScript exporter is the default: docs/design-decisions.md. Writes
benchmarks/results/onnx_exporters.json.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import onnx
import torch
from _common import result_path, write_result

from edgecompress.latency_models.onnx import EXPORTERS, runner, to_onnx
from edgecompress.models import create_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["lenet5", "resnet20", "mobilenetv2-0.5"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    shape = (1, 1, 28, 28)
    results: dict[str, Any] = {}
    first: dict[str, float] = {}
    for name in args.models:
        torch.manual_seed(0)
        model = create_model(name).eval()
        times: dict[str, list[float]] = {e: [] for e in EXPORTERS}
        graphs: dict[str, bytes] = {}
        for _ in range(args.repeats + (0 if first else 1)):
            for exporter in EXPORTERS:
                t = time.perf_counter()
                graphs[exporter] = to_onnx(model, shape, exporter=exporter)
                dt = time.perf_counter() - t
                if exporter not in first:
                    first[exporter] = dt  # the first export in the process imports the exporter
                else:
                    times[exporter].append(dt)
        x = torch.randn(8, *shape[1:])
        outs = {e: runner(g, threads=1)(x) for e, g in graphs.items()}
        results[name] = {
            "export_seconds_median": {e: statistics.median(ts) for e, ts in times.items()},
            "export_seconds": {e: [round(v, 3) for v in ts] for e, ts in times.items()},
            "dynamo_over_torchscript": statistics.median(times["dynamo"]) / statistics.median(times["torchscript"]),
            "nodes": {e: len(onnx.load_from_string(g).graph.node) for e, g in graphs.items()},
            "max_abs_output_difference": float((outs["dynamo"] - outs["torchscript"]).abs().max()),
        }
        r = results[name]
        print(f"{name}: torchscript {r['export_seconds_median']['torchscript']:.2f} s, dynamo "
              f"{r['export_seconds_median']['dynamo']:.2f} s ({r['dynamo_over_torchscript']:.0f}x), nodes "
              f"{r['nodes']}, max |diff| {r['max_abs_output_difference']:.2e}")  # fmt: skip
    write_result(args.out or result_path("onnx_exporters"), {
        "settings": {"input_shape": list(shape), "repeats": args.repeats, "torch_threads": 1},
        "first_export_seconds": first,
        "results": results,
    })  # fmt: skip


if __name__ == "__main__":
    main()
