"""Per-operator device cost models, fitted on public whole-network measurements.

A device model predicts one operator's latency as

    ms = c_g + a_g * MMACs + b_g * MB moved        (g = the operator's group)

and a network's latency as an intercept (runtime overhead per inference) plus
the sum over its operators. Groups: ``conv_k3`` (3x3 and larger convolutions),
``conv_k1`` (1x1 convolutions, linear layers), ``eltwise`` (pooling, adds,
multiplies: memory-bound). Depthwise convolutions use the ``conv_k3``
coefficients, which is an extrapolation: the calibration networks hold none.
Coefficients are fitted by non-negative least squares on *relative* error
(rows weighted by 1 / measured latency), on the ``calibration`` rows only;
the ``holdout`` rows are only ever used by :func:`validate`.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress._io import read_json, write_json_atomic
from edgecompress.errors import EdgeCompressError
from edgecompress.latency_models._data import default_data_dir
from edgecompress.latency_models.fbnet import BLOCKS, block_ops
from edgecompress.latency_models.nb201 import OPS, NB201Network, _op, live_edges, parse_arch
from edgecompress.latency_models.ops import OpRecord, mark_fusions, trace_ops

__all__ = [
    "DEVICE_COLUMNS",
    "DEVICE_PEAKS",
    "ENERGY_COLUMNS",
    "FOLDINGS",
    "FOLDING_NOTES",
    "FUSIONS",
    "GROUPS",
    "MERGES",
    "DeviceModel",
    "calibration_edges",
    "default_data_dir",
    "fit_device_model",
    "fit_energy_model",
    "group_features",
    "load_nb201_rows",
    "nb201_features",
    "op_group",
    "select_fbnet_terms",
    "select_fusions",
    "select_merges",
    "validate_fbnet",
]

GROUPS = ("conv_k3", "conv_k1", "pool", "add")
TERMS = ("count", "mmacs", "mbytes")
KIND_TO_GROUP = {
    "conv_k3": "conv_k3", "conv_kN": "conv_k3", "depthwise": "conv_k3",
    "conv_k1": "conv_k1", "linear": "conv_k1",
    "pool": "pool", "add": "add", "mul": "add", "concat": "pool", "copy": "pool",
}  # fmt: skip
EXTRAPOLATED_KINDS = {
    "depthwise": "no depthwise convolution in the calibration networks",
    "concat": "priced as a pooling operator moving the same bytes (memory-bound): no concatenation in the "
    "calibration networks",
    "copy": "a copying reshape or transpose (e.g. a channel shuffle), priced as a pooling operator moving the "
    "same bytes (memory-bound): no such operator in the calibration networks",
}

# Device profile name -> CSV column of shared/latency-data/nb201_latency.csv, and what it is.
DEVICE_COLUMNS: dict[str, dict[str, str]] = {
    "raspberry-pi-4": {
        "column": "hwnb_raspi4_cifar10_ms", "device": "Raspberry Pi 4", "precision": "fp32",
        "source": "HW-NAS-Bench (ICLR 2021) Raspberry Pi 4 measurements via the HELP repository", "licence": "MIT",
    },
    "jetson-nano": {
        "column": "brpnas_jetson_nano_fp32_ms", "device": "Jetson Nano", "precision": "fp32",
        "source": "BRP-NAS / Eagle LatBench (NeurIPS 2020) Jetson Nano fp32", "licence": "Apache-2.0",
    },
    "jetson-nano-fp16": {
        "column": "brpnas_jetson_nano_fp16_ms", "device": "Jetson Nano", "precision": "fp16",
        "source": "BRP-NAS / Eagle LatBench (NeurIPS 2020) Jetson Nano fp16", "licence": "Apache-2.0",
    },
    "jetson-tx2": {
        "column": "hwnb_edgegpu_tx2_cifar10_ms", "device": "Jetson TX2", "precision": "fp32",
        "source": "HW-NAS-Bench (ICLR 2021) Jetson TX2, torch2trt fp32, mean of 50 runs", "licence": "MIT",
    },
}  # fmt: skip
# Published peak throughput and memory bandwidth of the GPUs: the roofline that prices an operator beyond the
# largest the calibration networks hold (see :meth:`DeviceModel.op_ms`). MACs are half the published FLOPs; the
# GPUs run fp32 at half their fp16 rate (Maxwell, Pascal). Both data sheets state fp16 FLOPs.
NANO_SHEET = (
    "NVIDIA Jetson Nano module data sheet: 128-core Maxwell GPU, 472 GFLOPS fp16; 4 GB 64-bit LPDDR4, 25.6 GB/s"
)
TX2_SHEET = "NVIDIA Jetson TX2 module data sheet: 256-core Pascal GPU, 1.33 TFLOPS fp16; 8 GB 128-bit LPDDR4, 59.7 GB/s"
DEVICE_PEAKS: dict[str, dict[str, Any]] = {
    "jetson-nano": {"gmacs": 118.0, "gbps": 25.6, "bytes_per_value": 4, "source": NANO_SHEET},
    "jetson-nano-fp16": {"gmacs": 236.0, "gbps": 25.6, "bytes_per_value": 2, "source": NANO_SHEET},
    "jetson-tx2": {"gmacs": 332.5, "gbps": 59.7, "bytes_per_value": 4, "source": TX2_SHEET},
}
"""Profiles priced at the roofline beyond the calibration range. A GPU is far from saturated on the
calibration networks' operators (32x32 NAS-Bench-201 cells), so the per-MAC cost fitted there says nothing
about large operators (it priced ResNet-50 at 224 px 13x slower in fp16 than in fp32 on the Nano). The CPU
profiles (Raspberry Pi) keep their fitted per-MAC cost, which is compute-bound already at that size."""


# Device profile name -> energy-per-inference column: the only public energy measurements in the data.
ENERGY_COLUMNS: dict[str, dict[str, str]] = {
    "jetson-tx2": {
        "column": "hwnb_edgegpu_tx2_cifar10_mJ", "licence": "MIT",
        "source": "HW-NAS-Bench (ICLR 2021) Jetson TX2 energy per inference (mJ), torch2trt fp32",
    },
}  # fmt: skip
# Validation-only columns (no licence: nothing may be fitted on them).
PI5_COLUMNS = {
    "onnxruntime": "pi5_onnx_cifar100_1thread_ms",
    "litert": "pi5_litert_cifar100_1thread_ms",
    "torch-mobile": "pi5_torchmobile_cifar100_1thread_ms",
}
# Raspberry Pi Ltd's launch figure for the Pi 5: "a 2-3x increase in CPU performance" over the Pi 4.
# The Pi 5 profile divides Pi 4 predictions by the midpoint.
PI5_SPEEDUP_OVER_PI4 = 2.5


EXTRA_GROUPS = {
    "depthwise": "depthwise convolutions",
    "grouped_k1": "grouped 1x1 convolutions (2+ groups, not depthwise)",
    "copy": "copying reshapes and transposes (a channel shuffle)",
}
"""Groups a profile may price on their own (fitted on FBNet's Pi 4 blocks); a profile without a group's
coefficients prices its operators with the base group (:data:`KIND_TO_GROUP`)."""


MERGES = {
    "merge_conv": "convolutions reading the same input value as an earlier sibling with the same kernel, stride, "
    "padding, dilation and groups (TensorRT can fuse such siblings into one wider convolution)",
    "merge_pool": "poolings repeating an earlier one on the same input (a compiler can compute it once)",
}
"""Groups a profile may price on their own for operators a GPU compiler (TensorRT) can merge, marked by the
tracer (:attr:`OpRecord.merged`): such an operator leaves its base group and costs this group's (non-negative)
terms instead, whatever the data says they cost (less where the compiler merged them). Chosen per profile by
cross-validation on the calibration rows (:func:`select_merges`)."""
MERGE_VARIANTS: tuple[tuple[str, ...], ...] = ((), ("merge_pool",), ("merge_conv",), ("merge_conv", "merge_pool"))


FUSIONS = {
    "act": "activations no compiler can fuse into the operator that made their input (that operator is not a "
    "convolution, linear layer or add, or its output has other readers), each priced as an element-wise add "
    "moving the same bytes",
    "fuse_add": "adds fused into the convolution that made one of their operands (TensorRT's convolution + "
    "element-wise sum fusion; that output read by nothing else)",
}
"""What a profile may price of TensorRT's layer fusions, marked by the tracer (:func:`~edgecompress.
latency_models.ops.mark_fusions`): without ``act`` every activation is taken as fused (free, as on any
runtime that fuses it); without ``fuse_add`` a fused add costs what any add costs. Chosen per profile by
cross-validation on the calibration rows (:func:`select_fusions`)."""
FUSION_VARIANTS: tuple[tuple[str, ...], ...] = ((), ("act",), ("fuse_add",), ("act", "fuse_add"))


def op_group(
    op: OpRecord, extra: Sequence[str] = (), merges: Sequence[str] = (), fusions: Sequence[str] = ()
) -> str | None:
    """The cost group of ``op``: its :data:`MERGES` group where it is merged and the profile prices that group,
    ``fuse_add`` for a fused add where the profile prices it (:data:`FUSIONS`), else one of ``extra``
    (:data:`EXTRA_GROUPS`) where it applies, else the base group."""
    if op.merged and f"merge_{op.merged}" in merges:
        return f"merge_{op.merged}"
    if op.kind == "add" and op.fused and "fuse_add" in fusions:
        return "fuse_add"
    if op.kind == "depthwise" and "depthwise" in extra:
        return "depthwise"
    if op.kind == "conv_k1" and op.groups > 1 and "grouped_k1" in extra:
        return "grouped_k1"
    if op.kind == "copy" and "copy" in extra:
        return "copy"
    return KIND_TO_GROUP.get(op.kind)


def _groups(extra: Sequence[str] = (), merges: Sequence[str] = (), fusions: Sequence[str] = ()) -> tuple[str, ...]:
    return (*GROUPS, *extra, *merges, *(("fuse_add",) if "fuse_add" in fusions else ()))


def group_features(
    ops: Sequence[OpRecord], extra: Sequence[str] = (), merges: Sequence[str] = (), fusions: Sequence[str] = ()
) -> dict[str, float]:
    """The cost model's inputs: per group (``merges``, ``extra`` and ``fusions`` groups included), operator count,
    MMACs and MB moved; with ``act`` in ``fusions``, standalone activations count as adds."""
    feats = {f"{g}.{t}": 0.0 for g in _groups(extra, merges, fusions) for t in TERMS}
    for op in ops:
        g = op_group(op, extra, merges, fusions)
        if g is not None:
            feats[f"{g}.count"] += 1
            feats[f"{g}.mmacs"] += op.macs / 1e6
            feats[f"{g}.mbytes"] += op.bytes / 1e6
        if op.acts and "act" in fusions:
            feats["add.count"] += op.acts
            feats["add.mbytes"] += op.act_bytes / 1e6
    return feats


@lru_cache(maxsize=1)
def calibration_edges() -> dict[str, tuple[float, float]]:
    """Per group, the largest MMACs and MB of one operator in the calibration networks (NAS-Bench-201 at 32x32:
    every network is built from the same operators, so one network holding each kind of edge has them all)."""
    arch = "|nor_conv_3x3~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"
    edges = {g: (0.0, 0.0) for g in GROUPS}
    for op in trace_ops(NB201Network(arch), (1, 3, 32, 32)):
        g = KIND_TO_GROUP.get(op.kind)
        if g is not None:
            m, b = edges[g]
            edges[g] = (max(m, op.macs / 1e6), max(b, op.bytes / 1e6))
    return edges


NB201_STAGES = ((16, 32), (32, 16), (64, 8))  # (channels, height = width) of each stage's cells


@lru_cache(maxsize=2)
def _nb201_parts(fuse_add: bool = False) -> tuple[dict[str, float], dict[tuple[str, int], dict[str, float]]]:
    """Features of the fixed part of a NAS-Bench-201 network and of each (edge op or add, stage).

    A network's features are the fixed part (stem, reductions, head) plus, for
    each of 5 cells per stage, the features of its live edges and node sums.
    Tracing the parts once makes 15,625 networks cost milliseconds, not
    minutes; ``tests/latency_models`` checks the sum against whole networks.
    With ``fuse_add``, the fixed part's fused adds (the reductions') are in
    the ``fuse_add`` group; standalone activations are never in it (they
    depend on the cells: :func:`_stage_fusions`).
    """
    import torch
    import torch.nn as nn

    class _Add(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + x

    identity_cells = "|none~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|"
    fixed = group_features(trace_ops(NB201Network(identity_cells), (1, 3, 32, 32)), fusions=("fuse_add",) * fuse_add)
    parts: dict[tuple[str, int], dict[str, float]] = {}
    for stage, (c, hw) in enumerate(NB201_STAGES):
        for op in (*OPS, "add"):
            module = _Add() if op == "add" else nn.Sequential(_op(op, c))
            parts[(op, stage)] = group_features(trace_ops(module, (1, c, hw, hw)))
    return fixed, parts


FOLDINGS = ("all", "output", "none")
"""How the calibration networks were compiled, chosen per device by cross-validation on the calibration rows:

* ``all``: every constant is folded (TFLite-style): a ``none`` edge is gone, an operator applied only to
  constants is gone, and a network whose cell output is disconnected computes a constant (only the intercept);
* ``output``: only a network whose output is a constant is compiled to nothing; inside any other network the
  layers on an all-zero input still run (unused layers removed);
* ``none``: unused layers removed, everything else runs, a disconnected network too (TensorRT via torch2trt).
"""

FOLDING_NOTES = {
    "all": "constants folded: none edges, operators on constants and constant-output networks compiled away",
    "output": "only a network whose output is constant compiled away; layers on all-zero inputs kept elsewhere",
    "none": "unused layers removed, layers on all-zero inputs kept (TensorRT via torch2trt)",
}


NB201_GROUP = {"nor_conv_3x3": "conv_k3", "nor_conv_1x1": "conv_k1", "avg_pool_3x3": "pool"}


def _stage_fusions(live: list[list[tuple[str, int]]], stage: int) -> tuple[int, int, int]:
    """In one stage of a NAS-Bench-201 network with these live edges: the standalone activations
    (:attr:`OpRecord.acts`), the bytes they move, and the fused adds of the cells (:attr:`OpRecord.fused`). The
    stage graph is replayed through the tracer's own :func:`~edgecompress.latency_models.ops.mark_fusions`, with
    what reads the stage's output (the next reduction's ReLU and pooling, or the head's ReLU)."""
    c, hw = NB201_STAGES[stage]
    ops: list[OpRecord] = []
    reads: list[tuple[tuple[int, int], ...]] = []
    calls: list[tuple[int, int]] = []

    def op(kind: str, *read: tuple[int, int]) -> int:
        ops.append(OpRecord(kind, 0, 0, ()))
        reads.append(read)
        return len(ops) - 1

    def act(t: int) -> tuple[int, int]:
        calls.append((t, c * hw * hw))
        return (t, len(calls) - 1)

    cur = op("conv_k3" if stage == 0 else "add")  # the stem's convolution, or the reduction's add
    cell_adds: list[int] = []
    for _ in range(5):
        states: list[int | None] = [cur]
        for edges in live:
            total: int | None = None
            for name, src in edges:
                inp = states[src]
                if inp is None:  # a node without live inputs: one all-zero tensor, made by no operator
                    inp = states[src] = -1
                if name in ("nor_conv_3x3", "nor_conv_1x1"):
                    out = op("conv_k3", act(inp))
                elif name == "avg_pool_3x3":
                    out = op("pool", (inp, -1))
                else:  # skip_connect
                    out = inp
                if total is None:
                    total = out
                else:
                    total = op("add", (total, -1), (out, -1))
                    cell_adds.append(total)
            states.append(total)
        cur = states[-1] if states[-1] is not None else -1
    if stage < 2:  # the reduction: ReLU -> convolution, and an average-pooling shortcut
        op("conv_k3", act(cur))
        op("pool", (cur, -1))
    else:  # the head: BatchNorm -> ReLU -> global pooling
        op("pool", act(cur))
    marked = mark_fusions(ops, reads, calls)
    return sum(o.acts for o in marked), sum(o.act_bytes for o in marked), sum(1 for i in cell_adds if marked[i].fused)


def nb201_features(
    arch: str, folding: str = "all", merges: Sequence[str] = (), fusions: Sequence[str] = ()
) -> dict[str, float]:
    """Features of a NAS-Bench-201 network as deployed under ``folding`` (:data:`FOLDINGS`), with ``merges``
    (:data:`MERGES`) and ``fusions`` (:data:`FUSIONS`) priced as a profile with them does.

    A network that computes a constant (``all`` and ``output``: its cells' outputs are disconnected) has all
    features zero (only the intercept remains), as the ~0.01 ms measurements of such networks on the Pi 4
    show; otherwise the live edges are those of
    :func:`~edgecompress.latency_models.nb201.live_edges`, with constants folded only under ``all``.
    """
    _check_folding(folding)
    fixed, parts = _nb201_parts("fuse_add" in fusions)
    feats = {**fixed, **{f"{g}.{t}": 0.0 for g in merges for t in TERMS}}
    if is_constant_network(arch, folding):
        return dict.fromkeys(feats, 0.0)
    live = live_edges(parse_arch(arch), folding == "all")
    for stage in range(3) if fusions else ():
        acts, act_bytes, fused = _stage_fusions(live, stage)
        if "act" in fusions:
            feats["add.count"] += acts
            feats["add.mbytes"] += act_bytes / 1e6
        if "fuse_add" in fusions:
            for k, v in parts[("add", stage)].items():
                feats[k] -= fused * v  # those adds move to their own group
                feats[f"fuse_add.{k.split('.')[1]}"] += fused * v
    merged = _merged_edges(live)
    for j, edges in enumerate(live):
        for i, (op, _) in enumerate(edges):
            kind = merged.get((j, i))
            group = f"merge_{kind}" if kind and f"merge_{kind}" in merges else None
            for stage in range(3):
                for k, v in parts[(op, stage)].items():
                    if group is not None and k.startswith(f"{NB201_GROUP[op]}."):
                        k = f"{group}.{k.split('.')[1]}"  # the merged edge's terms move to its merge group
                    feats[k] += 5 * v
        for _ in range(max(0, len(edges) - 1)):
            for stage in range(3):
                for k, v in parts[("add", stage)].items():
                    feats[k] += 5 * v
    return feats


def _merged_edges(live: list[list[tuple[str, int]]]) -> dict[tuple[int, int], str]:
    """The merged edges of one cell as the tracer marks them (:attr:`OpRecord.merged`), keyed (node - 1, edge):
    every convolution edge after the first of its kind reading the same tensor (through its own ReLU), ``conv``,
    and every pooling edge after the first, ``pool``. A node whose only live edge is a skip is the tensor it
    skips from."""
    same = [0, 1, 2, 3]  # each node's tensor, as the node that first holds it
    for j, edges in enumerate(live, start=1):
        if len(edges) == 1 and edges[0][0] == "skip_connect":
            same[j] = same[edges[0][1]]
    seen: set[tuple[int, str]] = set()
    merged: dict[tuple[int, int], str] = {}
    for j, edges in enumerate(live):
        for i, (op, src) in enumerate(edges):
            if op not in NB201_GROUP:
                continue
            if (same[src], op) in seen:
                merged[(j, i)] = "pool" if op == "avg_pool_3x3" else "conv"
            seen.add((same[src], op))
    return merged


def _check_folding(folding: str) -> None:
    if folding not in FOLDINGS:
        raise EdgeCompressError(f"folding {folding!r} is not one of: {', '.join(FOLDINGS)}")


def is_constant_network(arch: str, folding: str = "all") -> bool:
    """Whether the deployed network computes a constant (its cell output is disconnected, and the compiler folds
    such a network: ``folding`` ``all`` or ``output``)."""
    _check_folding(folding)
    return folding != "none" and not live_edges(parse_arch(arch))[2]


def load_nb201_rows(data_dir: str | os.PathLike[str] | None = None) -> list[dict[str, str]]:
    path = Path(data_dir or default_data_dir()) / "nb201_latency.csv"
    if not path.is_file():
        raise EdgeCompressError(
            f"latency data not found: {path}. Point --data-dir (or $EDGECOMPRESS_LATENCY_DATA) at the folder "
            "holding nb201_latency.csv (the project's shared/latency-data)."
        )
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in NB201_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise EdgeCompressError(
                f"{path} has no column {', '.join(repr(c) for c in missing)}: it is not the NAS-Bench-201 latency "
                f"table these models are fitted on (columns {', '.join(NB201_COLUMNS)} and one per device; "
                "see shared/latency-data/README)"
            )
        return list(reader)


NB201_COLUMNS = ("arch_str", "split")
"""The columns every use of ``nb201_latency.csv`` reads (besides the device's own)."""


@dataclass
class DeviceModel:
    """A fitted per-operator cost model for one device and precision."""

    name: str
    device: str
    precision: str
    intercept_ms: float
    coefficients: dict[str, float]
    """``"<group>.<term>"`` -> ms per operator, per MMAC or per MB."""
    source: str
    licence: str = ""
    fitted_on: str = ""
    scale: float = 1.0
    """Multiplies every prediction (the Pi 5 profile is the Pi 4 model over a published speed-up)."""
    folding: str = "all"
    """How the calibration networks were compiled (:data:`FOLDINGS`); chosen by cross-validation on the
    calibration rows. Only the fit and the validation use it: a user's model is traced as it is."""
    selection: dict[str, Any] = field(default_factory=dict)
    """The cross-validation scores that chose ``folding``."""
    fusions: list[str] = field(default_factory=list)
    """The :data:`FUSIONS` this profile prices (chosen by cross-validation on the calibration rows)."""
    validation: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    version: int = 1
    energy: dict[str, Any] = field(default_factory=dict)
    """Energy per inference where the public data has it: ``intercept_mj``, ``coefficients`` (mJ per operator,
    MMAC, MB, the latency model's terms), ``folding``, ``source``, ``fitted_on``, ``validation``."""

    def predict_features(self, feats: dict[str, float]) -> float:
        return self.scale * (self.intercept_ms + sum(self.coefficients.get(k, 0.0) * v for k, v in feats.items()))

    def predict_energy_features(self, feats: dict[str, float]) -> float:
        """Predicted mJ per inference from :func:`group_features` with :meth:`energy_groups` (the model must have
        ``energy``)."""
        e = self.energy
        return float(e["intercept_mj"] + sum(e["coefficients"].get(k, 0.0) * v for k, v in feats.items()))

    def energy_groups(self) -> tuple[list[str], list[str]]:
        """The merge groups and fusions the energy model prices (none in profiles fitted before it could)."""
        return list(self.energy.get("merges", [])), list(self.energy.get("fusions", []))

    def op_ms(self, op: OpRecord) -> float | None:
        """Predicted ms of one operator; None for an operator kind the model has no coefficients for. With
        ``act`` in :attr:`fusions`, the standalone activations the operator reads (:attr:`OpRecord.acts`) are
        included, each priced as an add moving its bytes.

        On a profile in :data:`DEVICE_PEAKS` (the Jetson GPUs), the fitted terms see at most the largest MMACs
        and MB of the operator's group in the calibration networks (:func:`calibration_edges`); what an
        operator has beyond that is priced at the device's published roofline, max(extra MACs / peak MAC
        rate, extra bytes / memory bandwidth), bytes at the profile's precision: a lower bound for that part.
        """
        g = op_group(op, self.extra_groups, self.merges, self.fusions)
        if g is None:
            return None
        ms = self._group_ms(g, KIND_TO_GROUP[op.kind], op.macs / 1e6, op.bytes / 1e6)
        if op.acts and "act" in self.fusions:  # an operator's inputs are the same size: each moves the mean
            ms += op.acts * self._group_ms("add", "add", 0.0, op.act_bytes / op.acts / 1e6)
        return ms

    def _group_ms(self, g: str, base: str, mmacs: float, mbytes: float) -> float:
        """One operator of group ``g`` (base group ``base``: its calibration range) with these MMACs and MB."""
        c = self.coefficients
        extra = 0.0
        peak = DEVICE_PEAKS.get(self.name)
        if peak is not None:
            edge_mmacs, edge_mbytes = calibration_edges()[base]
            over_mmacs, over_mbytes = max(0.0, mmacs - edge_mmacs), max(0.0, mbytes - edge_mbytes)
            mmacs, mbytes = min(mmacs, edge_mmacs), min(mbytes, edge_mbytes)
            # MMACs / (GMAC/s) is in ms (1e6 / 1e9 s); MB / (GB/s) likewise.
            compute_ms = over_mmacs / peak["gmacs"]
            memory_ms = over_mbytes * peak["bytes_per_value"] / 4 / peak["gbps"]
            extra = max(compute_ms, memory_ms)
        return self.scale * (
            c.get(f"{g}.count", 0.0) + c.get(f"{g}.mmacs", 0.0) * mmacs + c.get(f"{g}.mbytes", 0.0) * mbytes + extra
        )

    @property
    def merges(self) -> tuple[str, ...]:
        """The :data:`MERGES` groups this profile prices on their own."""
        return tuple(g for g in MERGES if f"{g}.count" in self.coefficients)

    @property
    def extra_groups(self) -> tuple[str, ...]:
        """The :data:`EXTRA_GROUPS` this profile prices on their own (those it has coefficients for)."""
        return tuple(g for g in EXTRA_GROUPS if f"{g}.count" in self.coefficients)

    def extrapolated(self, kind: str) -> bool:
        """Whether operators of ``kind`` are priced outside anything this profile was fitted on."""
        own = {"depthwise": "depthwise", "copy": "copy"}.get(kind)
        return kind in EXTRAPOLATED_KINDS and (own is None or own not in self.extra_groups)

    def beyond_calibration(self, op: OpRecord) -> bool:
        """Whether part of ``op`` is priced at the roofline (a profile in :data:`DEVICE_PEAKS`, an operator
        larger than its group's largest in the calibration networks)."""
        if self.name not in DEVICE_PEAKS or op.kind not in KIND_TO_GROUP:
            return False
        edge_mmacs, edge_mbytes = calibration_edges()[KIND_TO_GROUP[op.kind]]
        if op.acts and "act" in self.fusions and op.act_bytes / op.acts / 1e6 > calibration_edges()["add"][1]:
            return True  # its standalone activations, priced as adds, beyond the largest add
        return op.macs / 1e6 > edge_mmacs or op.bytes / 1e6 > edge_mbytes

    def to_dict(self) -> dict[str, Any]:
        return {"format": "edgecompress.device_model", **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "device model") -> DeviceModel:
        if data.get("format") != "edgecompress.device_model" or data.get("version") != 1:
            raise EdgeCompressError(f"{source} is not a version-1 edgecompress device model")
        known = set(cls.__dataclass_fields__)
        fields = {k: v for k, v in data.items() if k in known}
        if "fold_constants" in data and "folding" not in data:  # written before the ``output`` mode existed
            fields["folding"] = "all" if data["fold_constants"] else "none"
        energy = dict(fields.get("energy") or {})
        if "fold_constants" in energy and "folding" not in energy:
            energy["folding"] = "all" if energy.pop("fold_constants") else "none"
            fields["energy"] = energy
        for folding in (fields.get("folding", "all"), energy.get("folding", "all")):
            if folding not in FOLDINGS:
                raise EdgeCompressError(f"{source}: folding {folding!r} is not one of: {', '.join(FOLDINGS)}")
        return cls(**fields)

    def save(self, path: str | os.PathLike[str]) -> Path:
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DeviceModel:
        return cls.from_dict(read_json(path, "device model", EdgeCompressError), str(path))


def _design(
    rows: Sequence[dict[str, str]], folding: str = "all", merges: Sequence[str] = (), fusions: Sequence[str] = ()
) -> tuple[np.ndarray, list[str]]:
    keys = [f"{g}.{t}" for g in _groups((), merges, fusions) for t in TERMS]
    cache: dict[str, dict[str, float]] = {}
    x = np.zeros((len(rows), len(keys) + 1))
    for i, row in enumerate(rows):
        arch = row["arch_str"]
        if arch not in cache:
            cache[arch] = nb201_features(arch, folding, merges, fusions)
        x[i, 0] = 1.0
        x[i, 1:] = [cache[arch][k] for k in keys]
    return x, keys


def _nnls_relative(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares on relative error (each row divided by its latency), columns normalised."""
    from scipy.optimize import nnls

    xw = x / y[:, None]
    norms = np.linalg.norm(xw, axis=0)
    norms[norms == 0] = 1.0
    coef, _ = nnls(xw / norms, np.ones_like(y))
    return coef / norms


def _fit_rows(rows: Sequence[dict[str, str]], col: str, folding: str) -> list[dict[str, str]]:
    # Networks that fold to a constant (~0.01 ms on the Pi 4) are a regime no compressed model reaches:
    # left out so they do not pull the per-operator costs.
    return [
        r for r in rows
        if r["split"] == "calibration" and r.get(col) and not is_constant_network(r["arch_str"], folding)
    ]  # fmt: skip


def _cv_spearman(
    rows: Sequence[dict[str, str]],
    col: str,
    folds: int,
    folding: str,
    merges: Sequence[str] = (),
    fusions: Sequence[str] = (),
) -> float:
    """The ``folds``-fold cross-validated Spearman of the cost model (``merges`` groups priced on their own,
    ``fusions`` priced) on
    the calibration rows with a ``col`` measurement (folds by ``arch_index // 5 % folds``), the networks read as
    compiled under ``folding``; constant networks are predicted, never fitted."""
    from scipy.stats import spearmanr

    use = [r for r in rows if r["split"] == "calibration" and r.get(col)]
    y = np.array([float(r[col]) for r in use])
    fold = np.array([int(r["arch_index"]) // 5 % folds for r in use])
    x, _ = _design(use, folding, merges, fusions)
    fit = np.array([not is_constant_network(r["arch_str"], folding) for r in use])
    pred = np.zeros_like(y)
    for k in range(folds):
        train = (fold != k) & fit
        pred[fold == k] = x[fold == k] @ _nnls_relative(x[train], y[train])
    return float(spearmanr(pred, y).statistic)


def _cv_spearman_by_folding(rows: Sequence[dict[str, str]], col: str, folds: int) -> dict[str, float]:
    """Per reading in :data:`FOLDINGS`: :func:`_cv_spearman`, every reading scored on the same rows."""
    return {folding: _cv_spearman(rows, col, folds, folding) for folding in FOLDINGS}


def cross_validate_folding(name: str, rows: Sequence[dict[str, str]], folds: int = 5) -> dict[str, Any]:
    """5-fold cross-validated Spearman of the cost model on the *calibration* rows under each way the calibration
    networks may have been compiled (:data:`FOLDINGS`); the assumption that predicts best wins.

    Only calibration rows are split (by ``arch_index % folds``); the holdout rows play no part.
    """

    scores = _cv_spearman_by_folding(rows, DEVICE_COLUMNS[name]["column"], folds)
    return {
        "cv_spearman": scores,
        "folding": max(FOLDINGS, key=lambda f: scores[f]),
        "how": f"{folds}-fold cross-validation on the calibration rows (folds by arch_index // 5 % {folds})",
    }


def _select(key: str, variants: Sequence[tuple[str, ...]], score: Any, how: str) -> dict[str, Any]:
    """Score each variant (``score(variant)``: a cross-validated Spearman); the best to 3 decimals wins, then
    the one with fewer items."""
    scores: list[dict[str, Any]] = [{key: list(v), "cv_spearman": score(v)} for v in variants]
    best = max(scores, key=lambda s: (round(s["cv_spearman"], 3), -len(s[key])))
    return {key: best[key], "scores": scores, "how": how}


def select_merges(name: str, rows: Sequence[dict[str, str]], folding: str, folds: int = 5) -> dict[str, Any]:
    """Which :data:`MERGES` groups ``name``'s model prices on their own: ``folds``-fold cross-validated Spearman
    on the *calibration* rows (the folds of :func:`cross_validate_folding`) of each :data:`MERGE_VARIANTS`, the
    folding held; the best to 3 decimals wins, then fewer groups. The holdout rows play no part."""
    col = DEVICE_COLUMNS[name]["column"]
    return _select(
        "merges", MERGE_VARIANTS, lambda v: _cv_spearman(rows, col, folds, folding, v),
        f"{folds}-fold cross-validation on the calibration rows (folds by arch_index // 5 % {folds}), "
        "folding held; best to 3 decimals, then fewer groups",
    )  # fmt: skip


def select_fusions(
    name: str, rows: Sequence[dict[str, str]], folding: str, merges: Sequence[str], folds: int = 5
) -> dict[str, Any]:
    """Which of TensorRT's layer fusions (:data:`FUSIONS`) ``name``'s model prices: ``folds``-fold
    cross-validated Spearman on the *calibration* rows of each :data:`FUSION_VARIANTS`, the folding and the
    merge groups held (:func:`select_merges` chose them without fusions); the best to 3 decimals wins, then
    fewer. The holdout rows play no part."""
    col = DEVICE_COLUMNS[name]["column"]
    return _select(
        "fusions", FUSION_VARIANTS, lambda v: _cv_spearman(rows, col, folds, folding, merges, v),
        f"{folds}-fold cross-validation on the calibration rows (folds by arch_index // 5 % {folds}), "
        "folding and merge groups held; best to 3 decimals, then fewer",
    )  # fmt: skip


FBNET_DEVICES = ("raspberry-pi-4",)
"""Profiles the FBNet block data (Raspberry Pi 4 measurements) is fitted into."""
FBNET_VARIANTS: tuple[tuple[str, ...], ...] = (
    (), ("depthwise",), ("depthwise", "grouped_k1"), ("depthwise", "copy"), ("depthwise", "grouped_k1", "copy"),
)  # fmt: skip
"""Candidate sets of :data:`EXTRA_GROUPS` priced on their own, chosen between by cross-validation."""
FBNET_WEIGHTS = (0.0, 3.0, 10.0, 30.0)
"""Candidate weights of the FBNet rows against the NAS-Bench-201 rows in the joint fit (0: not fitted)."""


def _fbnet_design(fb_rows: Sequence[dict[str, Any]], extra: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per (row, block other than ``k3_e1``): the block's features minus ``k3_e1``'s (the intercept cancels),
    and the measured delta."""
    keys = [f"{g}.{t}" for g in (*GROUPS, *extra) for t in TERMS]
    xs, ys = [], []
    for row in fb_rows:
        ref = group_features(block_ops(row, "k3_e1"), extra)
        for block in BLOCKS[1:]:
            f = group_features(block_ops(row, block), extra)
            xs.append([0.0, *(f[k] - ref[k] for k in keys)])
            ys.append(row["delta_ms"][block])
    return np.array(xs).reshape(len(xs), len(keys) + 1), np.array(ys)


def _fit_joint(
    x: np.ndarray, y: np.ndarray, x_fb: np.ndarray | None, y_fb: np.ndarray | None, weight: float
) -> np.ndarray:
    """NNLS on relative error over the NAS-Bench-201 rows, plus the FBNet delta rows at ``weight`` (each delta's
    residual relative to |delta| + the median |delta|, since deltas reach zero and below)."""
    from scipy.optimize import nnls

    if x_fb is None or y_fb is None or weight == 0 or not len(y_fb):
        return _nnls_relative(x, y)
    width = x_fb.shape[1]
    x = np.hstack([x, np.zeros((len(x), width - x.shape[1]))])
    scale = np.abs(y_fb) + np.median(np.abs(y_fb))
    a = np.vstack([x / y[:, None], weight * x_fb / scale[:, None]])
    b = np.concatenate([np.ones_like(y), weight * y_fb / scale])
    norms = np.linalg.norm(a, axis=0)
    norms[norms == 0] = 1.0
    coef, _ = nnls(a / norms, b)
    return coef / norms  # type: ignore[no-any-return]


def fit_device_model(
    name: str,
    rows: Sequence[dict[str, str]],
    folding: str = "all",
    *,
    fbnet_rows: Sequence[dict[str, Any]] = (),
    extra: Sequence[str] = (),
    fbnet_weight: float = 0.0,
    merges: Sequence[str] = (),
    fusions: Sequence[str] = (),
) -> DeviceModel:
    """Fit ``name``'s cost model on the *calibration* rows that have a measurement; with ``fbnet_rows`` (FBNet's
    even, calibration rows only) and ``fbnet_weight`` > 0, jointly with their block deltas, ``extra`` groups
    priced on their own; with ``merges`` (:data:`MERGES`), merged operators priced in those groups, and with
    ``fusions`` (:data:`FUSIONS`) those fusions priced (NAS-Bench-201 rows only)."""
    meta = DEVICE_COLUMNS[name]
    col = meta["column"]
    use = _fit_rows(rows, col, folding)
    if not use:
        raise EdgeCompressError(f"no calibration rows with a {col} measurement")
    if any(r["layer"] % 2 for r in fbnet_rows):
        raise EdgeCompressError("odd FBNet layer rows are holdout: they never reach a fit")
    unknown = [m for m in merges if m not in MERGES]
    if unknown:
        raise EdgeCompressError(f"unknown merge group(s) {', '.join(unknown)}; valid: {', '.join(MERGES)}")
    unknown = [f for f in fusions if f not in FUSIONS]
    if unknown:
        raise EdgeCompressError(f"unknown fusion(s) {', '.join(unknown)}; valid: {', '.join(FUSIONS)}")
    if (merges or fusions) and fbnet_rows and fbnet_weight > 0:
        raise EdgeCompressError(
            "merge groups and fusions are fitted on NAS-Bench-201 rows alone, not jointly with FBNet rows"
        )
    x, keys = _design(use, folding, merges, fusions)
    y = np.array([float(r[col]) for r in use])
    fitted_on = f"{len(use)} calibration rows (arch_index % 5 != 0) of nb201_latency.csv column {col}"
    if merges:
        fitted_on += f" ({', '.join(merges)} priced on their own)"
    if fusions:
        fitted_on += f" (fusions priced: {', '.join(fusions)})"
    if fbnet_rows and fbnet_weight > 0:
        x_fb, y_fb = _fbnet_design(fbnet_rows, extra)
        coef = _fit_joint(x, y, x_fb, y_fb, fbnet_weight)
        keys = keys + [f"{g}.{t}" for g in extra for t in TERMS]
        fitted_on += (
            f", and {len(y_fb)} block deltas of the {len(fbnet_rows)} even layer rows of fbnet_pi4_block_deltas.csv "
            f"(weight {fbnet_weight:g}; {', '.join(extra) or 'no group'} priced on its own)"
        )
    else:
        coef = _nnls_relative(x, y)
    return DeviceModel(
        name=name, device=meta["device"], precision=meta["precision"], intercept_ms=float(coef[0]),
        coefficients={k: float(v) for k, v in zip(keys, coef[1:], strict=True)},
        source=meta["source"], licence=meta["licence"], fitted_on=fitted_on, folding=folding,
        fusions=list(fusions),
    )  # fmt: skip


def _block_delta(model: DeviceModel, row: dict[str, Any], block: str) -> float:
    def total(name: str) -> float:
        return sum(model.op_ms(op) or 0.0 for op in block_ops(row, name))

    return total(block) - total("k3_e1")


def select_fbnet_terms(
    name: str, rows: Sequence[dict[str, str]], fbnet_rows: Sequence[dict[str, Any]], folding: str
) -> dict[str, Any]:
    """Which :data:`EXTRA_GROUPS` to price on their own and how much the FBNet rows weigh: leave-one-position-out
    cross-validation on the *even* FBNet rows (each position's block deltas predicted by a fit on the
    NAS-Bench-201 calibration rows and the even rows at other positions), pooled Spearman; the best (to 3
    decimals) wins, then fewer groups, then the smaller weight. The odd rows play no part.

    A position is (input side, in and out channels, stride): FBNet repeats a position in consecutive layers, and
    the file holds one measurement per position, so leaving out one row while its twin stays in the fit would
    score a row the fit has seen."""
    from scipy.stats import spearmanr

    if any(r["layer"] % 2 for r in fbnet_rows):
        raise EdgeCompressError("odd FBNet layer rows are holdout: they never reach a selection")
    col = DEVICE_COLUMNS[name]["column"]
    use = _fit_rows(rows, col, folding)
    x, base_keys = _design(use, folding)
    y = np.array([float(r[col]) for r in use])
    per_row = len(BLOCKS) - 1
    positions = [(r["H_in"], r["Cin"], r["Cout"], r["stride"]) for r in fbnet_rows]
    scores: list[dict[str, Any]] = []
    for extra in FBNET_VARIANTS:
        keys = base_keys + [f"{g}.{t}" for g in extra for t in TERMS]
        x_fb, y_fb = _fbnet_design(fbnet_rows, extra)
        for weight in FBNET_WEIGHTS:
            if weight == 0 and extra:
                continue  # nothing to fit the extra groups on
            pred, meas = [], []
            for position in dict.fromkeys(positions):
                left = [i for i, p in enumerate(positions) if p == position]
                keep = np.ones(len(y_fb), dtype=bool)
                for i in left:
                    keep[i * per_row : (i + 1) * per_row] = False
                coef = _fit_joint(x, y, x_fb[keep], y_fb[keep], weight)
                m = DeviceModel(name, "", "", float(coef[0]), dict(zip(keys, map(float, coef[1:]), strict=False)), "")
                for i in left:
                    for block in BLOCKS[1:]:
                        pred.append(_block_delta(m, fbnet_rows[i], block))
                        meas.append(fbnet_rows[i]["delta_ms"][block])
            rho = float(spearmanr(pred, meas).statistic)
            scores.append({"extra": list(extra), "weight": weight, "cv_spearman": rho})
    best = max(scores, key=lambda s: (round(s["cv_spearman"], 3), -len(s["extra"]), -s["weight"]))
    return {
        "extra": best["extra"], "weight": best["weight"], "scores": scores,
        "how": f"leave-one-position-out cross-validation on the {len(fbnet_rows)} even layer rows of "
        f"fbnet_pi4_block_deltas.csv ({len(set(positions))} positions: input side, channels, stride; pooled "
        "Spearman of the left-out rows' block deltas); best to 3 decimals, then fewer groups, then the smaller "
        "weight",
    }  # fmt: skip


def validate_fbnet(model: DeviceModel, holdout: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """On FBNet's *odd* (holdout) rows: Spearman of predicted vs measured block deltas and of the MACs proxy,
    whether grouped 1x1 blocks get the sign of their difference to the ungrouped block right, and the median
    predicted/measured ratio of the expansion-6 blocks' deltas."""
    from scipy.stats import spearmanr

    if any(r["layer"] % 2 == 0 for r in holdout):
        raise EdgeCompressError("validate_fbnet reads the odd (holdout) layer rows only")
    pred, meas, macs, signs, e6 = [], [], [], [], []
    for row in holdout:
        ref_macs = sum(op.macs for op in block_ops(row, "k3_e1"))
        for block in BLOCKS[1:]:
            p, m = _block_delta(model, row, block), row["delta_ms"][block]
            pred.append(p)
            meas.append(m)
            macs.append(sum(op.macs for op in block_ops(row, block)) - ref_macs)
            if block.endswith("_e6"):
                e6.append(p / m)
        for k in ("k3", "k5"):
            measured = row["delta_ms"][f"{k}_e1_g2"] - row["delta_ms"][f"{k}_e1"]
            predicted = _block_delta(model, row, f"{k}_e1_g2") - _block_delta(model, row, f"{k}_e1")
            signs.append((measured > 0) == (predicted > 0))
    return {
        "rows": "odd layer rows of fbnet_pi4_block_deltas.csv (holdout)", "n": len(meas),
        "spearman": float(spearmanr(pred, meas).statistic), "macs_spearman": float(spearmanr(macs, meas).statistic),
        "grouped_sign_right": float(np.mean(signs)), "e6_ratio_median": float(np.median(e6)),
    }  # fmt: skip


def fit_energy_model(
    name: str,
    rows: Sequence[dict[str, str]],
    folds: int = 5,
    merges: Sequence[str] = (),
    fusions: Sequence[str] = (),
) -> dict[str, Any]:
    """Energy per inference as a cost model with the latency model's terms, fitted on the *calibration* rows
    that have an energy measurement (non-negative least squares on relative error). Whether the calibration
    networks are read with constant folding is chosen by ``folds``-fold cross-validated Spearman on the
    calibration rows, as for latency; then whether to price the latency model's merge groups and fusions
    (``merges``, ``fusions``) too, the same way. The holdout rows play no part."""

    meta = ENERGY_COLUMNS[name]
    col = meta["column"]
    scores = _cv_spearman_by_folding(rows, col, folds)
    folding = max(FOLDINGS, key=lambda f: scores[f])
    use = _fit_rows(rows, col, folding)
    if not use:
        raise EdgeCompressError(f"no calibration rows with a {col} measurement")

    def split(groups: Sequence[str]) -> tuple[list[str], list[str]]:
        return [g for g in groups if g in MERGES], [g for g in groups if g in FUSIONS]

    groups = _select(
        "groups", [()] + ([(*merges, *fusions)] if merges or fusions else []),
        lambda v: _cv_spearman(rows, col, folds, folding, *split(v)),
        f"{folds}-fold cross-validation on the calibration rows, folding held: without, or with the latency "
        "model's merge groups and fusions",
    )  # fmt: skip
    chosen_merges, chosen_fusions = split(groups["groups"])
    x, keys = _design(use, folding, chosen_merges, chosen_fusions)
    coef = _nnls_relative(x, np.array([float(r[col]) for r in use]))
    fitted_on = f"{len(use)} calibration rows (arch_index % 5 != 0) of nb201_latency.csv column {col}"
    if groups["groups"]:
        fitted_on += f" ({', '.join(groups['groups'])} priced as in the latency model)"
    return {
        "column": col, "source": meta["source"], "licence": meta["licence"], "unit": "mJ per inference",
        "intercept_mj": float(coef[0]), "coefficients": {k: float(v) for k, v in zip(keys, coef[1:], strict=True)},
        "folding": folding, "merges": chosen_merges, "fusions": chosen_fusions,
        "selection": {"cv_spearman": scores, "how": f"{folds}-fold cross-validation on the calibration rows",
                      "groups": groups},
        "fitted_on": fitted_on,
    }  # fmt: skip


def metrics(pred: np.ndarray, meas: np.ndarray) -> dict[str, float]:
    """Rank agreement and error of predictions against measurements."""
    from scipy.stats import kendalltau, spearmanr

    # The single scale minimising MAPE: the median of measured/predicted weighted by predicted/measured.
    ratio, weight = meas / pred, pred / meas
    order = np.argsort(ratio)
    cum = np.cumsum(weight[order])
    scale = float(ratio[order][np.searchsorted(cum, cum[-1] / 2)])
    return {
        "n": len(meas),
        "spearman": float(spearmanr(pred, meas).statistic),
        "kendall": float(kendalltau(pred, meas).statistic),
        "mape_raw": float(np.mean(np.abs(pred - meas) / meas)),
        "mape_scaled": float(np.mean(np.abs(pred * scale - meas) / meas)),
        "best_scale": scale,
    }
