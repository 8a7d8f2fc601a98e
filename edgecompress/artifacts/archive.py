"""The compact archive: the packed form the size report counts, loadable back to the identical model.

File layout: ``b"ECAR"``, a format version byte, a 4-byte little-endian
header length, a JSON header, then the payload. The header holds the base
model spec, the policy, and per tensor its shape and how its bytes are coded;
the payload holds the bytes.

Each weight tensor of a compressible layer is coded exactly as
:func:`edgecompress.compressors.report.tensor_storage` counts it for the
Huffman size: the structure (dense, bitmask, CSR, or Deep Compression's
relative indices, fixed-width or Huffman-coded), the value stream
(fp32/fp16 bits, quantization levels with one fp32 scale per output channel,
or codebook indices with the fp32 codebook; fixed-width or Huffman-coded,
with one code-length byte per distinct symbol) and the bias (fp32, or fp16 where the policy's
``bias_bits`` is 16). So the
coded bytes of the layers equal the report's ``huffman_bytes_after`` exactly;
everything else (BatchNorm tensors, activation-quantizer ranges, the JSON
header, Huffman symbol lists) is the container overhead, reported apart.

Loading rebuilds the structure from the policy (as
:func:`edgecompress.checkpoint.load_compressed` does), folds the weight
constraints into plain weights, and fills every tensor from the archive:
the outputs are identical to the compressed model's.
"""

from __future__ import annotations

import copy
import json
import struct
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
import torch.nn as nn

from edgecompress.analysis import analyze_model
from edgecompress.artifacts.checkpoint import ModelSpec, rebuild_structure, with_round_to
from edgecompress.compressors import Policy, constraints
from edgecompress.compressors.base import weight_modules
from edgecompress.compressors.depth import removed_layers
from edgecompress.compressors.report import _bits_for, _bytes, huffman_bits_from_counts, huffman_code_lengths
from edgecompress.errors import CheckpointError

__all__ = ["ARCHIVE_MAGIC", "load_archive", "pack_archive"]

ARCHIVE_MAGIC = b"ECAR"
ARCHIVE_VERSION = 1


# ---------------------------------------------------------------- bit streams
def _pack(values: np.ndarray, width: int) -> bytes:
    """Unsigned integers, ``width`` bits each, MSB first, padded to whole bytes."""
    if values.size == 0 or width == 0:
        return b""
    v = values.astype(np.uint64)
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint64)
    bits = ((v[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bits.ravel()).tobytes()


def _unpack(data: bytes, count: int, width: int) -> np.ndarray:
    if count == 0 or width == 0:
        return np.zeros(count, dtype=np.int64)
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[: count * width].reshape(count, width)
    weights = (np.uint64(1) << np.arange(width - 1, -1, -1, dtype=np.uint64)).astype(np.uint64)
    return (bits.astype(np.uint64) * weights).sum(axis=1).astype(np.int64)


def _canonical(lengths: dict[int, int]) -> dict[int, tuple[int, int]]:
    """Canonical Huffman codes: symbol -> (code, length), assigned in (length, symbol) order."""
    code, prev = 0, 0
    out: dict[int, tuple[int, int]] = {}
    for sym, n in sorted(lengths.items(), key=lambda kv: (kv[1], kv[0])):
        code <<= n - prev
        out[sym] = (code, n)
        code += 1
        prev = n
    return out


def _huffman_encode(stream: np.ndarray) -> tuple[list[int], bytes, bytes]:
    """(symbols in header order, one code-length byte per symbol, coded bits)."""
    syms, counts = np.unique(stream, return_counts=True)
    lengths = huffman_code_lengths({int(s): int(c) for s, c in zip(syms, counts, strict=True)})
    codes = _canonical(lengths)
    symbols = sorted(lengths)
    bits = "".join(format(codes[int(s)][0], f"0{codes[int(s)][1]}b") for s in stream.tolist())
    packed = np.packbits(np.frombuffer(bits.encode(), dtype=np.uint8) - ord("0")).tobytes() if bits else b""
    return symbols, bytes(lengths[s] for s in symbols), packed


def _huffman_decode(symbols: list[int], lengths: bytes, data: bytes, count: int) -> np.ndarray:
    codes = _canonical(dict(zip(symbols, lengths, strict=True)))
    lookup = {(length, code): sym for sym, (code, length) in codes.items()}
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8)).tolist()
    out = np.empty(count, dtype=np.int64)
    pos = 0
    for i in range(count):
        code = length = 0
        while True:
            code = (code << 1) | bits[pos]
            pos += 1
            length += 1
            sym = lookup.get((length, code))
            if sym is not None:
                out[i] = sym
                break
    return out


