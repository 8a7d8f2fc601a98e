"""``edgecompress compare``: every technique alone, and the searched mix, on one model, data and device.

For each budget the comparison applies each technique at its *mildest* setting
that meets the budget (the most accurate one: the knob is bisected against the
predicted latency, re-estimated for every candidate, or against the stored size,
re-counted), then gives every row the same recipe: BatchNorm re-estimation,
distillation from the base model for ``finetune_epochs`` epochs, evaluation on
the test split. Latency budgets (a fraction of the base model's predicted
latency on ``device``, or milliseconds) are met by the techniques that remove
work: structured pruning, low-rank factorisation, block removal, a compact
student, and the searched mix. Size budgets (a fraction of the base model's
fp32 weight bytes) are met by the techniques that shrink the stored file:
unstructured pruning (magnitude, Lookahead), uniform weight quantization,
weight sharing, and both together (Deep Compression): sparsity, low bit widths
and codebooks do not buy latency on the dense runtimes these devices run
(ONNX Runtime, LiteRT, TensorRT), and the table says so.

Every row records: parameters, MACs, stored bytes (fixed-width and Huffman
coded, what the ``.ecar`` archive holds), peak activation memory, top-1, top-5,
macro precision / recall / F1, the predicted latency on ``device`` and on every
profile (each with its source), the measured latency on this machine (ONNX
Runtime CPU, batch 1 and 64, timed round-robin with the base model so the ratio
holds on a noisy machine), the predicted energy per inference on the profiles
that have an energy model (``jetson-tx2``: HW-NAS-Bench's TX2 energy
measurements; each figure with its source and validation), and
the wall time of compression and of fine-tuning.

Rows are appended to ``rows.jsonl`` as they finish; re-running the same command
on the same folder skips them (``compare.json``, ``compare.md`` and the plots
are rewritten from all rows at the end of each run). A different set of
settings for an existing folder is refused, so rows are never mixed.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from rich.console import Console
from torch.utils.data import Subset

from edgecompress._io import check_foreign_files, read_json, write_json_atomic, write_text_atomic
from edgecompress._lock import run_folder_lock
from edgecompress.analysis import ModelAnalysis, analyze_model
from edgecompress.artifacts.checkpoint import ModelSpec
from edgecompress.compressors import CompressionReport, LayerPolicy, Policy, compress
from edgecompress.compressors.constraints import bake
from edgecompress.compressors.policy import BIAS_BITS
from edgecompress.compressors.quantization import CALIBRATION_BATCHES
from edgecompress.compressors.unstructured import staged_sparsity
from edgecompress.config import RunConfig, write_resolved_config
from edgecompress.data import DataBundle, first_batches
from edgecompress.drivers import get_driver
from edgecompress.errors import ConfigError, EdgeCompressError
from edgecompress.latency_models import estimate_latency
from edgecompress.latency_models.devices import list_devices
from edgecompress.latency_models.estimate import energy_devices, estimate_energy
from edgecompress.latency_models.onnx import speedup_against
from edgecompress.models import create_model, students_for
from edgecompress.search.objective import policy_latency
from edgecompress.search.setup import create_setup
from edgecompress.training import distill, evaluate, recalibrate_batchnorm
from edgecompress.version import cpu_name, software_versions
from edgecompress.workflows.train import check_base_model, ensure_base_model, load_bundle

__all__ = ["LATENCY_TECHNIQUES", "SIZE_TECHNIQUES", "TECHNIQUES", "CompareSettings", "compare", "run_compare"]

LATENCY_TECHNIQUES = ("prune-l1", "lowrank", "drop", "student", "search")
SIZE_TECHNIQUES = ("magnitude", "lookahead", "quant", "sharing", "deep-compression")
TECHNIQUES = LATENCY_TECHNIQUES + SIZE_TECHNIQUES
DESCRIPTIONS = {
    "prune-l1": "structured pruning, L1 filter norm, one keep ratio on every prunable layer",
    "lowrank": "low-rank factorisation (SVD), one rank ratio on every layer",
    "drop": "residual block removal, the blocks saving the most predicted latency first",
    "student": "distillation into a compact student architecture trained from scratch",
    "search": "the searched per-layer mix (search.agent over search.techniques)",
    "magnitude": "unstructured magnitude pruning, one sparsity on every layer",
    "lookahead": "unstructured Lookahead pruning (Park et al. 2020), one sparsity on every layer",
    "quant": "uniform weight quantization, one bit width on every layer (8, 6, 4, 2)",
    "sharing": "weight sharing: one k-means codebook size on every layer, Huffman-coded indices",
    "deep-compression": "magnitude pruning (sparsity s on the largest layer, the same non-zeros per square root "
    "of layer size elsewhere) plus k-means weight sharing (16 entries unless --deep-clusters), Huffman coded "
    "(Han et al. 2016)",
}
SIZE_NOTE = (
    "size technique: unstructured sparsity, low-bit weights and codebooks shrink the stored file but not the "
    "work of the dense kernels ONNX Runtime, LiteRT and TensorRT run, so they are not offered latency budgets"
)
QUANT_BITS = (8, 6, 4, 2)
DEEP_CLUSTERS = 16
"""Codebook size of the deep-compression rows: on LeNet-5 at ~50x, 8 entries cost ~0.3 points more than 16 and
32 left too little room for the indices (docs/compare.md)."""
SHARING_CLUSTERS = (256, 128, 64, 32, 16, 8, 4, 2)
ENERGY_NOTE = (
    "predicted mJ per inference on the profiles with an energy model (jetson-tx2, fitted on HW-NAS-Bench's TX2 "
    "energy measurements; no energy data exists for the other profiles)"
)
BISECT_STEPS = 8


@dataclass
class CompareSettings:
    """Everything that decides a comparison's rows (recorded in ``settings.json``; a re-run must match)."""

    budget_ratios: list[float] = field(default_factory=lambda: [0.7, 0.5, 0.35])
    budget_ms: list[float] = field(default_factory=list)
    size_ratios: list[float] = field(default_factory=lambda: [0.1, 0.025])
    techniques: list[str] = field(default_factory=lambda: list(TECHNIQUES))
    finetune_epochs: int = 1
    finetune_lr: float = 0.01
    distill_alpha: float = 0.9
    """Weight of the base model's soft targets in every row's distillation loss (the rest: the labels). Lower it
    when the base is weak: LeNet-5 (3 epochs) pruned to 1/50 kept its accuracy at 0.5, not at 0.9."""
    max_batches: int | None = None
    batch_size: int = 128
    bn_batches: int = 8
    student: str | None = None
    test_samples: int | None = None
    threads: int = 1
    measure_rounds: int = 5
    keep_min: float = 0.05
    rank_min: float = 0.05
    seed: int = 0
    deep_stages: int = 1
    """Deep-compression rows: 1 prunes in one shot; N > 1 prunes in N stages, each removing the same fraction of
    the surviving weights and followed by the rows' distillation recipe, before the codebooks."""
    deep_bias_bits: int = 32
    """Deep-compression rows: bits of the stored biases (16: rounded to fp16 and held, ``LayerPolicy.bias_bits``)."""
    deep_clusters: int = DEEP_CLUSTERS
    """Deep-compression rows: entries of every layer's codebook (a power of two, 2-256)."""

    def check(self) -> None:
        unknown = [t for t in self.techniques if t not in TECHNIQUES]
        if unknown:
            raise ConfigError(f"unknown technique(s) {', '.join(unknown)}; valid: {', '.join(TECHNIQUES)}")
        for what, ratios in (("budget ratio", self.budget_ratios), ("size ratio", self.size_ratios)):
            for r in ratios:
                if not 0 < r < 1:
                    raise ConfigError(f"{what} {r} is invalid; valid: 0 < ratio < 1 (a fraction of the base)")
        for ms in self.budget_ms:
            if ms <= 0:
                raise ConfigError(f"budget {ms} ms is invalid; valid: a positive number of milliseconds")
        if not 0 <= self.distill_alpha <= 1:
            raise ConfigError(
                f"distill_alpha {self.distill_alpha} is invalid; valid: 0 (labels only) to 1 (soft targets only)"
            )
        if self.finetune_epochs < 0:
            raise ConfigError(f"finetune_epochs must be >= 0, got {self.finetune_epochs}")
        if not self.techniques:
            raise ConfigError(f"no technique to compare; choose among {', '.join(TECHNIQUES)}")
        if self.student is not None and "student" not in self.techniques:
            raise ConfigError(
                f"--student {self.student} names the architecture of the 'student' rows, but --techniques "
                f"({', '.join(self.techniques)}) has no student: add it, or leave --student out"
            )
        if self.deep_stages < 1:
            raise ConfigError(f"deep_stages must be >= 1 (1: one-shot pruning), got {self.deep_stages}")
        if self.deep_clusters not in SHARING_CLUSTERS:
            raise ConfigError(
                f"deep_clusters {self.deep_clusters} is invalid; valid: {', '.join(map(str, sorted(SHARING_CLUSTERS)))}"
            )
        if self.deep_bias_bits not in BIAS_BITS:
            raise ConfigError(
                f"deep_bias_bits {self.deep_bias_bits} is invalid; valid: {', '.join(map(str, BIAS_BITS))}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Context:
    cfg: RunConfig
    settings: CompareSettings
    base: nn.Module
    spec: Any
    bundle: DataBundle
    analysis: ModelAnalysis
    calibration: list[Any]
    bn_inputs: list[Any]
    test: Any
    console: Console
    out: Path
    checkpoint: Path

    @property
    def shape(self) -> Any:
        return self.spec.input_shape


@dataclass
class _Candidate:
    """A model one technique made for one budget, before the shared recipe."""

    model: nn.Module
    report: CompressionReport | None
    """What compressing with ``policy`` gave (None for a student: counted as an unchanged model)."""
    setting: dict[str, Any]
    policy: Policy | None
    unstructured: str = "magnitude"
    trained_from_scratch: bool = False
    search_seconds: float = 0.0
    note: str = ""
    """Said in the row next to its policy (e.g. why ``compress(base, policy)`` alone does not give this model)."""


# ---------------------------------------------------------------- pricing and counting


def _policy_model(ctx: _Context, policy: Policy, unstructured: str = "magnitude") -> tuple[nn.Module, Any]:
    return compress(ctx.base, policy, ctx.calibration, analysis=ctx.analysis, unstructured=unstructured)


def _predicted_ms(ctx: _Context, model: nn.Module, policy: Policy | None, device: str) -> tuple[float, str]:
    if policy is None:
        r = estimate_latency(model, ctx.shape, device)
        return r.total_ms, r.source
    report, source = policy_latency(model, policy, ctx.shape, device)
    return report.total_ms, source


def _archive_bytes(ctx: _Context, policy: Policy, unstructured: str = "magnitude") -> int:
    _, report = _policy_model(ctx, policy, unstructured)
    return int(report.totals["huffman_bytes_after"])


def _mildest(values: Sequence[Any], meets: Callable[[Any], bool]) -> tuple[Any | None, int]:
    """The first of ``values`` (ordered mild -> strong, meeting monotone) that meets; None when the strongest
    does not. Binary search over the list; returns the value and the number of candidates priced."""
    if not values:
        return None, 0
    priced = 1
    if not meets(values[-1]):
        return None, priced
    lo, hi = 0, len(values) - 1  # values[hi] meets
    while lo < hi:
        mid = (lo + hi) // 2
        priced += 1
        if meets(values[mid]):
            hi = mid
        else:
            lo = mid + 1
    return values[hi], priced


def _grid(mild: float, strong: float, steps: int = 2**BISECT_STEPS) -> list[float]:
    return [round(mild + (strong - mild) * i / steps, 5) for i in range(1, steps + 1)]


# ---------------------------------------------------------------- the techniques


def _layers_where(ctx: _Context, field_: str, value: Any, *, prunable_only: bool = False) -> Policy:
    names = [s.name for s in ctx.analysis.layers if s.prunable or not prunable_only]
    lp = LayerPolicy(**{field_: value})
    return Policy({n: lp for n in names}, base=_base_record(ctx), round_to=ctx.cfg.search.round_to)


def _base_record(ctx: _Context) -> dict[str, Any]:
    return {"model": ctx.spec.model, "input_shape": list(ctx.shape), "num_classes": ctx.spec.num_classes}


def _latency_candidate(ctx: _Context, technique: str, budget_ms: float) -> tuple[_Candidate | None, str]:
    """The mildest setting of a latency technique whose predicted latency on the device meets ``budget_ms``."""
    device = ctx.cfg.device

    def policy_meets(policy: Policy) -> bool:
        model, _ = _policy_model(ctx, policy)
        return _predicted_ms(ctx, model, policy, device)[0] <= budget_ms

    if technique == "prune-l1":
        make = lambda keep: _layers_where(ctx, "keep", keep, prunable_only=True)  # noqa: E731
        keep, n = _mildest(_grid(1.0, ctx.settings.keep_min), lambda k: policy_meets(make(k)))
        floor = f"keep {ctx.settings.keep_min} on every prunable layer"
        if keep is None:
            return None, _floor_text(ctx, make(ctx.settings.keep_min), floor)
        return _Candidate(*_policy_model(ctx, make(keep)), {"keep": keep, "priced": n}, make(keep)), ""
    if technique == "lowrank":
        make = lambda r: _layers_where(ctx, "rank", r)  # noqa: E731
        rank, n = _mildest(_grid(1.0, ctx.settings.rank_min), lambda r: policy_meets(make(r)))
        if rank is None:
            return None, _floor_text(ctx, make(ctx.settings.rank_min), f"rank {ctx.settings.rank_min} everywhere")
        return _Candidate(*_policy_model(ctx, make(rank)), {"rank": rank, "priced": n}, make(rank)), ""
    if technique == "drop":
        blocks = ctx.analysis.blocks()
        if not blocks:
            return None, "the model has no removable residual block"
        base_ms = _predicted_ms(ctx, ctx.base, None, device)[0]
        saving = {}
        for block, layers in blocks.items():
            p = Policy({layers[0]: LayerPolicy(drop=True)}, base=_base_record(ctx))
            saving[block] = base_ms - _predicted_ms(ctx, _policy_model(ctx, p)[0], p, device)[0]
        order = sorted(blocks, key=lambda b: -saving[b])

        def make_drop(k: int) -> Policy:
            return Policy({blocks[b][0]: LayerPolicy(drop=True) for b in order[:k]}, base=_base_record(ctx))

        k, n = _mildest(list(range(1, len(order) + 1)), lambda k: policy_meets(make_drop(k)))
        if k is None:
            return None, _floor_text(ctx, make_drop(len(order)), f"all {len(order)} removable blocks removed")
        p = make_drop(k)
        setting = {"blocks_removed": order[:k], "of": len(order), "priced": n + len(order)}
        return _Candidate(*_policy_model(ctx, p), setting, p), ""
    if technique == "student":
        names = [ctx.settings.student] if ctx.settings.student else students_for(ctx.spec.model)
        if not names:
            return None, (
                f"no compact student registered for {ctx.spec.model!r}; name one with --student "
                "(a registered model, torchvision:NAME or package.module:factory)"
            )
        priced = []
        for name in names:
            student = _build_student(ctx, name)
            ms = _predicted_ms(ctx, student, None, device)[0]
            priced.append((ms, name, student))
        fitting = [p for p in priced if p[0] <= budget_ms]
        if not fitting:
            best = min(priced, key=lambda p: p[0])
            return None, f"the fastest student ({best[1]}) is predicted at {best[0]:.4f} ms on {device}"
        ms, name, student = max(fitting, key=lambda p: p[0])  # the largest that fits: the most capacity
        setting = {"student": name, "candidates": {n: round(m, 5) for m, n, _ in priced}}
        return _Candidate(student, None, setting, None, trained_from_scratch=True), ""
    raise AssertionError(technique)


def _floor_text(ctx: _Context, policy: Policy, what: str) -> str:
    model, _ = _policy_model(ctx, policy)
    ms, _ = _predicted_ms(ctx, model, policy, ctx.cfg.device)
    return f"the strongest setting ({what}) is predicted at {ms:.4f} ms on {ctx.cfg.device}"


def _build_student(ctx: _Context, name: str) -> nn.Module:
    torch.manual_seed(ctx.settings.seed)
    return create_model(name, ctx.spec.num_classes, ctx.shape[1], input_size=ctx.shape[-1]).eval()


def _size_candidate(ctx: _Context, technique: str, budget_bytes: float) -> tuple[_Candidate | None, str]:
    """The mildest setting of a size technique whose archive (Huffman-coded) bytes meet ``budget_bytes``."""

    def fits(policy: Policy, unstructured: str = "magnitude") -> bool:
        return _archive_bytes(ctx, policy, unstructured) <= budget_bytes

    if technique in ("magnitude", "lookahead", "deep-compression"):
        method = "lookahead" if technique == "lookahead" else "magnitude"
        deep = technique == "deep-compression"
        largest = max(sp.params for sp in ctx.analysis.layers)

        def make(s: float) -> Policy:
            layers = {}
            for sp in ctx.analysis.layers:
                if deep:  # every layer keeps the same non-zeros per square root of its size; s: the largest's
                    sparsity = 1 - min(1.0, (1 - s) * math.sqrt(largest / max(sp.params, 1)))
                    layers[sp.name] = LayerPolicy(
                        sparsity=round(sparsity, 5),
                        clusters=ctx.settings.deep_clusters,
                        bias_bits=ctx.settings.deep_bias_bits,
                    )
                else:
                    layers[sp.name] = LayerPolicy(sparsity=s)
            return Policy(layers, base=_base_record(ctx))

        values = _grid(0.0, 0.99)
        s, n = _mildest(values, lambda s: fits(make(s), method))
        if s is None:
            return None, f"sparsity 0.99 stores {_archive_bytes(ctx, make(0.99), method):,} bytes"
        if deep and ctx.settings.deep_stages > 1:
            return _gradual_deep(ctx, make, values, s, budget_bytes)
        p = make(s)
        return _Candidate(*_policy_model(ctx, p, method), {"sparsity": s, "priced": n}, p, unstructured=method), ""
    if technique == "quant":
        make_q = lambda b: _layers_where(ctx, "wbits", b)  # noqa: E731
        bits, n = _mildest(list(QUANT_BITS), lambda b: fits(make_q(b)))
        if bits is None:
            return None, f"2-bit weights store {_archive_bytes(ctx, make_q(2)):,} bytes"
        return _Candidate(*_policy_model(ctx, make_q(bits)), {"wbits": bits, "priced": n}, make_q(bits)), ""
    if technique == "sharing":
        make_c = lambda c: _layers_where(ctx, "clusters", c)  # noqa: E731
        c, n = _mildest(list(SHARING_CLUSTERS), lambda c: fits(make_c(c)))
        if c is None:
            return None, f"2-entry codebooks store {_archive_bytes(ctx, make_c(2)):,} bytes"
        return _Candidate(*_policy_model(ctx, make_c(c)), {"clusters": c, "priced": n}, make_c(c)), ""
    raise AssertionError(technique)


def _gradual_deep(
    ctx: _Context, make: Callable[[float], Policy], values: list[float], s: float, budget_bytes: float
) -> tuple[_Candidate | None, str]:
    """Deep Compression with the pruning reached in ``deep_stages`` stages: each stage removes the same fraction
    of every layer's surviving weights (density (1 - s_layer) ** (i / N)) and is followed by the rows'
    distillation; then the codebooks. ``s`` is where one-shot pricing put the budget; staged training moves the
    weights, so the final model is re-counted and, where it no longer fits, pruned further along ``values``."""
    st = ctx.settings
    target = make(s)
    student = ctx.base
    stage_seconds = 0.0
    for i in range(1, st.deep_stages + 1):
        stage = {name: LayerPolicy(sparsity=staged_sparsity(lp.sparsity, i, st.deep_stages))
                 for name, lp in target.layers.items()}  # fmt: skip
        student, _ = compress(student, Policy(stage, base=_base_record(ctx)), analysis=ctx.analysis)
        ctx.console.print(
            f"  stage {i}/{st.deep_stages}: largest layer at sparsity {staged_sparsity(s, i, st.deep_stages):.4f}"
        )
        t0 = time.perf_counter()
        if st.finetune_epochs > 0:
            distill(
                student, ctx.base, ctx.bundle.train, epochs=st.finetune_epochs, lr=st.finetune_lr,
                alpha=st.distill_alpha, batch_size=st.batch_size, seed=st.seed, max_batches=st.max_batches,
                progress=True,
                workers=ctx.bundle.workers, accelerator=ctx.cfg.train.accelerator, precision=ctx.cfg.train.precision,
            )  # fmt: skip
        stage_seconds += time.perf_counter() - t0
        bake(student)  # the fine-tuned sparse weights start the next stage; its zeros stay the smallest
    for final in values[values.index(s) :]:
        policy = make(final)
        model, report = compress(student, policy, analysis=ctx.analysis)
        if report.totals["huffman_bytes_after"] <= budget_bytes:
            setting = {"sparsity": final, "one_shot_sparsity": s, "stages": st.deep_stages, "schedule": "geometric",
                       "bias_bits": st.deep_bias_bits, "clusters": st.deep_clusters,
                       "stage_distillation_seconds": round(stage_seconds, 2)}  # fmt: skip
            note = (
                f"pruned in {st.deep_stages} stages with distillation between them, then shared: compress(base, "
                "policy) gives the one-shot model of the same sparsities, not this one"
            )
            return _Candidate(model, report, setting, policy, note=note), ""
    return None, f"after {st.deep_stages} pruning stages, sparsity {values[-1]} stores more than the budget"


def _search_candidate(ctx: _Context, label: str, budget_ms: float) -> tuple[_Candidate | None, str]:
    """The searched mix: the config's driver over ``search.techniques`` at this budget, in ``OUT/search-LABEL``
    (a search run folder of its own: resumable, reportable)."""
    cfg = ctx.cfg.model_copy(deep=True)
    cfg.out = str(ctx.out / f"search-{label}")
    cfg.search.budget_ms = budget_ms
    cfg.search.budget_ratio = None
    started = time.perf_counter()
    base = {**_base_record(ctx), "checkpoint": str(ctx.checkpoint), "dataset": ctx.spec.dataset}
    with run_folder_lock(cfg.out):
        write_resolved_config(cfg, cfg.out)
        try:
            setup = create_setup(
                cfg, ctx.base, val_data=ctx.bundle.val_subset(cfg.data.val_samples), train_data=ctx.bundle.train,
                input_shape=ctx.shape, base=base,
            )  # fmt: skip
        except ConfigError as exc:  # an infeasible budget: the row says why
            return None, str(exc)
        result = get_driver(cfg.search.agent)(setup, cfg, ctx.console, progress=True)
    best = result.get("best")
    if best is None:
        return None, f"no policy the search scored ({result['episodes']}) met the budget"
    policy = Policy.from_dict(best["policy"])
    model, report = compress(ctx.base, policy, None if policy.applied else ctx.calibration, analysis=ctx.analysis)
    setting = {
        "agent": cfg.search.agent, "episodes": result["episodes"], "techniques": list(cfg.search.techniques),
        "search_accuracy": best["accuracy"], "run_folder": cfg.out, "summary": policy.summary(),
    }  # fmt: skip
    return _Candidate(model, report, setting, policy, search_seconds=time.perf_counter() - started), ""


# ---------------------------------------------------------------- measuring a row


def _measure_here(ctx: _Context, model: nn.Module) -> dict[str, Any]:
    """Batch 1 and 64 on this CPU, ONNX Runtime fp32, timed round-robin with the base model."""
    out: dict[str, Any] = {}
    for batch in (1, 64):
        shape = (batch, *tuple(ctx.shape)[1:])
        out[f"batch{batch}"] = speedup_against(
            ctx.base, model, shape, threads=ctx.settings.threads, rounds=ctx.settings.measure_rounds, warmup=5,
            repeats=20,
        )  # fmt: skip
    out["source"] = (
        f"measured on this machine ({cpu_name()}, {os.cpu_count()} cores): ONNX Runtime CPU provider, "
        f"{ctx.settings.threads} thread(s), fp32 ONNX export, median of {ctx.settings.measure_rounds} rounds of "
        "20 runs, the base model timed in the same rounds (speed-up: the median per-round ratio)"
    )
    return out


def _accuracy(ctx: _Context, model: nn.Module) -> dict[str, Any]:
    r = evaluate(
        model, ctx.test, topk=(1, 5), metrics=True, accelerator=ctx.cfg.train.accelerator,
        precision=ctx.cfg.train.precision,
    )  # fmt: skip
    return {"top1": r["top1"], "top5": r["top5"], "precision": r["precision_macro"], "recall": r["recall_macro"],
            "f1": r["f1_macro"]}  # fmt: skip


def _finish_row(ctx: _Context, technique: str, budget: dict[str, Any], cand: _Candidate, t_compress: float) -> dict:
    s = ctx.settings
    model = cand.model
    if ctx.bn_inputs and not cand.trained_from_scratch:
        recalibrate_batchnorm(model, ctx.bn_inputs, accelerator=ctx.cfg.train.accelerator)
    before = None if cand.trained_from_scratch else _accuracy(ctx, model)["top1"]
    t0 = time.perf_counter()
    if s.finetune_epochs > 0:
        distill(
            model, ctx.base, ctx.bundle.train, epochs=s.finetune_epochs, lr=s.finetune_lr, alpha=s.distill_alpha,
            batch_size=s.batch_size, seed=s.seed, max_batches=s.max_batches, progress=True, workers=ctx.bundle.workers,
            accelerator=ctx.cfg.train.accelerator, precision=ctx.cfg.train.precision,
        )  # fmt: skip
    model.eval()
    finetune_seconds = time.perf_counter() - t0
    row = _measure_row(ctx, model, cand.policy, cand.report)
    row.update(
        technique=technique, description=DESCRIPTIONS[technique], budget=budget, met=True, setting=cand.setting,
        top1_before_finetune=before, trained_from_scratch=cand.trained_from_scratch,
        seconds={"compression": round(t_compress, 2), "search": round(cand.search_seconds, 2),
                 "finetune": round(finetune_seconds, 2)},
        policy=cand.policy.to_dict() if cand.policy is not None else None,
    )  # fmt: skip
    if cand.policy is not None and cand.unstructured != "magnitude":
        row["policy_note"] = f"replays with compress(..., unstructured={cand.unstructured!r})"
    if cand.note:
        row["policy_note"] = cand.note
    return row


def _measure_row(ctx: _Context, model: nn.Module, policy: Policy | None, report: CompressionReport | None) -> dict:
    """A row's figures; ``report``: what compressing with ``policy`` gave (None: count ``model`` as it is)."""
    if report is None:  # a student (or the base): counted as an unchanged model
        _, report = compress(model, Policy({}), input_shape=ctx.shape)
    totals = report.totals
    size = {
        "params": report.model_params_after, "macs": totals["macs_after"],
        "stored_bytes": totals["stored_bytes_after"], "huffman_bytes": totals["huffman_bytes_after"],
        "peak_activation_bytes": totals["peak_activation_bytes_after"],
    }  # fmt: skip
    predicted = {}
    for device in _profiles(ctx):
        try:
            ms, source = _predicted_ms(ctx, model, policy, device)
            predicted[device] = {"ms": ms, "source": source}
        except EdgeCompressError as exc:
            predicted[device] = {"ms": None, "source": f"not priced: {exc}"}
    return {
        **size,
        "accuracy": _accuracy(ctx, model),
        "latency_ms": predicted[ctx.cfg.device]["ms"],
        "latency_source": predicted[ctx.cfg.device]["source"],
        "predicted": predicted,
        "measured": _measure_here(ctx, model),
        **_energy(ctx, model),
    }


def _energy(ctx: _Context, model: nn.Module) -> dict[str, Any]:
    """``energy``: device -> {mj, source} for every profile with an energy model; ``energy_mj`` / ``energy_source``:
    the first of them (the one the table shows)."""
    energy = {}
    for device in energy_devices():
        e = estimate_energy(model, ctx.shape, device)
        energy[device] = {"mj": e.mj, "source": e.source}
    first = next(iter(energy.values()), {"mj": None, "source": "no device profile has an energy model"})
    return {"energy": energy, "energy_mj": first["mj"], "energy_source": first["source"]}


def _profiles(ctx: _Context) -> list[str]:
    return [ctx.cfg.device] + [d for d in list_devices() if d != ctx.cfg.device]


# ---------------------------------------------------------------- the run


def _row_key(technique: str, budget: dict[str, Any]) -> str:
    return f"{technique}@{budget['kind']}:{budget['value']}"


def _budgets(ctx: _Context, base_ms: float, base_bytes: int) -> list[dict[str, Any]]:
    s = ctx.settings
    out = []
    for ms in s.budget_ms:
        out.append({"kind": "latency_ms", "value": ms, "ms": ms, "label": f"{ms:g}ms"})
    if not s.budget_ms:
        for r in s.budget_ratios:
            out.append({"kind": "latency_ratio", "value": r, "ms": r * base_ms, "label": f"{r:g}x"})
    for r in s.size_ratios:
        out.append({"kind": "size_ratio", "value": r, "bytes": r * base_bytes, "label": f"size{r:g}"})
    return out


def _load_rows(path: Path) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill: the row is recomputed
            continue
        rows[row["key"]] = row
    return rows


def _append_row(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def run_compare(
    cfg: RunConfig,
    settings: CompareSettings,
    console: Console,
    *,
    model: nn.Module | None = None,
    spec: ModelSpec | None = None,
    bundle: DataBundle | None = None,
) -> dict[str, Any]:
    """Compare the techniques of ``settings`` on the config's base model, data and device; see the module
    docstring. Returns what ``compare.json`` holds. ``model`` (with its ``spec`` and data ``bundle``) replaces
    the config's checkpoint: the Python entry point, :func:`compare`."""
    settings.check()
    if model is None:
        check_base_model(cfg)
        bundle = load_bundle(cfg)
    assert bundle is not None
    out = Path(cfg.out)
    check_foreign_files(out, ("rows.jsonl", "compare.json", "compare.md", "accuracy_vs_latency.png",
                              "accuracy_vs_size.png"), "settings.json", error=ConfigError)  # fmt: skip
    started = time.perf_counter()
    with run_folder_lock(out):
        settings_path = out / "settings.json"

        def prepare() -> None:
            write_resolved_config(cfg, out)
            if settings_path.exists():
                # settings added since the folder was made take their defaults
                recorded = {
                    **CompareSettings().to_dict(),
                    **read_json(settings_path, "comparison settings", ConfigError),
                }
                if recorded != json.loads(json.dumps(settings.to_dict())):
                    changed = sorted(k for k in recorded if recorded.get(k) != settings.to_dict().get(k))
                    raise ConfigError(
                        f"{out} holds a comparison made with other settings ({', '.join(changed)} differ); "
                        "re-run with the same settings to resume it, or choose another --out"
                    )
            else:
                write_json_atomic(settings_path, settings.to_dict())

        if model is None:
            base, spec, ckpt, _ = ensure_base_model(cfg, bundle, console, prepare)
        else:
            assert spec is not None
            prepare()
            base, ckpt = model, Path(f"python:{type(model).__name__}")
        base.eval()
        analysis = analyze_model(base, spec.input_shape)
        drawn = first_batches(bundle.train, max(settings.bn_batches, CALIBRATION_BATCHES), seed=settings.seed)
        test = bundle.test
        if settings.test_samples is not None:
            test = Subset(test, range(min(settings.test_samples, len(test))))  # type: ignore[arg-type]
        ctx = _Context(
            cfg, settings, base, spec, bundle, analysis, drawn[:CALIBRATION_BATCHES], drawn[: settings.bn_batches],
            test, console, out, ckpt,
        )  # fmt: skip
        rows_path = out / "rows.jsonl"
        done = _load_rows(rows_path)
        if "base" in done:
            base_row = done["base"]
        else:
            base_row = _measure_row(ctx, base, None, None)
            base_row.update(key="base", technique="base", description="the base model, uncompressed", met=True)
            _append_row(rows_path, base_row)
        base_ms = base_row["latency_ms"]
        base_bytes = base_row["stored_bytes"]
        budgets = _budgets(ctx, base_ms, base_bytes)
        console.print(
            f"compare: {spec.model} on {spec.dataset}, {cfg.device} (base {base_ms:.4f} ms predicted, "
            f"{base_bytes:,} bytes); {len(budgets)} budgets x {len(settings.techniques)} techniques; "
            f"{len(done) - ('base' in done)} rows already done in {rows_path}"
        )
        for budget in budgets:
            for technique in settings.techniques:
                key = _row_key(technique, budget)
                if key in done:
                    continue
                row = _one_row(ctx, technique, budget)
                row["key"] = key
                _append_row(rows_path, row)
                done[key] = row
                _print_row(console, row)
        rows = [done[k] for k in done if k != "base"]
        result = {
            "model": spec.model,
            "checkpoint": str(ckpt),
            "dataset": spec.dataset,
            "device": cfg.device,
            "settings": settings.to_dict(),
            "base": base_row,
            "budgets": budgets,
            "rows": rows,
            "accuracy_source": f"measured on the {spec.dataset} test split ({len(test)} images)",  # type: ignore[arg-type]
            "size_note": SIZE_NOTE,
            "seconds_this_run": round(time.perf_counter() - started, 1),
            "versions": software_versions(),
        }
        write_json_atomic(out / "compare.json", result)
        write_text_atomic(out / "compare.md", compare_markdown(result))
        result["plots"] = [str(p) for p in _plots(result, out)]
    return result


def _one_row(ctx: _Context, technique: str, budget: dict[str, Any]) -> dict[str, Any]:
    kind = budget["kind"]
    t0 = time.perf_counter()
    size_kind = kind == "size_ratio"
    if (technique in SIZE_TECHNIQUES) != size_kind:
        reason = SIZE_NOTE if technique in SIZE_TECHNIQUES else (
            "latency technique: its size is reported in its latency rows, it is not fitted to a size budget"
        )  # fmt: skip
        return {"technique": technique, "description": DESCRIPTIONS[technique], "budget": budget, "met": None,
                "reason": reason}  # fmt: skip
    if technique == "student" and not (ctx.settings.student or students_for(ctx.spec.model)):
        return {"technique": technique, "description": DESCRIPTIONS[technique], "budget": budget, "met": None,
                "reason": f"not applicable: no compact student registered for {ctx.spec.model!r}; name one with "
                          "--student (a registered model, torchvision:NAME or package.module:factory)"}  # fmt: skip
    ctx.console.print(f"[bold]{technique}[/] at budget {budget['label']}")
    if technique == "search":
        cand, reason = _search_candidate(ctx, budget["label"], budget["ms"])
    elif size_kind:
        cand, reason = _size_candidate(ctx, technique, budget["bytes"])
    else:
        cand, reason = _latency_candidate(ctx, technique, budget["ms"])
    if cand is None:
        return {"technique": technique, "description": DESCRIPTIONS[technique], "budget": budget, "met": False,
                "reason": f"cannot meet the budget: {reason}"}  # fmt: skip
    return _finish_row(ctx, technique, budget, cand, time.perf_counter() - t0 - cand.search_seconds)


def _print_row(console: Console, row: dict[str, Any]) -> None:
    if not row.get("met"):
        if row.get("met") is False:
            console.print(f"  {row['technique']} {row['budget']['label']}: {row['reason']}")
        return
    a = row["accuracy"]
    console.print(
        f"  {row['technique']} {row['budget']['label']}: top-1 {a['top1']:.4f}, {row['latency_ms']:.4f} ms predicted, "
        f"{row['huffman_bytes']:,} bytes, {row['measured']['batch1']['speedup']:.2f}x measured here (batch 1)"
    )


# ---------------------------------------------------------------- rendering


def _mj(x: dict[str, Any]) -> str:
    return f"{x['energy_mj']:.3f}" if x.get("energy_mj") is not None else "n/a"


def compare_markdown(r: dict[str, Any]) -> str:
    base = r["base"]
    dense = base["stored_bytes"]
    energy_label = f"{next(iter(base.get('energy') or {}), 'energy')} mJ"
    lines = [
        f"# Comparison: {r['model']} on {r['dataset']}, target {r['device']}",
        "",
        f"Base checkpoint `{r['checkpoint']}`. Every row: the technique alone at its mildest setting meeting the "
        f"budget, BatchNorm re-estimated, distilled from the base model for {r['settings']['finetune_epochs']} "
        f"epoch(s) at lr {r['settings']['finetune_lr']}"
        + (f" ({r['settings']['max_batches']} batches each)" if r["settings"]["max_batches"] else "")
        + f", then scored. Accuracy: {r['accuracy_source']}. Latency: predicted on {r['device']} "
        f"({base['latency_source']}); measured here: {base['measured']['source']}. Energy: "
        f"{base.get('energy_source') or ENERGY_NOTE}.",
        "",
        "| technique | budget | setting | top-1 | top-5 | macro F1 | params | MACs | archive bytes (x smaller) | "
        f"peak act. KiB | {r['device']} ms (x) | here b1 x | here b64 x | {energy_label} | compress + fine-tune s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def acc_cells(x: dict[str, Any]) -> str:
        a = x["accuracy"]
        return f"{a['top1']:.4f} | {a['top5']:.4f} | {a['f1']:.4f}"

    lines.append(
        f"| base | | | {acc_cells(base)} | {base['params']:,} | {base['macs']:,} | {base['huffman_bytes']:,} | "
        f"{base['peak_activation_bytes'] / 1024:.1f} | {base['latency_ms']:.4f} | 1.00x | 1.00x | {_mj(base)} | |"
    )
    skipped = []
    for row in r["rows"]:
        b = row["budget"]["label"]
        if row.get("met") is None:
            continue
        if not row["met"]:
            skipped.append(f"- {row['technique']} at {b}: {row['reason']}")
            continue
        hidden = ("priced", "candidates", "summary", "run_folder")
        setting = ", ".join(f"{k} {v}" for k, v in row["setting"].items() if k not in hidden)
        m = row["measured"]
        secs = row["seconds"]
        lines.append(
            f"| {row['technique']} | {b} | {setting} | {acc_cells(row)} | {row['params']:,} | {row['macs']:,} | "
            f"{row['huffman_bytes']:,} ({dense / max(row['huffman_bytes'], 1):.1f}x) | "
            f"{row['peak_activation_bytes'] / 1024:.1f} | {row['latency_ms']:.4f} "
            f"({base['latency_ms'] / max(row['latency_ms'], 1e-12):.2f}x) | {m['batch1']['speedup']:.2f}x | "
            f"{m['batch64']['speedup']:.2f}x | {_mj(row)} | {secs['compression'] + secs['search']:.0f} + "
            f"{secs['finetune']:.0f} |"
        )
    lines += ["", f"Size budgets apply to the archive (Huffman-coded) bytes of the compressible layers. {SIZE_NOTE}."]
    if skipped:
        lines += ["", "Budgets a technique cannot meet:", "", *skipped]
    lines += ["", _winners(r)]
    return "\n".join(lines) + "\n"


def _winners(r: dict[str, Any]) -> str:
    out = ["Best top-1 per budget:", ""]
    for budget in r["budgets"]:
        met = [x for x in r["rows"] if x.get("met") and x["budget"]["label"] == budget["label"]]
        if met:
            best = max(met, key=lambda x: x["accuracy"]["top1"])
            out.append(f"- {budget['label']}: {best['technique']} ({best['accuracy']['top1']:.4f})")
        else:
            out.append(f"- {budget['label']}: no technique met it")
    return "\n".join(out)


def _plots(r: dict[str, Any], out: Path) -> list[Path]:
    from matplotlib.figure import Figure  # a Figure of its own: no pyplot state, no backend switch

    paths = []
    base = r["base"]
    for x_key, label, name in (
        ("latency_ms", f"predicted latency on {r['device']} (ms)", "accuracy_vs_latency.png"),
        ("huffman_bytes", "archive bytes (Huffman-coded compressible layers)", "accuracy_vs_size.png"),
    ):
        fig = Figure(figsize=(7, 5))
        ax = fig.subplots()
        techniques = sorted({x["technique"] for x in r["rows"] if x.get("met")})
        markers = "os^vD<>ph*X"
        for i, t in enumerate(techniques):
            pts = [x for x in r["rows"] if x.get("met") and x["technique"] == t]
            ax.scatter([p[x_key] for p in pts], [p["accuracy"]["top1"] for p in pts], marker=markers[i % len(markers)],
                       label=t, s=40)  # fmt: skip
        ax.scatter([base[x_key]], [base["accuracy"]["top1"]], marker="*", s=200, color="black", label="base model")
        if x_key == "huffman_bytes":
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("test top-1")
        ax.set_title(f"{r['model']} on {r['dataset']}: every technique at each budget", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / name
        fig.savefig(path, dpi=100)
        paths.append(path)
    return paths


def compare(
    model: nn.Module,
    data: DataBundle,
    *,
    device: str = "raspberry-pi-4",
    model_name: str | None = None,
    out: str | Path = "runs/compare-python",
    progress: bool = False,
    search: dict[str, Any] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Python: ``edgecompress.compare(model, data, device=..., budget_ratios=[0.5], techniques=[...])``.

    Compares the techniques on a model in memory and a :class:`~edgecompress.data.DataBundle`
    (``edgecompress.data.load_dataset``); ``settings`` are :class:`CompareSettings` fields; ``model_name``
    (a registry name) picks the compact students of its family for the student rows when ``student`` is not
    given; ``search`` holds ``search`` config keys for the searched row (``agent``, ``episodes``, ...). Writes
    the same folder as the CLI (re-running resumes) and returns what ``compare.json`` holds."""
    unknown = sorted(set(settings) - set(CompareSettings().to_dict()))
    if unknown:
        raise ConfigError(
            f"compare() got unknown setting(s) {', '.join(unknown)}; valid: {', '.join(CompareSettings().to_dict())}"
        )
    name = model_name or f"python:{type(model).__name__}"
    cfg = RunConfig.model_validate(
        {"name": "compare", "out": str(out), "device": device,
         "data": {"dataset": data.name, "val_size": len(data.val)},  # type: ignore[arg-type]
         "search": dict(search or {})}
    )  # fmt: skip
    spec = ModelSpec(name, data.num_classes, data.in_channels, data.input_size, data.name, 0)
    return run_compare(
        cfg, CompareSettings(**settings), Console(quiet=not progress, stderr=True), model=model, spec=spec,
        bundle=data,
    )  # fmt: skip
