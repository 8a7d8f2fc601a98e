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
