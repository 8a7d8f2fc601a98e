"""Macro precision, recall and F1 and the confusion matrix: checked against hand-computed fractions."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from edgecompress.data import load_dataset
from edgecompress.errors import ConfigError, ModelError
from edgecompress.models import create_model
from edgecompress.training import classification_metrics, evaluate

# Rows: true class, columns: predicted class. Class 2 is never predicted (precision 0 by zero_division), class 3
# has no sample but is predicted once (recall 0 by zero_division), class 4 occurs nowhere (left out of the mean).
CONFUSION = [
    [5, 1, 0, 0, 0],
    [2, 3, 0, 1, 0],
    [1, 1, 0, 0, 0],
    [0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0],
]
# By hand. Column sums (TP + FP): 8, 5, 0, 1, 0; row sums (TP + FN): 6, 6, 2, 0, 0; classes present: 0, 1, 2, 3.
# precision: 5/8, 3/5, 0 (no prediction), 0/1        -> macro (5/8 + 3/5) / 4 = (25/40 + 24/40) / 4 = 49/160
# recall:    5/6, 3/6, 0/2, 0 (no sample)            -> macro (5/6 + 1/2) / 4 = (4/3) / 4 = 1/3
# F1 = 2PR/(P+R) = 2TP/(2TP+FP+FN): 10/14, 6/11, 0, 0 -> macro (5/7 + 6/11) / 4 = (55/77 + 42/77) / 4 = 97/308
# accuracy: (5 + 3) / 14 = 4/7
EXPECTED = {
    "accuracy": Fraction(4, 7),
    "precision_macro": Fraction(49, 160),
    "recall_macro": Fraction(1, 3),
    "f1_macro": Fraction(97, 308),
}


def _check(got: dict[str, float], expected: dict[str, Fraction]) -> None:
    for key, value in expected.items():
        assert got[key] == pytest.approx(float(value), abs=1e-12), key


def test_hand_computed_confusion_matrix() -> None:
    got = classification_metrics(torch.tensor(CONFUSION))
    assert set(got) == set(EXPECTED)
    _check(got, EXPECTED)


def test_f1_per_class_is_the_harmonic_mean_of_precision_and_recall() -> None:
    # One class, P = 5/8 and R = 5/6: 2PR/(P+R) = (50/48) / (70/48) = 5/7, as 2TP/(2TP+FP+FN) above.
    p, r = Fraction(5, 8), Fraction(5, 6)
    assert 2 * p * r / (p + r) == Fraction(5, 7)


def test_perfect_and_empty_matrices() -> None:
    _check(classification_metrics(torch.diag(torch.tensor([3, 1, 4]))), dict.fromkeys(EXPECTED, Fraction(1)))
    _check(classification_metrics(torch.zeros(4, 4, dtype=torch.int64)), dict.fromkeys(EXPECTED, Fraction(0)))
    _check(classification_metrics(torch.zeros(0, 0, dtype=torch.int64)), dict.fromkeys(EXPECTED, Fraction(0)))


def test_everything_predicted_as_one_class() -> None:
    # Two classes, 3 + 1 samples, all predicted as class 0: P = 3/4, 0 (never predicted); R = 1, 0.
    # F1 class 0: 2 (3/4)(1) / (7/4) = 6/7. Macro over both classes present: P 3/8, R 1/2, F1 3/7.
    expected = {"accuracy": Fraction(3, 4), "precision_macro": Fraction(3, 8), "recall_macro": Fraction(1, 2),
                "f1_macro": Fraction(3, 7)}  # fmt: skip
    _check(classification_metrics(torch.tensor([[3, 0], [1, 0]])), expected)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.zeros(2, 3, dtype=torch.int64), "square .* got shape \\(2, 3\\)"),
        (torch.zeros(4, dtype=torch.int64), "square .* got shape \\(4,\\)"),
        (torch.zeros(2, 2), "integer counts, got dtype torch.float32"),
        (torch.tensor([[1, -1], [0, 2]]), "counts >= 0"),
    ],
)
def test_bad_matrices_are_refused(bad: torch.Tensor, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        classification_metrics(bad)


def _dataset_of(confusion: list[list[int]]) -> TensorDataset:
    """Samples whose input is the one-hot logit vector of the predicted class (the model is the identity)."""
    xs, ys = [], []
    for true, row in enumerate(confusion):
        for predicted, count in enumerate(row):
            for _ in range(count):
                xs.append(nn.functional.one_hot(torch.tensor(predicted), len(row)).float())
                ys.append(true)
    order = torch.randperm(len(ys), generator=torch.Generator().manual_seed(0))  # mix classes across batches
    return TensorDataset(torch.stack(xs)[order], torch.tensor(ys)[order])


@pytest.mark.parametrize("batch_size", [1, 4, 512])
def test_evaluate_metrics_on_a_fixed_dataset_equal_the_hand_computation(batch_size: int) -> None:
    data = _dataset_of(CONFUSION)
    got = evaluate(nn.Identity(), data, batch_size, topk=(1,), metrics=True)
    assert set(got) == {"top1", "precision_macro", "recall_macro", "f1_macro", "confusion"}
    assert got["confusion"] == CONFUSION
    assert got["top1"] == pytest.approx(float(EXPECTED["accuracy"]))
    _check(got, {k: v for k, v in EXPECTED.items() if k != "accuracy"})


def test_evaluate_without_metrics_is_unchanged() -> None:
    data = _dataset_of(CONFUSION)
    plain = evaluate(nn.Identity(), data, topk=(1, 2))
    assert set(plain) == {"top1", "top2"} and plain["top1"] == 8 / 14
    with_metrics = evaluate(nn.Identity(), data, topk=(1, 2), metrics=True)
    assert {k: with_metrics[k] for k in plain} == plain


def test_evaluate_refuses_labels_outside_the_models_outputs() -> None:
    data = TensorDataset(torch.eye(3), torch.tensor([0, 1, 3]))
    assert evaluate(nn.Identity(), data)["top1"] == pytest.approx(2 / 3)  # top-k alone never looked
    with pytest.raises(ModelError, match="labels outside the model's 3 outputs"):
        evaluate(nn.Identity(), data, metrics=True)


def test_evaluate_metrics_of_a_real_model(tiny_fmnist: Path) -> None:
    data = load_dataset("fashion-mnist", tiny_fmnist, val_size=40)
    torch.manual_seed(0)
    model = create_model("lenet5").train()
    got = evaluate(model, data.test, 16, topk=(1, 5), metrics=True)
    assert model.training  # its mode is restored
    confusion = torch.tensor(got["confusion"])
    assert confusion.shape == (10, 10) and int(confusion.sum()) == len(data.test)  # type: ignore[arg-type]
    assert int(confusion.trace()) / len(data.test) == pytest.approx(got["top1"])  # type: ignore[arg-type]
    expected = classification_metrics(confusion)
    assert {k: got[k] for k in ("precision_macro", "recall_macro", "f1_macro")} == {
        k: expected[k] for k in ("precision_macro", "recall_macro", "f1_macro")
    }
