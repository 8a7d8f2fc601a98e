"""edgecompress.search_policy: a user evaluator and example inputs drive a search from Python."""

from __future__ import annotations

import json

import pytest
import torch

import edgecompress
from edgecompress._inputs import call
from edgecompress.errors import ConfigError
from tests.test_inputs import TwoInputs


@pytest.fixture(scope="module")
def two_input_task():  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = TwoInputs().eval()
    images, extras = torch.randn(64, 3, 16, 16), torch.randn(64, 8)
    with torch.no_grad():
        labels = model(images, extras).argmax(1)  # the base model agrees with itself: score 1.0
    calls = {"n": 0}

    @torch.no_grad()
    def evaluate(m: torch.nn.Module) -> float:
        calls["n"] += 1
        return float((m(images, extras).argmax(1) == labels).float().mean())

    batches = [((images[i : i + 16], extras[i : i + 16]), labels[i : i + 16]) for i in range(0, 64, 16)]
    return model, evaluate, calls, batches


def test_user_evaluator_drives_an_optuna_search(two_input_task, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model, evaluate, calls, batches = two_input_task
    example = (torch.zeros(1, 3, 16, 16), torch.zeros(1, 8))
    out = tmp_path / "run"
    result = edgecompress.search_policy(
        model, evaluate=evaluate, example_inputs=example, train_data=batches, finetune_batches=2,
        device="raspberry-pi-4", budget_ratio=0.8, agent="optuna", episodes=4, out=out,
    )  # fmt: skip
    records = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert len(records) == 4 and calls["n"] >= 4
    assert all("caller's evaluate()" in r["accuracy_source"] for r in records)
    assert all(r["seconds"] > 0 and set(r["phases"]) >= {"finetune", "evaluate"} for r in records)
    assert result.run_dir == out and (out / "best_policy.json").is_file()
    assert result.result["base_accuracy"] == 1.0
    assert result.policy is not None and result.best is not None
    assert result.best["latency_ms"] <= result.result["budget_ms"]
    assert json.loads((out / "best_policy.json").read_text())["base"]["input_shape"] == [[1, 3, 16, 16], [1, 8]]
    # The best policy rebuilds from Python with the example inputs, to the latency it was scored at.
    compressed, _ = edgecompress.compress(model, result.policy, example_inputs=example)
    assert call(compressed, example).shape == (1, 5)
    # The same call with a larger count resumes the run folder.
    again = edgecompress.search_policy(
        model, evaluate=evaluate, example_inputs=example, train_data=batches, finetune_batches=2,
        device="raspberry-pi-4", budget_ratio=0.8, agent="optuna", episodes=5, out=out,
    )  # fmt: skip
    assert again.result["episodes"] == 5
    assert len((out / "episodes.jsonl").read_text().splitlines()) == 5


def test_search_policy_needs_a_score_and_inputs(two_input_task, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model, evaluate, _, _ = two_input_task
    with pytest.raises(ConfigError, match=r"^search_policy\(\) needs something to score policies with"):
        edgecompress.search_policy(model, example_inputs=(torch.zeros(1, 3, 16, 16), torch.zeros(1, 8)))
    with pytest.raises(ConfigError, match=r"^search_policy\(\) needs example_inputs or input_shape"):
        edgecompress.search_policy(model, evaluate=evaluate, out=tmp_path / "x")
    assert not (tmp_path / "x").exists()
