"""Knowledge distillation (Hinton et al. 2015): the base model teaches the compressed one.

Loss = alpha x T^2 x KL(softmax(teacher / T) || softmax(student / T))
       + (1 - alpha) x cross-entropy(student, labels).
The student trains through its compression constraints (masks, tied weights,
fake quantization are parametrizations and hooks of its forward pass), so
distillation cannot undo them. Uses the project's one training loop, on its
accelerator: the teacher moves there with the student, and both come back.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from edgecompress._inputs import call
from edgecompress.config import TrainConfig
from edgecompress.errors import ConfigError
from edgecompress.training.accelerator import on_device, resolve_accelerator, use_channels_last
from edgecompress.training.loop import EpochRecord, train

__all__ = ["distill", "distillation_loss"]


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, temperature: float, alpha: float
) -> torch.Tensor:
    t = temperature
    soft = F.kl_div(
        F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
        reduction="batchmean", log_target=True,
    )  # fmt: skip
    hard = F.cross_entropy(student_logits, targets)
    return alpha * t * t * soft + (1 - alpha) * hard


def distill(
    student: nn.Module,
    teacher: nn.Module,
    train_data: Dataset,
    epochs: int = 1,
    temperature: float = 4.0,
    alpha: float = 0.9,
    *,
    val_data: Dataset | None = None,
    lr: float = 0.01,
    batch_size: int = 64,
    optimizer: str = "sgd",
    weight_decay: float = 5e-4,
    seed: int = 0,
    max_batches: int | None = None,
    progress: bool = True,
    workers: int = 0,
    **train_options: Any,
) -> list[EpochRecord]:
    """Fine-tune ``student`` in place against ``teacher``'s soft targets; returns the per-epoch history.

    ``train_options`` are further ``TrainConfig`` fields, e.g. ``augment``,
    ``accelerator`` (``"cuda"``; a ``torch.device`` is accepted too) and
    ``precision`` (``"bf16"``). Student and teacher run there and are back on
    their own devices when this returns or raises.
    """
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    if not 0 <= alpha <= 1:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
    if isinstance(train_options.get("accelerator"), torch.device):
        train_options["accelerator"] = train_options["accelerator"].type
    cfg = TrainConfig(
        epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer,  # type: ignore[arg-type]
        weight_decay=weight_decay, seed=seed, **train_options,
    )  # fmt: skip
    device = resolve_accelerator(cfg.accelerator)
    teacher.eval()

    def loss_fn(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = call(teacher, x)
        return distillation_loss(logits, teacher_logits, y, temperature, alpha)

    with on_device(teacher, device, use_channels_last(device, cfg.channels_last)):
        result = train(
            student, train_data, cfg, val_set=val_data, max_batches=max_batches, progress=progress,
            loss_fn=loss_fn, description="distill", workers=workers,
        )  # fmt: skip
    student.eval()
    return result.history
