"""``CompressionEnv``: AMC's layer-by-layer compression search as a Gymnasium environment (a thin adapter)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch.nn as nn

from edgecompress._inputs import shapes
from edgecompress.artifacts.checkpoint import load_checkpoint
from edgecompress.compressors import LayerPolicy, Policy
from edgecompress.config import DataConfig, SearchConfig
from edgecompress.data import load_dataset
from edgecompress.errors import ConfigError
from edgecompress.models import create_model
from edgecompress.search.budget import Budget, Limiter
from edgecompress.search.objective import Objective
from edgecompress.search.setup import SearchSetup, budget_for, energy_fields
from edgecompress.search.space import DEFAULT_ROUND_TO, PolicySpace

__all__ = ["REWARDS", "CompressionEnv"]

# The config owns the defaults a user also meets in YAML; the environment reads them from there.
_SEARCH = SearchConfig.model_fields
_DATA = DataConfig.model_fields

REWARDS = ("acc", "acc_log_latency")
KIND_CODE = {"conv": 0.0, "depthwise": 0.5, "linear": 1.0}
N_FEATURES = 10


class CompressionEnv(gym.Env):  # type: ignore[type-arg]
    """One step per compressible layer, AMC-style, against a hard latency budget.

    Registered as ``edgecompress/LayerCompression-v1`` (importing
    ``edgecompress.envs`` registers it). The environment only adapts the
    search core to Gymnasium: the policy space
    (:class:`edgecompress.search.space.PolicySpace`), the budget, limiter,
    repair and fill (:mod:`edgecompress.search.budget`) and the scoring
    (:class:`edgecompress.search.objective.Objective`) are the ones every
    other driver uses.

    **Episode.** One step per compressible layer, in forward order. The
    agent picks that layer's compression; after the last layer the whole
    policy is repaired if over budget, filled if asked, and scored.

    **Action space.** ``Box(-1, 1, (k,))``, one dimension per technique in
    ``techniques``, decoded by the technique's knob (:meth:`PolicySpace.decode`):
    ``keep`` linear onto [keep_min, 1], ``rank`` onto [rank_min, 1],
    ``sparsity`` onto [0, sparsity_max]; ``wbits`` (2, 4, 6, 8, 16, 32),
    ``clusters`` (0 = off, 4 ... 256) and ``abits`` (8, 16, 32) in equal
    bins; ``drop`` removes the residual block when > 0. Knobs of group scope
    (``keep``) are decided at the group's first layer and shared by its other
    layers; knobs of block scope (``drop``) at the block's first layer. Layers
    whose outputs are the network's outputs ignore ``keep``; layers outside
    removable blocks ignore ``drop``.

    **Observation.** ``Box(0, 1, (10 + k,))``: AMC's layer embedding (layer
    index, kind: conv 0, depthwise 0.5, linear 1; input and output channels,
    stride, kernel, parameters, each over the model's largest; the layer's
    share of the base latency, the latency already saved, the latency still
    to come), then the previous action rescaled to [0, 1].

    **Budget.** A hard constraint: each ``keep`` is limited before it is
    applied so that, even if every later layer took ``keep_min``, the
    surrogate latency stays within budget (:class:`~edgecompress.search.budget.Limiter`;
    removed blocks count zero). After the last layer, with ``fill_budget``,
    the policy is repaired by prediction and widened into the unused budget
    (:func:`~edgecompress.search.budget.fill`; ``info["filled"]`` counts the
    steps); it is then scored and, if its latency is still over budget,
    repaired by :meth:`Budget.repair` (keeps scaled down, then blocks
    removed, then the strongest policy; ``info["repaired"]``). A budget below
    the strongest policy's latency raises ``ConfigError`` (a ``ValueError``)
    at construction, stating that latency.

    **Reward** (at the last step; 0 before): ``"acc"`` top-1 validation
    accuracy (AMC resource-constrained) or ``"acc_log_latency"``
    ``-(1 - acc) * log(latency_ms)`` (AMC accuracy-guaranteed).

    **Episode end.** Terminates after the last layer; never truncates.
    ``info`` then carries accuracy, latency, its source, the budget, stored
    size, the policy (as applied), ``within_budget``, ``repaired``, ``filled``;
    on a device with an energy model, ``energy_mj`` and ``energy_source`` (and
    ``budget_energy_mj`` under an energy budget, which ``within_budget`` then
    includes and the end repair enforces).

    **Arguments.** Either ``setup`` (a :class:`~edgecompress.search.SearchSetup`:
    its objective, space, budget and fill), or an ``objective`` (else one is
    built from ``model``, ``checkpoint``, ``dataset``, ``data_dir``,
    ``device``, ``val_samples``, ``bn_batches``, ``seed``) with
    ``budget_ms`` / ``budget_ratio`` (and optionally ``budget_energy_mj``), ``techniques``, ``keep_min``,
    ``rank_min``, ``sparsity_max`` (None: the technique's default),
    ``round_to`` (None: the config's ``search.round_to``) and
    ``fill_budget``. ``reward`` as above. Defaults shared with the config
    (``budget_ratio``, ``val_samples``, ``bn_batches``, ``round_to``) are read
    from it, so the environment and a YAML run agree.

    **Version history.**

    * v1 (edgecompress 0.2): the ``drop`` technique (block removal, opt-in),
      the budget fill bringing removed blocks back, the end repair removing
      blocks before taking the strongest policy; policies carry ``round_to``
      and what was applied, so ``info["policy"]`` replays exactly;
      ``round_to`` defaults to the config's (8) instead of 1 and
      ``val_samples`` to the config's (2000) instead of 1000.
    * v0: first version.
    """

    metadata = {"render_modes": []}  # noqa: RUF012

    def __init__(
        self,
        model: str | nn.Module = "lenet5",
        checkpoint: str | None = None,
        dataset: str = "fashion-mnist",
        data_dir: str | None = None,
        device: str = "raspberry-pi-4",
        budget_ms: float | None = None,
        budget_ratio: float | None = _SEARCH["budget_ratio"].default,
        budget_energy_mj: float | None = None,
        techniques: Sequence[str] = ("keep",),
        reward: str = "acc",
        val_samples: int = _DATA["val_samples"].default,
        bn_batches: int = _SEARCH["bn_batches"].default,
        keep_min: float | None = None,
        rank_min: float | None = None,
        sparsity_max: float | None = None,
        round_to: int | None = None,
        seed: int = 0,
        objective: Objective | None = None,
        fill_budget: bool = False,
        setup: SearchSetup | None = None,
    ) -> None:
        super().__init__()
        if reward not in REWARDS:
            raise ConfigError(f"reward {reward!r} invalid; valid: {', '.join(REWARDS)}")
        self.reward_kind = reward
        if setup is None:
            objective = objective or self._build_objective(
                model, checkpoint, dataset, data_dir, device, val_samples, bn_batches, seed
            )
            bounds = {k: v for k, v in (("keep", keep_min), ("rank", rank_min), ("sparsity", sparsity_max))
                      if v is not None}  # fmt: skip
            space = PolicySpace(
                list(objective.analysis.layers), tuple(techniques), objective.input_shape,
                round_to=DEFAULT_ROUND_TO if round_to is None else round_to, bounds=bounds,
            )  # fmt: skip
            budget = budget_for(
                objective, space, budget_ms=budget_ms, budget_ratio=budget_ratio, budget_energy_mj=budget_energy_mj
            )
            setup = SearchSetup(objective, space, budget, {"input_shape": shapes(objective.input_shape)},
                                "validation subset", fill_budget=fill_budget)  # fmt: skip
        self.setup: SearchSetup = setup
        self.objective: Objective = setup.objective
        self.space: PolicySpace = setup.space
        self.budget: Budget = setup.budget
        self.techniques = self.space.techniques
        self.layers = list(self.space.layers)
        self.limiter: Limiter = setup.limiter
        k = len(self.techniques)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (k,), dtype=np.float32)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (N_FEATURES + k,), dtype=np.float32)
        maxima = {f: max(getattr(s, f) for s in self.layers) for f in ("in_channels", "out_channels", "params")}
        self._max = {
            **maxima,
            "stride": max(s.stride[0] for s in self.layers),
            "kernel": max(s.kernel[0] for s in self.layers),
        }
        self._reset_state()

    @property
    def budget_ms(self) -> float:
        return self.budget.limit_ms

    @property
    def base_ms(self) -> float:
        return self.budget.base_ms

    @property
    def min_ms(self) -> float:
        """The latency of the space's strongest policy (the floor the budget was checked against)."""
        return self.budget.floor_ms

    @staticmethod
    def _build_objective(model, checkpoint, dataset, data_dir, device, val_samples, bn_batches, seed):  # type: ignore[no-untyped-def]
        bundle = load_dataset(dataset, data_dir, seed=seed)
        if checkpoint is not None:
            net, _spec = load_checkpoint(checkpoint, trust_factory=model if isinstance(model, str) else None)
        elif isinstance(model, nn.Module):
            net = model
        else:
            warnings.warn(f"no checkpoint given: {model} is scored with random weights", stacklevel=3)
            net = create_model(model, bundle.num_classes, bundle.in_channels, input_size=bundle.input_size)
        shape = (1, bundle.in_channels, bundle.input_size, bundle.input_size)
        return Objective(net.eval(), bundle.val_subset(val_samples), device, input_shape=shape,
                         train_data=bundle.train, bn_batches=bn_batches, seed=seed)  # fmt: skip

    # ---- gymnasium API ----
    def _reset_state(self) -> None:
        self._t = 0
        self._chosen: list[dict[str, Any]] = []
        self._group_keep: dict[int, float] = {}
        self._block_drop: dict[str, bool] = {}
        self._prev = np.zeros(len(self.techniques), dtype=np.float32)

    def _dropped(self) -> set[str]:
        return {b for b, d in self._block_drop.items() if d}

    def _obs(self) -> np.ndarray:
        s = self.layers[min(self._t, len(self.layers) - 1)]
        lim = self.limiter
        base = self.base_ms or 1.0
        done_ms = lim.estimate(self._group_keep, self._dropped(), self._t, 1.0, 1.0) if self._t else self.base_ms
        saved = max(0.0, self.base_ms - done_ms) / base
        rest = float(lim.layer_ms[self._t + 1 :].sum()) / base if self._t + 1 < len(self.layers) else 0.0
        feats = [
            s.index / max(1, len(self.layers) - 1), KIND_CODE[s.kind], s.in_channels / self._max["in_channels"],
            s.out_channels / self._max["out_channels"], s.stride[0] / self._max["stride"],
            s.kernel[0] / self._max["kernel"], s.params / self._max["params"], lim.layer_ms[s.index] / base,
            saved, rest,
        ]  # fmt: skip
        return np.clip(np.array([*feats, *((self._prev + 1) / 2)], dtype=np.float32), 0.0, 1.0)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):  # type: ignore[override]
        super().reset(seed=seed)
        self._reset_state()
        return self._obs(), {}

    def _decode(self, action: np.ndarray) -> dict[str, Any]:
        return {t: self.space.decode(t, float(a)) for t, a in zip(self.techniques, action, strict=True)}

    def step(self, action: np.ndarray):  # type: ignore[override]
        spec = self.layers[self._t]
        choice = self._decode(np.asarray(action, dtype=np.float32))
        # Block-scope knobs first: whether the block stays decides nothing else, but the keep limiter must
        # know it (a removed block costs nothing), whatever order the techniques were listed in.
        for t in sorted(self.techniques, key=lambda t: self.space.knob(t).scope != "block"):
            knob = self.space.knob(t)
            if not self.space.applies(knob, spec):
                choice[t] = knob.identity
            elif knob.scope == "block":  # the block's first layer decides; its other layers follow
                choice[t] = self._block_drop.setdefault(spec.block, choice[t])
            elif knob.scope == "group":
                if spec.group in self._group_keep:
                    choice[t] = self._group_keep[spec.group]  # coupled layers share one ratio
                else:
                    choice[t] = self.limiter.limit(choice[t], self._t, self._group_keep, self._dropped())
                    self._group_keep[spec.group] = choice[t]
        self._chosen.append(choice)
        self._prev = np.asarray(action, dtype=np.float32).clip(-1, 1)
        self._t += 1
        if self._t < len(self.layers):
            return self._obs(), 0.0, False, False, {}
        return self._finish()

    def _policy(self) -> Policy:
        layers = {}
        for spec, choice in zip(self.layers, self._chosen, strict=True):
            exclusive = [t for t in self.techniques if self.space.knob(t).exclusive and choice[t]]
            fields = {t: choice[t] for t in exclusive} or choice
            layers[spec.name] = LayerPolicy(**fields)  # a removed layer takes no other field
        return self.space.policy(layers)

    def _finish(self):  # type: ignore[no-untyped-def]
        asked = self._policy()
        policy, scale, repaired, filled = asked, 1.0, False, 0
        predict, predict_mj = self.objective.predict_ms, self.objective.predict_mj
        if self.setup.fill_budget:
            # Repair by prediction first (scoring is the costly part), then widen into the unused budget.
            policy, scale, repaired = self.budget.repair(
                asked, self.space, predict, last_resort=False, energy_of=predict_mj
            )
            policy, filled = self.setup.fill(policy)
        result = self.objective(policy)
        if not self.setup.within(result):
            policy, scale, again = self.budget.repair(
                policy, self.space, lambda p: self.objective(p).latency_ms, predict=predict, asked=asked, scale=scale,
                energy_of=lambda p: self.objective(p).energy_mj, predict_mj=predict_mj,
            )  # fmt: skip
            repaired = repaired or again
            result = self.objective(policy)
        if self.reward_kind == "acc":
            reward = result.accuracy
        else:
            reward = -(1 - result.accuracy) * math.log(max(result.latency_ms, 1e-6))
        info = {"accuracy": result.accuracy, "latency_ms": result.latency_ms, "budget_ms": self.budget_ms,
                "stored_bytes": result.stored_bytes, "policy": result.policy, "repaired": repaired,
                "filled": filled, "within_budget": self.setup.within(result),
                "latency_source": result.latency_source, **energy_fields(result, self.budget)}  # fmt: skip
        return self._obs(), float(reward), True, False, info
