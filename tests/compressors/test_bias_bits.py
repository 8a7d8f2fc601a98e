"""``bias_bits`` 16: biases stored in fp16, rounded by ``compress`` and held there through fine-tuning, counted
at 2 bytes a value by the size report and written so by the archive."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn as nn

from edgecompress import LayerPolicy, Policy, compress
from edgecompress.artifacts.archive import load_archive, pack_archive
from edgecompress.artifacts.checkpoint import ModelSpec
from edgecompress.errors import CheckpointError, PolicyError

SHAPE = [1, 1, 28, 28]


def test_bias_bits_is_validated() -> None:
    with pytest.raises(PolicyError, match=r"layer 'fc1': bias_bits = 8 is invalid; valid: 32, 16"):
        LayerPolicy.from_dict({"bias_bits": 8}, "fc1")
    assert LayerPolicy(bias_bits=16).to_dict() == {"bias_bits": 16}


def _lenet(**fields: object) -> tuple[nn.Module, nn.Module, Policy]:
    spec = ModelSpec("lenet5", 10, 1, 28, "fashion-mnist", 0)
    torch.manual_seed(0)
    model = spec.build().eval()
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    policy = Policy({n: LayerPolicy(**fields) for n in names}, base={"input_shape": SHAPE})  # type: ignore[arg-type]
    return model, spec, policy


def test_fp16_biases_are_rounded_held_counted_and_archived() -> None:
    model, spec, plain = _lenet(clusters=16, sparsity=0.9)
    _, half = _lenet(clusters=16, sparsity=0.9, bias_bits=16)[1:]
    full, full_report = compress(model, plain)
    small, small_report = compress(model, half)
    biases = {n: m.bias for n, m in small.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    for b in biases.values():
        assert not b.requires_grad and torch.equal(b, b.half().float())
    # Each layer stores the same weights and a bias of half the bytes.
    for a, b in zip(full_report.layers, small_report.layers, strict=True):
        n_bias = dict(model.named_modules())[a.name].bias.numel()
        assert a.huffman_bytes_after - b.huffman_bytes_after == 2 * n_bias
        assert a.stored_bytes_after - b.stored_bytes_after == 2 * n_bias
    # Fine-tuning moves the weights (centroids) but not the held biases.
    before = {n: b.clone() for n, b in biases.items()}
    opt = torch.optim.SGD([p for p in small.parameters() if p.requires_grad], lr=0.1)
    small.train()
    loss = small(torch.randn(8, *SHAPE[1:])).logsumexp(1).mean()
    loss.backward()
    opt.step()
    small.eval()
    assert all(torch.equal(before[n], b) for n, b in biases.items())
    # The archive writes the biases in fp16: its coded bytes are the report's, its model the same.
    blob, info = pack_archive(small, spec, half)
    assert info["layer_bytes"] == small_report.totals["huffman_bytes_after"]
    assert info["layer_bytes"] == full_report.totals["huffman_bytes_after"] - 2 * sum(
        b.numel() for b in biases.values()
    )
    restored, *_ = load_archive(io.BytesIO(blob))
    x = torch.randn(4, *SHAPE[1:])
    assert torch.equal(restored(x), small(x))
    del full


def test_a_bias_beyond_fp16_is_refused_and_the_archive_packs_only_held_biases() -> None:
    model, spec, half = _lenet(bias_bits=16)
    with torch.no_grad():
        model.fc3.bias[0] = 1e6
    with pytest.raises(PolicyError, match=r"layer 'fc3': bias_bits = 16, but fc3.bias holds 1e\+06, beyond fp16"):
        compress(model, half)
    model, spec, half = _lenet(bias_bits=16)
    _, plain = _lenet()[1:]
    unheld, _ = compress(model, plain)  # fp32 biases, packed as if the policy held them in fp16
    with pytest.raises(CheckpointError, match="the policy stores this layer's bias in fp16 \\(bias_bits 16\\)"):
        pack_archive(unheld, spec, half)
