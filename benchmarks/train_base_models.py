"""Train the base models from their configs and record test accuracy and wall time.

    python benchmarks/train_base_models.py --configs configs/lenet5-fmnist.yaml configs/resnet20-fmnist.yaml

Writes benchmarks/results/train_base_models__<models>.json (e.g. ``__lenet5+resnet20``
for the default configs) and the checkpoints named in the configs (existing checkpoints
are kept unless --retrain is given).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import result_path, write_result

from edgecompress.artifacts.checkpoint import load_checkpoint
from edgecompress.workflows.config import load_run_config as load_config
from edgecompress.workflows.train import train_base_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["configs/lenet5-fmnist.yaml", "configs/resnet20-fmnist.yaml"])
    parser.add_argument("--retrain", action="store_true", help="train even where the checkpoint exists")
    parser.add_argument("--out", default=None, help="default: benchmarks/results/train_base_models__<models>.json")
    args = parser.parse_args()
    rows = []
    for path in args.configs:
        cfg = load_config(path)
        ckpt = Path(cfg.model.checkpoint or f"checkpoints/{cfg.model.name}-{cfg.data.dataset}.pt")
        if ckpt.exists() and not args.retrain:
            _, spec = load_checkpoint(ckpt)
            reused = True
        else:
            _, spec = train_base_model(cfg, ckpt)
            reused = False
        rows.append({
            "config": path, "model": spec.model, "dataset": spec.dataset, "epochs": spec.train.get("epochs"),
            "test_acc": spec.metrics["test_acc"], "val_acc": spec.metrics["val_acc"],
            "train_seconds": spec.train.get("seconds"), "torch_threads": spec.train.get("torch_threads"),
            "checkpoint": str(ckpt), "reused_checkpoint": reused,
        })  # fmt: skip
    table = Table(title="base models")
    for col in ("model", "epochs", "test acc", "train time (s)", "checkpoint"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["model"], str(r["epochs"]), f"{r['test_acc']:.4f}", f"{r['train_seconds']:.0f}", r["checkpoint"]
        )
    Console().print(table)
    out = args.out or result_path("train_base_models", "+".join(r["model"] for r in rows))
    print(f"wrote {write_result(out, {'results': rows})}")


if __name__ == "__main__":
    main()
