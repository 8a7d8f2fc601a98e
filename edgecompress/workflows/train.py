"""Base models: train one and save its checkpoint, or load the one a config names.

``ensure_base_model`` is what ``run`` and ``search`` call: it loads the
config's checkpoint, trains it there when the file does not exist yet, and
refuses a checkpoint made for another model or dataset.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from rich.console import Console

from edgecompress.artifacts.checkpoint import ModelSpec, check_data_matches, load_checkpoint, save_checkpoint
from edgecompress.artifacts.weights import file_sha256, model_from_weights
from edgecompress.config import RunConfig
from edgecompress.data import DataBundle, load_dataset
from edgecompress.errors import CheckpointError, ConfigError, ModelError
from edgecompress.models import create_model
from edgecompress.training import evaluate, train

__all__ = [
    "check_base_model", "data_record", "default_checkpoint", "ensure_base_model", "import_base_model", "load_bundle",
    "train_base_model",
]  # fmt: skip


IMPORTED_CHECKPOINT = "base.pt"
"""The run folder's checkpoint made from ``model.weights`` (weights trained elsewhere)."""


def default_checkpoint(cfg: RunConfig) -> Path:
    """The base checkpoint: ``model.checkpoint``, else the one imported from ``model.weights`` into the run folder,
    else ``checkpoints/NAME-DATASET.pt``."""
    if cfg.model.weights is not None and cfg.model.checkpoint is None:
        return Path(cfg.out) / IMPORTED_CHECKPOINT
    return Path(cfg.model.checkpoint or f"checkpoints/{cfg.model.name.replace(':', '_')}-{cfg.data.dataset}.pt")


def data_record(cfg: RunConfig) -> dict[str, Any]:
    """How the config serves data to the model (kept in the checkpoint's spec for replay and export)."""
    d = cfg.data
    return {"input_size": d.input_size, "channels": d.channels, "mean": d.mean, "std": d.std}


def load_bundle(cfg: RunConfig) -> DataBundle:
    """The config's data, split as every workflow splits it."""
    d = cfg.data
    return load_dataset(
        d.dataset, d.data_dir, val_size=d.val_size, seed=d.seed, input_size=d.input_size, channels=d.channels,
        mean=d.mean, std=d.std, workers=d.workers,
    )  # fmt: skip


def check_base_model(cfg: RunConfig) -> Path:
    """The base checkpoint path, or a CheckpointError when it is missing and not to be trained (before any
    work or any file is written)."""
    m = cfg.model
    if m.weights is not None:
        if m.checkpoint is not None:
            raise ConfigError(
                f"model.weights ({m.weights}) and model.checkpoint ({m.checkpoint}) are both given; give one: "
                "--weights for weights trained elsewhere, --checkpoint for an edgecompress checkpoint"
            )
        if m.train_if_missing:
            raise ConfigError(
                "model.train_if_missing does not apply with model.weights: the weights are the trained model"
            )
        if not Path(m.weights).is_file():
            raise CheckpointError(
                f"weights file {m.weights} does not exist. Give the path of the state_dict (or Lightning / "
                "TorchScript file) your model was trained into (--weights, model.weights)"
            )
        return default_checkpoint(cfg)
    ckpt = default_checkpoint(cfg)
    if not ckpt.exists() and not cfg.model.train_if_missing:
        raise CheckpointError(
            f"base checkpoint {ckpt} does not exist. Give the path of a trained checkpoint (model.checkpoint, "
            "--checkpoint), or set model.train_if_missing: true (--train-if-missing) to train "
            f"{cfg.model.name} there first"
        )
    return ckpt


def ensure_base_model(
    cfg: RunConfig, bundle: Any, console: Console, prepare: Callable[[], Any] | None = None
) -> tuple[Any, Any, Path, bool]:
    """Load the config's base checkpoint, or train it there when missing; refuse one for another model.

    With ``model.weights`` (trained elsewhere) the weights are imported once into ``RUN_FOLDER/base.pt`` (an
    edgecompress checkpoint: spec, measured accuracies, the file's sha256), which replay and export then read;
    a changed weights file is refused rather than silently mixed with the run's earlier results.

    ``prepare()`` (e.g. writing the run folder's config) is called once the base model is known to load, before
    this function writes anything: weights that do not fit the model leave no run folder behind."""
    prepare = prepare or (lambda: None)
    if cfg.model.weights is not None:
        return import_base_model(cfg, bundle, console, prepare)
    ckpt = default_checkpoint(cfg)
    if ckpt.exists():
        model, spec = load_checkpoint(ckpt, trust_factory=cfg.model.name)  # the factory the user configured
        if spec.model != cfg.model.name or spec.dataset != bundle.name:
            raise CheckpointError(
                f"{ckpt} holds {spec.model!r} trained on {spec.dataset!r}, but the config asks for "
                f"{cfg.model.name!r} on {bundle.name!r}; point model.checkpoint elsewhere"
            )
        check_data_matches(spec, bundle, ckpt)
        console.print(f"base model: loaded {ckpt} ({spec.model}, trained {spec.created})")
        prepare()
        return model, spec, ckpt, False
    check_base_model(cfg)
    prepare()
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
    result = train(
        model, bundle.train, config.train, val_set=bundle.val, max_batches=max_batches, progress=progress,
        workers=bundle.workers,
    )  # fmt: skip
    val = evaluate(model, bundle.val)["top1"]
    test = evaluate(model, bundle.test, topk=(1, 5))
    train_record: dict[str, Any] = config.train.model_dump()
    train_record.update(
        seconds=round(result.seconds, 2),
        max_batches=max_batches,
        history=[vars(r) for r in result.history],
        torch_threads=torch.get_num_threads(),
        device=result.device,
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
        data=data_record(config),
    )
    save_checkpoint(out, model, spec)
    return model, spec


