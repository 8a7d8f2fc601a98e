from __future__ import annotations

import torch
import torch.nn as nn

from edgecompress import Policy, compress
from edgecompress.compressors.report import huffman_bits, huffman_code_lengths, tensor_storage


def test_huffman_known_code() -> None:
    assert huffman_code_lengths({"a": 6, "b": 1, "c": 1}) == {"a": 1, "b": 2, "c": 2}
    assert huffman_bits(torch.tensor([0] * 6 + [1, 2])) == 6 * 1 + 2 + 2
    assert huffman_code_lengths({7: 3}) == {7: 1}


def test_huffman_never_beats_entropy_nor_loses_to_fixed_width() -> None:
    torch.manual_seed(0)
    for k in (2, 5, 16, 64):
        symbols = torch.distributions.Geometric(0.3).sample((5000,)).clamp(max=k - 1).long()
        freqs = torch.bincount(symbols, minlength=k).double()
        p = freqs[freqs > 0] / freqs.sum()
        entropy_bits = float(-(p * p.log2()).sum() * symbols.numel())
        bits = huffman_bits(symbols)
        assert entropy_bits <= bits <= symbols.numel() * max(1, (k - 1).bit_length())


def test_hand_computed_sparse_fp32() -> None:
    # 4x4 weights, 8 non-zeros, fp32.
    w = torch.tensor([[1.0, 0, 2, 0], [0, 3, 0, 4], [5, 0, 6, 0], [0, 7, 0, 8]])
    s = tensor_storage(w, 32)
    # dense 16 x 32 bits = 64 B; bitmask 16 bits (2 B) + 8 x 32 bits (32 B) = 34 B;
    # CSR 8 x 32 + 8 x 2-bit columns + 5 x 4-bit row pointers = 32 B + ceil(36 / 8) = 37 B.
    assert (s.encoding, s.stored_bytes) == ("bitmask", 34)
    assert tensor_storage(torch.ones(4, 4), 32).stored_bytes == 64
    # Very sparse (1 non-zero in 64 x 64, at flat position 197): one 8-bit relative index + one value.
    big = torch.zeros(64, 64)
    big[3, 5] = 1.0
    s = tensor_storage(big, 32)
    assert (s.encoding, s.stored_bytes) == ("relative-8", 1 + 4)
    # Relative indexing with fillers (a run longer than 2^8 - 1):
    col = torch.zeros(600, 1)
    col[599, 0] = 1.0
    s = tensor_storage(col, 8)
    # b = 8: 599 // 256 = 2 fillers -> 3 entries x (8 + 8) bits = 6 B; bitmask 75 + 1 B; dense 600 B;
    # CSR 1 B of value + ceil((1 + 601) / 8) = 76 B of indices
    assert tensor_storage(col.T, 8).encoding == "csr"  # one row: CSR is 1 + ceil((10 + 2) / 8) = 3 B
    assert (s.encoding, s.stored_bytes) == ("relative-8", 6)


def test_hand_computed_layer_report() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    policy = Policy({"0": Policy.uniform(["0"], sparsity=0.5).get("0")}, base={"input_shape": [1, 4]})
    _, report = compress(model, policy)
    row = report.layers[0]
    assert (row.params_before, row.params_after, row.nonzero_after) == (20, 20, 8)
    assert row.dense_bytes_before == 80
    assert row.stored_bytes_after == 34 + 16  # bitmask-coded weights + fp32 bias
    _shared, report = compress(model, Policy({"0": Policy.uniform(["0"], clusters=2).get("0")}), input_shape=(1, 4))
    row = report.layers[0]
    # 16 one-bit indices (2 B) + 2 fp32 centroids (8 B) + fp32 bias (16 B)
    assert row.stored_bytes_after == 2 + 8 + 16
    assert row.huffman_bytes_after <= row.stored_bytes_after
    _q, report = compress(model, Policy({"0": Policy.uniform(["0"], wbits=4).get("0")}), input_shape=(1, 4))
    # 16 x 4 bits (8 B) + 4 per-channel fp32 scales (16 B) + fp32 bias (16 B)
    assert report.layers[0].stored_bytes_after == 8 + 16 + 16
    assert report.totals["stored_bytes_after"] == 40 + report.layers[1].stored_bytes_after
    assert report.layers[1].stored_bytes_after == 10 * 4


def test_huffman_total_not_above_fixed(lenet5) -> None:
    model, a = lenet5
    for fields in ({"sparsity": 0.9, "clusters": 16}, {"wbits": 4}, {"keep": 0.5}):
        _, report = compress(model, Policy.uniform(model, **fields), analysis=a)
        for row in report.layers:
            assert row.huffman_bytes_after <= row.stored_bytes_after


def test_peak_activation_memory(lenet5) -> None:
    model, a = lenet5
    _, report = compress(model, Policy.uniform(model), analysis=a)
    # conv1: input 1x28x28 + output 6x28x28, fp32
    assert report.peak_activation_bytes_before == 4 * (28 * 28 + 6 * 28 * 28)
    assert report.peak_activation_bytes_after == report.peak_activation_bytes_before
    _, report = compress(model, Policy.uniform(model, keep=0.5, abits=16), analysis=a)
    assert report.peak_activation_bytes_after == 2 * 28 * 28 + 4 * 3 * 28 * 28


def test_huffman_total_matches_code_lengths() -> None:
    from edgecompress.compressors.report import huffman_bits_from_counts

    freqs = {0: 40, 1: 25, 2: 20, 3: 10, 4: 5}
    lengths = huffman_code_lengths(freqs)
    assert huffman_bits_from_counts(list(freqs.values())) == sum(f * lengths[s] for s, f in freqs.items())
