from __future__ import annotations

import pytest
import torch

from edgecompress import Policy, compress
from edgecompress.compressors.sharing import kmeans_1d
from edgecompress.errors import PolicyError

SHAPE = (1, 1, 28, 28)


def test_kmeans_linear_init_finds_two_clear_clusters() -> None:
    values = torch.cat([torch.full((50,), -1.0), torch.full((30,), 2.0)]) + torch.linspace(-0.01, 0.01, 80)
    centroids, assign = kmeans_1d(values, 2)
    assert torch.allclose(centroids, torch.tensor([-1.0, 2.0]), atol=0.01)
    assert assign.tolist() == [0] * 50 + [1] * 30


@pytest.mark.parametrize("clusters", [2, 4, 16, 64])
def test_sharing_unique_values_at_most_clusters(resnet20, clusters) -> None:
    model, a = resnet20
    small, report = compress(model, Policy.uniform(model, clusters=clusters), analysis=a)
    for name in (s.name for s in a.layers):
        assert torch.unique(small.get_submodule(name).weight).numel() <= clusters
    assert report.totals["stored_bytes_after"] < report.totals["dense_bytes_before"]


def test_sharing_with_sparsity_keeps_zeros_out_of_the_codebook(lenet5) -> None:
    model, a = lenet5
    small, _ = compress(model, Policy.uniform(model, sparsity=0.5, clusters=4), analysis=a)
    w = small.fc1.weight
    assert torch.unique(w[w != 0]).numel() <= 4
    assert float((w == 0).float().mean()) >= 0.5 - 1 / w.numel()


def test_centroids_train_and_ties_hold(lenet5) -> None:
    model, a = lenet5
    small, _ = compress(model, Policy.uniform(model, clusters=8), analysis=a)
    before = small.fc1.weight.detach().clone()
    opt = torch.optim.SGD(small.parameters(), lr=0.1)
    small.train()
    loss = small(torch.randn(8, *SHAPE[1:])).pow(2).mean()
    loss.backward()
    opt.step()
    after = small.fc1.weight.detach()
    assert not torch.equal(before, after)
    assert torch.unique(after).numel() <= 8
    # Weights that shared a centroid before still share one after.
    for v in torch.unique(before):
        assert torch.unique(after[before == v]).numel() == 1


def test_wbits_ignored_with_clusters_is_reported(lenet5) -> None:
    model, a = lenet5
    _, report = compress(model, Policy.uniform(model, clusters=8, wbits=4), analysis=a)
    reasons = {(s.layer, s.technique): s.reason for s in report.skipped}
    assert reasons[("fc1", "quantization")] == "weights are shared (codebook + indices); wbits does not apply"


@pytest.mark.parametrize("wbits", [8, 6, 4, 2])
def test_weight_levels_per_channel(resnet20, wbits) -> None:
    model, a = resnet20
    small, _ = compress(model, Policy.uniform(model, wbits=wbits), analysis=a)
    w = small.layers[5].conv1.weight.detach()
    for channel in w:
        assert torch.unique(channel).numel() <= 2**wbits
    err = (w - model.layers[5].conv1.weight.detach()).abs().max()
    assert 0 < float(err)


def test_fp16_weights(lenet5) -> None:
    model, a = lenet5
    small, report = compress(model, Policy.uniform(model, wbits=16), analysis=a)
    w = small.fc1.weight.detach()
    assert torch.equal(w, w.half().float())
    row = next(r for r in report.layers if r.name == "fc1")
    assert row.stored_bytes_after == 400 * 120 * 2 + 120 * 4


def test_activation_quant_needs_calibration_and_uses_it(lenet5) -> None:
    model, a = lenet5
    policy = Policy.uniform(model, abits=8)
    with pytest.raises(PolicyError, match="ask for 8-bit activations and the policy records no calibrated range"):
        compress(model, policy, analysis=a)
    calib = [torch.randn(16, *SHAPE[1:]) for _ in range(2)]
    small, report = compress(model, policy, calib, analysis=a)
    # The policy as applied records each calibrated range: it rebuilds the same model without data.
    recorded = policy.with_applied(report.applied())
    assert recorded.applied["fc1"]["act_range"] == [float(small.fc1.input_quantizer.min_val),
                                                    float(small.fc1.input_quantizer.max_val)]  # fmt: skip
    again, _ = compress(model, Policy.from_dict(recorded.to_dict()), analysis=a)
    probe = torch.randn(4, *SHAPE[1:])
    assert torch.equal(again(probe), small(probe))
    q = small.fc1.input_quantizer
    assert q.calibrated and float(q.min_val) >= 0  # fc1's input is post-ReLU
    x = torch.randn(4, *SHAPE[1:])
    out = small(x)
    assert torch.isfinite(out).all() and not torch.equal(out, model(x))
    assert torch.allclose(out, model(x), atol=0.2)


def test_ste_passes_gradients(lenet5) -> None:
    model, a = lenet5
    small, _ = compress(model, Policy.uniform(model, wbits=4, abits=16), analysis=a)
    small.train()
    small(torch.randn(2, *SHAPE[1:])).sum().backward()
    grad = small.fc1.parametrizations.weight.original.grad
    assert grad is not None and float(grad.abs().sum()) > 0
