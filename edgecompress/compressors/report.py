"""Exact size accounting: the :class:`CompressionReport` that ``compress`` returns.

For every base layer, before and after: parameters, MACs (dense, batch 1),
dense bytes (fp32), stored bytes and Huffman bytes; and the model's peak
activation memory. How stored bytes are counted, per weight tensor of N
elements with nnz non-zeros, stored with v bits per value:

* v = 32 (fp32), ``wbits`` (quantized; plus one fp32 scale per output channel
  below 16 bits), or ceil(log2(k)) index bits with a k-entry fp32 codebook
  (weight sharing);
* the smallest of: dense (N x v bits); a bitmask (N bits + nnz x v); CSR over
  the (out, rest) matrix (nnz x v + nnz x ceil(log2(cols)) column indices +
  (rows + 1) x ceil(log2(nnz + 1)) row pointers); and Deep Compression's
  relative indexing with b = 1..8 bits (each entry stores the zeros skipped
  since the previous one; a longer run inserts a filler entry holding an
  explicit zero every 2^b positions);
* biases are fp32, or fp16 where the layer's policy has ``bias_bits`` 16 (``compress`` rounds them and
  holds them there); every component is rounded up to whole bytes.

Huffman bytes Huffman-code the value stream of quantized and shared weights
and the relative-index stream (Deep Compression), each with a one-byte code
length per distinct symbol, over every encoding above; where that is not
smaller the fixed-width size stands.

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

import edgecompress.compressors.constraints as constraints
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


def huffman_bits_from_counts(counts: list[int]) -> int:
    """Bits of an optimal prefix code for symbols with these counts (a lone symbol costs 1 bit each).

    The total equals the sum of the weights of all merged nodes of Huffman's
    construction, so no code table needs to be built.
    """
    heap = [c for c in counts if c > 0]
    if len(heap) <= 1:
        return sum(heap)
    heapq.heapify(heap)
    total = 0
    while len(heap) > 1:
        merged = heapq.heappop(heap) + heapq.heappop(heap)
        total += merged
        heapq.heappush(heap, merged)
    return total


def huffman_bits(symbols: torch.Tensor) -> int:
    """Bits of the Huffman-coded symbol stream (payload only)."""
    if symbols.numel() == 0:
        return 0
    _, counts = torch.unique(symbols.flatten(), return_counts=True)
    return huffman_bits_from_counts(counts.tolist())


@dataclass
class SizeBreakdown:
    stored_bytes: int
    huffman_bytes: int
    encoding: str
    """dense, bitmask, csr or relative-B (B-bit relative indices)."""


def _coded_bytes(counts: list[int]) -> int:
    """Huffman bytes of a stream with these symbol counts, plus one code-length byte per distinct symbol."""
    present = [c for c in counts if c > 0]
    return _bytes(huffman_bits_from_counts(present)) + len(present)


def tensor_storage(
    weight: torch.Tensor,
    value_bits: int,
    *,
    overhead_bits: int = 0,
    symbols: torch.Tensor | None = None,
    zero_value_bits: int | None = None,
) -> SizeBreakdown:
    """Stored size of one weight tensor (see the module docstring for the rules).

    ``symbols`` (same shape as ``weight``) are the integer codes of the values
    (quantization levels or codebook indices); without them every value is
    its own symbol and Huffman coding is not counted. ``zero_value_bits`` is
    the value width when explicit zeros must be coded in-line (a codebook
    without a zero entry needs one more symbol); it defaults to ``value_bits``.
    """
    n = weight.numel()
    flat = weight.flatten()
    nz = flat != 0
    nnz = int(nz.sum())
    rows = weight.shape[0]
    cols = n // max(rows, 1)
    zbits = value_bits if zero_value_bits is None else zero_value_bits
    positions = torch.nonzero(nz).flatten()
    gaps = torch.diff(positions, prepend=torch.tensor([-1])) - 1  # zeros skipped before each non-zero
    # Each candidate: (structure bytes, structure symbol counts if Huffman-codable, values, value width, zeros).
    candidates: dict[str, tuple[int, list[int] | None, int, int, int]] = {}
    candidates["dense"] = (0, None, n, zbits if nnz < n else value_bits, n - nnz)
    candidates["bitmask"] = (_bytes(n), None, nnz, value_bits, 0)
    csr = _bytes(nnz * _bits_for(cols) + (rows + 1) * _bits_for(nnz + 1))
    candidates["csr"] = (csr, None, nnz, value_bits, 0)
    # Deep Compression's relative indexing: each entry stores the zeros skipped since the last entry in
    # b bits; a longer run inserts filler entries (an explicit zero) every 2^b positions.
    for b in range(1, 9):
        span = 2**b
        n_fill = int((gaps // span).sum())
        gap_counts = torch.bincount(gaps % span, minlength=span).tolist()
        gap_counts[span - 1] += n_fill
        entries = nnz + n_fill
        candidates[f"relative-{b}"] = (
            _bytes(entries * b),
            gap_counts,
            entries,
            zbits if n_fill else value_bits,
            n_fill,
        )
    best_fixed = min(candidates, key=lambda e: candidates[e][0] + _bytes(candidates[e][2] * candidates[e][3]))
    s_fixed, _, n_vals, width, _ = candidates[best_fixed]
    fixed = s_fixed + _bytes(n_vals * width) + _bytes(overhead_bits)
    huff = fixed
    if symbols is not None:
        nz_counts = torch.unique(symbols.flatten()[nz], return_counts=True)[1].tolist()
        coded_values: dict[int, int] = {}  # in-line zeros -> Huffman bytes of the value stream
        for s_fix, structure_counts, n_vals, width, zeros in candidates.values():
            if zeros not in coded_values:
                coded_values[zeros] = _coded_bytes([*nz_counts, zeros])
            structure = s_fix if structure_counts is None else min(s_fix, _coded_bytes(structure_counts))
            values = min(_bytes(n_vals * width), coded_values[zeros])
            huff = min(huff, structure + values + _bytes(overhead_bits))
    return SizeBreakdown(fixed, huff, best_fixed)


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

    def applied(self) -> dict[str, dict[str, Any]]:
        """What was applied, per layer, as a policy records it: channels kept (pruned layers), rank kept
        (factorised layers), the calibrated input range (8-bit activations)."""
        out: dict[str, dict[str, Any]] = {}
        for r in self.layers:
            record: dict[str, Any] = {}
            if "structured" in r.applied:
                record["channels"] = r.out_channels_after
            if "lowrank" in r.applied:
                record["rank"] = r.applied["lowrank"]["rank"]
            if "act_range" in r.applied.get("aquant", {}):
                record["act_range"] = list(r.applied["aquant"]["act_range"])
            if record:
                out[r.name] = record
        return out

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


def module_storage(module: nn.Module, bias_bits: int = 32) -> tuple[SizeBreakdown, int, int]:
    """Stored size of a conv/linear's weight + bias (``bias_bits`` per bias value: the policy's ``bias_bits``);
    returns (sizes, params, non-zero weights)."""
    w = constraints.effective_weight(module)
    chain = constraints.transforms(module)
    shared = next((t for t in chain if isinstance(t, constraints.SharedWeights)), None)
    wq = next((t for t in chain if isinstance(t, constraints.WeightFakeQuant)), None)
    bias = getattr(module, "bias", None)
    bias_bits = bias_bits * bias.numel() if bias is not None else 0
    if shared is not None:
        k = int(shared.centroids.numel())
        sizes = tensor_storage(
            w, _bits_for(k), overhead_bits=32 * k, symbols=shared.index, zero_value_bits=_bits_for(k + 1)
        )
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
    x = module.get_parameter("parametrizations.weight.original").detach()
    with torch.no_grad():
        for t in constraints.transforms(module):
            if isinstance(t, constraints.WeightFakeQuant):
                return constraints.quant_levels(x, bits)
            x = t(x)
    raise AssertionError("module has no weight quantizer")
