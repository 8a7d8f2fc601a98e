"""The latency budget, in one place: the limit, the per-step limiter, the end-of-episode repair, the fill.

Every driver uses the same rules (see ``docs/search.md``):

* :class:`Budget` is the limit in ms (an absolute ``budget_ms``, or
  ``budget_ratio`` times the base model's predicted latency) and refuses one
  below the floor: the latency of the space's strongest policy.
* :class:`Limiter` is AMC's hard constraint for step-by-step agents: before
  a layer's ``keep`` is applied it is lowered until, even if every later
  layer took ``keep_min``, a surrogate latency stays within the budget. The
  surrogate is anchored per layer at two true predictions, keep 1 and
  ``keep_min`` (rounded as ``compress`` rounds), and affine in the layer's
  channel scale in between; the operators outside the layers likewise, in
  the mean keep ratio. Per-operator overhead makes latency far from
  proportional to channels, so a MACs-style scaling would misjudge it.
* :meth:`Budget.repair` brings an over-budget policy within budget: keeps
  scaled down (x0.9 per round, floor ``keep_min``), then at the floor
  removable blocks removed one at a time (the one leaving the least
  predicted latency first), then the strongest policy.
* :func:`fill` widens a policy into the budget it leaves unused and brings
  removed blocks back (``search.fill_budget``).

Prices come from a :class:`Pricer` (the objective's ``predict_ms``:
compress, then the device's table or model), never from scoring.

An energy budget (``budget_energy_mj``, on a device with an energy model)
is a second limit on the same policies: a policy is within budget when it
meets both. The per-step limiter keeps to latency; the repair, the block
removal and the fill check energy too (by the objective's ``predict_mj``).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from edgecompress._inputs import InputSpec
from edgecompress.analysis import ModelAnalysis, blocks_of
from edgecompress.compressors import LayerPolicy, Policy, compress
from edgecompress.compressors.depth import removed_blocks, removed_layers
from edgecompress.compressors.structured import kept_channels
from edgecompress.errors import ConfigError
from edgecompress.latency_models import estimate_latency
from edgecompress.search.space import PolicySpace

__all__ = ["Budget", "Limiter", "Pricer", "fill"]


class Pricer(Protocol):
    """What the budget needs from an objective: predicted latency of a policy, and the base model."""

    analysis: ModelAnalysis
    model: Any
    device: Any
    input_shape: InputSpec

    @property
    def channel_block(self) -> int: ...

    def predict_ms(self, policy: Policy) -> float: ...

    def predict_mj(self, policy: Policy) -> float | None:
        """Predicted energy per inference (None where the device has no energy model)."""
        ...

    def base_latency_ms(self) -> float: ...


@dataclass
class Budget:
    """A latency limit in ms on one device, checked against the floor the space can reach; optionally an energy
    limit in mJ per inference as well (``energy_limit_mj``, checked against ``energy_floor_mj``)."""

    limit_ms: float
    base_ms: float
    floor_ms: float
    energy_limit_mj: float | None = None
    energy_base_mj: float | None = None
    energy_floor_mj: float | None = None

    @classmethod
    def create(
        cls,
        base_ms: float,
        floor_ms: float,
        *,
        device: str,
        budget_ms: float | None = None,
        budget_ratio: float | None = None,
    ) -> Budget:
        """``budget_ms``, else ``budget_ratio`` x ``base_ms``; a ConfigError when below ``floor_ms``."""
        if budget_ms is None:
            if budget_ratio is None or not 0 < budget_ratio <= 1:
                raise ConfigError(f"give budget_ms, or budget_ratio in (0, 1]; got budget_ratio={budget_ratio!r}")
            budget_ms = budget_ratio * base_ms
        elif budget_ms <= 0:
            raise ConfigError(f"budget_ms must be > 0, got {budget_ms!r}")
        if floor_ms > budget_ms:
            raise ConfigError(
                f"budget {budget_ms:.4f} ms cannot be met: the strongest compression allowed reaches "
                f"{floor_ms:.4f} ms on {device} (base {base_ms:.4f} ms); raise the budget to at "
                f"least {floor_ms:.4f} ms (budget_ratio {floor_ms / base_ms:.3f}) or allow more techniques"
            )
        return cls(float(budget_ms), float(base_ms), float(floor_ms))

    def with_energy(
        self, limit_mj: float | None, base_mj: float | None, floor_mj: float | None, *, device: str
    ) -> Budget:
        """This budget with an energy limit (None: none); a ConfigError when the device has no energy model
        (``base_mj`` None) or the limit is below the floor (the strongest policy's energy)."""
        if limit_mj is None:
            return self
        if limit_mj <= 0:
            raise ConfigError(f"budget_energy_mj must be > 0, got {limit_mj!r}")
        if base_mj is None or floor_mj is None:
            raise ConfigError(
                f"an energy budget ({limit_mj} mJ) needs a device with an energy model, and {device!r} has none; "
                "energy per inference is modelled for jetson-tx2 (`edgecompress devices` lists each model and "
                "its error); drop budget_energy_mj / --energy-budget-mj or search for jetson-tx2"
            )
        if floor_mj > limit_mj:
            raise ConfigError(
                f"energy budget {limit_mj:.4f} mJ cannot be met: the strongest compression allowed reaches "
                f"{floor_mj:.4f} mJ on {device} (base {base_mj:.4f} mJ); raise the energy budget to at least "
                f"{floor_mj:.4f} mJ or allow more techniques"
            )
        return replace(self, energy_limit_mj=float(limit_mj), energy_base_mj=float(base_mj),
                       energy_floor_mj=float(floor_mj))  # fmt: skip

    def within(self, ms: float, mj: float | None = None) -> bool:
        """Whether a latency (and, under an energy budget, an energy) meets the budget; an energy budget with
        no energy figure to check is not met."""
        if ms > self.limit_ms:
            return False
        return self.energy_limit_mj is None or (mj is not None and mj <= self.energy_limit_mj)

    def excess(self, ms: float, mj: float | None = None) -> float:
        """How far over budget, as the largest fraction over a limit (<= 0: within)."""
        over = ms / self.limit_ms - 1
        if self.energy_limit_mj is not None:
            over = max(over, (mj if mj is not None else float("inf")) / self.energy_limit_mj - 1)
        return over

    def drop_until_within(
        self,
        policy: Policy,
        space: PolicySpace,
        predict: Callable[[Policy], float],
        predict_mj: Callable[[Policy], float | None] | None = None,
    ) -> Policy:
        """Keeps at their floor and still over budget: remove blocks, the one whose removal leaves the least
        predicted excess (latency, and energy under an energy budget) first, until the prediction fits (or no
        block is left). Removing one block spares the accuracy the strongest policy (every block removed)
        would cost."""
        blocks = blocks_of(space.layers)

        def excess(p: Policy) -> float:
            return self.excess(predict(p), predict_mj(p) if predict_mj is not None else None)

        while excess(policy) > 0:
            options = [
                policy.replace(layers={**policy.layers, **dict.fromkeys(names, LayerPolicy(drop=True))})
                for names in blocks.values()
                if not policy.get(names[0]).drop
            ]
            if not options:
                break
            policy = min(options, key=excess)
        return policy

    def repair(
        self,
        policy: Policy,
        space: PolicySpace,
        latency_of: Callable[[Policy], float],
        *,
        predict: Callable[[Policy], float] | None = None,
        asked: Policy | None = None,
        scale: float = 1.0,
        last_resort: bool = True,
        energy_of: Callable[[Policy], float | None] | None = None,
        predict_mj: Callable[[Policy], float | None] | None = None,
    ) -> tuple[Policy, float, bool]:
        """Bring ``policy`` within budget as judged by ``latency_of`` (and ``energy_of`` under an energy budget).

        While over: keeps of ``asked`` (default: ``policy``) scaled by ``scale`` x0.9 per round (floor
        keep_min); at the floor, with ``drop``, blocks removed by ``predict`` / ``predict_mj`` (default
        ``latency_of`` / ``energy_of``), then, with ``last_resort``, the strongest policy. Returns (policy, the
        scale reached, whether it changed).
        """
        asked = policy if asked is None else asked
        predict = latency_of if predict is None else predict
        predict_mj = energy_of if predict_mj is None else predict_mj
        if self.energy_limit_mj is not None and energy_of is None:
            raise ValueError("this budget has an energy limit: repair() needs energy_of")

        def over(p: Policy) -> bool:
            return not self.within(latency_of(p), energy_of(p) if energy_of is not None else None)

        repaired = False
        while over(policy) and scale > 1e-3:
            repaired = True
            if space.at_floor(policy):
                if "drop" in space.techniques:
                    policy = self.drop_until_within(policy, space, predict, predict_mj)
                if last_resort and over(policy):
                    policy = space.strongest()
                break
            scale *= 0.9
            policy = space.scaled(asked, scale)
        return policy, scale, repaired


def fill(pricer: Pricer, policy: Policy, budget_ms: float, energy_mj: float | None = None) -> tuple[Policy, int]:
    """Widen a policy's pruned channel groups into the budget it leaves unused; then bring back removed blocks.

    Widening (:func:`_widen`) comes first. When no widening fits and budget
    is left (every kept group already at full width, as when a search
    learns to ask every block removed), the removed block that
    costs the least predicted latency comes back whole (its own channels at
    full width; a layer coupled to the kept model takes its group's keep),
    and widening resumes. Whole, not narrow: a block brought back at
    ``round_to`` channels and widened from there scored lower than the
    block left out (docs/design-decisions.md): a thin block perturbs the
    residual stream more than an identity does. Returns the
    filled policy and the number of steps, each widening and each block
    brought back one step (0: over budget already, or nothing fits).
    With ``energy_mj``, a step must also keep the predicted energy within it.
    """
    budget = budget_ms
    total = 0
    while True:
        policy, steps = _widen(pricer, policy, budget, energy_mj)
        total += steps
        restored = _restore(pricer, policy, budget, energy_mj)
        if restored is None:
            return policy, total
        policy, total = restored, total + 1


def _energy_fits(pricer: Pricer, policy: Policy, energy_mj: float | None) -> bool:
    """Whether ``policy``'s predicted energy meets ``energy_mj`` (always, without an energy limit)."""
    if energy_mj is None:
        return True
    mj = pricer.predict_mj(policy)
    return mj is not None and mj <= energy_mj


def _restore(pricer: Pricer, policy: Policy, budget: float, energy_mj: float | None = None) -> Policy | None:
    """The policy with the cheapest removed block back whole, if that fits the budget."""
    blocks = removed_blocks(policy, pricer.analysis)
    if not blocks or pricer.predict_ms(policy) > budget or not _energy_fits(pricer, policy, energy_mj):
        return None
    gone = {name for members in blocks.values() for name in members}
    # A restored layer coupled to a kept one (a projection into the residual stream) takes that keep.
    group_keep = {s.group: policy.get(s.name).keep for s in pricer.analysis.layers if s.name not in gone}
    best: tuple[float, Policy] | None = None
    for members in blocks.values():
        layers = dict(policy.layers)
        for name in members:
            spec = pricer.analysis.layer(name)
            keep = group_keep.get(spec.group, 1.0) if spec.prunable else 1.0
            layers[name] = LayerPolicy(keep=keep)
        candidate = policy.replace(layers=layers)
        ms = pricer.predict_ms(candidate)
        if ms <= budget and (best is None or ms < best[0]) and _energy_fits(pricer, candidate, energy_mj):
            best = (ms, candidate)
    return best[1] if best else None


def _widen(pricer: Pricer, policy: Policy, budget: float, energy_mj: float | None = None) -> tuple[Policy, int]:
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
    grow), so a step costs a few predictions instead of one per group.
    When the queue runs dry every
    group is re-priced once more, so the result is maximal: no further
    step fits the budget.
    """
    layers = dict(policy.layers)
    gone = removed_layers(policy, pricer.analysis)
    members: dict[int, list[str]] = {}
    width: dict[int, int] = {}
    for spec in pricer.analysis.layers:
        lp = layers.get(spec.name)
        if spec.prunable and lp is not None and lp.keep < 1.0 and spec.name not in gone:
            members.setdefault(spec.group, []).append(spec.name)
            width[spec.group] = spec.out_channels

    def with_keeps(keeps: dict[int, float]) -> Policy:
        new = dict(layers)
        for g, keep in keeps.items():
            for name in members[g]:
                new[name] = replace(new[name], keep=keep)
        return policy.replace(layers=new)

    keeps = {g: layers[names[0]].keep for g, names in members.items()}
    order = {g: i for i, g in enumerate(keeps)}
    block = pricer.channel_block
    current = pricer.predict_ms(policy)
    steps = state = 0
    # Queue entries: (ms per added channel, group order, new keep, the keep it widens, state priced at).
    queue: list[tuple[float, int, float, float, int]] = []

    def price(g: int, new_keep: float) -> None:
        """Queue widening g to new_keep, priced against the current state, if it stays within the budget."""
        candidate = with_keeps({**keeps, g: new_keep})
        ms = pricer.predict_ms(candidate)
        if ms <= budget and _energy_fits(pricer, candidate, energy_mj):
            now = kept_channels(width[g], keeps[g], policy.round_to)
            added = kept_channels(width[g], new_keep, policy.round_to) - now
            heapq.heappush(queue, (max(0.0, ms - current) / added, order[g], new_keep, keeps[g], state))

    def offer(g: int) -> None:
        """Price g's possible widenings: round_to more channels, and the rest of the SIMD block."""
        c = width[g]
        n = kept_channels(c, keeps[g], policy.round_to)
        # Both rounded up to round_to (a 1-channel block on a table without one would otherwise ask n + 1
        # channels: the same model as n + round_to under another keep).
        sizes = {n + policy.round_to, -(-(n + 1) // block) * block}
        for wider in sorted({min(c, -(-w // policy.round_to) * policy.round_to) for w in sizes} - {n}):
            new_keep = 1.0 if wider >= c else round(wider / c, 4)
            if kept_channels(c, new_keep, policy.round_to) > n:
                price(g, new_keep)

    if current <= budget and _energy_fits(pricer, policy, energy_mj):
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
            current = pricer.predict_ms(with_keeps({**keeps, g: new_keep}))
            keeps[g] = new_keep
            steps += 1
            state += 1
            offer(g)
        if not queue:  # maximal: every group re-priced at the final state
            for other in groups:
                offer(other)
    return (with_keeps(keeps) if steps else policy), steps


class Limiter:
    """AMC's per-step keep limiter for one objective and space (see the module docstring)."""

    def __init__(self, pricer: Pricer, space: PolicySpace, budget: Budget) -> None:
        self.space = space
        self.budget = budget
        self.layers = list(space.layers)
        self.keep_min = space.keep_min if "keep" in space.techniques else 1.0
        self.round_to = space.round_to
        rows = {r.layer: r.ms for r in estimate_latency(pricer.model, pricer.input_shape, pricer.device).rows}
        self.layer_ms = np.array([rows.get(s.name, 0.0) for s in self.layers])
        self.fixed_ms = budget.base_ms - float(self.layer_ms.sum())
        self.layer_ms_min = self.layer_ms.copy()
        self.fixed_min_ms = self.fixed_ms
        self._scale_min = np.ones(len(self.layers))
        if "keep" in space.techniques:
            self._scale_min = self.scales({}, 0, self.keep_min, self.keep_min)[0]
            keep_only = space.policy({s.name: LayerPolicy(keep=self.keep_min) for s in self.layers if s.prunable})
            small, _ = compress(pricer.model, keep_only, analysis=pricer.analysis)
            at_min = estimate_latency(small, pricer.input_shape, pricer.device)
            rows_min = {r.layer: r.ms for r in at_min.rows}
            self.layer_ms_min = np.array([rows_min.get(s.name, 0.0) for s in self.layers])
            self.fixed_min_ms = at_min.total_ms - float(self.layer_ms_min.sum())

    def scales(
        self, group_keep: dict[int, float], upto: int, keep_here: float, rest_keep: float
    ) -> tuple[np.ndarray, float]:
        """Per layer channel scale (in x out keep, out for depthwise, rounded as compress() rounds) and the
        mean keep ratio of the prunable layers: layers before ``upto`` at their groups' keeps, this one at
        keep_here, the rest at rest_keep."""
        scales = np.ones(len(self.layers))
        keeps = []
        prev_keep = 1.0
        for i, spec in enumerate(self.layers):
            if i < upto:
                out_keep = group_keep.get(spec.group, 1.0)
            elif i == upto:
                out_keep = keep_here if spec.prunable else 1.0
            else:
                out_keep = group_keep.get(spec.group, rest_keep) if spec.prunable else 1.0
            if spec.prunable:
                keeps.append(out_keep)
            if out_keep < 1.0 and spec.out_channels:
                out_keep = kept_channels(spec.out_channels, out_keep, self.round_to) / spec.out_channels
            in_keep = 1.0 if i == 0 else prev_keep
            scales[i] = out_keep if spec.kind == "depthwise" else in_keep * out_keep
            prev_keep = out_keep
        return scales, float(np.mean(keeps)) if keeps else 1.0

    def estimate(
        self, group_keep: dict[int, float], dropped: set[str], upto: int, keep_here: float, rest_keep: float
    ) -> float:
        """Surrogate latency: affine per layer between its keep_min and keep 1 values; removed blocks count 0."""
        scales, mean_keep = self.scales(group_keep, upto, keep_here, rest_keep)
        span = np.where(self._scale_min < 1.0, 1.0 - self._scale_min, 1.0)
        t = np.clip((scales - self._scale_min) / span, 0.0, 1.0)
        t = np.where(self._scale_min < 1.0, t, 1.0)
        per_layer = self.layer_ms_min + (self.layer_ms - self.layer_ms_min) * t
        gone = [i for i, spec in enumerate(self.layers) if spec.block in dropped]
        per_layer[gone] = 0.0
        layers = float(np.sum(per_layer))
        km = self.keep_min
        share = float(np.clip((mean_keep - km) / (1 - km), 0.0, 1.0)) if km < 1 else 1
        return layers + self.fixed_min_ms + (self.fixed_ms - self.fixed_min_ms) * share

    def limit(self, keep: float, upto: int, group_keep: dict[int, float], dropped: set[str]) -> float:
        """``keep`` for layer ``upto``, lowered (steps of 0.02, floor keep_min) until the surrogate fits."""
        while keep > self.keep_min and self.estimate(group_keep, dropped, upto, keep, self.keep_min) > (
            self.budget.limit_ms
        ):
            keep = max(self.keep_min, round(keep - 0.02, 4))
        return keep
