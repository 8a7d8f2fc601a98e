from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from edgecompress import Policy, compress
from edgecompress.compressors.structured import kept_channels
from edgecompress.errors import PolicyError

SHAPE = (1, 1, 28, 28)


def test_lenet5_shapes_shrink(lenet5) -> None:
    model, a = lenet5
    policy = Policy.uniform(model, keep=0.5)
    small, report = compress(model, policy, analysis=a)
    assert small.conv1.weight.shape == (3, 1, 5, 5)
    assert small.conv2.weight.shape == (8, 3, 5, 5)
    assert small.fc1.weight.shape == (60, 8 * 25)  # the flatten into fc1 shrinks with conv2
    assert small.fc2.weight.shape == (42, 60)
    assert small.fc3.weight.shape == (10, 42)  # classifier outputs stay
    assert [(s.layer, s.technique) for s in report.skipped] == [("fc3", "structured")]
    assert report.skipped[0].reason == "its output channels are the network's outputs (classifier)"
    assert torch.isfinite(small(torch.randn(4, *SHAPE[1:]))).all()


def test_resnet20_residual_groups_stay_consistent(resnet20) -> None:
    model, a = resnet20
    # Ask different ratios inside one coupled group: the group keeps the largest.
    policy = Policy.uniform(model, keep=0.5).with_layer("layers.1.conv2", keep=0.75)
    small, report = compress(model, policy, analysis=a)
    stage1 = ["conv1", "layers.0.conv2", "layers.1.conv2", "layers.2.conv2"]
    assert {small.get_submodule(n).out_channels for n in stage1} == {12}
    assert small.layers[4].conv1.out_channels == 16  # free layer: 32 x 0.5
    assert small.layers[3].shortcut[0].out_channels == small.layers[3].conv2.out_channels == 16
    assert any("share output channels (coupled)" in w for w in report.warnings)
    out = small(torch.randn(2, *SHAPE[1:]))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    t = report.totals
    assert t["params_after"] < t["params_before"] and t["macs_after"] < t["macs_before"]


def test_keep_one_is_identity(resnet20) -> None:
    model, a = resnet20
    same, report = compress(model, Policy.uniform(model), analysis=a)
    x = torch.randn(2, *SHAPE[1:])
    assert torch.equal(same(x), model(x))
    assert report.totals["params_after"] == report.totals["params_before"]


def test_round_to_and_kept_channels(resnet20) -> None:
    assert kept_channels(64, 0.3) == 19
    assert kept_channels(64, 0.3, round_to=8) == 24
    assert kept_channels(16, 0.01) == 1
    model, a = resnet20
    small, _ = compress(model, Policy.uniform(model, keep=0.3, round_to=8), analysis=a)
    assert small.layers[7].conv1.out_channels == 24
    with pytest.raises(PolicyError, match="round_to = 0 is invalid; valid: an integer >= 1"):
        Policy.uniform(model, keep=0.3, round_to=0)


def test_importance_choices_differ(resnet20) -> None:
    model, a = resnet20
    policy = Policy.uniform(model, keep=0.5)
    l1, _ = compress(model, policy, analysis=a, importance="l1")
    bn, _ = compress(model, policy, analysis=a, importance="bn")
    assert l1.layers[4].conv1.weight.shape == bn.layers[4].conv1.weight.shape
    assert not torch.equal(l1.layers[4].conv1.weight, bn.layers[4].conv1.weight)
    with pytest.raises(PolicyError, match="unknown channel importance 'l3'; valid: l1, l2, bn"):
        compress(model, policy, analysis=a, importance="l3")


def test_l1_keeps_the_largest_filters(lenet5) -> None:
    model, a = lenet5
    policy = Policy({"conv2": Policy.uniform(model, keep=0.25).get("conv2")})
    small, _ = compress(model, policy, analysis=a)
    norms = model.conv2.weight.detach().abs().sum(dim=(1, 2, 3))
    kept = torch.sort(torch.argsort(norms, descending=True)[:4]).values
    assert torch.equal(small.conv2.weight.detach(), model.conv2.weight.detach()[kept])
    # fc1 loses the 25 flattened inputs of each dropped channel.
    cols = torch.cat([torch.arange(c * 25, c * 25 + 25) for c in kept.tolist()])
    assert torch.equal(small.fc1.weight.detach(), model.fc1.weight.detach()[:, cols])


class _Branchy(nn.Module):
    """A 1x1 branch and a grouped 3x3 branch concatenated (pruning the stem used to die inside torch-pruning)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.a = nn.Conv2d(16, 16, 1)
        self.b = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.head = nn.Conv2d(32, 8, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.cat([self.a(x), self.b(x)], 1)
        return self.fc(torch.relu(self.head(x)).mean((2, 3)))


def test_groups_coupled_to_a_grouped_conv_are_skipped_with_the_reason_and_the_rest_pruned() -> None:
    torch.manual_seed(0)
    model = _Branchy().eval()
    small, report = compress(model, Policy.uniform(model, keep=0.5), input_shape=(1, 1, 28, 28))
    skipped = {s.layer: s.reason for s in report.skipped}
    assert (
        skipped["b"] == "it is a grouped convolution (groups=4), which torch-pruning does not prune group-consistently"
    )
    assert skipped["stem"].startswith("its channels are coupled to b, a grouped convolution (groups=4)")
    assert small.a.out_channels == 8 and small.head.out_channels == 4 and small.stem.out_channels == 16
    assert small(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_a_model_torch_pruning_cannot_trace_keeps_its_channels_and_says_why() -> None:
    import torchvision

    model = torchvision.models.shufflenet_v2_x0_5(num_classes=10).eval()  # channel shuffle: the library fails
    small, report = compress(model, Policy.uniform(model, keep=0.5, wbits=8), input_shape=(1, 3, 64, 64))
    reasons = {s.reason for s in report.skipped if s.technique == "structured"}
    assert len(reasons) == 1 and "torch-pruning cannot trace this model's channel dependencies" in reasons.pop()
    assert all(r.applied.get("wquant") for r in report.layers)  # the other techniques still apply
    assert small(torch.randn(1, 3, 64, 64)).shape == (1, 10)
