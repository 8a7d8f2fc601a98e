"""The profiler's GPU path on a real GPU: operators and whole real-size networks timed with ONNX Runtime's CUDA
provider, then the table's predictions checked against the whole-network times.

Two steps, because the GPU machine has neither this package's dependencies nor a way to fetch them:

    python benchmarks/gpu_profile.py plan --out gpu-plan.json          # here: the operators of the networks
    python3 benchmarks/gpu_profile.py measure gpu-plan.json --out DIR   # on the GPU machine (torch, torchvision,
                                                                        #   onnxruntime-gpu; no edgecompress)
    python benchmarks/gpu_profile.py report DIR --variant h200-cuda     # here: predictions vs measurements

The measured folders are kept in ``benchmarks/gpu/<variant>/`` (so ``report`` re-runs from the repository).

``measure`` loads ``profiler.py`` by its path (as on a Jetson, where only that file is copied), writes
``DIR/gpu.table.json`` (every operator of the networks in fp32 and fp16, ResNet-18's in int8, one ONNX Runtime
session each, timed with input and outputs on the GPU) and ``DIR/gpu-models.json`` (each network exported whole and
timed the same way, interleaved over rounds). ``report`` prices the same networks from the table with
``estimate_latency`` and writes ``benchmarks/results/gpu_profile__<variant>.json``.

The networks are torchvision's at 224x224, 10 classes, random weights (latency does not depend on them).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHAPE = (1, 3, 224, 224)
NETS = {  # name -> (torchvision factory, keyword arguments)
    "resnet18": ("resnet18", {}),
    "resnet50": ("resnet50", {}),
    "mobilenet_v2-1.0": ("mobilenet_v2", {"width_mult": 1.0}),
    "mobilenet_v2-0.5": ("mobilenet_v2", {"width_mult": 0.5}),
}
PRECISIONS = {name: ("fp32", "fp16") for name in NETS} | {"resnet18": ("fp32", "fp16", "int8")}
RUNTIME = "onnxruntime-cuda"


def build(name: str):  # type: ignore[no-untyped-def]
    import torch
    import torchvision

    factory, kwargs = NETS[name]
    torch.manual_seed(0)
    return getattr(torchvision.models, factory)(num_classes=10, **kwargs).eval()


def plan(args: argparse.Namespace) -> None:
    from edgecompress.latency_models.ops import trace_ops
    from edgecompress.latency_models.table import op_key

    keys: list[str] = []
    for name in NETS:
        ops = trace_ops(build(name), SHAPE)
        for precision in PRECISIONS[name]:
            keys += [k for k in (op_key(op, precision) for op in ops) if k is not None]
    keys = list(dict.fromkeys(keys))
    Path(args.out).write_text(json.dumps({"nets": list(NETS), "shape": SHAPE, "keys": keys}, indent=1) + "\n")
    print(f"{len(keys)} operator signatures -> {args.out}")


def _profiler():  # type: ignore[no-untyped-def]
    path = ROOT / "edgecompress" / "latency_models" / "profiler.py"
    spec = importlib.util.spec_from_file_location("profiler", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def measure(args: argparse.Namespace) -> None:
    import warnings

    import torch

    warnings.filterwarnings("ignore", message="the float32 number", category=UserWarning)  # fp16 conversion

    profiler = _profiler()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import onnxruntime as ort

    print(f"onnxruntime {ort.__version__}: {', '.join(ort.get_available_providers())}", flush=True)
    for runtime in profiler.GPU_RUNTIMES:
        print(f"{runtime}: {profiler.runtime_missing(runtime) or 'available'}", flush=True)
    print(f"GPU: {profiler.gpu_name()}", flush=True)
    keys = json.loads(Path(args.plan).read_text())["keys"]
    nets = [n for n in NETS if not args.nets or n in args.nets.split(",")]
    keys = keys[: args.limit or None]
    start = time.perf_counter()

    def show(done: int, total: int, key: str, ms: float) -> None:
        if done % 25 == 0 or done == total:
            print(f"[{done}/{total}] {key}: {ms:.4f} ms ({time.perf_counter() - start:.0f} s)", flush=True)

    profiler.run(keys, out / "gpu.table.json", runtime=args.runtime, threads=1, warmup=args.warmup,
                 repeats=args.repeats, device=args.device, progress=show)  # fmt: skip
    x = torch.randn(*SHAPE)
    files: dict[str, bytes] = {}
    for name in nets:
        fp32 = profiler._export(build(name), x)
        for precision in PRECISIONS[name]:
            files[f"{name}|{precision}"] = (
                fp32 if precision == "fp32"
                else profiler._to_fp16(fp32) if precision == "fp16"
                else profiler.quantize_qdq(fp32, x)
            )  # fmt: skip
    print(f"exported {len(files)} networks ({time.perf_counter() - start:.0f} s)", flush=True)
    feeds = {k: x.numpy() for k in files}
    times = profiler.time_onnx_interleaved(
        files, feeds, 1, args.rounds, args.warmup, args.repeats, runtime=args.runtime
    )
    host = {k: profiler.time_model(files[k], x, 1, args.warmup, args.repeats, runtime="onnxruntime")
            for k in ("resnet18|fp32", "mobilenet_v2-1.0|fp32") if k in files}  # fmt: skip
    record = {
        "gpu": profiler.gpu_name(), "runtime": args.runtime, "io": profiler.GPU_IO, "onnxruntime": ort.__version__,
        "torch": torch.__version__, "rounds": args.rounds, "warmup": args.warmup, "repeats": args.repeats,
        "measured_ms": {k: statistics.median(v) for k, v in times.items()}, "rounds_ms": times,
        "cpu_provider_1thread_ms": host, "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "command": " ".join(["python3", *sys.argv]), "cpu_cores": os.cpu_count(), "system": platform.platform(),
    }  # fmt: skip
    (out / "gpu-models.json").write_text(json.dumps(record, indent=1) + "\n")
    for k, v in record["measured_ms"].items():
        print(f"{k:26s} {v:8.3f} ms", flush=True)
    print(f"done in {time.perf_counter() - start:.0f} s", flush=True)


def report(args: argparse.Namespace) -> None:
    from scipy.stats import spearmanr

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import result_path, write_result

    from edgecompress.latency_models import LatencyTable, estimate_latency

    folder = Path(args.folder)
    table = LatencyTable.load(folder / "gpu.table.json")
    measured = json.loads((folder / "gpu-models.json").read_text())
    rows = []
    for name in [n for n in NETS if any(k.startswith(f"{n}|") for k in measured["measured_ms"])]:
        net = build(name)
        for precision in PRECISIONS[name]:
            r = estimate_latency(net, SHAPE, table, precision=precision)
            ms = measured["measured_ms"][f"{name}|{precision}"]
            rows.append({
                "net": name, "precision": precision, "measured_ms": round(ms, 4),
                "predicted_ms": round(r.total_ms, 4), "error": round(r.total_ms / ms - 1, 4),
                "missing": len(r.missing), "warnings": list(r.warnings),
            })  # fmt: skip
    rho = float(spearmanr([r["measured_ms"] for r in rows], [r["predicted_ms"] for r in rows])[0])
    errors = sorted(abs(r["error"]) for r in rows)
    payload = {
        "what": "ONNX Runtime CUDA provider on a GPU machine: operator table vs whole networks at 224x224",
        "note": args.note,
        "measured_on": {
            "gpu": measured["gpu"], "system": measured.get("system", table.meta.get("system")),
            "cpu_cores": measured.get("cpu_cores"), "date": measured["date"],
            "command": measured.get("command", args.measured_with), "onnxruntime_gpu": measured["onnxruntime"],
            "torch": measured["torch"], "io": measured["io"],
        },
        "table": {"file": str(folder / "gpu.table.json"), "entries": len(table.entries),
                  "overhead_ms": table.overhead_ms},
        "rows": rows, "spearman": round(rho, 4), "median_abs_error": round(statistics.median(errors), 4),
        "cpu_provider_1thread_ms": measured["cpu_provider_1thread_ms"],
        "measured_ms_by_round": measured["rounds_ms"],
    }  # fmt: skip
    path = write_result(args.out or result_path("gpu_profile", args.variant), payload)
    for r in rows:
        print(f"{r['net']:18s} {r['precision']:5s} measured {r['measured_ms']:8.3f}  predicted "
              f"{r['predicted_ms']:8.3f}  error {r['error']:+.1%}")  # fmt: skip
    print(f"Spearman {rho:.3f}, median |error| {statistics.median(errors):.1%}; wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("plan")
    p.add_argument("--out", required=True)
    m = sub.add_parser("measure")
    m.add_argument("plan")
    m.add_argument("--out", required=True)
    m.add_argument("--device", default="")
    m.add_argument("--warmup", type=int, default=10)
    m.add_argument("--repeats", type=int, default=50)
    m.add_argument("--rounds", type=int, default=3)
    m.add_argument("--runtime", default=RUNTIME, help="(onnxruntime: a dry run of this script on a CPU)")
    m.add_argument("--nets", default="", help="comma-separated subset of the networks (default: all)")
    m.add_argument("--limit", type=int, default=0, help="time only the first N operators (default: all)")
    r = sub.add_parser("report")
    r.add_argument("folder")
    r.add_argument("--variant", default="h200-cuda")
    r.add_argument("--out", default="")
    r.add_argument("--note", default="", help="what to know about this run (recorded in the result)")
    r.add_argument("--measured-with", default="", help="the measure command, for runs that did not record it")
    args = parser.parse_args()
    {"plan": plan, "measure": measure, "report": report}[args.step](args)


if __name__ == "__main__":
    main()
