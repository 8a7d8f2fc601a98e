"""Throughput of the fine-tuning loop (``edgecompress.training.train``, what searches and replays spend their time
in) on real-size torchvision networks, on a GPU and on this machine's CPU.

    python benchmarks/gpu_training.py measure --accelerator cuda --out DIR   # on a GPU machine
    python benchmarks/gpu_training.py measure --accelerator cpu --out DIR    # here
    python benchmarks/gpu_training.py report GPU_DIR CPU_DIR --variant h200

Synthetic inputs (random images, random labels): throughput does not depend on the pixels. Each network trains
two epochs; the second's images per second are reported (the first includes cuDNN's algorithm search and the
allocator's warm-up). The measured folders are kept in ``benchmarks/gpu/<variant>-training/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

NETS = {"mobilenet_v2-96": ("mobilenet_v2", 96), "resnet18-224": ("resnet18", 224)}
SAMPLES = {
    "cuda": {"mobilenet_v2-96": 8192, "resnet18-224": 4096},
    "cpu": {"mobilenet_v2-96": 512, "resnet18-224": 128},
}
PRECISIONS = {"cuda": ("fp32", "bf16", "fp16"), "cpu": ("fp32",)}


def measure(args: argparse.Namespace) -> None:
    import torch
    import torchvision
    from torch.utils.data import TensorDataset

    from edgecompress.config import TrainConfig
    from edgecompress.training import train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, (arch, size) in NETS.items():
        n = SAMPLES[args.accelerator][name]
        gen = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.randn(n, 3, size, size, generator=gen), torch.randint(0, 10, (n,), generator=gen))
        for precision in PRECISIONS[args.accelerator]:
            torch.manual_seed(0)
            model = getattr(torchvision.models, arch)(num_classes=10)
            cfg = TrainConfig(epochs=2, batch_size=args.batch_size, accelerator=args.accelerator,
                              precision=precision, augment=False)  # fmt: skip
            result = train(model, data, cfg, progress=False)
            seconds = result.history[-1].seconds
            rows.append({"net": name, "precision": precision, "samples": n, "batch_size": args.batch_size,
                         "epoch_seconds": [round(r.seconds, 3) for r in result.history],
                         "images_per_second": round(n / seconds, 1), "device": result.device,
                         "final_train_loss": result.history[-1].train_loss})  # fmt: skip
            print(f"{name:16s} {precision:5s} {n / seconds:9.1f} img/s on {result.device}", flush=True)
    record = {
        "accelerator": args.accelerator, "rows": rows, "torch": torch.__version__,
        "system": platform.platform(), "cpu_cores": os.cpu_count(), "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "command": " ".join(["python", *sys.argv]),
    }  # fmt: skip
    (out / f"training-{args.accelerator}.json").write_text(json.dumps(record, indent=1) + "\n")


def report(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import result_path, write_result

    gpu = json.loads(next(Path(args.gpu).glob("training-cuda.json")).read_text())
    cpu = json.loads(next(Path(args.cpu).glob("training-cpu.json")).read_text())
    base = {r["net"]: r["images_per_second"] for r in cpu["rows"]}
    rows = [{**r, "vs_cpu_fp32": round(r["images_per_second"] / base[r["net"]], 1)} for r in gpu["rows"]]
    payload = {
        "what": "images per second of edgecompress.training.train (SGD, batch "
        f"{'/'.join(sorted({str(r['batch_size']) for r in rows}))}), second of two epochs, "
        "synthetic 3-channel inputs, torchvision networks with 10 classes",
        "gpu": {k: v for k, v in gpu.items() if k != "rows"}, "cpu": cpu, "rows": rows,
    }  # fmt: skip
    path = write_result(args.out or result_path("gpu_training", args.variant), payload)
    for r in rows:
        print(f"{r['net']:16s} {r['precision']:5s} {r['images_per_second']:9.1f} img/s ({r['vs_cpu_fp32']}x the CPU)")
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--accelerator", choices=("cuda", "cpu"), required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--batch-size", type=int, default=64)
    r = sub.add_parser("report")
    r.add_argument("gpu")
    r.add_argument("cpu")
    r.add_argument("--variant", default="h200")
    r.add_argument("--out", default="")
    args = parser.parse_args()
    {"measure": measure, "report": report}[args.step](args)


if __name__ == "__main__":
    main()
