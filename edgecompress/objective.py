"""The one objective every search driver scores policies with.

``Objective(policy)`` compresses the base model with the policy, optionally
recalibrates BatchNorm statistics on a few training batches, optionally
distils it from the base model for ``finetune_batches`` steps (the same seeded
batches for every policy), measures top-1 accuracy on the validation subset,
predicts latency on the target device (or, with ``latency="measured"`` and
the ``host`` device, measures it here: see :meth:`Objective.latency`) and
reads the stored size from the compression report. The RL environment, Optuna and Ray Tune all call it, so a
policy found by any of them scores, and later replays, the same way. Identical
policies are scored once (cached by their JSON form). It does not choose
policies.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from edgecompress.analysis import ModelAnalysis, analyze_model
from edgecompress.compressors import Policy, compress
from edgecompress.compressors.distill import distill
from edgecompress.data import batches
from edgecompress.latency_models import LatencyReport, estimate_latency, load_device, priced_precisions
from edgecompress.training import evaluate

__all__ = ["Evaluation", "Objective", "activation_precisions", "is_host", "policy_latency", "recalibrate_batchnorm"]

PRECISION_OF_ABITS = {8: "int8", 16: "fp16", 32: "fp32"}
LATENCY_MODES = ("table", "measured")


def is_host(device: str) -> bool:
    """A table profiled on this machine: ``host`` (2 threads) or ``host-Nthread``."""
    return device == "host" or (device.startswith("host-") and device.endswith("thread"))


def activation_precisions(policy: Policy) -> dict[str, str]:
    """Layer -> the precision its ``abits`` deploys at (int8, fp16), for the layers not at fp32."""
    return {name: PRECISION_OF_ABITS[lp.abits] for name, lp in policy.layers.items() if lp.abits < 32}


def policy_latency(
    compressed: nn.Module,
    policy: Policy,
    input_shape: Sequence[int],
    device: str,
    priced: set[str] | None = None,
) -> tuple[LatencyReport, str]:
    """Predicted latency of a compressed model, each layer at the precision its ``abits`` asks where the
    device prices it (``priced``, default ``priced_precisions(device)``); the returned source names the
    layers priced at fp32 instead."""
    priced = priced_precisions(device) if priced is None else priced
    asked = activation_precisions(policy)
    usable = {layer: p for layer, p in asked.items() if p in priced}
    report = estimate_latency(compressed, tuple(input_shape), device, precision=usable or "fp32")
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


def _policy_key(policy: Policy) -> str:
    """Cache key of a policy: its layers, canonically serialised."""
    return json.dumps(policy.to_dict()["layers"], sort_keys=True)


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
        finetune_batches: int = 0,
        calibration_batches: int = 4,
        batch_size: int = 256,
        round_to: int = 8,
        analysis: ModelAnalysis | None = None,
        seed: int = 0,
        latency: str = "table",
        latency_rounds: int = 3,
        fill_budget: bool = False,
    ) -> None:
        if latency not in LATENCY_MODES:
            raise ValueError(f"latency {latency!r} is not one of: {', '.join(LATENCY_MODES)}")
        if latency == "measured" and not is_host(device):
            raise ValueError(
                f"latency 'measured' times each policy on this machine, so the device must be 'host' or "
                f"'host-Nthread' (got {device!r}); for another device use latency 'table' (its table or device model)"
            )
        if fill_budget and latency != "table":
            raise ValueError(
                f"fill_budget widens policies by their predicted latency; it needs latency 'table' (got {latency!r})"
            )
        if latency_rounds < 1:
            raise ValueError(f"latency_rounds must be >= 1, got {latency_rounds}")
        self.latency_mode = latency
        self.fill_budget = fill_budget
        self._predicted: dict[str, float] = {}
        self.latency_rounds = latency_rounds
        self._base_onnx: bytes | None = None
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
        if finetune_batches and train_data is None:
            raise ValueError("finetune_batches needs train_data (the distillation set)")
        self.train_data = train_data
        self.finetune_batches = finetune_batches
        self.seed = seed
        self.calibration = drawn[:calibration_batches]
        self.priced = priced_precisions(device)
        """Precisions the device prices per layer; layers asking others are priced at fp32, and said so."""
        self._cache: dict[str, Evaluation] = {}
        self.hits = 0
        phases = ("compress", "bn_recalibration", "finetune", "evaluate", "latency")
        self.timings: dict[str, float] = dict.fromkeys(phases, 0.0)
        """Cumulative wall seconds per scoring phase (where a search's time goes)."""

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
        import statistics

        from edgecompress.latency_models.host import export_onnx_bytes
        from edgecompress.latency_models.profiler import time_onnx_interleaved

        if self._base_onnx is None:  # once per objective: the base model's export, prediction and table threads
            self._base_onnx = export_onnx_bytes(self.model, self.input_shape)
            self._base_ms = self.base_latency_ms()
            self._threads = int(getattr(load_device(self.device), "meta", {}).get("threads", 2))
        threads = self._threads
        x = torch.zeros(self.input_shape).numpy()
        models: dict[str, bytes | str] = {
            "base": self._base_onnx,
            "policy": export_onnx_bytes(compressed, self.input_shape),
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
            compressed, _ = compress(self.model, policy, None, analysis=self.analysis, round_to=self.round_to)
            report, _ = policy_latency(compressed, policy, self.input_shape, self.device, self.priced)
            self._predicted[key] = report.total_ms
        return self._predicted[key]

    @cached_property
    def channel_block(self) -> int:
        """The device table's SIMD channel block (1 for device models, which have none)."""
        device = load_device(self.device) if isinstance(self.device, str) else self.device
        return int(getattr(device, "channel_block", 1))

    def fill(self, policy: Policy, budget_ms: float | None = None) -> tuple[Policy, int]:
        """Widen a policy's pruned channel groups into the budget it leaves unused; then bring back removed blocks.

        Widening (:meth:`_widen`) comes first. When no widening fits and budget
        is left (every kept group already at full width, as when a search
        learns to ask every block removed: the DDPG run on MobileNetV2-0.5
        of 2026-12-02 ended 12% under budget that way), the removed block that
        costs the least predicted latency comes back whole (its own channels at
        full width; a layer coupled to the kept model takes its group's keep),
        and widening resumes. Whole, not narrow: a block brought back at
        ``round_to`` channels and widened from there scored lower than the
        block left out in every one of the four episodes of an 11-episode
        MobileNetV2-0.5 check where it happened (validation accuracy after
        40 distillation steps, e.g. 0.740 against 0.776): a thin block
        perturbs the residual stream more than an identity does. Returns the
        filled policy and the number of steps, each widening and each block
        brought back one step (0: over budget already, or nothing fits).
        """
        budget = self.budget_ms if budget_ms is None else budget_ms
        if budget is None:
            raise ValueError("fill needs a latency budget (budget_ms)")
        total = 0
        while True:
            policy, steps = self._widen(policy, budget)
            total += steps
            restored = self._restore(policy, budget)
            if restored is None:
                return policy, total
            policy, total = restored, total + 1

    def _restore(self, policy: Policy, budget: float) -> Policy | None:
        """The policy with the cheapest removed block back whole, if that fits the budget."""
        from edgecompress.compressors import LayerPolicy
        from edgecompress.compressors.depth import removed_blocks

        blocks = removed_blocks(policy, self.analysis)
        if not blocks or self.predict_ms(policy) > budget:
            return None
        gone = {name for members in blocks.values() for name in members}
        # A restored layer coupled to a kept one (a projection into the residual stream) takes that keep.
        group_keep = {s.group: policy.get(s.name).keep for s in self.analysis.layers if s.name not in gone}
        best: tuple[float, Policy] | None = None
        for members in blocks.values():
            layers = dict(policy.layers)
            for name in members:
                spec = self.analysis.layer(name)
                keep = group_keep.get(spec.group, 1.0) if spec.prunable else 1.0
                layers[name] = LayerPolicy(keep=keep)
            candidate = Policy(layers, base=policy.base, meta=policy.meta)
            ms = self.predict_ms(candidate)
            if ms <= budget and (best is None or ms < best[0]):
                best = (ms, candidate)
        return best[1] if best else None

    def _widen(self, policy: Policy, budget: float) -> tuple[Policy, int]:
        """Widen a policy's pruned channel groups into the budget it leaves unused.

        Greedy: each step widens the group whose widening costs the least
        predicted latency per added channel, while the policy stays within the
        budget; a step adds ``round_to`` channels or fills the group up to the
        table's next SIMD channel block (the first channels of a block cost the
        block, the rest come free, so one-step-at-a-time would never start it),
        and a widening the runtime gives for free goes first. Layers of removed
        blocks stay removed. Returns the widened policy and the number of steps
        (0: over budget already, nothing pruned, or no step fits).

        Lazy greedy: a candidate's cost is re-priced only when it reaches the
        head of the queue (a widening rarely gets cheaper when other groups
        grow), so a step costs a few predictions instead of one per group;
        MobileNetV2-0.5's 25 groups took 5,144 predictions (530 s) per fill
        when every step re-priced every group, 477 this way. When the queue runs dry every
        group is re-priced once more, so the result is maximal: no further
        step fits the budget.
        """
        import heapq

        from edgecompress.compressors.depth import removed_layers
        from edgecompress.compressors.structured import kept_channels

        layers = dict(policy.layers)
        gone = removed_layers(policy, self.analysis)
        members: dict[int, list[str]] = {}
        width: dict[int, int] = {}
        for spec in self.analysis.layers:
            lp = layers.get(spec.name)
            if spec.prunable and lp is not None and lp.keep < 1.0 and spec.name not in gone:
                members.setdefault(spec.group, []).append(spec.name)
                width[spec.group] = spec.out_channels

        def with_keeps(keeps: dict[int, float]) -> Policy:
            new = dict(layers)
            for g, keep in keeps.items():
                for name in members[g]:
                    new[name] = replace(new[name], keep=keep)
            return Policy(new, base=policy.base, meta=policy.meta)

        keeps = {g: layers[names[0]].keep for g, names in members.items()}
        order = {g: i for i, g in enumerate(keeps)}
        block = self.channel_block
        current = self.predict_ms(policy)
        steps = state = 0
        # Queue entries: (ms per added channel, group order, new keep, the keep it widens, state priced at).
        queue: list[tuple[float, int, float, float, int]] = []

        def price(g: int, new_keep: float) -> None:
            """Queue widening g to new_keep, priced against the current state, if it stays within the budget."""
            ms = self.predict_ms(with_keeps({**keeps, g: new_keep}))
            if ms <= budget:
                now = kept_channels(width[g], keeps[g], self.round_to)
                added = kept_channels(width[g], new_keep, self.round_to) - now
                heapq.heappush(queue, (max(0.0, ms - current) / added, order[g], new_keep, keeps[g], state))

        def offer(g: int) -> None:
            """Price g's possible widenings: round_to more channels, and the rest of the SIMD block."""
            c = width[g]
            n = kept_channels(c, keeps[g], self.round_to)
            # Both rounded up to round_to (a 1-channel block on a table without one would otherwise ask n + 1
            # channels: the same model as n + round_to under another keep).
            sizes = {n + self.round_to, -(-(n + 1) // block) * block}
            for wider in sorted({min(c, -(-w // self.round_to) * self.round_to) for w in sizes} - {n}):
                new_keep = 1.0 if wider >= c else round(wider / c, 4)
                if kept_channels(c, new_keep, self.round_to) > n:
                    price(g, new_keep)

        if current <= budget:
            for g in keeps:
                offer(g)
        groups = list(keeps)
        while queue:
            _, i, new_keep, old_keep, priced = heapq.heappop(queue)
            g = groups[i]
            if keeps[g] != old_keep:
                continue  # g has grown since: its new widenings are queued
            if priced != state:  # stale: re-price against the current state, queue again
                price(g, new_keep)
            else:  # fresh and no dearer than any other candidate's last price: take it
                current = self.predict_ms(with_keeps({**keeps, g: new_keep}))
                keeps[g] = new_keep
                steps += 1
                state += 1
                offer(g)
            if not queue:  # maximal: every group re-priced at the final state
                for other in groups:
                    offer(other)
        return (with_keeps(keeps) if steps else policy), steps

    def score(self, policy: Policy) -> Evaluation:
        """``self(policy)``, after :meth:`fill` when the objective was made with ``fill_budget``."""
        if self.fill_budget and self.budget_ms is not None:
            policy, _ = self.fill(policy)
        return self(policy)

    def __call__(self, policy: Policy) -> Evaluation:
        key = _policy_key(policy)
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
        if self.finetune_batches and self.train_data is not None:
            # The same batches for every policy (seeded), so the score stays a function of the policy.
            per_epoch = -(-len(self.train_data) // 64)  # type: ignore[arg-type]
            epochs = -(-self.finetune_batches // per_epoch)
            distill(compressed, self.model, self.train_data, epochs=epochs, batch_size=64, lr=0.01,
                    max_batches=-(-self.finetune_batches // epochs), seed=self.seed, progress=False)  # fmt: skip
            compressed.eval()
            self.model.eval()
        t3 = time.perf_counter()
        accuracy = evaluate(compressed, self.val_data, batch_size=self.batch_size)["top1"]
        t4 = time.perf_counter()
        latency, latency_source = self.latency(compressed, policy)
        t5 = time.perf_counter()
        for phase, seconds in zip(self.timings, (t1 - start, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            self.timings[phase] += seconds
        totals = report.totals
        result = Evaluation(
            accuracy=accuracy, latency_ms=latency.total_ms, latency_source=latency_source,
            stored_bytes=totals["stored_bytes_after"], huffman_bytes=totals["huffman_bytes_after"],
            params=totals["params_after"], macs=totals["macs_after"], budget_ms=self.budget_ms,
            seconds=time.perf_counter() - start, policy=policy.to_dict()["layers"],
            skipped=[f"{s.layer} ({s.technique}): {s.reason}" for s in report.skipped],
        )  # fmt: skip
        self._cache[key] = result
        return result