def check_input_size(model: nn.Module, shape: tuple[int, ...], name: str) -> None:
    """A ModelError (not a traceback from deep inside a search) when ``model`` cannot take inputs of ``shape``."""
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(shape))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"{name} cannot take inputs of shape {tuple(shape)}: {first}. Serve the data at an input size the model "
            "takes (--input-size, data.input_size), e.g. the size it was trained at"
        ) from None


def import_base_model(
    cfg: RunConfig, bundle: DataBundle, console: Console, prepare: Callable[[], Any] | None = None
) -> tuple[Any, ModelSpec, Path, bool]:
    """The base model from ``model.weights``, checked against the data and saved as the run's ``base.pt``
    (``prepare()`` is called first, once the weights are known to fit)."""
    prepare = prepare or (lambda: None)
    m = cfg.model
    assert m.weights is not None
    ckpt = default_checkpoint(cfg)
    if ckpt.exists():
        model, spec = load_checkpoint(ckpt, trust_factory=m.name)
        if spec.source.get("sha256") != file_sha256(m.weights) or spec.model != m.name:
            raise CheckpointError(
                f"{ckpt} was imported from {spec.source.get('file')} ({spec.model}, sha256 "
                f"{str(spec.source.get('sha256'))[:12]}...), but the config now names {m.weights} ({m.name}); use "
                "another --out for other weights"
            )
        console.print(f"base model: {ckpt} (imported from {spec.source.get('file')})")
        prepare()
        return model, spec, ckpt, False
    model, weights, num_classes, in_channels = model_from_weights(
        m.name, m.weights, num_classes=m.num_classes, input_size=bundle.input_size, trust_pickle=m.trust_pickle
    )
    if num_classes != bundle.num_classes:
        raise CheckpointError(
            f"weights {m.weights} give {m.name} {num_classes} output classes, but the data ({bundle.name}, "
            f"{bundle.source}) has {bundle.num_classes}; compress a model trained for these classes"
        )
    if in_channels != bundle.in_channels:
        hint = " (serve grayscale data as RGB with --channels 3, data.channels)" if in_channels == 3 else ""
        raise CheckpointError(
            f"weights {m.weights} take {in_channels}-channel inputs, but the data is served with "
            f"{bundle.in_channels} channels{hint}"
        )
    check_input_size(model, (1, in_channels, bundle.input_size, bundle.input_size), m.name)
    for note in weights.notes:
        console.print(f"weights: {note}")
    # The validation subset the search scores on (at real input sizes a full test pass costs minutes on a CPU;
    # replay measures the test split).
    n_val = min(cfg.data.val_samples, len(bundle.val))  # type: ignore[arg-type]
    where: dict[str, Any] = {"accelerator": cfg.train.accelerator, "precision": cfg.train.precision}
    val = evaluate(model, bundle.val_subset(n_val), topk=(1, 5), **where)
    spec = ModelSpec(
        model=m.name,
        num_classes=num_classes,
        in_channels=in_channels,
        input_size=bundle.input_size,
        dataset=bundle.name,
        seed=0,
        metrics={"val_acc": val["top1"], "val_top5": val["top5"], "val_samples": n_val},
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        data=data_record(cfg),
        source={"file": str(m.weights), "sha256": weights.sha256, "format": weights.kind, "notes": weights.notes},
    )
    prepare()
    save_checkpoint(ckpt, model, spec)
    console.print(
        f"base model: {m.name} with weights {m.weights} ({weights.kind}); top-1 {val['top1']:.4f} measured here on "
        f"the first {n_val} validation samples ({bundle.name}, {bundle.input_size}px, {bundle.in_channels} "
        f"channels); saved as {ckpt}"
    )
    if val["top1"] < 2.0 / num_classes:
        console.print(
            f"[yellow]warning:[/] the imported model scores near chance ({val['top1']:.3f}) on this data: check "
            "the normalisation (--mean/--std, data.mean/std), input size and class order it was trained with"
        )
    return model, spec, ckpt, True
