"""The one objective every search driver scores policies with.

``Objective(policy)`` compresses the base model with the policy, optionally
recalibrates BatchNorm statistics on a few training batches, optionally
distils it from the base model for ``finetune_batches`` steps (the same seeded
batches for every policy), measures top-1 accuracy on the validation subset,
predicts latency on the target device (or, with ``latency="measured"`` and
the ``host`` device, measures it here: see :meth:`Objective.latency`) and
reads the stored size from the compression report. Every driver calls it,
so a policy found by any of them scores, and later replays, the same way:
the evaluation carries the policy as applied (its ``applied`` section), so
``compress(model, policy)`` rebuilds the scored model. Identical policies are
scored once (cached by their JSON form). It only scores: it does not choose
policies and knows no budget (:mod:`edgecompress.search.budget` does).
"""

from __future__ import annotations

import itertools
import json
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import Dataset, TensorDataset

from edgecompress._inputs import InputSpec, example, normalise
from edgecompress.analysis import ModelAnalysis, analyze_model
from edgecompress.compressors import Policy, compress
from edgecompress.compressors.quantization import CALIBRATION_BATCHES
from edgecompress.config import is_host
from edgecompress.data import batches
from edgecompress.errors import ConfigError
from edgecompress.latency_models import LatencyReport, estimate_latency, load_device, priced_precisions
from edgecompress.latency_models.estimate import energy_devices, estimate_energy
from edgecompress.latency_models.onnx import onnx_feed, to_onnx
from edgecompress.latency_models.profiler import time_onnx_interleaved
from edgecompress.training import evaluate, recalibrate_batchnorm
from edgecompress.training.finetune import CachedBatches, DistillLoss, cache_teacher, finetune_cached

__all__ = ["Evaluation", "Objective", "activation_precisions", "policy_latency"]

PRECISION_OF_ABITS = {8: "int8", 16: "fp16", 32: "fp32"}
LATENCY_MODES = ("table", "measured")


def activation_precisions(policy: Policy) -> dict[str, str]:
    """Layer -> the precision its ``abits`` deploys at (int8, fp16), for the layers not at fp32."""
    return {name: PRECISION_OF_ABITS[lp.abits] for name, lp in policy.layers.items() if lp.abits < 32}


def policy_latency(
    compressed: nn.Module,
    policy: Policy,
    input_shape: InputSpec,
    device: str,
    priced: set[str] | None = None,
) -> tuple[LatencyReport, str]:
    """Predicted latency of a compressed model, each layer at the precision its ``abits`` asks where the
    device prices it (``priced``, default ``priced_precisions(device)``); the returned source names the
    layers priced at fp32 instead."""
    priced = priced_precisions(device) if priced is None else priced
    asked = activation_precisions(policy)
    usable = {layer: p for layer, p in asked.items() if p in priced}
    report = estimate_latency(compressed, input_shape, device, precision=usable or "fp32")
    source = report.source
    unpriced = sorted(set(asked) - set(usable))
    if unpriced:
        wanted = sorted({asked[layer] for layer in unpriced})
        source += (
            f"; {len(unpriced)} layers asking {'/'.join(wanted)} activations priced at fp32: device {device!r} "
            f"prices only {'/'.join(sorted(priced))} (profile `--precision {wanted[0]}` into a table to price them)"
        )
    return report, source


@dataclass
class Evaluation:
    accuracy: float
    """Top-1 on the validation subset, measured."""
    latency_ms: float
    """Predicted batch-1 latency on the device (``latency_source`` says how)."""
    latency_source: str
    stored_bytes: int
    huffman_bytes: int
    params: int
    macs: int
    seconds: float
    policy: dict[str, Any] = field(default_factory=dict)
    """The policy scored, as applied (a policy file's JSON, ``applied`` included)."""
    skipped: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)
    """Wall seconds of this evaluation per phase (compress, bn_recalibration, finetune, evaluate, latency)."""
    energy_mj: float | None = None
    """Predicted energy per batch-1 inference on the device (None: the device has no energy model)."""
    energy_source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _draw(source: Any, n: int, seed: int) -> list[tuple[Any, Any]]:
    """``n`` seeded-shuffled batches of 64 of a Dataset (epochs over it as needed), or the first ``n`` of an
    iterable of batches."""
    if isinstance(source, Dataset):
        out: list[tuple[Any, Any]] = []
        if len(source) == 0:  # type: ignore[arg-type]
            return out
        for epoch in itertools.count():  # a small training set is passed over again, reshuffled (seed + epoch)
            for item in batches(source, 64, shuffle=True, seed=seed + epoch):
                out.append(item)
                if len(out) >= n:
                    return out
        return out
    return list(itertools.islice(iter(source), n))


