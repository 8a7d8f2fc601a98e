"""Train a torchvision model on 3-channel Fashion-MNIST at a real input size, WITHOUT edgecompress.

This is the "trained elsewhere" half of the bring-your-own-model benchmark
(``benchmarks/byo_model.py``): plain torch + torchvision, a plain
``torch.save(model.state_dict(), out)``, as a user's own training script would
write it. Inputs: the Fashion-MNIST idx files, the gray plane repeated to RGB,
bilinearly resized to ``--size``, normalised with the fixed statistics below
(edgecompress is told the same with ``--mean/--std``).

    python benchmarks/byo_train.py --arch mobilenet_v2 --size 96 --out checkpoints/byo-mobilenet_v2-96.pt
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST's training images, per pixel in [0, 1]
DATA = Path("/usr/share/datasets/fashion-mnist")


def read_idx(path: Path) -> np.ndarray:
    data = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def batch(x: torch.Tensor, size: int) -> torch.Tensor:
    x = (x.float().div(255.0).unsqueeze(1) - MEAN) / STD
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.expand(-1, 3, -1, -1).contiguous()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", required=True, help="torchvision model name, e.g. mobilenet_v2, resnet18")
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--samples", type=int, default=60000, help="training images used (the first N, shuffled)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--minutes", type=float, default=0.0, help="stop training after this wall time (0: no limit)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = torch.from_numpy(read_idx(DATA / "train-images-idx3-ubyte.gz").copy())[: args.samples]
    labels = torch.from_numpy(read_idx(DATA / "train-labels-idx1-ubyte.gz").astype(np.int64))[: args.samples]
    test_x = torch.from_numpy(read_idx(DATA / "t10k-images-idx3-ubyte.gz").copy())
    test_y = torch.from_numpy(read_idx(DATA / "t10k-labels-idx1-ubyte.gz").astype(np.int64))
    dev = torch.device(args.device)
    model = torchvision.models.get_model(args.arch, weights=None, num_classes=10).to(dev)
    steps = args.epochs * (len(images) // args.batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=4e-5)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.15)
    start, done, stopped = time.perf_counter(), 0, False
    model.train()
    for epoch in range(args.epochs):
        order = torch.randperm(len(images))
        for i in range(len(images) // args.batch_size):
            idx = order[i * args.batch_size : (i + 1) * args.batch_size]
            x, y = batch(images[idx], args.size).to(dev), labels[idx].to(dev)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            done += 1
            if done % 20 == 0:
                print(f"epoch {epoch} step {done}/{steps} loss {loss.item():.3f} {time.perf_counter() - start:.0f}s")
            if args.minutes and time.perf_counter() - start > args.minutes * 60:
                stopped = True
                break
        if stopped:
            break
    seconds = time.perf_counter() - start
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, 2000, 200):  # the first 2000 test images, a quick check of what was trained
            correct += int(
                (model(batch(test_x[i : i + 200], args.size).to(dev)).argmax(1).cpu() == test_y[i : i + 200]).sum()
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.cpu().state_dict(), args.out)
    record = {
        "command": " ".join(["python", *sys.argv]),
        "arch": args.arch, "size": args.size, "samples": len(images), "steps": done, "steps_planned": steps,
        "batch_size": args.batch_size, "seconds": round(seconds, 1), "device": str(dev),
        "threads": torch.get_num_threads(), "test_acc_first_2000": correct / 2000, "mean": MEAN, "std": STD,
    }  # fmt: skip
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record))


if __name__ == "__main__":
    main()
