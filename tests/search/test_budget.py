"""The budget: limit and floor, the repair, and the fill (widening, removed blocks brought back)."""

from __future__ import annotations

import pytest

from edgecompress import Policy
from edgecompress.compressors import LayerPolicy, compress
from edgecompress.errors import ConfigError
from edgecompress.latency_models import estimate_latency, load_device
from edgecompress.search.budget import Budget, _restore, fill
from edgecompress.search.objective import Objective
from edgecompress.search.space import PolicySpace


@pytest.fixture(scope="module")
def setup(tiny_fmnist_shared, train_tiny):
    return train_tiny(tiny_fmnist_shared, "resnet20", epochs=2)


def test_budget_from_ratio_or_ms_and_refused_below_the_floor() -> None:
    b = Budget.create(2.0, 0.5, device="pi", budget_ratio=0.5)
    assert (b.limit_ms, b.base_ms, b.floor_ms) == (1.0, 2.0, 0.5) and b.within(1.0) and not b.within(1.0001)
    assert Budget.create(2.0, 0.5, device="pi", budget_ms=0.7, budget_ratio=0.9).limit_ms == 0.7
    with pytest.raises(ConfigError, match=r"budget 0.4000 ms cannot be met: the strongest compression allowed "
                                          r"reaches 0.5000 ms on pi \(base 2.0000 ms\); raise the budget to at "
                                          r"least 0.5000 ms \(budget_ratio 0.250\)"):  # fmt: skip
        Budget.create(2.0, 0.5, device="pi", budget_ratio=0.2)
    with pytest.raises(ConfigError, match=r"give budget_ms, or budget_ratio in \(0, 1\]; got budget_ratio=1.5"):
        Budget.create(2.0, 0.5, device="pi", budget_ratio=1.5)


def test_repair_scales_keeps_then_removes_blocks(setup) -> None:
    model, data = setup
    shape = (1, 1, 28, 28)
    obj = Objective(model, data.val, "raspberry-pi-4", input_shape=shape)
    space = PolicySpace(obj.analysis.layers, ("keep", "drop"), shape)
    base_ms = obj.base_latency_ms()
    floor = obj.predict_ms(space.strongest())
    budget = Budget.create(base_ms, floor, device="raspberry-pi-4", budget_ratio=0.6)
    full = space.uniform(1.0)
    repaired, scale, changed = budget.repair(full, space, obj.predict_ms)
    assert changed and scale < 1 and obj.predict_ms(repaired) <= budget.limit_ms
    keeps = {lp.keep for lp in repaired.layers.values() if lp.keep < 1}
    assert keeps == {round(scale, 4)} or min(keeps) >= space.keep_min  # one scale for every layer (floor aside)
    assert budget.repair(repaired, space, obj.predict_ms)[2] is False  # within budget: unchanged
    # At the floor the blocks go, one at a time, before the strongest policy.
    tight = Budget.create(base_ms, floor, device="raspberry-pi-4", budget_ms=obj.predict_ms(space.uniform(0.2)) * 0.97)
    at_floor, _, changed = tight.repair(space.uniform(0.2), space, obj.predict_ms)
    removed = {s.block for s in obj.analysis.layers if at_floor.get(s.name).drop}
    assert changed and obj.predict_ms(at_floor) <= tight.limit_ms and 0 < len(removed) < len(obj.analysis.blocks())


def test_fill_widens_into_the_unused_budget_and_no_further(setup) -> None:
    from edgecompress.compressors.structured import kept_channels

    model, data = setup
    shape = (1, 1, 28, 28)
    lean = Policy.uniform(model, keep=0.25, round_to=8)
    obj = Objective(model, data.val, "raspberry-pi-4", input_shape=shape)
    base_ms, lean_ms = obj.base_latency_ms(), obj.predict_ms(lean)
    budget = lean_ms + 0.5 * (base_ms - lean_ms)
    wide, steps = fill(obj, lean, budget)
    assert steps > 0 and obj.predict_ms(wide) <= budget
    assert obj.predict_ms(wide) > lean_ms + 0.25 * (base_ms - lean_ms)  # it used the budget
    compressed, _ = compress(model, wide, input_shape=shape)
    assert estimate_latency(compressed, shape, "raspberry-pi-4").total_ms == pytest.approx(obj.predict_ms(wide))
    groups = {s.group: s for s in obj.analysis.layers if s.prunable}
    grown = 0
    for g, spec in groups.items():
        keep = wide.get(spec.name).keep
        assert keep >= lean.get(spec.name).keep
        assert all(wide.get(s.name).keep == keep for s in obj.analysis.layers if s.group == g)  # coupled alike
        n = kept_channels(spec.out_channels, keep, 8)
        grown += n > kept_channels(spec.out_channels, 0.25, 8)
        if n < spec.out_channels:  # maximal: one more step on any group breaks the budget
            more = {s.name: s.group for s in obj.analysis.layers}
            layers = {
                name: (lp if more.get(name) != g else type(lp)(keep=min(1.0, (n + 8) / spec.out_channels)))
                for name, lp in wide.layers.items()
            }
            assert obj.predict_ms(Policy(layers, base=wide.base, round_to=8)) > budget
    assert grown >= 2
    # Over budget already, or nothing pruned: unchanged, no steps.
    assert fill(obj, lean, lean_ms * 0.9) == (lean, 0)
    assert fill(obj, Policy.uniform(model, round_to=8), base_ms) == (Policy.uniform(model, round_to=8), 0)
    ev = obj(wide)
    assert ev.policy["layers"] == wide.to_dict()["layers"] and ev.latency_ms == pytest.approx(obj.predict_ms(wide))