def _policy_key(policy: Policy) -> str:
    """Cache key of a policy: its layers and rounding, canonically serialised (what decides the model)."""
    return json.dumps([policy.round_to, policy.to_dict()["layers"]], sort_keys=True)


Evaluator = Callable[[nn.Module], float]
"""A user's score of a compressed model (higher is better): e.g. macro-F1, mAP, or top-1 on their own data."""


def _in_memory(data: Dataset, batch_size: int) -> Dataset:
    """``data`` as an in-memory TensorDataset (decoded once: a lazy image folder would be decoded per policy)."""
    if isinstance(data, TensorDataset):
        return data
    xs, ys = [], []
    for x, y in batches(data, batch_size):
        if not isinstance(x, torch.Tensor):
            raise ConfigError(
                "the validation data yields non-tensor inputs (a tuple or dict per sample); score such a model "
                "with your own evaluate(model) -> float (search(..., evaluate=...), Objective(evaluate=...))"
            )
        xs.append(x)
        ys.append(y)
    return TensorDataset(torch.cat(xs), torch.cat(ys))


class Objective:
    def __init__(
        self,
        model: nn.Module,
        val_data: Dataset | None,
        device: str,
        *,
        input_shape: InputSpec,
        train_data: Dataset | Iterable[Any] | None = None,
        bn_batches: int = 0,
        finetune_batches: int = 0,
        calibration_batches: int = CALIBRATION_BATCHES,
        batch_size: int = 256,
        analysis: ModelAnalysis | None = None,
        seed: int = 0,
        latency: str = "table",
        latency_rounds: int = 3,
        evaluate: Evaluator | None = None,
        distill_loss: DistillLoss | None = None,
        accelerator: str = "cpu",
        precision: str = "fp32",
        finetune_lr: float = 0.01,
    ) -> None:
        """``evaluate(model) -> float`` replaces top-1 on ``val_data`` (then optional) as the score;
        ``distill_loss(student_out, teacher_out, targets)`` replaces Hinton's loss in fine-tuning;
        ``train_data``: a Dataset, or an iterable of ``(inputs, targets)`` batches (inputs a tensor, a tuple or
        a dict); ``accelerator`` / ``precision``: where BatchNorm re-estimation, fine-tuning and scoring run
        (latency is never measured there)."""
        if latency not in LATENCY_MODES:
            raise ValueError(f"latency {latency!r} is not one of: {', '.join(LATENCY_MODES)}")
        if latency == "measured" and not is_host(device):
            raise ValueError(
                f"latency 'measured' times each policy on this machine, so the device must be 'host' or "
                f"'host-Nthread' (got {device!r}); for another device use latency 'table' (its table or device model)"
            )
        if latency_rounds < 1:
            raise ValueError(f"latency_rounds must be >= 1, got {latency_rounds}")
        if evaluate is None and val_data is None:
            raise ConfigError("the objective needs val_data (scored by top-1) or evaluate(model) -> float")
        self.latency_mode = latency
        self._predicted: dict[str, float] = {}
        self.latency_rounds = latency_rounds
        self._base_onnx: bytes | None = None
        self.model = model.eval()
        self.device = device
        self.accelerator = accelerator
        self.precision = precision
        self.user_evaluate = evaluate
        self.distill_loss = distill_loss
        self.input_shape = normalise(input_shape)
        self.batch_size = batch_size
        started = time.perf_counter()
        self.val_data = _in_memory(val_data, batch_size) if val_data is not None and evaluate is None else val_data
        self.analysis = analysis or analyze_model(model, self.input_shape)
        if finetune_batches and train_data is None:
            raise ValueError("finetune_batches needs train_data (the distillation set)")
        source = train_data if train_data is not None else val_data
        n = max(bn_batches, calibration_batches, finetune_batches)
        drawn = _draw(source, n, seed) if n and source is not None else []
        self.bn_inputs = [x for x, _ in drawn[:bn_batches]]
        self.train_data = train_data
        self.finetune_batches = finetune_batches
        self.finetune_lr = finetune_lr
        self.seed = seed
        self.calibration = [x for x, _ in drawn[:calibration_batches]]
        self._finetune_source = drawn[:finetune_batches] if train_data is not None else []
        self._cached: CachedBatches | None = None
        self.energy = isinstance(device, str) and device in energy_devices()
        """Whether the device has an energy model (each evaluation then carries predicted energy)."""
        self._predicted_mj: dict[str, float] = {}
        self.priced = priced_precisions(device)
        """Precisions the device prices per layer; layers asking others are priced at fp32, and said so."""
        self._cache: dict[str, Evaluation] = {}
        self.hits = 0
        phases = ("compress", "bn_recalibration", "finetune", "evaluate", "latency")
        self.timings: dict[str, float] = dict.fromkeys(phases, 0.0)
        """Cumulative wall seconds per scoring phase (where a search's time goes)."""
        self.setup: dict[str, float] = {"data_seconds": round(time.perf_counter() - started, 3)}
        """One-off costs: decoding the validation subset and drawing batches, the teacher cache (filled lazily)."""

    @property
    def accuracy_source(self) -> str:
        if self.user_evaluate is not None:
            name = getattr(self.user_evaluate, "__qualname__", type(self.user_evaluate).__name__)
            return f"the caller's evaluate() ({name}), higher is better"
        return f"top-1 measured on the first {len(self.val_data)} validation samples"  # type: ignore[arg-type]

    def teacher_cache(self) -> CachedBatches:
        """The fine-tuning batches with the base model's outputs, computed on first use, once per run."""
        if self._cached is None:
            self._cached = cache_teacher(
                self.model, self._finetune_source, accelerator=self.accelerator, precision=self.precision
            )
            self.setup["teacher_cache_seconds"] = round(self._cached.seconds, 3)
            self.setup["teacher_cache_mb"] = round(self._cached.nbytes / 2**20, 1)
        return self._cached

    def score(self, compressed: nn.Module) -> float:
        """The caller's ``evaluate(model)``, else top-1 on the validation subset (on the accelerator)."""
        if self.user_evaluate is not None:
            return float(self.user_evaluate(compressed))
        assert self.val_data is not None
        top1 = evaluate(
            compressed, self.val_data, batch_size=self.batch_size, accelerator=self.accelerator,
            precision=self.precision,
        )["top1"]  # fmt: skip
        return float(top1)

    def base_latency_ms(self) -> float:
        return estimate_latency(self.model, self.input_shape, self.device).total_ms

    def latency(self, compressed: nn.Module, policy: Policy) -> tuple[LatencyReport, str]:
        """Predicted latency (``latency="table"``), or measured here (``"measured"``, device ``host``).

        Measured: the compressed model's fp32 ONNX export and the base model's
        are timed round-robin in ONNX Runtime (the host table's thread count,
        batch 1, ``latency_rounds`` rounds of 100 runs after 10 warm-up); the
        latency is the base model's predicted latency times the median per-round
        ratio. The ratio of two models timed in the same rounds holds while
        this machine's speed swings; anchoring it on the base's prediction keeps
        budgets (a ratio of that prediction) and scores on one scale.
        """
        report, source = policy_latency(compressed, policy, self.input_shape, self.device, self.priced)
        if self.latency_mode == "table":
            return report, source
        if self._base_onnx is None:  # once per objective: the base model's export, prediction and table threads
            self._base_onnx = to_onnx(self.model, self.input_shape)
            self._base_ms = self.base_latency_ms()
            self._threads = int(getattr(load_device(self.device), "meta", {}).get("threads", 2))
        threads = self._threads
        x = onnx_feed(example(self.input_shape))
        models: dict[str, bytes | str] = {
            "base": self._base_onnx,
            "policy": to_onnx(compressed, self.input_shape),
        }
        times = time_onnx_interleaved(models, dict.fromkeys(models, x), threads, self.latency_rounds, 10, 100)
        ratio = statistics.median(t / b for t, b in zip(times["policy"], times["base"], strict=True))
        source = (
            f"measured on this machine: ONNX Runtime, {threads} threads, batch 1, fp32, median over "
            f"{self.latency_rounds} rounds of the ratio to the base model timed in the same round ({ratio:.3f}), "
            f"times the base's {self._base_ms:.4f} ms from {self.device}"
        )
        lower = activation_precisions(policy)
        if lower:
            source += f"; {len(lower)} layers asking lower-precision activations timed at fp32 (fp32 export)"
        return replace(report, total_ms=self._base_ms * ratio, source=source), source

    def predict_ms(self, policy: Policy) -> float:
        """Predicted latency of a policy (compressed, priced at its precisions; never measured, never scored)."""
        key = _policy_key(policy)
        if key not in self._predicted:
            self._price(policy, key)
        return self._predicted[key]

    def predict_mj(self, policy: Policy) -> float | None:
        """Predicted energy per inference of a policy on the device's energy model (None: the device has none)."""
        if not self.energy:
            return None
        key = _policy_key(policy)
        if key not in self._predicted_mj:
            self._price(policy, key)
        return self._predicted_mj[key]

    def _price(self, policy: Policy, key: str) -> None:
        """Compress once and cache both predictions (the budget's repair and fill ask for both of a policy)."""
        compressed, _ = compress(self.model, policy, self.calibration, analysis=self.analysis)
        report, _ = policy_latency(compressed, policy, self.input_shape, self.device, self.priced)
        self._predicted[key] = report.total_ms
        if self.energy:
            self._predicted_mj[key] = estimate_energy(compressed, self.input_shape, self.device).mj

    def base_energy_mj(self) -> float | None:
        return estimate_energy(self.model, self.input_shape, self.device).mj if self.energy else None

    @property
    def energy_note(self) -> str:
        """Where an evaluation's energy comes from, or why there is none."""
        if self.energy:
            return estimate_energy(self.model, self.input_shape, self.device).source
        return (
            f"not modelled: device {self.device!r} has no energy model (energy per inference is modelled for "
            f"{', '.join(energy_devices()) or 'no profile'})"
        )

    @cached_property
    def channel_block(self) -> int:
        """The device table's SIMD channel block (1 for device models, which have none)."""
        device = load_device(self.device) if isinstance(self.device, str) else self.device
        return int(getattr(device, "channel_block", 1))

    def __call__(self, policy: Policy) -> Evaluation:
        key = _policy_key(policy)
        if key in self._cache:
            self.hits += 1
            return self._cache[key]
        start = time.perf_counter()
        # compress uses the calibration batches only for layers asking 8-bit activations.
        compressed, report = compress(self.model, policy, self.calibration, analysis=self.analysis)
        t1 = time.perf_counter()
        if self.bn_inputs:
            recalibrate_batchnorm(compressed, self.bn_inputs, accelerator=self.accelerator)
        t2 = time.perf_counter()
        if self.finetune_batches and self.train_data is not None:
            # The same batches for every policy (seeded), so the score stays a function of the policy; the
            # teacher's outputs on them are computed once per run.
            cached = self.teacher_cache()
            finetune_cached(
                compressed, cached, loss=self.distill_loss, lr=self.finetune_lr, seed=self.seed,
                accelerator=self.accelerator, precision=self.precision,
            )  # fmt: skip
            compressed.eval()
        t3 = time.perf_counter()
        accuracy = self.score(compressed)
        t4 = time.perf_counter()
        latency, latency_source = self.latency(compressed, policy)
        energy = estimate_energy(compressed, self.input_shape, self.device) if self.energy else None
        t5 = time.perf_counter()
        spent = dict(zip(self.timings, (t1 - start, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True))
        for phase, seconds in spent.items():
            self.timings[phase] += seconds
        totals = report.totals
        result = Evaluation(
            accuracy=accuracy, latency_ms=latency.total_ms, latency_source=latency_source,
            stored_bytes=totals["stored_bytes_after"], huffman_bytes=totals["huffman_bytes_after"],
            params=totals["params_after"], macs=totals["macs_after"],
            seconds=time.perf_counter() - start, policy=policy.with_applied(report.applied()).to_dict(),
            skipped=[f"{s.layer} ({s.technique}): {s.reason}" for s in report.skipped],
            phases={k: round(v, 4) for k, v in spent.items()},
            energy_mj=energy.mj if energy else None, energy_source=energy.source if energy else None,
        )  # fmt: skip
        if energy is not None:
            self._predicted_mj.setdefault(key, energy.mj)
        self._cache[key] = result
        return result
