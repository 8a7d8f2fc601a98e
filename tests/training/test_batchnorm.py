"""BatchNorm re-estimation of a compressed model, 8-bit activation ranges included."""

from __future__ import annotations

import torch

from edgecompress import Policy, compress
from edgecompress.compressors.constraints import ActFakeQuant
from edgecompress.models import create_model
from edgecompress.training import recalibrate_batchnorm


def _observe(model: torch.nn.Module, inputs: list[torch.Tensor], quantizers: list[ActFakeQuant]) -> list[tuple]:
    """The ranges a fresh eval-mode observation of ``inputs`` gives each quantizer (the model left as it was)."""
    saved = [(q.min_val.clone(), q.max_val.clone()) for q in quantizers]
    for q in quantizers:
        q.min_val.fill_(float("inf"))
        q.max_val.fill_(float("-inf"))
        q.observing = True
    model.eval()
    with torch.no_grad():
        for x in inputs:
            model(x)
    fresh = [(float(q.min_val), float(q.max_val)) for q in quantizers]
    for q, (lo, hi) in zip(quantizers, saved, strict=True):
        q.observing = False
        q.min_val.copy_(lo)
        q.max_val.copy_(hi)
    return fresh


def test_activation_ranges_follow_the_new_statistics() -> None:
    torch.manual_seed(0)
    base = create_model("mobilenetv2-0.5").eval()
    calibration = [torch.randn(8, 1, 28, 28) for _ in range(2)]
    policy = Policy.uniform(base, keep=0.5, base={"input_shape": [1, 1, 28, 28]})
    policy = policy.replace(layers={n: lp.__class__(keep=lp.keep, abits=8) for n, lp in policy.layers.items()})
    model, _ = compress(base, policy, calibration)
    quantizers = [m for m in model.modules() if isinstance(m, ActFakeQuant)]
    assert quantizers and all(q.calibrated for q in quantizers)
    stale = [(float(q.min_val), float(q.max_val)) for q in quantizers]
    inputs = [3 * torch.randn(8, 1, 28, 28) + 1 for _ in range(3)]  # other data: other statistics and ranges
    recalibrate_batchnorm(model, inputs)
    now = [(float(q.min_val), float(q.max_val)) for q in quantizers]
    assert not any(q.observing for q in quantizers) and not model.training
    assert now != stale
    assert now == _observe(model, inputs, quantizers)  # what the model now computes, observed afresh