def test_fill_takes_whole_simd_blocks_on_a_blocked_table(setup) -> None:
    from edgecompress.compressors.structured import kept_channels

    model, data = setup
    shape = (1, 1, 28, 28)
    assert load_device("host").channel_block == 16
    obj = Objective(model, data.val, "host", input_shape=shape)
    lean = Policy.uniform(model, keep=0.2, round_to=8)
    budget = 0.5 * obj.base_latency_ms()
    wide, steps = fill(obj, lean, budget)
    assert steps > 0 and obj.predict_ms(lean) < obj.predict_ms(wide) <= budget
    # Maximal for both kinds of step: neither round_to more channels nor the rest of the block fits.
    for spec in obj.analysis.layers:
        if not spec.prunable or spec.name not in wide.layers:
            continue
        c = spec.out_channels
        n = kept_channels(c, wide.get(spec.name).keep, 8)
        for wider in {min(c, n + 8), min(c, -(-(n + 1) // 16) * 16)} - {n}:
            keep = 1.0 if wider >= c else wider / c
            layers = {
                name: (lp if s.group != spec.group else type(lp)(keep=keep))
                for s in obj.analysis.layers
                for name, lp in wide.layers.items()
                if name == s.name
            }
            assert obj.predict_ms(Policy(layers, base=wide.base, round_to=8)) > budget, (spec.name, n, wider)


def test_fill_widens_before_it_brings_back_a_removed_block(setup) -> None:

    model, data = setup
    shape = (1, 1, 28, 28)
    obj = Objective(model, data.val, "raspberry-pi-4", input_shape=shape)
    blocks = obj.analysis.blocks()
    gone = blocks["layers.4"]
    removed = {n: LayerPolicy(drop=True) for n in gone}
    # Pruned elsewhere and a tight budget: the widening takes the budget, the block stays removed.
    lean = Policy(
        {**Policy.uniform(model, keep=0.25, round_to=8).layers, **removed},
        base={"input_shape": list(shape)},
        round_to=8,
    )
    budget = obj.predict_ms(lean) + 0.02 * obj.base_latency_ms()
    wide, steps = fill(obj, lean, budget)
    assert steps > 0 and obj.predict_ms(lean) < obj.predict_ms(wide) <= budget
    assert all(wide.get(n) == LayerPolicy(drop=True) for n in gone)
    assert sum(lp.keep for lp in wide.layers.values()) > sum(lp.keep for lp in lean.layers.values())
    # Nothing left to widen: the block comes back whole if the budget holds it, else stays out.
    full = Policy(removed, base={"input_shape": list(shape)}, round_to=8)
    full_ms = obj.predict_ms(full)
    assert fill(obj, full, full_ms) == (full, 0)
    assert fill(obj, full, obj.base_latency_ms()) == (
        Policy({n: LayerPolicy() for n in gone}, base=full.base, round_to=8),
        1,
    )
    # Its layer coupled to a pruned kept group takes that group's keep; its own channels stay whole.
    half = Policy({**Policy.uniform(model, keep=0.5, round_to=8).layers, **removed}, base=full.base, round_to=8)
    back = _restore(obj, half, obj.base_latency_ms())
    assert back is not None
    outside = {s.group for s in obj.analysis.layers if s.name not in gone}
    inner = [n for n in gone if obj.analysis.layer(n).group not in outside]
    assert inner and all(back.get(n).keep == 1.0 for n in inner)
    assert all(back.get(n).keep == 0.5 for n in gone if n not in inner)
    # Two blocks removed: the cheaper one comes back, the other stays removed.
    drop7 = {n: LayerPolicy(drop=True) for n in blocks["layers.7"]}
    two = Policy({**removed, **drop7}, base=full.base, round_to=8)
    one_back = _restore(obj, two, obj.base_latency_ms())
    assert one_back is not None
    back_blocks = [b for b in ("layers.4", "layers.7") if not one_back.get(blocks[b][0]).drop]
    assert len(back_blocks) == 1
    other = "layers.7" if back_blocks == ["layers.4"] else "layers.4"
    only_other = Policy({n: LayerPolicy(drop=True) for n in blocks[other]}, base=full.base, round_to=8)
    alt = _restore(obj, only_other, obj.base_latency_ms())
    assert alt is not None
    alt = Policy(
        {**alt.layers, **{n: LayerPolicy(drop=True) for n in blocks[back_blocks[0]]}}, base=full.base, round_to=8
    )
    assert obj.predict_ms(one_back) <= obj.predict_ms(alt)
