"""The one training loop (base models, fine-tuning, distillation) and evaluation.

SGD with Nesterov momentum (or AdamW), a short linear warm-up then cosine
annealing to zero, stepped per batch; optional batch-level augmentation. Fixed
seeds give identical weights on the same machine and software. This module
does not choose models or data: callers pass them in.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from edgecompress._progress import progress_bar, stderr_console
from edgecompress.config import TrainConfig
from edgecompress.data import batches, num_batches

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

__all__ = ["EpochRecord", "LossFn", "TrainResult", "augment_batch", "evaluate", "train"]


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


def augment_batch(x: torch.Tensor, generator: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random crop after zero padding by ``pad`` pixels, and random horizontal flip, per sample."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).view(n, 1, h, 1).expand(-1, x.shape[1], -1, w + 2 * pad)
    out = padded.gather(2, rows)
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).view(n, 1, 1, w).expand(-1, x.shape[1], h, -1)
    out = out.gather(3, cols)
    flip = torch.rand(n, generator=generator) < 0.5
    return torch.where(flip.view(n, 1, 1, 1), out.flip(3), out)


@torch.no_grad()
def evaluate(
    model: nn.Module, dataset: Dataset, batch_size: int = 512, topk: tuple[int, ...] = (1,)
) -> dict[str, float]:
    """Top-k accuracies (fractions in [0, 1]) of ``model`` in eval mode on ``dataset``."""
    was_training = model.training
    model.eval()
    correct = dict.fromkeys(topk, 0)
    total = 0
    for x, y in batches(dataset, batch_size):
        logits = model(x)
        ranked = logits.topk(max(topk), dim=1).indices
        for k in topk:
            correct[k] += int((ranked[:, :k] == y.view(-1, 1)).any(dim=1).sum())
        total += len(y)
    model.train(was_training)
    return {f"top{k}": correct[k] / max(total, 1) for k in topk}


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
) -> TrainResult:
    """Train ``model`` in place; ``max_batches`` caps each epoch (for tests and smoke runs).

    ``loss_fn(logits, inputs, targets)`` replaces cross-entropy (distillation uses it).
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    per_epoch = num_batches(train_set, cfg.batch_size)
    if max_batches is not None:
        per_epoch = min(per_epoch, max_batches)
    total = per_epoch * cfg.epochs
    opt = _optimizer(model, cfg)
    warmup = max(1, per_epoch // 4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine_with_warmup(s, total, warmup))
    result = TrainResult()
    start = time.perf_counter()
    with progress_bar(progress) as bar:
        task = bar.add_task(description, total=total, status="")
        for epoch in range(cfg.epochs):
            t0 = time.perf_counter()
            model.train()
            loss_sum, correct, seen = 0.0, 0, 0
            lr = opt.param_groups[0]["lr"]
            for i, (x, y) in enumerate(batches(train_set, cfg.batch_size, shuffle=True, seed=cfg.seed + epoch)):
                if i >= per_epoch:
                    break
                if cfg.augment:
                    x = augment_batch(x, gen)
                logits = model(x)
                if loss_fn is None:
                    loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
                else:
                    loss = loss_fn(logits, x, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                lr = opt.param_groups[0]["lr"]
                sched.step()
                loss_sum += float(loss.detach()) * len(y)
                correct += int((logits.argmax(1) == y).sum())
                seen += len(y)
                bar.update(task, advance=1, status=f"epoch {epoch + 1}/{cfg.epochs} loss {loss_sum / seen:.3f}")
            val_acc = evaluate(model, val_set)["top1"] if val_set is not None else float("nan")
            record = EpochRecord(epoch + 1, loss_sum / seen, correct / seen, val_acc, lr, time.perf_counter() - t0)
            result.history.append(record)
            if progress:
                val = f"val acc {record.val_acc:.4f}  " if val_set is not None else ""
                stderr_console.print(
                    f"epoch {record.epoch}: loss {record.train_loss:.4f}  train acc {record.train_acc:.4f}  "
                    f"{val}({record.seconds:.1f}s)"
                )
    result.seconds = time.perf_counter() - start
    return result
