"""Measured per-operator lookup tables, and the operator signatures a model (and a search over it) reaches.

A :class:`LatencyTable` is the JSON file the profiler writes: device metadata
(device, runtime and version, precision, threads, batch, warm-up and repeat
counts, statistic, date, software versions, who measured it) and entries
keyed by operator signature ``kind|cin|cout|k|s|g|h|w|precision``. Lookups are
exact hits, or interpolated over channels between measured neighbours that
agree on everything else; anything else is a miss the caller must handle.

Interpolation knows SIMD channel blocks: where the table's ``meta`` names a
``channel_block`` b > 1 (ONNX Runtime's x86 CPU convolutions compute in
blocks of b channels: 16 with AVX-512, 8 with AVX2, see
:func:`edgecompress.latency_models.profiler.channel_block`), a convolution's
output channels are rounded up to a multiple of b, and its input channels too
when more than b (a float convolution; an int8 one keeps its input channels,
see :meth:`LatencyTable.blocked_channels`), before interpolating. Measured on
this project's AVX-512 host: a float 3x3 convolution costs the same with 8 or
16 output channels, with 24 or 32 input channels, so straight-line
interpolation at 40 channels would price a 48-channel convolution at the
40-channel midpoint.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecompress._io import read_json, write_json_atomic
from edgecompress.errors import EdgeCompressError
from edgecompress.latency_models.ops import OpRecord
from edgecompress.latency_models.profiler import PLAN_FORMAT, TABLE_FORMAT, TABLE_VERSION, make_key, parse_key

__all__ = ["LatencyTable", "Lookup", "op_key", "reachable_keys"]


def op_key(op: OpRecord, precision: str = "fp32") -> str | None:
    """The table signature of a traced operator (None for kinds tables do not hold)."""
    h, w = op.in_hw
    if op.kind in ("conv_k1", "conv_k3", "conv_kN"):
        return make_key("conv", op.cin, op.cout, op.kernel, op.stride, op.groups, h, w, precision)
    if op.kind == "depthwise":
        return make_key("depthwise", op.cin, op.cout, op.kernel, op.stride, op.groups, h, w, precision)
    if op.kind == "linear":
        return make_key("linear", op.cin, op.cout, 1, 1, 1, 1, 1, precision)
    if op.kind == "add":
        return make_key("add", op.cin, op.cout, 1, 1, 1, h, w, precision)
    if op.kind == "pool":
        return make_key(f"pool-{op.detail}", op.cin, op.cout, op.kernel, op.stride, 1, h, w, precision)
    return None


@dataclass(frozen=True)
class Lookup:
    ms: float
    source: str
    """``table`` (exact hit) or ``interpolated`` (over channels)."""


class LatencyTable:
    def __init__(self, meta: dict[str, Any], entries: dict[str, dict[str, Any]], path: str = "") -> None:
        self.meta = meta
        self.entries = entries
        self.path = path
        # Index for interpolation: everything but the channels -> {(cin, cout): ms}.
        self._grid: dict[tuple[Any, ...], dict[tuple[int, int], float]] = {}
        for key, entry in entries.items():
            f = parse_key(key)
            rest = (f["kind"], f["k"], f["s"], f["h"], f["w"], f["precision"], f["g"] > 1)
            self._grid.setdefault(rest, {})[(f["cin"], f["cout"])] = float(entry["ms"])

    @property
    def overhead_ms(self) -> float:
        return float(self.meta.get("overhead_ms", 0.0))

    def context_factor(self, kind: str, precision: str = "fp32") -> float:
        """Multiplier from isolated to in-graph cost for a traced operator kind at ``precision`` (see
        ``fit_context``; a precision without a fit of its own takes the fp32 factors)."""
        context = self.meta.get("context", {})
        factors = context.get("by_precision", {}).get(precision, context).get("factors", {})
        return float(factors.get(CONTEXT_GROUP.get(kind, "conv"), 1.0))

    def save(self, path: str | os.PathLike[str]) -> Path:
        data = {"format": TABLE_FORMAT, "version": TABLE_VERSION, "meta": self.meta, "entries": self.entries}
        saved = write_json_atomic(path, data, indent=1, sort_keys=True)
        self.path = str(saved)
        return saved

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LatencyTable:
        path = Path(path)
        data = read_json(path, "latency table", EdgeCompressError)
        if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT:
            raise EdgeCompressError(f"{path} is not an edgecompress latency table (format {TABLE_FORMAT!r})")
        if data.get("version") != TABLE_VERSION:
            raise EdgeCompressError(
                f"{path} has table version {data.get('version')!r}; this edgecompress reads version {TABLE_VERSION}"
            )
        entries = data.get("entries")
        if not isinstance(entries, dict) or not isinstance(data.get("meta"), dict):
            raise EdgeCompressError(f"{path} is corrupt: 'meta' and 'entries' must be mappings")
        for key, entry in entries.items():
            try:
                parse_key(key)
                float(entry["ms"])
            except (ValueError, KeyError, TypeError) as exc:
                raise EdgeCompressError(f"{path}: bad entry {key!r}: {exc}") from None
        return cls(data["meta"], entries, str(path))

    def lookup(self, key: str) -> Lookup | None:
        """Exact hit, else bilinear interpolation over (cin, cout) between measured neighbours."""
        if key in self.entries:
            return Lookup(float(self.entries[key]["ms"]), "table")
        f = parse_key(key)
        grid = self._grid.get((f["kind"], f["k"], f["s"], f["h"], f["w"], f["precision"], f["g"] > 1))
        if not grid:
            return None
        if f["kind"] in TIED_KINDS:  # one channel count (cin == cout): interpolate along it
            ms = _interpolate_1d({ci: v for (ci, co), v in grid.items() if ci == co}, f["cin"])
            return None if ms is None else Lookup(ms, "interpolated")
        cin, cout = self.blocked_channels(f["kind"], f["cin"], f["cout"], f["precision"])
        if (cin, cout) in grid:
            return Lookup(grid[(cin, cout)], "table (channel block)")
        ms = _interpolate(grid, cin, cout)
        if ms is None and (cin, cout) != (f["cin"], f["cout"]):  # the block lies past the measured range
            ms = _interpolate(grid, f["cin"], f["cout"])
        return None if ms is None else Lookup(ms, "interpolated")

    @property
    def channel_block(self) -> int:
        return max(1, int(self.meta.get("channel_block", 1)))

    def blocked_channels(self, kind: str, cin: int, cout: int, precision: str = "fp32") -> tuple[int, int]:
        """The channel counts a convolution computes with: output channels rounded up to the table's
        ``channel_block``, input channels too when above one block (below it the runtime reads them as they
        are); other kinds unchanged.

        int8 convolutions round their input channels to ``int8_input_block`` instead (meta; default 1, as they
        are): ONNX Runtime's x86 kernels run them as im2col and a quantized matrix product, not in the blocked
        float layout. On the project's 2-core AVX-512 VM (1 thread, 2026-12-04, benchmarks/channel_steps.py) a
        3x3 int8 convolution at 14x14 grew smoothly with input channels 8..96 (0.0197 to 0.0467 ms) while the
        float one stepped every 16, and both stepped every 16 output channels."""
        b = self.channel_block
        if b <= 1 or kind != "conv":
            return cin, cout
        ib = max(1, int(self.meta.get("int8_input_block", 1))) if precision == "int8" else b
        return (-(-cin // ib) * ib if cin > ib else cin), -(-cout // b) * b

    def precisions(self) -> set[str]:
        return {parse_key(k)["precision"] for k in self.entries}


CONTEXT_GROUP = {
    "conv_k1": "conv", "conv_k3": "conv", "conv_kN": "conv", "linear": "conv",
    "depthwise": "depthwise", "add": "eltwise", "pool": "eltwise", "mul": "eltwise",
}  # fmt: skip
TIED_KINDS = ("depthwise", "add", "pool-max", "pool-avg", "pool-global")


def _interpolate_1d(points: dict[int, float], c: int) -> float | None:
    b = _bracket(sorted(points), c)
    return None if b is None else _lerp(points[b[0]], points[b[1]], b[0], b[1], c)


def _bracket(values: Sequence[int], v: int) -> tuple[int, int] | None:
    lower = [x for x in values if x <= v]
    upper = [x for x in values if x >= v]
    if not lower or not upper:
        return None
    return max(lower), min(upper)


def _lerp(a: float, b: float, x0: int, x1: int, x: int) -> float:
    return a if x1 == x0 else a + (b - a) * (x - x0) / (x1 - x0)


def _interpolate(grid: dict[tuple[int, int], float], cin: int, cout: int) -> float | None:
    """Along cout at the nearest measured cin on each side of ``cin`` that brackets ``cout``, then along cin."""
    cins = sorted({c for c, _ in grid})

    def along_cout(i: int) -> float | None:
        return _interpolate_1d({co: v for (ci, co), v in grid.items() if ci == i}, cout)

    below = next(((i, v) for i in reversed(cins) if i <= cin and (v := along_cout(i)) is not None), None)
    above = next(((i, v) for i in cins if i >= cin and (v := along_cout(i)) is not None), None)
    if below is None or above is None:
        return None
    return _lerp(below[1], above[1], below[0], above[0], cin)


def _grid(c: int, fractions: Iterable[float]) -> list[int]:
    return sorted({max(1, round(f * c)) for f in fractions} | {c})


def reachable_keys(
    ops: Sequence[OpRecord],
    precisions: Sequence[str] = ("fp32",),
    keeps: Sequence[float] = (0.2, 0.25, 0.5, 0.75, 1.0),
    ranks: Sequence[float] = (0.1, 0.25, 0.5, 0.75),
) -> list[str]:
    """Signatures a search over this model can reach: channel grids, and low-rank factors of convs.

    Every channel count on a layer's grid (``keeps`` x channels; 0.2 is the
    searches' smallest keep, and compress() rounds kept channels up, so no
    search goes below the grid) is paired with
    every one on its input's grid; factorised convolutions add a kxk conv to r
    channels and a 1x1 conv from r, for r on the ``ranks`` grid of the full
    rank. The image channels of the first layer are never pruned.
    """
    keys: list[str] = []
    first_cin = ops[0].cin if ops else 0
    for op in ops:
        if op.kind in ("unknown", "mul"):
            continue
        cins = [op.cin] if op.cin == first_cin and op is ops[0] else _grid(op.cin, keeps)
        couts = _grid(op.cout, keeps)
        for p in precisions:
            if op.kind == "depthwise":
                keys += [op_key(_with(op, cin=c, cout=c, groups=c), p) for c in couts]  # type: ignore[misc]
            elif op.kind in ("add", "pool"):
                keys += [op_key(_with(op, cin=c, cout=c), p) for c in couts]  # type: ignore[misc]
            elif op.kind == "linear" and op is ops[-1]:
                keys += [op_key(_with(op, cin=c), p) for c in cins]  # type: ignore[misc]
            else:
                keys += [op_key(_with(op, cin=ci, cout=co), p) for ci in cins for co in couts]  # type: ignore[misc]
                if op.kind in ("conv_k1", "conv_k3", "conv_kN", "linear"):
                    full = min(op.cout, op.cin * op.kernel * op.kernel)
                    for r in _grid(full, ranks):  # includes the full rank: the upper interpolation bracket
                        keys += [op_key(_with(op, cin=ci, cout=r), p) for ci in cins]  # type: ignore[misc]
                        pointwise = _with(op, cin=r, kernel=1, stride=1, kind="conv_k1")
                        if op.kind == "linear":
                            pointwise = _with(op, cin=r)
                        else:
                            h, w = op.shape[-2], op.shape[-1]
                            pointwise = _with(pointwise, in_hw=(h, w))
                        keys += [op_key(_with(pointwise, cout=co), p) for co in couts]  # type: ignore[misc]
    return list(dict.fromkeys(k for k in keys if k is not None))


def _with(op: OpRecord, **changes: Any) -> OpRecord:
    from dataclasses import replace

    return replace(op, **changes)


def write_plan(
    keys: Sequence[str],
    path: str | os.PathLike[str],
    model: str,
    *,
    runtime: str | None = None,
    files: dict[str, str] | None = None,
) -> Path:
    """The plan ``profiler.py`` measures on a device: the signatures, and for LiteRT (``runtime``) the file
    of each signature's converted operator (``files``, names relative to the plan's folder)."""
    path = Path(path)
    plan: dict[str, object] = {"format": PLAN_FORMAT, "model": model, "keys": list(keys)}
    if runtime is not None:
        plan["runtime"] = runtime
    if files is not None:
        plan["files"] = files
    path.write_text(json.dumps(plan, indent=1) + "\n")
    return path
