from __future__ import annotations

import copy

import pytest
import torch

from edgecompress.analysis import analyze_model
from edgecompress.models import create_model


def test_lenet5_matches_hand_computed_values() -> None:
    a = analyze_model(create_model("lenet5"), (1, 1, 28, 28))
    rows = {s.name: s for s in a.layers}
    assert [s.name for s in a.layers] == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    # conv1: 6 filters of 1x5x5 + 6 biases; output 6x28x28, each output 25 MACs.
    assert (rows["conv1"].params, rows["conv1"].macs) == (6 * 25 + 6, 6 * 28 * 28 * 25)
    assert rows["conv1"].in_hw == (28, 28) and rows["conv1"].out_hw == (28, 28)
    # conv2: 16 filters of 6x5x5 + 16 biases on a 14x14 input -> 10x10.
    assert (rows["conv2"].params, rows["conv2"].macs) == (16 * 150 + 16, 16 * 10 * 10 * 150)
    assert rows["conv2"].in_hw == (14, 14) and rows["conv2"].out_hw == (10, 10)
    assert (rows["fc1"].params, rows["fc1"].macs) == (400 * 120 + 120, 400 * 120)
    assert (rows["fc2"].params, rows["fc2"].macs) == (120 * 84 + 84, 120 * 84)
    assert (rows["fc3"].params, rows["fc3"].macs) == (84 * 10 + 10, 84 * 10)
    assert rows["conv2"].weight_bytes == 2416 * 4
    assert rows["conv2"].activation_bytes == 16 * 10 * 10 * 4
    assert a.totals["params"] == 61_706
    assert a.totals["macs"] == 117_600 + 240_000 + 48_000 + 10_080 + 840
    assert [s.kind for s in a.layers] == ["conv", "conv", "linear", "linear", "linear"]
    assert [s.prunable for s in a.layers] == [True, True, True, True, False]
    assert len({s.group for s in a.layers}) == 5  # nothing coupled in a plain chain


def test_macs_match_a_forward_pass_count() -> None:
    """Count MACs independently with torch's FLOP counter (2 FLOPs per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode

    for name in ("resnet20", "mobilenetv2"):
        model = create_model(name).eval()
        a = analyze_model(model, (1, 1, 28, 28))
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.zeros(1, 1, 28, 28))
        assert 2 * a.totals["macs"] == counter.get_total_flops(), name


def test_resnet20_residual_groups() -> None:
    a = analyze_model(create_model("resnet20"), (1, 1, 28, 28))
    groups = a.groups()
    stage1 = ["conv1", "layers.0.conv2", "layers.1.conv2", "layers.2.conv2"]
    stage2 = ["layers.3.conv2", "layers.3.shortcut.0", "layers.4.conv2", "layers.5.conv2"]
    assert stage1 in groups.values()
    assert stage2 in groups.values()
    # The first conv of each block is free (its output feeds only conv2).
    assert groups[a.layer("layers.4.conv1").group] == ["layers.4.conv1"]
    assert a.layer("layers.0.conv2").coupled_with == ("conv1", "layers.1.conv2", "layers.2.conv2")
    assert not a.layer("fc").prunable
    assert a.totals["layers"] == 22 and a.totals["groups"] == 13


def test_mobilenetv2_depthwise_coupled_to_its_expansion() -> None:
    a = analyze_model(create_model("mobilenetv2"), (1, 1, 28, 28))
    dw = a.layer("features.2.conv.1.0")
    assert dw.kind == "depthwise" and dw.groups == dw.in_channels == 96
    assert dw.group == a.layer("features.2.conv.0.0").group


def test_squeezenet_concat_and_output_conv() -> None:
    a = analyze_model(create_model("torchvision:squeezenet1_1", in_channels=3), (1, 3, 64, 64))
    # expand1x1 and expand3x3 are concatenated, not added: each is its own group.
    assert a.layer("features.3.expand1x1").group != a.layer("features.3.expand3x3").group
    assert not a.layer("classifier.1").prunable  # its channels are the class scores


def test_analysis_leaves_model_unchanged() -> None:
    model = create_model("resnet20").train()
    before = copy.deepcopy(model.state_dict())
    analyze_model(model, (1, 1, 28, 28))
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("name", ["vgg11-small", "resnet56"])
def test_every_conv_and_linear_is_listed(name: str) -> None:
    model = create_model(name)
    a = analyze_model(model, (1, 1, 28, 28))
    n = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in model.modules())
    assert a.totals["layers"] == n
    assert [s.index for s in a.layers] == list(range(n))
