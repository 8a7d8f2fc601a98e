"""Knowledge distillation (Hinton et al. 2015): the base model teaches the compressed one.

Loss = alpha x T^2 x KL(softmax(teacher / T) || softmax(student / T))
       + (1 - alpha) x cross-entropy(student, labels)
       [+ feature_weight x MSE(adapter(student features), teacher features)].
Student and teacher may be different architectures: the loss needs only their
logits. The optional hint term (FitNets, Romero et al. 2015) also matches the
penultimate features, the input of each model's last ``nn.Linear``, through a
linear adapter trained with the student when the widths differ; it is off by
default, and then nothing is hooked or added.
The student trains through its compression constraints (masks, tied weights,
fake quantization are parametrizations and hooks of its forward pass), so
distillation cannot undo them. Uses the project's one training loop, on its
accelerator: the teacher moves there with the student, and both come back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
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


def _last_linear(model: nn.Module, role: str) -> tuple[str, nn.Linear]:
    """The last ``nn.Linear`` of ``model`` in module order and its name: its input is the feature the hint matches."""
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ConfigError(
            f"feature_weight > 0 matches the inputs of the last nn.Linear of student and teacher, but the {role} "
            f"({type(model).__name__}) has no nn.Linear; use feature_weight=0 (logits only)"
        )
    return found[-1]


class _StudentWithAdapter(nn.Module):
    """The student plus the hint's adapter, so the one training loop optimises (and moves) both.

    Calls go to the student alone: the adapter is applied in the loss. The student is
    not changed: the adapter lives here and is dropped with this wrapper.
    """

    def __init__(self, student: nn.Module, adapter: nn.Module) -> None:
        super().__init__()
        self.student = student
        self.adapter = adapter

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.student(*args, **kwargs)


@contextmanager
def _capture_input(module: nn.Module, into: dict[str, torch.Tensor], key: str) -> Iterator[None]:
    """While the block runs, ``into[key]`` is the input of ``module``'s latest call; the hook goes afterwards."""

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
        into[key] = args[0]

    handle = module.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()
        into.pop(key, None)


def _captured(features: dict[str, torch.Tensor], role: str, layer: str) -> torch.Tensor:
    if role not in features:
        raise ConfigError(
            f"the {role}'s last nn.Linear ({layer!r}) did not run in its forward pass, so the hint has no features "
            "to match; use feature_weight=0 (logits only)"
        )
    return features.pop(role)


def distill(
    student: nn.Module,
    teacher: nn.Module,
    train_data: Dataset,
    epochs: int = 1,
    temperature: float = 4.0,
    alpha: float = 0.9,
    *,
    feature_weight: float = 0.0,
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

    ``student`` and ``teacher`` may be any two classifiers with the same number
    of outputs, e.g. a compact model of the zoo (``models.students_for``) and
    the model it replaces. ``feature_weight`` > 0 adds the FitNets hint:
    ``feature_weight`` x the mean squared error between the student's and the
    teacher's inputs to their last ``nn.Linear``, the student's mapped by a
    learned linear adapter when the widths differ (trained with the student,
    seeded by ``seed``, discarded at the end: the student's modules and
    parameters are unchanged, and no hook is left on either model).

    ``train_options`` are further ``TrainConfig`` fields, e.g. ``augment``,
    ``accelerator`` (``"cuda"``; a ``torch.device`` is accepted too) and
    ``precision`` (``"bf16"``). Student and teacher run there and are back on
    their own devices when this returns or raises.
    """
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    if not 0 <= alpha <= 1:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
    if not feature_weight >= 0:
        raise ConfigError(f"feature_weight must be >= 0, got {feature_weight}")
    if isinstance(train_options.get("accelerator"), torch.device):
        train_options["accelerator"] = train_options["accelerator"].type
    cfg = TrainConfig(
        epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer,  # type: ignore[arg-type]
        weight_decay=weight_decay, seed=seed, **train_options,
    )  # fmt: skip
    device = resolve_accelerator(cfg.accelerator)
    teacher.eval()
    model = student
    features: dict[str, torch.Tensor] = {}
    hooks = ExitStack()
    if feature_weight > 0:
        student_layer, student_head = _last_linear(student, "student")
        teacher_layer, teacher_head = _last_linear(teacher, "teacher")
        adapter: nn.Module = nn.Identity()
        if student_head.in_features != teacher_head.in_features:
            # Seeded, so the adapter's start does not depend on the caller's random state.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                adapter = nn.Linear(student_head.in_features, teacher_head.in_features)
            adapter.to(student_head.weight.device)
        model = _StudentWithAdapter(student, adapter)
        hooks.enter_context(_capture_input(student_head, features, "student"))
        hooks.enter_context(_capture_input(teacher_head, features, "teacher"))

    def loss_fn(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = call(teacher, x)
        loss = distillation_loss(logits, teacher_logits, y, temperature, alpha)
        if feature_weight > 0:
            # The student's features come from the training loop's forward pass, the teacher's from the call above.
            student_features = _captured(features, "student", student_layer)
            teacher_features = _captured(features, "teacher", teacher_layer)
            hint = F.mse_loss(adapter(student_features).float(), teacher_features.float())
            loss = loss + feature_weight * hint
        return loss

    with hooks, on_device(teacher, device, use_channels_last(device, cfg.channels_last)):
        result = train(
            model, train_data, cfg, val_set=val_data, max_batches=max_batches, progress=progress,
            loss_fn=loss_fn, description="distill", workers=workers,
        )  # fmt: skip
    student.eval()
    return result.history