def _huffman_bytes(stream: np.ndarray) -> int:

    if stream.size == 0:
        return 0
    counts = np.unique(stream, return_counts=True)[1].tolist()
    return _bytes(huffman_bits_from_counts(counts)) + len(counts)


# ---------------------------------------------------------------- one weight tensor
def _value_model(module: nn.Module) -> dict[str, Any]:
    """How the weight's values are coded: raw float bits, quantization levels, or codebook indices."""
    w = constraints.effective_weight(module)
    chain = constraints.transforms(module)
    shared = next((t for t in chain if isinstance(t, constraints.SharedWeights)), None)
    wq = next((t for t in chain if isinstance(t, constraints.WeightFakeQuant)), None)
    if shared is not None:
        k = int(shared.centroids.numel())
        return {
            "kind": "codebook",
            "w": w,
            "symbols": shared.index.detach().clone(),
            "bits": _bits_for(k),
            "zero_symbol": k,
            "zero_bits": _bits_for(k + 1),
            "extra": shared.centroids.detach().float().contiguous(),
        }
    if wq is not None and wq.bits < 16:
        x = module.get_parameter("parametrizations.weight.original").detach()
        with torch.no_grad():
            for t in chain:
                if isinstance(t, constraints.WeightFakeQuant):
                    break
                x = t(x)
        levels = constraints.quant_levels(x, wq.bits)
        scale = constraints._weight_scale(x, wq.bits).reshape(-1).float().contiguous()
        qmax = 2 ** (wq.bits - 1) - 1
        return {
            "kind": "levels",
            "w": w,
            "symbols": levels,
            "bits": wq.bits,
            "zero_symbol": 0,
            "zero_bits": wq.bits,
            "offset": qmax,
            "extra": scale,
        }
    if wq is not None:
        return {"kind": "fp16", "w": w, "symbols": None, "bits": 16, "zero_symbol": 0, "zero_bits": 16}
    return {"kind": "fp32", "w": w, "symbols": None, "bits": 32, "zero_symbol": 0, "zero_bits": 32}


def _raw_codes(vm: dict[str, Any], flat: torch.Tensor) -> np.ndarray:
    """Fixed-width codes of the listed values: float bits, level + qmax, or the codebook index."""
    if vm["kind"] == "fp32":
        return flat.float().numpy().view(np.uint32).astype(np.int64)
    if vm["kind"] == "fp16":
        return flat.half().numpy().view(np.uint16).astype(np.int64)
    raise AssertionError


