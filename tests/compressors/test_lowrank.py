from __future__ import annotations

import torch
import torch.nn as nn

from edgecompress import Policy, compress
from edgecompress.compressors.lowrank import LowRank, factorise

SHAPE = (1, 1, 28, 28)


def test_linear_factor_shapes_and_bias(lenet5) -> None:
    model, a = lenet5
    small, report = compress(model, Policy({"fc1": Policy.uniform(["x"], rank=0.25).get("x")}), analysis=a)
    assert isinstance(small.fc1, LowRank)
    first, second = small.fc1
    assert first.weight.shape == (30, 400) and first.bias is None  # full rank min(120, 400) = 120
    assert second.weight.shape == (120, 30) and torch.equal(second.bias, model.fc1.bias)
    row = next(r for r in report.layers if r.name == "fc1")
    assert row.params_after == 30 * 400 + 120 * 30 + 120
    assert row.applied["lowrank"]["rank"] == 30 and row.applied["lowrank"]["full_rank"] == 120


def test_conv_factor_is_kxk_then_1x1(resnet20) -> None:
    model, a = resnet20
    policy = Policy({"layers.3.conv1": Policy.uniform(["x"], rank=0.5).get("x")})
    small, _ = compress(model, policy, analysis=a)
    first, second = small.layers[3].conv1
    # full rank = min(32 outputs, 16 x 3 x 3) = 32; half of it is 16
    assert first.weight.shape == (16, 16, 3, 3) and first.stride == (2, 2)
    assert second.weight.shape == (32, 16, 1, 1)
    assert small(torch.randn(2, *SHAPE[1:])).shape == (2, 10)


def test_reconstruction_error_falls_as_rank_rises() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 32, 3, padding=1)
    x = torch.randn(2, 16, 8, 8)
    errors, output_errors = [], []
    for ratio in (0.1, 0.3, 0.6, 0.9):
        lr, _, _, err = factorise(conv, ratio)
        errors.append(err)
        output_errors.append(float((lr(x) - conv(x)).detach().norm()))
    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0]
    assert output_errors == sorted(output_errors, reverse=True)
    full, r, fr, err = factorise(conv, 1.0)
    assert (r, fr) == (32, 32) and err < 1e-5
    assert torch.allclose(full(x), conv(x), atol=1e-4)


def test_rank_at_least_one_and_skips(resnet20) -> None:
    _, r, _, _ = factorise(nn.Linear(10, 10), 0.01)
    assert r == 1
    import edgecompress.models as zoo
    from edgecompress.analysis import analyze_model

    mb = zoo.create_model("mobilenetv2")
    a = analyze_model(mb, SHAPE)
    dw = "features.2.conv.1.0"
    _, report = compress(mb, Policy({dw: Policy.uniform(["x"], rank=0.5).get("x")}), analysis=a)
    assert [(s.layer, s.technique, s.reason) for s in report.skipped] == [
        (dw, "lowrank", "grouped convolution (groups=96): SVD would mix groups")
    ]
    model, ra = resnet20
    _, report = compress(model, Policy({"conv1": Policy.uniform(["x"], rank=0.95).get("x")}), analysis=ra)
    assert report.skipped[0].reason == "rank 0.95 of full rank 9 rounds to full rank"
