"""docs/examples/any_task.py runs as documented: a two-input model searched with a macro-F1 evaluator."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest
import torch

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "any_task.py"


def test_macro_f1_matches_a_hand_count() -> None:
    module = runpy.run_path(str(EXAMPLE))
    pred = torch.tensor([0, 0, 1, 1, 2, 2])
    target = torch.tensor([0, 1, 1, 1, 2, 0])
    # class 0: tp 1 fp 1 fn 1 -> 0.5; class 1: tp 2 fp 0 fn 1 -> 0.8; class 2: tp 1 fp 1 fn 0 -> 2/3
    assert module["macro_f1"](pred, target, 3) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


def test_the_example_runs(fmnist, tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["any_task.py", "--out", str(out), "--trials", "3", "--train-samples", "1000"])
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    text = capsys.readouterr().out
    assert "base macro-F1" in text and (out / "episodes.jsonl").is_file()
    assert len((out / "episodes.jsonl").read_text().splitlines()) == 3
    assert "rebuilt from the policy" in text or "no policy met the budget" in text
