"""Base models: train one and save its checkpoint, or load the one a config names.

``ensure_base_model`` is what ``run`` and ``search`` call: it loads the
config's checkpoint, trains it there when the file does not exist yet, and
refuses a checkpoint made for another model or dataset.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from rich.console import Console

from edgecompress.artifacts.checkpoint import ModelSpec, load_checkpoint, save_checkpoint
from edgecompress.config import RunConfig
from edgecompress.data import DataBundle, load_dataset
from edgecompress.errors import CheckpointError
from edgecompress.models import create_model
from edgecompress.training import evaluate, train

__all__ = ["check_base_model", "default_checkpoint", "ensure_base_model", "load_bundle", "train_base_model"]


def default_checkpoint(cfg: RunConfig) -> Path:
    return Path(cfg.model.checkpoint or f"checkpoints/{cfg.model.name.replace(':', '_')}-{cfg.data.dataset}.pt")


def load_bundle(cfg: RunConfig) -> DataBundle:
    """The config's data, split as every workflow splits it."""
    d = cfg.data
    return load_dataset(d.dataset, d.data_dir, val_size=d.val_size, seed=d.seed, image_size=d.image_size)


def check_base_model(cfg: RunConfig) -> Path:
    """The base checkpoint path, or a CheckpointError when it is missing and not to be trained (before any
    work or any file is written)."""
    ckpt = default_checkpoint(cfg)
    if not ckpt.exists() and not cfg.model.train_if_missing:
        raise CheckpointError(
            f"base checkpoint {ckpt} does not exist. Give the path of a trained checkpoint (model.checkpoint, "
            "--checkpoint), or set model.train_if_missing: true (--train-if-missing) to train "
            f"{cfg.model.name} there first"
        )
    return ckpt


def ensure_base_model(cfg: RunConfig, bundle: Any, console: Console) -> tuple[Any, Any, Path, bool]:
    """Load the config's base checkpoint, or train it there when missing; refuse one for another model."""
    ckpt = default_checkpoint(cfg)
    if ckpt.exists():
        model, spec = load_checkpoint(ckpt, trust_factory=cfg.model.name)  # the factory the user configured
        if spec.model != cfg.model.name or spec.dataset != bundle.name:
            raise CheckpointError(
                f"{ckpt} holds {spec.model!r} trained on {spec.dataset!r}, but the config asks for "
                f"{cfg.model.name!r} on {bundle.name!r}; point model.checkpoint elsewhere"
            )
        console.print(f"base model: loaded {ckpt} ({spec.model}, trained {spec.created})")
        return model, spec, ckpt, False
    check_base_model(cfg)
    console.print(f"base model: {ckpt} not found, training {cfg.model.name} for {cfg.train.epochs} epochs")
    model, spec = train_base_model(cfg, ckpt, bundle=bundle)
    return model, spec, ckpt, True


def train_base_model(
    config: RunConfig,
    out: str | Path,
    *,
    bundle: DataBundle | None = None,
    max_batches: int | None = None,
    progress: bool = True,
) -> tuple[nn.Module, ModelSpec]:
    """Train ``config.model.name`` on ``config.data`` and save the checkpoint at ``out``.

    Accuracies in the spec are measured after training: ``val_acc`` on the
    validation split, ``test_acc`` on the test split.
    """
    if bundle is None:
        bundle = load_bundle(config)
    torch.manual_seed(config.train.seed)
    model = create_model(config.model.name, bundle.num_classes, bundle.in_channels, input_size=bundle.input_size)
    result = train(model, bundle.train, config.train, val_set=bundle.val, max_batches=max_batches, progress=progress)
    val = evaluate(model, bundle.val)["top1"]
    test = evaluate(model, bundle.test, topk=(1, 5))
    train_record: dict[str, Any] = config.train.model_dump()
    train_record.update(
        seconds=round(result.seconds, 2),
        max_batches=max_batches,
        history=[vars(r) for r in result.history],
        torch_threads=torch.get_num_threads(),
    )
    spec = ModelSpec(
        model=config.model.name,
        num_classes=bundle.num_classes,
        in_channels=bundle.in_channels,
        input_size=bundle.input_size,
        dataset=bundle.name,
        seed=config.train.seed,
        metrics={"val_acc": val, "test_acc": test["top1"], "test_top5": test["top5"]},
        train=train_record,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    save_checkpoint(out, model, spec)
    return model, spec
