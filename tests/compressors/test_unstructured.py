from __future__ import annotations

import pytest
import torch

from edgecompress import Policy, compress
from edgecompress.errors import PolicyError

SHAPE = (1, 1, 28, 28)


@pytest.mark.parametrize("method", ["magnitude", "lookahead"])
@pytest.mark.parametrize("sparsity", [0.3, 0.75, 0.95])
def test_zero_fraction_at_least_sparsity(resnet20, method, sparsity) -> None:
    model, a = resnet20
    small, report = compress(model, Policy.uniform(model, sparsity=sparsity), analysis=a, unstructured=method)
    for name in (s.name for s in a.layers):
        w = small.get_submodule(name).weight
        frac = float((w == 0).float().mean())
        assert frac >= sparsity - 1.0 / w.numel()
        assert frac <= sparsity + 1e-6  # floor(s * N): never more than asked
    assert report.totals["nonzero_after"] < report.totals["params_after"]
    assert torch.isfinite(small(torch.randn(2, *SHAPE[1:]))).all()


def test_magnitude_prunes_the_smallest(lenet5) -> None:
    model, a = lenet5
    small, _ = compress(model, Policy.uniform(model, sparsity=0.5), analysis=a)
    w0 = model.fc2.weight.detach().abs()
    w1 = small.fc2.weight.detach()
    assert float(w0[w1 == 0].max()) <= float(w0[w1 != 0].min())


def test_lookahead_differs_from_magnitude(lenet5) -> None:
    model, a = lenet5
    policy = Policy.uniform(model, sparsity=0.6)
    mag, _ = compress(model, policy, analysis=a, unstructured="magnitude")
    la, _ = compress(model, policy, analysis=a, unstructured="lookahead")
    assert not torch.equal(mag.fc2.weight != 0, la.fc2.weight != 0)
    assert (la.fc2.weight == 0).sum() == (mag.fc2.weight == 0).sum()
    with pytest.raises(PolicyError, match="unknown unstructured pruning method 'random'"):
        compress(model, policy, analysis=a, unstructured="random")


def test_masks_survive_training(lenet5) -> None:
    model, a = lenet5
    small, _ = compress(model, Policy.uniform(model, sparsity=0.8), analysis=a)
    zeros = {n: small.get_submodule(n).weight == 0 for n in ("conv1", "fc1")}
    opt = torch.optim.SGD(small.parameters(), lr=0.5)
    small.train()
    for _ in range(3):
        loss = small(torch.randn(8, *SHAPE[1:])).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for n, z in zeros.items():
        assert bool((small.get_submodule(n).weight[z] == 0).all())


def test_staged_sparsity_removes_the_same_fraction_of_survivors_per_stage() -> None:
    from edgecompress.compressors.unstructured import staged_sparsity

    density = [1 - staged_sparsity(0.96, i, 4) for i in range(1, 5)]
    assert density == pytest.approx([0.44721, 0.2, 0.08944, 0.04], abs=1e-5)
    assert [round(b / a, 4) for a, b in zip([1.0, *density[:-1]], density, strict=True)] == [0.4472] * 4
    with pytest.raises(ValueError, match="stage 0 is not in 1..4"):
        staged_sparsity(0.96, 0, 4)
