"""Search-time fine-tuning on a fixed set of batches whose teacher outputs are computed once.

A search scores hundreds of policies, each fine-tuned (distilled from the base
model) on the same seeded batches so that a score stays a function of the
policy. The teacher's outputs on those batches never change, so
:func:`cache_teacher` computes them once per run (with the inputs, on the
accelerator, kept on the CPU), and :func:`finetune_cached` trains a student on
them: a teacher forward pass per step and per policy saved, and at real input
sizes the decoding of the batches too. Inputs may be tensors, tuples or dicts
of tensors (:mod:`edgecompress._inputs`); the loss is Hinton's on logits by
default, or the caller's ``loss(student_out, teacher_out, targets)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from edgecompress._inputs import batch_len, call, move
from edgecompress.config import TrainConfig
from edgecompress.training.accelerator import autocast, grad_scaler, on_device, resolve_accelerator, step
from edgecompress.training.distill import distillation_loss
from edgecompress.training.loop import _cosine_with_warmup, _optimizer

__all__ = ["CachedBatches", "DistillLoss", "cache_teacher", "finetune_cached"]

DistillLoss = Callable[[Any, Any, Any], torch.Tensor]
"""``loss(student_outputs, teacher_outputs, targets) -> scalar tensor``."""


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return 0


@dataclass
class CachedBatches:
    """Fine-tuning batches with the teacher's outputs: ``(inputs, targets, teacher_outputs)`` on the CPU."""

    batches: list[tuple[Any, Any, Any]] = field(default_factory=list)
    seconds: float = 0.0
    """Wall time to draw the batches and run the teacher on them (once per run)."""

    @property
    def nbytes(self) -> int:
        """Memory the cache holds (inputs, targets and teacher outputs)."""
        return sum(_nbytes(b) for b in self.batches)


@torch.no_grad()
def cache_teacher(
    teacher: nn.Module,
    data: Iterable[tuple[Any, Any]],
    *,
    accelerator: str | torch.device = "cpu",
    precision: str = "fp32",
) -> CachedBatches:
    """The teacher's outputs on every ``(inputs, targets)`` batch of ``data``, computed once (eval mode)."""
    start = time.perf_counter()
    device = resolve_accelerator(accelerator)
    out = CachedBatches()
    teacher.eval()
    with on_device(teacher, device):
        for x, y in data:
            with autocast(device, precision):
                t = call(teacher, move(x, device))
            out.batches.append((x, y, move(t, "cpu", dtype=torch.float32) if isinstance(t, torch.Tensor) else
                                move(t, "cpu")))  # fmt: skip
    out.seconds = time.perf_counter() - start
    return out


def finetune_cached(
    student: nn.Module,
    cached: CachedBatches,
    *,
    loss: DistillLoss | None = None,
    lr: float = 0.01,
    temperature: float = 4.0,
    alpha: float = 0.9,
    seed: int = 0,
    accelerator: str | torch.device = "cpu",
    precision: str = "fp32",
) -> float:
    """One pass over ``cached`` (SGD, Nesterov, warm-up then cosine), distilling into ``student`` in place;
    returns the mean loss. The student trains through its compression constraints, as in ``distill``."""
    if not cached.batches:
        return 0.0
    device = resolve_accelerator(accelerator)
    scaler = grad_scaler(device, precision)
    torch.manual_seed(seed)
    cfg = TrainConfig(lr=lr, seed=seed)
    total = len(cached.batches)
    opt = _optimizer(student, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine_with_warmup(s, total, max(1, total // 4)))
    loss_sum, seen = 0.0, 0
    student.train()
    with on_device(student, device):
        for x, y, t in cached.batches:
            x, y, t = move(x, device), move(y, device), move(t, device)
            with autocast(device, precision):
                out = call(student, x)
                if loss is None:
                    value = distillation_loss(out.float(), t, y, temperature, alpha)
                else:
                    value = loss(out, t, y)
            opt.zero_grad(set_to_none=True)
            if step(value, opt, scaler):
                sched.step()
            n = batch_len(x)
            loss_sum += float(value.detach()) * n
            seen += n
    student.eval()
    return loss_sum / max(seen, 1)
