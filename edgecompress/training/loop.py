"""The one training loop (base models, fine-tuning, distillation) and evaluation.

SGD with Nesterov momentum (or AdamW), a short linear warm-up then cosine
annealing to zero, stepped per batch; optional batch-level augmentation. Fixed
seeds give identical weights on the same machine and software. This module
does not choose models or data: callers pass them in.

Training and scoring run on the accelerator the config names (``cpu`` by
default; see :mod:`edgecompress.training.accelerator`), optionally in mixed
precision and NHWC layout; the model goes back to the device it came from when
they end, also when they fail.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, overload

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from edgecompress._inputs import call, move
from edgecompress._progress import progress_bar, stderr_console
from edgecompress.config import TrainConfig
from edgecompress.data import batches, num_batches
from edgecompress.errors import ConfigError, ModelError
from edgecompress.training.accelerator import (
    autocast,
    check_precision,
    describe,
    grad_scaler,
    on_device,
    resolve_accelerator,
    step,
    to_device,
    use_channels_last,
)

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

__all__ = ["EpochRecord", "LossFn", "TrainResult", "augment_batch", "classification_metrics", "evaluate", "train"]


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    train_acc: float
    val_acc: float
    lr: float
    seconds: float


@dataclass
class TrainResult:
    history: list[EpochRecord] = field(default_factory=list)
    seconds: float = 0.0
    device: str = ""
    """Where training ran, e.g. ``cuda:0 (NVIDIA H200, 139 GiB)`` or ``cpu (8 threads)``."""
    precision: str = "fp32"
    channels_last: bool = False


def augment_batch(x: torch.Tensor, generator: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random crop after zero padding by ``pad`` pixels, and random horizontal flip, per sample.

    The random draws come from ``generator`` (on its own device, usually the CPU)
    and move to ``x``'s device, so a batch already on a GPU is augmented there
    with the same draws as on the CPU.
    """
    n, c, h, w = x.shape
    dev = x.device
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=generator.device).to(dev)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=generator.device).to(dev)
    flip = (torch.rand(n, generator=generator, device=generator.device) < 0.5).to(dev)
    rows = (dy.view(n, 1) + torch.arange(h, device=dev).view(1, h)).view(n, 1, h, 1).expand(-1, c, -1, w + 2 * pad)
    out = padded.gather(2, rows)
    cols = (dx.view(n, 1) + torch.arange(w, device=dev).view(1, w)).view(n, 1, 1, w).expand(-1, c, h, -1)
    out = out.gather(3, cols)
    return torch.where(flip.view(n, 1, 1, 1), out.flip(3), out)


def _device_batches(
    dataset: Dataset, batch_size: int, device: torch.device, *, shuffle: bool = False, seed: int = 0,
    workers: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
    """``batches()``, in page-locked memory when they go to a CUDA device (so the copy can overlap compute), decoded
    by ``workers`` DataLoader processes for data read per sample (image folders)."""
    return batches(dataset, batch_size, shuffle=shuffle, seed=seed, pin_memory=device.type == "cuda", workers=workers)


def classification_metrics(confusion: torch.Tensor) -> dict[str, float]:
    """Accuracy and macro precision, recall and F1 from a confusion matrix (rows: true class, columns: predicted).

    scikit-learn's definitions with ``zero_division=0``: a class's precision is
    TP / (TP + FP), 0 when nothing was predicted as it; its recall TP / (TP + FN),
    0 when it has no sample; its F1 2PR / (P + R), 0 when P + R = 0. Macro values
    are the unweighted means over the classes that occur among the labels or the
    predictions (scikit-learn's default ``labels``). An empty matrix scores 0.
    """
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ConfigError(f"a confusion matrix is square (classes x classes), got shape {tuple(confusion.shape)}")
    if confusion.is_floating_point() or confusion.is_complex():
        raise ConfigError(f"a confusion matrix holds integer counts, got dtype {confusion.dtype}")
    if bool((confusion < 0).any()):
        raise ConfigError("a confusion matrix holds counts >= 0, got a negative entry")
    c = confusion.detach().to("cpu", torch.float64)
    tp = c.diagonal()
    true = c.sum(dim=1)  # TP + FN
    predicted = c.sum(dim=0)  # TP + FP
    present = (true + predicted) > 0
    if not bool(present.any()):
        return {"accuracy": 0.0, "precision_macro": 0.0, "recall_macro": 0.0, "f1_macro": 0.0}
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), 0.0)
    recall = torch.where(true > 0, tp / true.clamp(min=1), 0.0)
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-300), 0.0)
    return {
        "accuracy": float(tp.sum() / c.sum()),
        "precision_macro": float(precision[present].mean()),
        "recall_macro": float(recall[present].mean()),
        "f1_macro": float(f1[present].mean()),
    }


