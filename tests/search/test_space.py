"""The policy space: every driver's parameters, read from the techniques' own knobs."""

from __future__ import annotations

import random
from typing import get_args

import pytest

from edgecompress.analysis import analyze_model
from edgecompress.compressors import KNOBS
from edgecompress.config import Technique
from edgecompress.errors import ConfigError
from edgecompress.models import create_model
from edgecompress.search.space import DEFAULT_ROUND_TO, PolicySpace

SHAPE = (1, 1, 28, 28)
ALL = ("keep", "rank", "sparsity", "wbits", "clusters", "abits", "drop")


@pytest.fixture(scope="module")
def analysis():  # type: ignore[no-untyped-def]
    return analyze_model(create_model("resnet20").eval(), SHAPE)


def test_every_technique_the_config_names_declares_its_knob_and_nothing_else() -> None:
    assert set(get_args(Technique)) == set(KNOBS) == set(ALL)
    assert {k: (v.technique, v.kind, v.scope) for k, v in KNOBS.items()} == {
        "keep": ("structured", "float", "group"), "rank": ("lowrank", "float", "layer"),
        "sparsity": ("unstructured", "float", "layer"), "wbits": ("quantization", "choice", "layer"),
        "abits": ("quantization", "choice", "layer"), "clusters": ("sharing", "choice", "layer"),
        "drop": ("depth", "bool", "block"),
    }  # fmt: skip


def test_parameters_one_per_group_block_and_layer(analysis) -> None:  # type: ignore[no-untyped-def]
    space = PolicySpace(analysis.layers, ("keep", "wbits", "drop"), SHAPE)
    names = space.parameters()
    groups = {s.group for s in analysis.layers if s.prunable}
    assert sum(n.endswith(".keep") for n in names) == len(groups)
    assert sorted(n[:-5] for n in names if n.endswith(".drop")) == sorted(analysis.blocks())
    assert sum(n.endswith(".wbits") for n in names) == len(analysis.layers)


def test_decode_maps_the_action_range_onto_each_knob(analysis) -> None:  # type: ignore[no-untyped-def]
    space = PolicySpace(analysis.layers, ALL, SHAPE, bounds={"keep": 0.3, "sparsity": 0.5})
    assert [space.decode(t, -1.0) for t in ALL] == [0.3, 0.2, 0.0, 2, 0, 8, False]
    assert [space.decode(t, 1.0) for t in ALL] == [1.0, 1.0, 0.5, 32, 256, 32, True]
    assert space.decode("wbits", 0.0) == 8 and space.decode("keep", 0.0) == 0.65


def test_sample_is_seeded_in_range_and_carries_the_rounding(analysis) -> None:  # type: ignore[no-untyped-def]
    space = PolicySpace(analysis.layers, ("keep", "rank", "drop"), SHAPE, round_to=4)
    a, b = space.sample(random.Random(1)), space.sample(random.Random(1))
    assert a == b and a.round_to == 4 and a.base == {"input_shape": list(SHAPE)}
    for s in analysis.layers:
        lp = a.get(s.name)
        assert lp.drop or (0.2 <= lp.keep <= 1.0 and 0.2 <= lp.rank <= 1.0)
        if s.block and lp.drop:  # a removed layer takes no other field
            assert lp == type(lp)(drop=True)
    members = analysis.groups()
    for names in members.values():  # coupled layers share one keep
        kept = {a.get(n).keep for n in names if not a.get(n).drop and analysis.layer(n).prunable}
        assert len(kept) <= 1


def test_strongest_removes_work_only(analysis) -> None:  # type: ignore[no-untyped-def]
    space = PolicySpace(analysis.layers, ("keep", "sparsity", "wbits", "drop"), SHAPE)
    strongest = space.strongest()
    for s in analysis.layers:
        lp = strongest.get(s.name)
        if s.block:
            assert lp == type(lp)(drop=True)
        else:
            assert lp.keep == (0.2 if s.prunable else 1.0) and lp.sparsity == 0.0 and lp.wbits == 32
    assert strongest.round_to == DEFAULT_ROUND_TO == 8


def test_bad_techniques_and_bounds_are_refused(analysis) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="unknown technique 'sparsty'. Did you mean 'sparsity'"):
        PolicySpace(analysis.layers, ("sparsty",), SHAPE)
    with pytest.raises(ConfigError, match="no techniques given"):
        PolicySpace(analysis.layers, (), SHAPE)
    with pytest.raises(ConfigError, match="bound for 'wbits' invalid; bounds can be set for: keep, rank, sparsity"):
        PolicySpace(analysis.layers, ("keep",), SHAPE, bounds={"wbits": 4})
    with pytest.raises(ConfigError, match=r"keep bound 1.5 is invalid; valid: 0 < keep < 1.0"):
        PolicySpace(analysis.layers, ("keep",), SHAPE, bounds={"keep": 1.5})
    # The movable end may widen the range as far as LayerPolicy allows.
    assert PolicySpace(analysis.layers, ("keep", "sparsity"), SHAPE, bounds={"keep": 0.1, "sparsity": 0.95}).range(
        "sparsity"
    ) == (0.0, 0.95)


def test_a_space_pickled_by_edgecompress_0_1_unpickles(analysis) -> None:  # type: ignore[no-untyped-def]
    """Ray Tune's searcher state pickles the space; an experiment saved before 0.2 must restore."""
    space = PolicySpace.__new__(PolicySpace)
    space.__setstate__({"layers": analysis.layers, "techniques": ("keep",), "input_shape": SHAPE,
                        "keep_min": 0.3, "rank_min": 0.2, "sparsity_max": 0.9})  # fmt: skip
    assert space.bounds == {"keep": 0.3} and space.round_to == 8 and space.keep_min == 0.3
    assert space.decode("keep", -1.0) == 0.3