def _encode_tensor(module: nn.Module, bias_bits: int = 32) -> tuple[dict[str, Any], bytes]:
    """Code one weight tensor the way ``tensor_storage`` counts its Huffman size, and its bias at ``bias_bits``;
    return (header, bytes)."""
    vm = _value_model(module)
    w = vm["w"]
    flat = w.flatten()
    n = flat.numel()
    nzmask = flat != 0
    nnz = int(nzmask.sum())
    rows = w.shape[0]
    cols = n // max(rows, 1)
    positions = torch.nonzero(nzmask).flatten()
    gaps = (torch.diff(positions, prepend=torch.tensor([-1])) - 1).numpy()
    symbolic = vm["symbols"] is not None
    if symbolic:
        sym_flat = vm["symbols"].flatten()
        nz_syms = sym_flat[positions].numpy().astype(np.int64)
    else:
        nz_syms = _raw_codes(vm, flat[positions])
    zero = vm["zero_symbol"]

    # Candidate structures in tensor_storage's order: (name, structure bytes, gap stream or None, values, zeros).
    cands: list[tuple[str, bytes, np.ndarray | None, np.ndarray, int]] = []
    dense_vals = np.full(n, zero, dtype=np.int64) if symbolic else _raw_codes(vm, flat)
    if symbolic:
        dense_vals[positions.numpy()] = nz_syms
    cands.append(("dense", b"", None, dense_vals, n - nnz))
    cands.append(("bitmask", np.packbits(nzmask.numpy().astype(np.uint8)).tobytes(), None, nz_syms, 0))
    pos_np = positions.numpy()
    col_idx = pos_np % max(cols, 1)
    row_ptr = np.searchsorted(pos_np // max(cols, 1), np.arange(rows + 1), side="left")
    csr_bits = np.concatenate(
        [
            np.unpackbits(np.frombuffer(_pack(col_idx, _bits_for(cols)), np.uint8))[: nnz * _bits_for(cols)],
            np.unpackbits(np.frombuffer(_pack(row_ptr, _bits_for(nnz + 1)), np.uint8))[
                : (rows + 1) * _bits_for(nnz + 1)
            ],
        ]
    )
    cands.append(("csr", np.packbits(csr_bits).tobytes(), None, nz_syms, 0))
    for b in range(1, 9):
        span = 2**b
        entries_gap: list[int] = []
        entries_val: list[int] = []
        fills = 0
        for g, v in zip(gaps.tolist(), nz_syms.tolist(), strict=True):
            while g >= span:
                entries_gap.append(span - 1)
                entries_val.append(zero)
                g -= span
                fills += 1
            entries_gap.append(g)
            entries_val.append(v)
        gap_stream = np.array(entries_gap, dtype=np.int64)
        cands.append((f"relative-{b}", _pack(gap_stream, b), gap_stream, np.array(entries_val, dtype=np.int64), fills))

    def width(zeros: int) -> int:
        return vm["zero_bits"] if zeros else vm["bits"]

    def fixed_values(vals: np.ndarray, zeros: int) -> bytes:
        off = vm.get("offset", 0)
        return _pack(vals + off, width(zeros))

    extra = vm.get("extra")
    extra_bytes = extra.numpy().tobytes() if extra is not None else b""
    # Fixed-width choice (the report's stored_bytes): first candidate with the fewest bytes.
    best = min(cands, key=lambda c: len(c[1]) + _bytes(len(c[3]) * width(c[4])))
    choice: dict[str, Any] = {"structure": best[0], "structure_coding": "fixed", "value_coding": "fixed"}
    total = len(best[1]) + _bytes(len(best[3]) * width(best[4])) + len(extra_bytes)
    if symbolic:
        for name, sbytes, gap_arr, vals, zeros in cands:
            s_size, s_cod = len(sbytes), "fixed"
            if gap_arr is not None and gap_arr.size and _huffman_bytes(gap_arr) < s_size:
                s_size, s_cod = _huffman_bytes(gap_arr), "huffman"
            v_size, v_cod = _bytes(len(vals) * width(zeros)), "fixed"
            if vals.size and _huffman_bytes(vals) < v_size:
                v_size, v_cod = _huffman_bytes(vals), "huffman"
            if s_size + v_size + len(extra_bytes) < total:
                total = s_size + v_size + len(extra_bytes)
                choice = {"structure": name, "structure_coding": s_cod, "value_coding": v_cod}
    chosen = next(c for c in cands if c[0] == choice["structure"])
    name, sbytes, gap_arr, vals, zeros = chosen
    header: dict[str, Any] = {
        "shape": list(w.shape),
        "kind": vm["kind"],
        "bits": vm["bits"],
        **choice,
        "entries": len(vals),
        "zeros_inline": zeros,
        "offset": vm.get("offset", 0),
        "zero_symbol": zero,
        "width": width(zeros),
    }
    parts: list[bytes] = []
    if choice["structure_coding"] == "huffman":
        assert gap_arr is not None
        syms, lens, coded = _huffman_encode(gap_arr)
        header["structure_symbols"] = syms
        parts += [lens, coded]
        header["structure_sizes"] = [len(lens), len(coded)]
    else:
        parts.append(sbytes)
        header["structure_sizes"] = [len(sbytes)]
    if choice["value_coding"] == "huffman":
        syms, lens, coded = _huffman_encode(vals)
        header["value_symbols"] = syms
        parts += [lens, coded]
        header["value_sizes"] = [len(lens), len(coded)]
    else:
        fv = fixed_values(vals, zeros)
        parts.append(fv)
        header["value_sizes"] = [len(fv)]
    parts.append(extra_bytes)
    header["extra_size"] = len(extra_bytes)
    bias = getattr(module, "bias", None)
    if bias is not None and bias_bits == 16 and not torch.equal(bias.detach(), bias.detach().half().float()):
        raise CheckpointError(
            "the policy stores this layer's bias in fp16 (bias_bits 16) but the model's bias is not fp16-exact: "
            "pack the model compress() made with this policy (it rounds and holds the bias), not another one"
        )
    dtype = np.float16 if bias_bits == 16 else np.float32
    bias_bytes = bias.detach().float().numpy().astype(dtype).tobytes() if bias is not None else b""
    parts.append(bias_bytes)
    header["bias_size"] = len(bias_bytes)
    header["bias_bits"] = bias_bits
    data = b"".join(parts)
    assert len(data) == total + len(bias_bytes), (len(data), total, len(bias_bytes))
    return header, data


def _decode_tensor(h: dict[str, Any], data: bytes) -> tuple[torch.Tensor, torch.Tensor | None]:
    shape = h["shape"]
    n = int(np.prod(shape))
    rows = shape[0]
    cols = n // max(rows, 1)
    cur = 0

    def take(size: int) -> bytes:
        nonlocal cur
        out = data[cur : cur + size]
        cur += size
        return out

    structure = h["structure"]
    entries = h["entries"]
    s_parts = [take(s) for s in h["structure_sizes"]]
    v_parts = [take(s) for s in h["value_sizes"]]
    extra = take(h["extra_size"])
    bias_raw = take(h["bias_size"])
    if h["value_coding"] == "huffman":
        vals = _huffman_decode(h["value_symbols"], v_parts[0], v_parts[1], entries)
    else:
        vals = _unpack(v_parts[0], entries, h["width"]) - h["offset"]
    if structure == "dense":
        positions = np.arange(n)
    elif structure == "bitmask":
        positions = np.nonzero(np.unpackbits(np.frombuffer(s_parts[0], np.uint8))[:n])[0]
    elif structure == "csr":
        bits = np.unpackbits(np.frombuffer(s_parts[0], np.uint8))
        cb, rb = _bits_for(cols), _bits_for(entries + 1)
        col_idx = _unpack(np.packbits(bits[: entries * cb]).tobytes(), entries, cb)
        row_ptr = _unpack(np.packbits(bits[entries * cb : entries * cb + (rows + 1) * rb]).tobytes(), rows + 1, rb)
        row_of = np.repeat(np.arange(rows), np.diff(row_ptr))
        positions = row_of * cols + col_idx
    else:
        b = int(structure.split("-")[1])
        if h["structure_coding"] == "huffman":
            gaps = _huffman_decode(h["structure_symbols"], s_parts[0], s_parts[1], entries)
        else:
            gaps = _unpack(s_parts[0], entries, b)
        positions = np.cumsum(gaps + 1) - 1
    kind = h["kind"]
    out = torch.zeros(n, dtype=torch.float32)
    pos_t = torch.from_numpy(np.asarray(positions, dtype=np.int64))
    if kind == "fp32":
        values = torch.from_numpy(vals.astype(np.uint32).view(np.float32).copy())
        out[pos_t] = values
    elif kind == "fp16":
        values = torch.from_numpy(vals.astype(np.uint16).view(np.float16).copy()).float()
        out[pos_t] = values
    elif kind == "codebook":
        centroids = torch.from_numpy(np.frombuffer(extra, dtype=np.float32).copy())
        v = torch.from_numpy(vals)
        real = v != h["zero_symbol"]
        out[pos_t[real]] = centroids[v[real]]
    else:  # levels
        scale = torch.from_numpy(np.frombuffer(extra, dtype=np.float32).copy())
        levels = torch.zeros(n, dtype=torch.int64)
        levels[pos_t] = torch.from_numpy(vals)
        lv = levels.view(shape).to(torch.float32)
        weight = lv * scale.view((-1,) + (1,) * (len(shape) - 1))
        out = weight.flatten()
    dtype = np.float16 if h.get("bias_bits", 32) == 16 else np.float32
    bias = torch.from_numpy(np.frombuffer(bias_raw, dtype=dtype).astype(np.float32)) if bias_raw else None
    return out.view(shape), bias


# ---------------------------------------------------------------- whole model
def pack_archive(
    model: nn.Module, spec: ModelSpec, policy: Policy, *, metrics: dict[str, Any] | None = None
) -> tuple[bytes, dict[str, Any]]:
    """Pack a model compressed by ``policy``; return (archive bytes, size accounting)."""
    analysis = analyze_model(spec.build(trust_factory=spec.model), spec.input_shape)  # the caller's own model
    gone = removed_layers(policy, analysis)
    coded: dict[str, tuple[dict[str, Any], bytes]] = {}
    for layer in analysis.layers:
        if layer.name in gone:
            continue
        for name, module in weight_modules(model, layer.name):
            coded[name] = _encode_tensor(module, policy.get(layer.name).bias_bits)
    baked = constraints.bake(copy.deepcopy(model))
    state = baked.state_dict()
    covered = {f"{name}.weight" for name in coded} | {f"{name}.bias" for name in coded}
    raw: dict[str, dict[str, Any]] = {}
    payload: list[bytes] = []
    offset = 0
    layer_entries: dict[str, Any] = {}
    for name, (h, data) in coded.items():
        layer_entries[name] = {**h, "at": offset, "size": len(data)}
        payload.append(data)
        offset += len(data)
    layer_bytes = offset
    for key, t in state.items():
        if key in covered:
            continue
        arr = t.detach().cpu().contiguous().numpy()
        b = arr.tobytes()
        raw[key] = {"shape": list(arr.shape), "dtype": str(arr.dtype), "at": offset, "size": len(b)}
        payload.append(b)
        offset += len(b)
    header = {
        "format": "edgecompress.archive",
        "version": ARCHIVE_VERSION,
        "spec": asdict(spec),
        "policy": policy.to_dict(),
        "round_to": policy.round_to,
        "metrics": metrics or {},
        "layers": layer_entries,
        "tensors": raw,
    }
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    blob = ARCHIVE_MAGIC + bytes([ARCHIVE_VERSION]) + struct.pack("<I", len(head)) + head + b"".join(payload)
    info = {
        "bytes": len(blob),
        "layer_bytes": layer_bytes,
        "other_tensor_bytes": offset - layer_bytes,
        "header_bytes": len(head) + 9,
        "note": "layer_bytes are the report's huffman_bytes_after (weights, codebooks, scales, masks, indices, "
        "biases of the compressible layers); other tensors (BatchNorm, activation ranges) and the JSON "
        "header are the container overhead",
    }
    return blob, info


def load_archive(
    source: str | Path | IO[bytes], *, trust_factory: str | None = None
) -> tuple[nn.Module, Any, Any, dict[str, Any]]:
    """Rebuild the model from an archive: (model with plain weights, base spec, policy, metrics).

    ``trust_factory``: the ``package.module:function`` the caller chose, if the archive names one."""
    name = str(source) if isinstance(source, (str, Path)) else "archive"
    if isinstance(source, (str, Path)):
        if not Path(source).is_file():
            raise CheckpointError(f"archive {source} does not exist")
        blob = Path(source).read_bytes()
    else:
        blob = source.read()
    if blob[:4] != ARCHIVE_MAGIC:
        raise CheckpointError(f"{name} is not an edgecompress archive (bad magic {blob[:4]!r})")
    if blob[4] != ARCHIVE_VERSION:
        raise CheckpointError(f"{name} has archive version {blob[4]}; this edgecompress reads {ARCHIVE_VERSION}")
    (hlen,) = struct.unpack("<I", blob[5:9])
    try:
        header = json.loads(blob[9 : 9 + hlen])
        spec = ModelSpec.from_dict(header["spec"])
        policy = with_round_to(Policy.from_dict(header["policy"], name), int(header["round_to"]))
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{name} has a corrupt header: {exc}") from exc
    payload = memoryview(blob)[9 + hlen :]
    model = constraints.bake(rebuild_structure(spec, policy, trust_factory=trust_factory, where=f"archive {name}"))
    state = model.state_dict()
    new: dict[str, torch.Tensor] = {}
    for lname, h in header["layers"].items():
        w, b = _decode_tensor(h, bytes(payload[h["at"] : h["at"] + h["size"]]))
        new[f"{lname}.weight"] = w
        if b is not None:
            new[f"{lname}.bias"] = b
    for key, t in header["tensors"].items():
        arr = np.frombuffer(bytes(payload[t["at"] : t["at"] + t["size"]]), dtype=np.dtype(t["dtype"]))
        new[key] = torch.from_numpy(arr.reshape(t["shape"]).copy())
    missing = set(state) - set(new)
    if missing:
        raise CheckpointError(f"{name} lacks tensors {sorted(missing)[:5]}")
    model.load_state_dict(new)
    return model.eval(), spec, policy, header.get("metrics", {})