@overload
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = ...,
    topk: tuple[int, ...] = ...,
    *,
    accelerator: str | torch.device = ...,
    precision: str = ...,
    channels_last: bool | None = ...,
    metrics: Literal[False] = ...,
    progress: str | None = ...,
) -> dict[str, float]: ...


@overload
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = ...,
    topk: tuple[int, ...] = ...,
    *,
    accelerator: str | torch.device = ...,
    precision: str = ...,
    channels_last: bool | None = ...,
    metrics: bool,
    progress: str | None = ...,
) -> dict[str, Any]: ...


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 512,
    topk: tuple[int, ...] = (1,),
    *,
    accelerator: str | torch.device = "cpu",
    precision: str = "fp32",
    channels_last: bool | None = None,
    metrics: bool = False,
    progress: str | None = None,
) -> dict[str, Any]:
    """Top-k accuracies (fractions in [0, 1]) of ``model`` in eval mode on ``dataset``.

    ``progress``: a description to show a progress bar under (on stderr; default: none).

    With ``metrics``, also the macro ``precision_macro``, ``recall_macro`` and
    ``f1_macro`` of the top-1 predictions (:func:`classification_metrics`) and
    ``confusion``, the confusion matrix as a list of rows (row: true class,
    column: predicted class, one per model output).

    Runs on ``accelerator`` (a name as in ``TrainConfig.accelerator``, or a
    ``torch.device``) under ``precision`` autocast; ``model`` returns to its own
    device and training mode afterwards.
    """
    device = resolve_accelerator(accelerator)
    check_precision(device, precision)
    nhwc = use_channels_last(device, channels_last)
    with on_device(model, device, nhwc):
        if progress is None:
            return _evaluate(model, dataset, batch_size, topk, device, precision, nhwc, metrics=metrics)
        with progress_bar() as bar:
            task = bar.add_task(progress, total=-(-len(dataset) // batch_size), status="")  # type: ignore[arg-type]
            return _evaluate(model, dataset, batch_size, topk, device, precision, nhwc, metrics=metrics,
                             tick=lambda: bar.advance(task))  # fmt: skip


@torch.no_grad()
def _evaluate(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int,
    topk: tuple[int, ...],
    device: torch.device,
    precision: str,
    channels_last: bool,
    *,
    metrics: bool = False,
    tick: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """``evaluate`` for a model already on ``device`` (and in the layout ``channels_last`` says); ``tick()``
    after each batch."""
    was_training = model.training
    model.eval()
    correct = {k: torch.zeros((), dtype=torch.int64, device=device) for k in topk}
    confusion: torch.Tensor | None = None
    total = 0
    try:
        for x, y in _device_batches(dataset, batch_size, device):
            x = to_device(x, device, channels_last)
            y = y.to(device, non_blocking=True)
            with autocast(device, precision):
                logits = model(x)
            ranked = logits.float().topk(max(topk), dim=1).indices
            for k in topk:
                correct[k] += (ranked[:, :k] == y.view(-1, 1)).any(dim=1).sum()
            if metrics:
                confusion = _add_to_confusion(confusion, y, ranked[:, 0], logits.shape[1])
            total += len(y)
            if tick is not None:
                tick()
    finally:
        model.train(was_training)
    result: dict[str, Any] = {f"top{k}": int(correct[k]) / max(total, 1) for k in topk}
    if metrics:
        if confusion is None:  # no batch: no class, no output width to size the matrix by
            confusion = torch.zeros((0, 1), dtype=torch.int64)
        if int(confusion[:, -1].sum()):
            raise ModelError(
                f"the data has labels outside the model's {confusion.shape[0]} outputs "
                f"(labels must be in [0, {confusion.shape[0] - 1}]); is the model built for this data's classes?"
            )
        confusion = confusion[:, :-1]
        scores = classification_metrics(confusion)
        result.update({k: scores[k] for k in ("precision_macro", "recall_macro", "f1_macro")})
        result["confusion"] = confusion.cpu().tolist()
    return result


def _add_to_confusion(
    confusion: torch.Tensor | None, targets: torch.Tensor, predicted: torch.Tensor, classes: int
) -> torch.Tensor:
    """``confusion`` plus one batch: ``classes x (classes + 1)`` counts on the batch's device (a new one when None).

    The last column counts labels outside ``[0, classes)``, checked once at the end rather than per batch, so no
    batch waits for the accelerator.
    """
    targets = targets.long()
    valid = (targets >= 0) & (targets < classes)
    cell = torch.where(valid, targets * (classes + 1) + predicted, classes)  # invalid: row 0, last column
    counts = torch.bincount(cell, minlength=classes * (classes + 1)).view(classes, classes + 1)
    return counts if confusion is None else confusion + counts


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # No weight decay on biases and norm parameters (standard practice; it only hurts them).
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)


def _cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def train(
    model: nn.Module,
    train_set: Dataset,
    cfg: TrainConfig,
    *,
    val_set: Dataset | None = None,
    max_batches: int | None = None,
    progress: bool = True,
    loss_fn: LossFn | None = None,
    description: str = "train",
    workers: int = 0,
) -> TrainResult:
    """Train ``model`` in place; ``max_batches`` caps each epoch (for tests and smoke runs); ``workers``
    DataLoader processes decode data read per sample (``DataBundle.workers``). Batches' inputs may be a tensor,
    a tuple or a dict of tensors (:mod:`edgecompress._inputs`).

    ``loss_fn(logits, inputs, targets)`` replaces cross-entropy (distillation uses it);
    it runs inside the autocast region, on the accelerator's tensors. The model
    trains on ``cfg.accelerator`` with ``cfg.precision`` and ``cfg.channels_last``
    and is back on its own device, in contiguous layout, when this returns or raises.
    """
    device = resolve_accelerator(cfg.accelerator)
    check_precision(device, cfg.precision)
    nhwc = use_channels_last(device, cfg.channels_last)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    per_epoch = num_batches(train_set, cfg.batch_size)
    if max_batches is not None:
        per_epoch = min(per_epoch, max_batches)
    total = per_epoch * cfg.epochs
    result = TrainResult(device=describe(device), precision=cfg.precision, channels_last=nhwc)
    if progress:
        layout = ", channels_last" if nhwc else ""
        stderr_console.print(f"{description}: on {result.device}, {cfg.precision}{layout}")
    start = time.perf_counter()
    with on_device(model, device, nhwc), progress_bar(progress) as bar:
        opt = _optimizer(model, cfg)
        scaler = grad_scaler(device, cfg.precision)
        warmup = max(1, per_epoch // 4)
        sum_device = torch.device("cpu") if device.type == "mps" else device
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine_with_warmup(s, total, warmup))
        task = bar.add_task(description, total=total, status="")
        for epoch in range(cfg.epochs):
            t0 = time.perf_counter()
            model.train()
            # Sums stay on the device (float64: the same sums as Python floats) so no batch waits for the GPU;
            # MPS has no float64, so its loss sum stays on the CPU.
            loss_sum = torch.zeros((), dtype=torch.float64, device=sum_device)
            correct = torch.zeros((), dtype=torch.int64, device=device)
            seen = 0
            lr = opt.param_groups[0]["lr"]
            epoch_batches = _device_batches(
                train_set, cfg.batch_size, device, shuffle=True, seed=cfg.seed + epoch, workers=workers
            )
            for i, (x, y) in enumerate(epoch_batches):
                if i >= per_epoch:
                    break
                x = move(x, device, non_blocking=True)  # a tensor, or a tuple / dict of inputs (edgecompress._inputs)
                y = y.to(device, non_blocking=True)
                if cfg.augment and isinstance(x, torch.Tensor):
                    x = augment_batch(x, gen)
                if nhwc and isinstance(x, torch.Tensor) and x.ndim == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast(device, cfg.precision):
                    logits = call(model, x)
                    if loss_fn is None:
                        loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
                    else:
                        loss = loss_fn(logits, x, y)
                opt.zero_grad(set_to_none=True)
                stepped = step(loss, opt, scaler)
                lr = opt.param_groups[0]["lr"]
                if stepped:
                    sched.step()
                loss_sum += loss.detach().to(sum_device, torch.float64) * len(y)
                correct += (logits.argmax(1) == y).sum()
                seen += len(y)
                if progress:
                    status = f"epoch {epoch + 1}/{cfg.epochs} loss {float(loss_sum) / seen:.3f}"
                    bar.update(task, advance=1, status=status)
            val_acc = (
                _evaluate(model, val_set, 512, (1,), device, cfg.precision, nhwc)["top1"]
                if val_set is not None
                else float("nan")
            )
            record = EpochRecord(
                epoch + 1, float(loss_sum) / seen, int(correct) / seen, val_acc, lr, time.perf_counter() - t0
            )
            result.history.append(record)
            if progress:
                val = f"val acc {record.val_acc:.4f}  " if val_set is not None else ""
                stderr_console.print(
                    f"epoch {record.epoch}: loss {record.train_loss:.4f}  train acc {record.train_acc:.4f}  "
                    f"{val}({record.seconds:.1f}s)"
                )
    result.seconds = time.perf_counter() - start
    return result
