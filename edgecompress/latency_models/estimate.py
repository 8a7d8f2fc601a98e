"""``estimate_latency``: a model's predicted latency on a device, per layer, each number with its source."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn

from edgecompress.latency_models.device_model import EXTRAPOLATED_KINDS, DeviceModel
from edgecompress.latency_models.devices import load_device
from edgecompress.latency_models.ops import trace_ops

__all__ = ["LatencyReport", "LatencyRow", "estimate_latency"]


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
    model: nn.Module, example_input: torch.Tensor | tuple[int, ...], device: str | DeviceModel
) -> LatencyReport:
    """Predicted batch-1 latency of ``model`` on ``device`` (a profile name or a loaded DeviceModel)."""
    dm = load_device(device) if isinstance(device, str) else device
    shape = tuple(example_input.shape) if isinstance(example_input, torch.Tensor) else tuple(example_input)
    shape = (1, *shape[1:])
    ops = trace_ops(model, shape)
    source, validated = _device_source(dm)
    by_layer: dict[str, list[Any]] = {}
    for op in ops:
        by_layer.setdefault(op.layer or "(other)", []).append(op)
    rows = []
    warnings = []
    for layer, layer_ops in by_layer.items():
        kinds = sorted({op.kind for op in layer_ops})
        row_source = f"device model {dm.name}"
        extrapolated = [k for k in kinds if k in EXTRAPOLATED_KINDS]
        if extrapolated:
            row_source += f" (extrapolated: {'; '.join(EXTRAPOLATED_KINDS[k] for k in extrapolated)})"
        rows.append(
            LatencyRow(layer, len(layer_ops), ",".join(kinds), sum(dm.op_ms(op) for op in layer_ops), row_source)
        )
    for kind, why in EXTRAPOLATED_KINDS.items():
        if any(op.kind == kind for op in ops):
            warnings.append(f"{kind} operators are extrapolated: {why}")
    overhead = dm.scale * dm.intercept_ms
    total = overhead + sum(r.ms for r in rows)
    return LatencyReport(dm.name, total, overhead, rows, source, validated, warnings)
