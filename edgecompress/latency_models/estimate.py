"""``estimate_latency``: a model's predicted latency on a device, per layer, each number with its source."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from edgecompress._inputs import InputSpec, is_shape, normalise
from edgecompress.errors import EdgeCompressError
from edgecompress.latency_models.device_model import (
    DEVICE_PEAKS,
    ENERGY_COLUMNS,
    EXTRAPOLATED_KINDS,
    KIND_TO_GROUP,
    DeviceModel,
    calibration_edges,
    group_features,
)
from edgecompress.latency_models.devices import load_device
from edgecompress.latency_models.ops import trace_ops
from edgecompress.latency_models.table import LatencyTable, op_key

__all__ = [
    "PRECISIONS",
    "EnergyEstimate",
    "LatencyReport",
    "LatencyRow",
    "energy_devices",
    "estimate_energy",
    "estimate_latency",
    "layer_precision",
    "precision_changes",
    "priced_precisions",
]

PRECISIONS = ("fp32", "fp16", "int8")
GPU_PROFILES = ("jetson-nano", "jetson-nano-fp16", "jetson-tx2")
"""Device models of GPU runtimes (TensorRT on a Jetson): a table timed on a CPU does not stand in for them."""
CPU_RUNTIMES = ("onnxruntime", "litert", "torch")
"""The precisions a layer can be priced at (a device model prices its own one; a table those it measured)."""


@dataclass
class LatencyRow:
    layer: str
    """The conv/linear layer the operators belong to, or ``(other)`` for adds and pooling outside layers."""
    ops: int
    kinds: str
    ms: float
    source: str


@dataclass
class LatencyReport:
    device: str
    total_ms: float
    overhead_ms: float
    rows: list[LatencyRow] = field(default_factory=list)
    source: str = ""
    validated: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    """Operator signatures neither the table nor a device model could price (not in ``total_ms``)."""

    @property
    def unpriced(self) -> list[str]:
        """The missing operators a table lacks (a profile run can measure them), one entry per operator; not the
        ``unknown:`` kinds no estimator knows, which the warnings name."""
        return [m for m in self.missing if not m.startswith("unknown:")]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _device_source(model: DeviceModel) -> tuple[str, dict[str, Any]]:
    v = model.validation
    summary: dict[str, Any]
    if "spearman" in v:
        summary = {k: v[k] for k in ("spearman", "kendall", "mape_raw", "mape_scaled", "n") if k in v}
        text = (
            f"predicted by device model {model.name} ({model.source}); validated on {v.get('n')} NAS-Bench-201 "
            f"holdout networks: Spearman {v['spearman']:.3f}, MAPE {v['mape_raw']:.1%}"
        )
    else:
        summary = {rt: {k: r[k] for k in ("spearman", "mape_raw")} for rt, r in v.items()}
        text = f"predicted by device model {model.name} ({model.source}); validation per runtime: " + ", ".join(
            f"{rt} Spearman {r['spearman']:.3f} MAPE {r['mape_raw']:.1%}" for rt, r in v.items()
        )
    return text, summary


def estimate_latency(
    model: nn.Module,
    example_input: InputSpec,
    device: str | DeviceModel | LatencyTable,
    *,
    precision: str | Mapping[str, str] = "fp32",
    table: str | os.PathLike[str] | LatencyTable | None = None,
    force: bool = False,
) -> LatencyReport:
    """Predicted batch-1 latency of ``model`` on ``device``, per layer, each number with its source.

    ``device``: a profile name (``edgecompress devices``), a table path, or a
    loaded DeviceModel / LatencyTable. ``example_input``: a shape or a tensor (priced at batch 1), or a
    tuple / dict of example inputs (traced as given). With a table (``device`` or ``table``),
    operators are looked up (exact, or interpolated over channels); misses
    fall back to the device model when there is one, and are listed either
    way. ``precision`` is one for all layers or a mapping layer -> precision
    (layers not named run fp32). A table measured for another device, or
    without the asked precision, is refused unless ``force``.
    """
    asked = {precision} if isinstance(precision, str) else set(precision.values())
    bad = sorted(asked - set(PRECISIONS))
    if bad:
        raise EdgeCompressError(f"precision {bad[0]!r} is not one of {', '.join(PRECISIONS)}")
    dm, tab = _resolve(device, table, precision, force)
    spec = normalise(example_input)
    if isinstance(spec, torch.Tensor):
        spec = tuple(spec.shape)
    if is_shape(spec):
        spec = (1, *spec[1:])  # type: ignore[index]  # batch 1, zeros
    ops = trace_ops(model, spec)  # a tuple or dict of example inputs is traced as given (batch 1 expected)
    source, validated = _device_source(dm) if dm is not None else ("", {})
    if tab is not None:
        source = (
            f"looked up in {tab.path or 'a latency table'} (measured on {tab.meta.get('device')}, "
            f"{tab.meta.get('runtime')} {tab.meta.get('versions', {}).get(tab.meta.get('runtime', ''), '')}, "
            f"{tab.meta.get('threads')} threads, median of {tab.meta.get('repeats')})"
            + (f"; misses from {source}" if dm is not None else "")
        )
    by_layer: dict[str, list[Any]] = {}
    for op in ops:
        by_layer.setdefault(op.layer or "(other)", []).append(op)
    rows, warnings, missing = [], [], []
    unpriced_acts = 0  # standalone activations (OpRecord.acts) no cost included
    roofline: list[Any] = []  # operators partly priced at the published roofline (beyond the calibration range)
    for layer, layer_ops in by_layer.items():
        # Element-wise operators outside any layer (residual adds, pools) are priced at fp32 (docs/latency.md).
        p = (
            "fp32"
            if layer == "(other)"
            else precision
            if isinstance(precision, str)
            else layer_precision(layer, precision)
        )
        total, sources = 0.0, set()
        for op in layer_ops:
            ms, src = _op_ms(op, p, dm, tab)
            if op.acts and not (ms is not None and src.startswith("device model") and "act" in dm.fusions):  # type: ignore[union-attr]
                unpriced_acts += op.acts
            if ms is None:
                missing.append(op_key(op, p) or f"{op.kind}:{op.detail}")
                continue
            total += ms
            if dm is not None and src.startswith("device model") and dm.beyond_calibration(op):
                roofline.append(op)
                src += " (beyond the calibration range: roofline)"
            sources.add(src)
        kinds = sorted({op.kind for op in layer_ops})
        rows.append(LatencyRow(layer, len(layer_ops), ",".join(kinds), total, " + ".join(sorted(sources)) or "missing"))
    for kind, why in EXTRAPOLATED_KINDS.items():
        if tab is None and dm is not None and dm.extrapolated(kind) and any(op.kind == kind for op in ops):
            warnings.append(f"{kind} operators are extrapolated: {why}")
    if roofline and dm is not None:
        peak = DEVICE_PEAKS[dm.name]
        edges = calibration_edges()
        groups = sorted(
            {KIND_TO_GROUP[op.kind] for op in roofline}
            | ({"add"} if "act" in dm.fusions and any(op.acts for op in roofline) else set())
        )
        limits = ", ".join(f"{g} {edges[g][0]:.2f} MMAC / {edges[g][1]:.2f} MB" for g in groups)
        warnings.append(
            f"{len(roofline)} operators are larger than any in the calibration networks (largest per operator: "
            f"{limits}); beyond that size they are extrapolated at {dm.name}'s published roofline "
            f"({peak['gmacs']:g} GMAC/s, {peak['gbps']:g} GB/s; {peak['source']}): a lower bound for that part"
        )
    if unpriced_acts:
        if dm is not None and "act" in dm.fusions:
            by = "they read operators that are not priced, or are looked up in a table that has no activation entries"
        elif tab is not None or dm is None:
            by = "the table has no activation entries"
        elif "fusions" in dm.selection:
            by = f"{dm.name}'s cross-validation on its calibration rows chose to price none"
        else:
            by = f"{dm.name} was fitted without them"
        warnings.append(
            f"{unpriced_acts} activations cannot be fused into the operator that made their input (that output has "
            f"other readers, or its maker is not a convolution, linear layer or add) and run on their own; "
            f"not counted: {by}"
        )
    if dm is not None and tab is None and asked - {dm.precision}:
        warnings.append(
            f"{dm.name} is calibrated at {dm.precision} only: what is asked at "
            f"{', '.join(sorted(asked - {dm.precision}))} is priced at {dm.precision} (no speed-up is assumed that "
            "nothing measured); profile the device at that precision for a table that knows it"
        )
    unknown = sorted({m for m in missing if m.startswith("unknown:")})
    if unknown:
        warnings.append(
            f"operators the estimator does not know, not counted: {', '.join(u.split(':', 1)[1] for u in unknown)}"
        )
    unpriced = [m for m in missing if not m.startswith("unknown:")]
    if unpriced:
        warnings.append(
            f"{len(unpriced)} operators are not in the table and have no device model to fall back on; "
            f"not counted: {', '.join(sorted(set(unpriced)))}. Profile them with `edgecompress profile`."
        )
    if tab is not None:
        # The per-inference overhead is a base plus a cost per operator node the runtime dispatches
        # (fitted by in-graph profiling, or with the context factors on whole models: ``fit_context``).
        overhead = tab.overhead_ms + float(tab.meta.get("overhead_per_op_ms", 0.0)) * dispatched_ops(ops)
    else:
        overhead = dm.scale * dm.intercept_ms if dm is not None else 0.0
    change = _precision_change_cost(tab, precision)
    if change is not None:
        count, mb = precision_changes(ops, precision)
        if count:
            rows.append(LatencyRow("(precision changes)", count, "quantize,dequantize", change[0] * mb, change[1]))
    total = overhead + sum(r.ms for r in rows)
    name = dm.name if dm is not None else str(tab.meta.get("device") if tab else "")
    return LatencyReport(name, total, overhead, rows, source, validated, warnings, sorted(set(missing)))


@dataclass
class EnergyEstimate:
    """Predicted energy per inference (batch 1) and where the number comes from."""

    device: str
    mj: float
    source: str
    validation: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def energy_devices() -> list[str]:
    """The device profiles with an energy model (those the public data measured energy on)."""
    return [name for name in ENERGY_COLUMNS if isinstance(load_device(name), DeviceModel) and load_device(name).energy]  # type: ignore[union-attr]


def estimate_energy(model: nn.Module, example_input: InputSpec, device: str | DeviceModel) -> EnergyEstimate:
    """Predicted mJ per batch-1 inference of ``model`` on ``device`` from its energy model (the latency model's
    per-operator terms, fitted on the device's public energy measurements; see ``energy.validation``)."""
    dm = device if isinstance(device, DeviceModel) else load_device(str(device))
    if not isinstance(dm, DeviceModel) or not dm.energy:
        name = dm.name if isinstance(dm, DeviceModel) else str(device)
        raise EdgeCompressError(
            f"device {name!r} has no energy model; energy per inference is modelled for: "
            f"{', '.join(energy_devices())} (the only public energy measurements in the calibration data)"
        )
    spec = normalise(example_input)
    if isinstance(spec, torch.Tensor):
        spec = tuple(spec.shape)
    if is_shape(spec):
        spec = (1, *spec[1:])  # type: ignore[index]
    ops = trace_ops(model, spec)
    merges, fusions = dm.energy_groups()
    mj = dm.predict_energy_features(group_features(ops, merges=merges, fusions=fusions))
    e, v = dm.energy, dm.energy.get("validation", {})
    extrapolated = sorted({op.kind for op in ops if dm.extrapolated(op.kind)})
    source = (
        f"predicted by the {dm.name} energy model ({e['source']}; fitted on {e['fitted_on'].split(' (')[0]}); "
        f"validated on {v.get('n')} NAS-Bench-201 holdout networks: Spearman {v.get('spearman', float('nan')):.3f}, "
        f"MAPE {v.get('mape_raw', float('nan')):.1%}; fitted on 32x32 cells, so other input sizes are extrapolated"
        + "".join(f"; {k} operators extrapolated ({EXTRAPOLATED_KINDS[k]})" for k in extrapolated)
    )
    return EnergyEstimate(dm.name, mj, source, {k: v[k] for k in ("n", "spearman", "mape_raw") if k in v})


WEIGHTED_KINDS = ("conv_k1", "conv_k3", "conv_kN", "depthwise", "linear")
GLUE = {("add", ""), ("pool", "max"), ("pool", "global")}
"""Operators an int8 export quantizes with the weighted ones when every weighted layer is int8 (Add, MaxPool,
GlobalAveragePool: ``onnx.INT8_GLUE_OPS``); otherwise they run in float."""


def precision_changes(ops: Any, precision: str | Mapping[str, str]) -> tuple[int, float]:
    """Where a deployed graph changes precision: the number of tensors a Quantize or Dequantize converts (an
    operator reading a tensor made at another precision, the model's input read by an int8 operator, an int8
    output) and their size in MB at fp32. Weighted operators run at their layer's precision; the element-wise
    ones in :data:`GLUE` at int8 where every weighted layer is int8, as an int8 export has them; the rest in
    fp32."""
    weighted = [op for op in ops if op.kind in WEIGHTED_KINDS]
    at = [precision if isinstance(precision, str) else layer_precision(op.layer, precision) for op in weighted]
    glue = "int8" if at and all(p == "int8" for p in at) else "fp32"
    own = iter(at)
    prec = [next(own) if op.kind in WEIGHTED_KINDS else glue if (op.kind, op.detail) in GLUE else "fp32" for op in ops]
    count, elements = 0, 0
    for i, op in enumerate(ops):
        for j in op.inputs:
            if (prec[j] if j >= 0 else "fp32") != prec[i]:
                count += 1
                elements += math.prod(ops[j].shape) if j >= 0 else op.cin * math.prod(op.in_hw)
    if ops and prec[-1] != "fp32":
        count += 1
        elements += math.prod(ops[-1].shape)
    return count, elements * 4 / 1e6


def _precision_change_cost(tab: LatencyTable | None, precision: str | Mapping[str, str]) -> tuple[float, str] | None:
    """The table's fitted cost per MB crossing a change of precision, and its source (None: not fitted, or
    nothing at int8)."""
    asked = {precision} if isinstance(precision, str) else set(precision.values())
    if tab is None or "int8" not in asked:
        return None
    fit = tab.meta.get("context", {}).get("by_precision", {}).get("int8", {})
    if "change_ms_per_mb" not in fit:
        return None
    return float(fit["change_ms_per_mb"]), (
        f"{fit['change_ms_per_mb']:.3f} ms per MB converted, fitted with the table's int8 context "
        f"({fit.get('date', '?')}: {fit.get('fitted_on', '').split(';')[0]})"
    )


def dispatched_ops(ops: Any) -> int:
    """Operators a table's per-operator overhead applies to: every traced one but residual adds
    (fused into the convolution before them) and operators the estimator does not know."""
    return sum(1 for op in ops if op.kind not in ("add", "unknown"))


def layer_precision(layer: str, precision: Mapping[str, str]) -> str:
    """The precision a mapping gives ``layer``: its own entry, else that of the module it was factorised
    from (``layers.0.conv1`` covers ``layers.0.conv1.0`` and ``.1``), else fp32."""
    while layer:
        if layer in precision:
            return precision[layer]
        layer = layer.rpartition(".")[0]
    return "fp32"


def priced_precisions(device: str | DeviceModel | LatencyTable) -> set[str]:
    """The precisions ``device`` prices per layer: a table's measured ones; a device model prices
    every operator at the one precision its calibration data was measured at."""
    dm, tab = _resolve(device, None, "fp32", True)
    return tab.precisions() if tab is not None else {dm.precision} if dm is not None else set()


def _op_ms(op: Any, precision: str, dm: DeviceModel | None, tab: LatencyTable | None) -> tuple[float | None, str]:
    if tab is not None and op.kind == "add" and tab.meta.get("fused_adds"):
        return 0.0, "fused into the preceding convolution (in-graph table)"
    if tab is not None:
        key = op_key(op, precision)
        hit = tab.lookup(key) if key is not None else None
        if hit is not None:
            if tab.meta.get("mode") == "in-graph":
                return float(tab.meta.get("node_time_scale", 1.0)) * hit.ms, hit.source
            # Each isolated measurement paid the per-call overhead once; the model pays it once in total.
            # In a whole graph the runtime keeps its blocked layout between operators and fuses some: the
            # table's fitted context factor for this operator kind accounts for that (1 when not fitted).
            factor = tab.context_factor(op.kind, precision)
            return factor * max(0.0, hit.ms - tab.overhead_ms), hit.source
    if dm is not None and op.kind != "unknown":
        src = f"device model {dm.name}"
        if dm.extrapolated(op.kind):
            src += " (extrapolated)"
        if op.merged and f"merge_{op.merged}" in dm.merges:
            src += f" (merged with an earlier operator on the same input: priced as merge_{op.merged})"
        if op.kind == "add" and op.fused and "fuse_add" in dm.fusions:
            src += " (fused into the convolution that made an operand: priced as fuse_add)"
        if op.acts and "act" in dm.fusions:
            src += f" (includes {op.acts} standalone activation(s) on its input, priced as adds)"
        return dm.op_ms(op), src
    return None, "missing"


def _resolve(
    device: str | DeviceModel | LatencyTable,
    table: str | os.PathLike[str] | LatencyTable | None,
    precision: Any,
    force: bool,
) -> tuple[DeviceModel | None, LatencyTable | None]:

    dm: DeviceModel | None = None
    tab: LatencyTable | None = None
    if isinstance(device, DeviceModel):
        dm = device
    elif isinstance(device, LatencyTable):
        tab = device
    elif str(device).endswith(".json") or Path(str(device)).is_file():
        tab = LatencyTable.load(device)
    else:
        loaded = load_device(str(device))
        if isinstance(loaded, LatencyTable):
            tab = loaded
        else:
            dm = loaded
    if table is not None:
        tab = table if isinstance(table, LatencyTable) else LatencyTable.load(table)
        if dm is not None and tab.meta.get("device") not in (dm.name, dm.device) and not force:
            raise EdgeCompressError(
                f"table {tab.path} was measured on {tab.meta.get('device')!r}, not {dm.name!r}; pass --force to use it"
            )
        runtime = str(tab.meta.get("runtime", ""))
        if dm is not None and dm.name in GPU_PROFILES and runtime in CPU_RUNTIMES and not force:
            raise EdgeCompressError(
                f"table {tab.path} was measured with {runtime} on the CPU, but {dm.name} prices the Jetson's GPU "
                "(what it deploys on): profile with --runtime onnxruntime-tensorrt or onnxruntime-cuda on the "
                "device, or pass --force to use the CPU table"
            )
    if tab is not None:
        asked = {precision} if isinstance(precision, str) else set(precision.values()) | {"fp32"}
        absent = sorted(asked - tab.precisions())
        if absent and not force:
            raise EdgeCompressError(
                f"table {tab.path} holds precisions {sorted(tab.precisions())}, not {absent}; profile them or pass "
                "--force to fall back"
            )
    return dm, tab
