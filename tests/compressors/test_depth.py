"""Block removal (``drop``): which blocks qualify, exactness, reports, refusals, and the latency it saves."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from edgecompress.analysis import analyze_model
from edgecompress.compressors import LayerPolicy, Policy, compress
from edgecompress.errors import PolicyError
from edgecompress.latency_models import estimate_latency
from edgecompress.latency_models.estimate import dispatched_ops
from edgecompress.latency_models.ops import trace_ops
from edgecompress.models import create_model

SHAPE = (1, 1, 28, 28)


def _policy(layers: dict[str, LayerPolicy], round_to: int = 1) -> Policy:
    return Policy(layers, base={"input_shape": list(SHAPE)}, round_to=round_to)


def test_removable_blocks_are_the_identity_shortcut_ones(resnet20) -> None:
    _, analysis = resnet20
    # Blocks 3 and 6 open a stage (stride 2, 1x1 projection shortcut): not removable.
    assert list(analysis.blocks()) == [f"layers.{i}" for i in (0, 1, 2, 4, 5, 7, 8)]
    assert analysis.blocks()["layers.4"] == ["layers.4.conv1", "layers.4.conv2"]
    assert analysis.layer("layers.3.conv1").block == "" and analysis.layer("conv1").block == ""
    mobilenet = analyze_model(create_model("mobilenetv2-0.5").eval(), SHAPE)
    assert len(mobilenet.blocks()) == 10  # the blocks with use_res_connect
    assert all(len(v) == 3 for v in mobilenet.blocks().values())
    assert analyze_model(create_model("lenet5").eval(), SHAPE).blocks() == {}


def test_drop_is_exactly_the_block_replaced_by_its_shortcut(resnet20) -> None:
    model, analysis = resnet20
    compressed, report = compress(model, _policy({"layers.4.conv2": LayerPolicy(drop=True)}), analysis=analysis)
    by_hand = copy.deepcopy(model)
    by_hand.layers[4] = nn.Identity()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(compressed(x), by_hand(x))
    assert isinstance(compressed.layers[4], nn.Identity)
    rows = {r.name: r for r in report.layers}
    for name in ("layers.4.conv1", "layers.4.conv2"):
        assert (rows[name].params_after, rows[name].macs_after, rows[name].encoding) == (0, 0, "removed")
        assert report.layers and rows[name].applied == {"depth": {"block": "layers.4", "removed": True}}
    block_params = sum(p.numel() for p in model.layers[4].parameters())
    assert report.model_params_after == report.model_params_before - block_params
    assert report.warnings == ["depth: block layers.4 removed because layers.4.conv2 asked; layers.4.conv1 go with it"]


def test_drop_outside_a_removable_block_is_refused(resnet20) -> None:
    model, analysis = resnet20
    with pytest.raises(PolicyError) as err:
        compress(model, _policy({"layers.3.conv1": LayerPolicy(drop=True)}), analysis=analysis)
    assert str(err.value) == (
        "drop asked on layers.3.conv1, which belong to no removable block (a residual block with an identity "
        "shortcut); removable blocks: layers.0, layers.1, layers.2, layers.4, layers.5, layers.7, layers.8"
    )
    with pytest.raises(PolicyError, match=r"layer 'x': drop = 'yes' is invalid; valid: true or false"):
        LayerPolicy.from_dict({"drop": "yes"}, "x")


def test_drop_with_pruning_removes_operators_and_predicted_latency(resnet20) -> None:
    model, analysis = resnet20
    keep = {s.name: LayerPolicy(keep=0.5) for s in analysis.layers if s.prunable}
    dropped = {**keep, **{n: LayerPolicy(drop=True) for b in ("layers.2", "layers.8") for n in analysis.blocks()[b]}}
    pruned, _ = compress(model, _policy(keep, 8), analysis=analysis)
    both, report = compress(model, _policy(dropped, 8), analysis=analysis)
    x = torch.randn(2, 1, 28, 28)
    assert both(x).shape == (2, 10)
    # Each removed BasicBlock takes 2 convolutions, 2 BatchNorms, 2 ReLUs and the add out of the traced graph.
    ops_pruned, ops_both = trace_ops(pruned, SHAPE), trace_ops(both, SHAPE)
    assert len(ops_pruned) - len(ops_both) == 2 * (len(ops_pruned) - len(trace_ops(_drop_one(pruned), SHAPE)))
    assert dispatched_ops(ops_both) < dispatched_ops(ops_pruned)
    for device in ("raspberry-pi-4", "host"):
        assert estimate_latency(both, SHAPE, device).total_ms < estimate_latency(pruned, SHAPE, device).total_ms
    assert not report.skipped


def _drop_one(model: nn.Module) -> nn.Module:
    other = copy.deepcopy(model)
    other.layers[1] = nn.Identity()
    return other


def test_dropped_block_in_mobilenet_keeps_the_rest_prunable() -> None:
    torch.manual_seed(0)
    model = create_model("mobilenetv2-0.5").eval()
    analysis = analyze_model(model, SHAPE)
    layers = {s.name: LayerPolicy(keep=0.5) for s in analysis.layers if s.prunable}
    layers.update({n: LayerPolicy(drop=True) for n in analysis.blocks()["features.5"]})
    compressed, report = compress(model, _policy(layers, 8), analysis=analysis)
    assert isinstance(compressed.features[5], nn.Identity)
    assert compressed(torch.randn(1, 1, 28, 28)).shape == (1, 10)
    kept = {r.name: r.out_channels_after for r in report.layers}
    assert (
        kept["features.5.conv.2"] == 0
        and 0 < kept["features.6.conv.0.0"] < analysis.layer("features.6.conv.0.0").out_channels
    )
