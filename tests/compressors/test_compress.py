from __future__ import annotations

import copy

import pytest
import torch

from edgecompress import Policy, compress
from edgecompress.analysis import analyze_model
from edgecompress.errors import PolicyError
from edgecompress.models import create_model

MIXED = {"keep": 0.6, "rank": 0.7, "sparsity": 0.4, "wbits": 8, "abits": 8}

CASES = [
    ("lenet5", (1, 1, 28, 28)),
    ("vgg11-small", (1, 1, 28, 28)),
    ("resnet20", (1, 1, 28, 28)),
    ("resnet56", (1, 1, 28, 28)),
    ("mobilenetv2", (1, 1, 28, 28)),
    ("torchvision:resnet18", (1, 3, 64, 64)),
    ("torchvision:mobilenet_v3_small", (1, 3, 64, 64)),
    ("torchvision:squeezenet1_1", (1, 3, 64, 64)),
]


@pytest.mark.parametrize(("name", "shape"), CASES, ids=[c[0] for c in CASES])
def test_every_model_compresses_with_a_mixed_policy(name, shape) -> None:
    torch.manual_seed(0)
    model = create_model(name, 10, shape[1]).eval()
    a = analyze_model(model, shape)
    policy = Policy.uniform(model, **MIXED)
    policy = policy.with_layer(a.layers[1].name, clusters=16)
    calib = [torch.randn(4, *shape[1:])]
    small, report = compress(model, policy, calib, analysis=a)
    out = small(torch.randn(2, *shape[1:]))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    t = report.totals
    assert t["params_after"] < t["params_before"]
    assert t["stored_bytes_after"] * 4 < t["dense_bytes_before"]
    # Every layer a technique could not handle is named with a reason.
    assert all(s.reason for s in report.skipped)
    assert {r.name for r in report.layers} == {s.name for s in a.layers}


def test_original_model_unchanged_and_outputs_bit_identical(resnet20) -> None:
    model, a = resnet20
    before = copy.deepcopy(model.state_dict())
    policy = Policy.uniform(model, keep=0.5, rank=0.8, sparsity=0.3, clusters=32, abits=8)
    calib = [torch.randn(8, 1, 28, 28)]
    x = torch.randn(4, 1, 28, 28)
    one, r1 = compress(model, policy, calib, analysis=a)
    two, r2 = compress(model, policy, calib, analysis=a)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert type(model.layers[0].conv1) is torch.nn.Conv2d  # not parametrized in place
    assert torch.equal(one(x), two(x))
    s1, s2 = one.state_dict(), two.state_dict()
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    assert r1.to_dict() == r2.to_dict()


def test_input_shape_from_policy_base_or_error(lenet5) -> None:
    model, _ = lenet5
    policy = Policy.uniform(model, keep=0.5, base={"model": "lenet5", "input_shape": [1, 1, 28, 28]})
    small, _ = compress(model, policy)
    assert small.conv1.out_channels == 3
    with pytest.raises(PolicyError, match="compress\\(\\) needs input_shape"):
        compress(model, Policy.uniform(model, keep=0.5))


def test_unknown_layer_in_policy(lenet5) -> None:
    model, a = lenet5
    bad = Policy.uniform(["conv1", "fc9"], keep=0.5)
    with pytest.raises(PolicyError, match="policy names layer 'fc9'.*Did you mean 'fc3'"):
        compress(model, bad, analysis=a)


def test_report_ratio_and_warning_for_uneven_request(resnet20) -> None:
    model, a = resnet20
    _, report = compress(model, Policy.uniform(model, keep=0.5), analysis=a)
    assert report.ratios()["params"] == pytest.approx(4.0, rel=0.02)
    assert report.ratios()["macs"] == pytest.approx(4.0, rel=0.02)
    d = report.to_dict()
    assert set(d) >= {"layers", "totals", "ratios", "skipped", "warnings"}


def test_compress_inside_no_grad_prunes_like_outside() -> None:
    """torch-pruning needs autograd: a caller's no_grad() (e.g. around load_compressed) must not change the model."""
    from edgecompress.compressors import LayerPolicy

    torch.manual_seed(0)
    model = create_model("resnet20").eval()
    policy = Policy({"layers.0.conv1": LayerPolicy(keep=0.5)}, round_to=1)
    outside, _ = compress(model, policy, input_shape=(1, 1, 28, 28))
    with torch.no_grad():
        inside, _ = compress(model, policy, input_shape=(1, 1, 28, 28))
    assert inside.layers[0].conv1.out_channels == outside.layers[0].conv1.out_channels == 8
    pairs = zip(inside.state_dict().values(), outside.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_rounding_to_the_policys_channel_multiple_is_not_warned_about() -> None:
    """A keep that round_to moves (0.7 of 16 channels -> 16 at round_to 8) is what the policy asked for, not a
    shortfall: `analyze --policy` printed one warning per layer (about 40 on MobileNetV2)."""
    from dataclasses import replace

    torch.manual_seed(0)
    base = create_model("resnet20").eval()
    policy = Policy.uniform(base, keep=0.7)
    _, report = compress(base, replace(policy, round_to=8), input_shape=(1, 1, 28, 28))
    assert not [w for w in report.warnings if "keep asked" in w]
    _, report = compress(
        base, replace(policy, round_to=1), input_shape=(1, 1, 28, 28)
    )  # 11 of 16: within one channel of 0.7
    assert not [w for w in report.warnings if "keep asked" in w]
