from __future__ import annotations

import pytest
import torch

from edgecompress import Policy, compress, distill
from edgecompress.data import load_dataset
from edgecompress.errors import ConfigError
from edgecompress.models import create_model
from edgecompress.training import evaluate
from edgecompress.training.distill import distillation_loss


def test_loss_is_zero_kl_when_student_equals_teacher() -> None:
    logits = torch.randn(5, 10)
    y = torch.randint(0, 10, (5,))
    pure_kd = distillation_loss(logits, logits, y, temperature=4.0, alpha=1.0)
    assert float(pure_kd) == pytest.approx(0.0, abs=1e-6)
    ce = distillation_loss(logits, logits, y, temperature=4.0, alpha=0.0)
    assert float(ce) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y)))


def test_distill_recovers_accuracy_and_keeps_constraints(tiny_fmnist) -> None:
    data = load_dataset("fashion-mnist", tiny_fmnist, val_size=40)
    torch.manual_seed(0)
    teacher = create_model("lenet5")
    from edgecompress.config import TrainConfig
    from edgecompress.training import train

    train(teacher, data.train, TrainConfig(epochs=8, batch_size=32), progress=False)
    teacher_acc = evaluate(teacher, data.test)["top1"]
    assert teacher_acc >= 0.9
    policy = Policy.uniform(teacher, keep=0.5, sparsity=0.7, clusters=8, base={"input_shape": [1, 1, 28, 28]})
    student, _ = compress(teacher, policy)
    zeros = student.fc1.weight == 0
    history = distill(student, teacher, data.train, epochs=6, lr=0.01, batch_size=32, progress=False)
    assert len(history) == 6 and history[-1].train_loss < history[0].train_loss
    assert evaluate(student, data.test)["top1"] >= teacher_acc - 0.1
    assert bool((student.fc1.weight[zeros] == 0).all())  # pruned weights stay pruned
    assert torch.unique(student.fc1.weight[~zeros]).numel() <= 8  # still shared


def test_distill_rejects_bad_settings(lenet5) -> None:
    model, _ = lenet5
    with pytest.raises(ConfigError, match="temperature must be > 0, got 0"):
        distill(model, model, [], temperature=0)
    with pytest.raises(ConfigError, match="alpha must be in \\[0, 1\\], got 2"):
        distill(model, model, [], alpha=2)
