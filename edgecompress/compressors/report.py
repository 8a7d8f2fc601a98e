"""Exact size accounting: the :class:`CompressionReport` that ``compress`` returns.

For every base layer, before and after: parameters, MACs (dense, batch 1),
dense bytes (fp32), stored bytes and Huffman bytes; and the model's peak
activation memory. How stored bytes are counted, per weight tensor of N
elements with nnz non-zeros, stored with v bits per value:

* v = 32 (fp32), ``wbits`` (quantized; plus one fp32 scale per output channel
  below 16 bits), or ceil(log2(k)) index bits with a k-entry fp32 codebook
  (weight sharing);
* dense: N x v bits; sparse (nnz < N): the smaller of a bitmask (N bits +
  nnz x v) and CSR over the (out, rest) matrix (nnz x v + nnz x ceil(log2(cols))
  column indices + (rows + 1) x ceil(log2(nnz + 1)) row pointers); dense when
  that is smaller still;
* biases stay fp32; every component is rounded up to whole bytes.

Huffman bytes replace the fixed-width value stream of quantized and shared
weights by its Huffman code (Deep Compression), plus a one-byte code length
per symbol; where that is not smaller the fixed-width size stands.

Peak activation memory is the largest (input + output) activation of any
compressible layer at batch 1, input at the layer's ``abits``, output at fp32:
the working set of a layer-by-layer runtime.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn

from edgecompress.compressors.base import Skip

__all__ = ["CompressionReport", "LayerReport", "SizeBreakdown", "huffman_bits", "tensor_storage"]


def _bits_for(n: int) -> int:
    return max(1, math.ceil(math.log2(n))) if n > 1 else 1


def _bytes(bits: int) -> int:
    return -(-bits // 8)


def huffman_code_lengths(freqs: dict[Any, int]) -> dict[Any, int]:
    """Code length per symbol of an optimal prefix code (a lone symbol gets 1 bit)."""
    if len(freqs) == 1:
        return dict.fromkeys(freqs, 1)
    heap: list[tuple[int, int, list[Any]]] = [(f, i, [s]) for i, (s, f) in enumerate(sorted(freqs.items()))]
    heapq.heapify(heap)
    lengths = dict.fromkeys(freqs, 0)
    counter = len(heap)
    while len(heap) > 1:
        f1, _, s1 = heapq.heappop(heap)
        f2, _, s2 = heapq.heappop(heap)
        for s in s1 + s2:
            lengths[s] += 1
        heapq.heappush(heap, (f1 + f2, counter, s1 + s2))
        counter += 1
    return lengths


def huffman_bits(symbols: torch.Tensor) -> int:
    """Bits of the Huffman-coded symbol stream (payload only)."""
    if symbols.numel() == 0:
        return 0
    values, counts = torch.unique(symbols.flatten(), return_counts=True)
    freqs = dict(zip(values.tolist(), counts.tolist(), strict=True))
    lengths = huffman_code_lengths(freqs)
    return sum(f * lengths[s] for s, f in freqs.items())


@dataclass
class SizeBreakdown:
    stored_bytes: int
    huffman_bytes: int
    encoding: str
    """dense, bitmask or csr."""


def tensor_storage(
    weight: torch.Tensor,
    value_bits: int,
    *,
    overhead_bits: int = 0,
    symbols: torch.Tensor | None = None,
    codebook_entries: int = 0,
    dense_value_bits: int | None = None,
) -> SizeBreakdown:
    """Stored size of one weight tensor (see the module docstring for the rules).

    ``symbols`` are the integer codes of the values (quantization levels or
    codebook indices) that Huffman coding would compress. ``dense_value_bits``
    is the value width when zeros must be coded in-line (a codebook without a
    zero entry needs one more symbol); it defaults to ``value_bits``.
    """
    n = weight.numel()
    nz = weight != 0
    nnz = int(nz.sum())
    rows = weight.shape[0]
    cols = n // max(rows, 1)
    # encoding -> (structure bits, number of values in the value stream)
    dense_bits = value_bits if dense_value_bits is None or nnz == n else dense_value_bits
    options = {
        "dense": (0, n),
        "bitmask": (n, nnz),
        "csr": (nnz * _bits_for(cols) + (rows + 1) * _bits_for(nnz + 1), nnz),
    }
    width = {"dense": dense_bits, "bitmask": value_bits, "csr": value_bits}
    encoding = min(("dense", "bitmask", "csr"), key=lambda e: options[e][0] + options[e][1] * width[e])
    structure_bits, stream_len = options[encoding]
    value_stream = stream_len * width[encoding]
    fixed = _bytes(structure_bits) + _bytes(value_stream) + _bytes(overhead_bits)
    huff = fixed
    if symbols is not None:
        # In-line zeros get their own symbol (-1) in a dense stream.
        syms = torch.where(nz, symbols, -1).flatten() if encoding == "dense" else symbols[nz].flatten()
        table = codebook_entries or int(torch.unique(syms).numel())
        coded = _bytes(structure_bits) + _bytes(huffman_bits(syms)) + table + _bytes(overhead_bits)
        huff = min(fixed, coded)
    return SizeBreakdown(fixed, huff, encoding)


@dataclass
class LayerReport:
    name: str
    kind: str
    params_before: int
    params_after: int
    nonzero_after: int
    macs_before: int
    macs_after: int
    dense_bytes_before: int
    dense_bytes_after: int
    stored_bytes_after: int
    huffman_bytes_after: int
    out_channels_before: int
    out_channels_after: int
    encoding: str
    applied: dict[str, Any] = field(default_factory=dict)


@dataclass
class CompressionReport:
    layers: list[LayerReport]
    peak_activation_bytes_before: int
    peak_activation_bytes_after: int
    model_params_before: int
    model_params_after: int
    skipped: list[Skip] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def totals(self) -> dict[str, int]:
        keys = (
            "params_before", "params_after", "nonzero_after", "macs_before", "macs_after", "dense_bytes_before",
            "dense_bytes_after", "stored_bytes_after", "huffman_bytes_after",
        )  # fmt: skip
        out = {k: sum(getattr(r, k) for r in self.layers) for k in keys}
        out["peak_activation_bytes_before"] = self.peak_activation_bytes_before
        out["peak_activation_bytes_after"] = self.peak_activation_bytes_after
        return out

    def ratios(self) -> dict[str, float]:
        t = self.totals
        return {
            "params": t["params_before"] / max(t["params_after"], 1),
            "macs": t["macs_before"] / max(t["macs_after"], 1),
            "stored": t["dense_bytes_before"] / max(t["stored_bytes_after"], 1),
            "huffman": t["dense_bytes_before"] / max(t["huffman_bytes_after"], 1),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": [asdict(r) for r in self.layers],
            "totals": self.totals,
            "ratios": self.ratios(),
            "model_params_before": self.model_params_before,
            "model_params_after": self.model_params_after,
            "skipped": [asdict(s) for s in self.skipped],
            "warnings": self.warnings,
        }


def module_storage(module: nn.Module) -> tuple[SizeBreakdown, int, int]:
    """Stored size of a conv/linear's weight + bias; returns (sizes, params, non-zero weights)."""
    from edgecompress.compressors import constraints

    w = constraints.effective_weight(module)
    chain = constraints.transforms(module)
    shared = next((t for t in chain if isinstance(t, constraints.SharedWeights)), None)
    wq = next((t for t in chain if isinstance(t, constraints.WeightFakeQuant)), None)
    bias = getattr(module, "bias", None)
    bias_bits = 32 * bias.numel() if bias is not None else 0
    if shared is not None:
        k = int(shared.centroids.numel())
        sizes = tensor_storage(
            w, _bits_for(k), overhead_bits=32 * k, symbols=shared.index, codebook_entries=k,
            dense_value_bits=_bits_for(k + 1),
        )  # fmt: skip
    elif wq is not None and wq.bits < 16:
        levels = _levels(module, wq.bits)
        sizes = tensor_storage(w, wq.bits, overhead_bits=32 * w.shape[0], symbols=levels)
    elif wq is not None:
        sizes = tensor_storage(w, 16)
    else:
        sizes = tensor_storage(w, 32)
    bias_bytes = _bytes(bias_bits)
    sizes = SizeBreakdown(sizes.stored_bytes + bias_bytes, sizes.huffman_bytes + bias_bytes, sizes.encoding)
    params = w.numel() + (bias.numel() if bias is not None else 0)
    return sizes, params, int((w != 0).sum())


def _levels(module: nn.Module, bits: int) -> torch.Tensor:
    """Integer grid positions (-qmax..qmax) of a fake-quantized weight, from its parametrization chain."""
    from edgecompress.compressors import constraints

    x = module.get_parameter("parametrizations.weight.original").detach()
    with torch.no_grad():
        for t in constraints.transforms(module):
            if isinstance(t, constraints.WeightFakeQuant):
                return constraints.quant_levels(x, bits)
            x = t(x)
    raise AssertionError("module has no weight quantizer")
