"""The one objective every search driver scores policies with.

``Objective(policy)`` compresses the base model with the policy, optionally
recalibrates BatchNorm statistics on a few training batches, measures top-1
accuracy on the validation subset, predicts latency on the target device and
reads the stored size from the compression report. The RL environment, Optuna
and Ray Tune all call it, so a policy found by any of them scores, and later
replays, the same way. Identical policies are scored once (cached by their
JSON form). It does not choose policies and does not train.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from edgecompress.analysis import ModelAnalysis, analyze_model
from edgecompress.compressors import Policy, compress
from edgecompress.data import batches
from edgecompress.latency_models import estimate_latency
from edgecompress.training import evaluate

__all__ = ["Evaluation", "Objective", "recalibrate_batchnorm"]


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
    budget_ms: float | None
    seconds: float
    policy: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    @property
    def feasible(self) -> bool:
        return self.budget_ms is None or self.latency_ms <= self.budget_ms

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "feasible": self.feasible}


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, inputs: Sequence[torch.Tensor]) -> None:
    """Re-estimate BatchNorm running statistics of a compressed model (cumulative average over ``inputs``)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or not inputs:
        return
    momenta = {m: m.momentum for m in norms}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    model.train()
    for x in inputs:
        model(x)
    for m, momentum in momenta.items():
        m.momentum = momentum
    model.eval()


class Objective:
    def __init__(
        self,
        model: nn.Module,
        val_data: Dataset,
        device: str,
        *,
        input_shape: tuple[int, ...],
        budget_ms: float | None = None,
        train_data: Dataset | None = None,
        bn_batches: int = 0,
        calibration_batches: int = 4,
        batch_size: int = 256,
        round_to: int = 8,
        analysis: ModelAnalysis | None = None,
        seed: int = 0,
    ) -> None:
        self.model = model.eval()
        self.val_data = val_data
        self.device = device
        self.input_shape = tuple(input_shape)
        self.budget_ms = budget_ms
        self.round_to = round_to
        self.batch_size = batch_size
        self.analysis = analysis or analyze_model(model, self.input_shape)
        source = train_data if train_data is not None else val_data
        n = max(bn_batches, calibration_batches)
        drawn = [x for x, _ in batches(source, 64, shuffle=True, seed=seed)][:n] if n else []
        self.bn_inputs = drawn[:bn_batches]
        self.calibration = drawn[:calibration_batches]
        self._cache: dict[str, Evaluation] = {}
        self.hits = 0
        self.timings: dict[str, float] = dict.fromkeys(("compress", "bn_recalibration", "evaluate", "latency"), 0.0)
        """Cumulative wall seconds per scoring phase (where a search's time goes)."""

    def base_latency_ms(self) -> float:
        return estimate_latency(self.model, self.input_shape, self.device).total_ms

    def __call__(self, policy: Policy) -> Evaluation:
        key = json.dumps(policy.to_dict()["layers"], sort_keys=True)
        if key in self._cache:
            self.hits += 1
            return self._cache[key]
        start = time.perf_counter()
        needs_calibration = any(lp.abits == 8 for lp in policy.layers.values())
        compressed, report = compress(
            self.model, policy, self.calibration if needs_calibration else None,
            analysis=self.analysis, round_to=self.round_to,
        )  # fmt: skip
        t1 = time.perf_counter()
        if self.bn_inputs:
            recalibrate_batchnorm(compressed, self.bn_inputs)
        t2 = time.perf_counter()
        accuracy = evaluate(compressed, self.val_data, batch_size=self.batch_size)["top1"]
        t3 = time.perf_counter()
        latency = estimate_latency(compressed, self.input_shape, self.device)
        t4 = time.perf_counter()
        for phase, seconds in zip(self.timings, (t1 - start, t2 - t1, t3 - t2, t4 - t3), strict=True):
            self.timings[phase] += seconds
        totals = report.totals
        result = Evaluation(
            accuracy=accuracy, latency_ms=latency.total_ms, latency_source=latency.source,
            stored_bytes=totals["stored_bytes_after"], huffman_bytes=totals["huffman_bytes_after"],
            params=totals["params_after"], macs=totals["macs_after"], budget_ms=self.budget_ms,
            seconds=time.perf_counter() - start, policy=policy.to_dict()["layers"],
            skipped=[f"{s.layer} ({s.technique}): {s.reason}" for s in report.skipped],
        )  # fmt: skip
        self._cache[key] = result
        return result
