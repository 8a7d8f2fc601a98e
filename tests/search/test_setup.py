"""SearchSetup: what every driver (and the env) is handed."""

from __future__ import annotations

import pytest

from edgecompress.errors import ConfigError
from edgecompress.search.budget import Budget
from edgecompress.search.objective import Objective
from edgecompress.search.setup import SearchSetup
from edgecompress.search.space import PolicySpace

SHAPE = (1, 1, 28, 28)


def test_fill_needs_predicted_latency(tiny_fmnist_shared, train_tiny) -> None:  # type: ignore[no-untyped-def]
    model, data = train_tiny(tiny_fmnist_shared, "lenet5", 1)
    space = PolicySpace(Objective(model, data.val, "host", input_shape=SHAPE).analysis.layers, ("keep",), SHAPE)
    budget = Budget(limit_ms=1.0, base_ms=2.0, floor_ms=0.5)
    measured = Objective(model, data.val, "host", input_shape=SHAPE, latency="measured")
    with pytest.raises(ConfigError, match="fill_budget widens policies by their predicted latency, but the "
                                          "objective's latency is 'measured'"):  # fmt: skip
        SearchSetup(measured, space, budget, {}, "", fill_budget=True)
    assert SearchSetup(measured, space, budget, {}, "").fill(space.uniform(0.5))[1] == 0  # no fill asked: none


def test_a_device_that_cannot_price_the_base_model_is_refused(  # type: ignore[no-untyped-def]
    tiny_fmnist_shared, train_tiny, tmp_path
) -> None:
    """Operators a table lacks would count as 0 ms: a budget on the rest means nothing, so no search starts."""
    from edgecompress.config import RunConfig
    from edgecompress.latency_models import load_device
    from edgecompress.latency_models.table import LatencyTable
    from edgecompress.search.setup import create_setup

    model, data = train_tiny(tiny_fmnist_shared, "lenet5", 1)
    host = load_device("host")
    assert isinstance(host, LatencyTable)
    partial = LatencyTable(dict(host.meta), {k: v for k, v in host.entries.items() if not k.startswith("linear|")})
    path = tmp_path / "partial.table.json"
    partial.save(path)
    with pytest.raises(
        ConfigError,
        match=r"cannot price 3 of the base model's operator signatures \(e\.g\. linear\|.*those operators would "
        r"count as 0 ms.*edgecompress profile --model MODEL",
    ):
        create_setup(RunConfig(device=str(path)), model, val_data=data.val, train_data=data.train,
                     input_shape=SHAPE, base={})  # fmt: skip
    # The whole table prices it, and says what its estimate warns about (nothing, here).
    setup = create_setup(
        RunConfig.model_validate({"device": "host", "search": {"budget_ratio": 1.0, "finetune_batches": 0}}),
        model, val_data=data.val, train_data=data.train, input_shape=SHAPE, base={},
    )  # fmt: skip
    assert setup.latency_warnings == [] and setup.budget.base_ms > 0


def test_the_uniform_reference_prices_its_bisection_and_scores_one_policy(  # type: ignore[no-untyped-def]
    tiny_fmnist_shared, train_tiny
) -> None:
    from edgecompress.search.setup import reference_scorings, uniform_within_budget

    model, data = train_tiny(tiny_fmnist_shared, "lenet5", 1)
    objective = Objective(model, data.val, "raspberry-pi-4", input_shape=SHAPE)
    space = PolicySpace(objective.analysis.layers, ("keep",), SHAPE)
    budget = Budget.create(objective.base_latency_ms(), 0.0, device="raspberry-pi-4", budget_ratio=0.8)
    setup = SearchSetup(objective, space, budget, {}, "")
    ticks: list[int] = []
    found = uniform_within_budget(setup, progress=ticks.append)
    assert found is not None and found["latency_ms"] <= budget.limit_ms
    assert ticks == [1] and len(objective._cache) == 1  # ten keeps priced, one scored
    assert reference_scorings(setup) == 6


def test_settings_the_agent_does_not_read_are_named() -> None:
    from edgecompress.config import load_config
    from edgecompress.workflows.search import unused_settings

    cfg = load_config(None, {"search.agent": "ddpg", "search.sampler": "nsga2", "search.workers": 3})
    assert unused_settings(cfg) == [
        "search.sampler = 'nsga2' is read by --agent optuna / ray only; --agent ddpg ignores it",
        "search.workers = 3 is read by --agent ray only; --agent ddpg ignores it",
    ]
    assert unused_settings(load_config(None, {"search.agent": "optuna", "search.sampler": "nsga2"})) == []
    assert unused_settings(load_config(None, {"search.agent": "random"})) == []  # defaults are never named
