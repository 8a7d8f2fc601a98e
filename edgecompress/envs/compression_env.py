"""``CompressionEnv``: one step per compressible layer, AMC-style, against a hard latency budget.

Registered as ``edgecompress/LayerCompression-v0`` (importing ``edgecompress.envs`` registers it).

**Episode.** One step per compressible layer, in forward order. The agent picks
that layer's compression; after the last layer the whole policy is applied to
the base model and scored by :class:`edgecompress.objective.Objective`
(accuracy on the validation subset, predicted latency, size).

**Action space.** ``Box(-1, 1, (k,))``, one dimension per enabled technique, in
the order of ``techniques``: ``keep`` (channel keep ratio, linear to
[keep_min, 1]), ``rank`` ([rank_min, 1]), ``sparsity`` ([0, sparsity_max]),
``wbits`` (bins over 2, 4, 6, 8, 16, 32), ``clusters`` (bins over 0 = off, 4,
8, 16, 32, 64, 256), ``abits`` (bins over 8, 16, 32), ``drop`` (remove the
residual block when > 0; decided at a removable block's first layer, and its
other layers follow). Layers whose output channels are the network's outputs
ignore ``keep``; layers outside removable blocks ignore ``drop``.

**Observation.** AMC's layer embedding, every entry in [0, 1]: layer index,
kind (conv 0, depthwise 0.5, linear 1), input and output channels, stride,
kernel, parameters (each over the model's largest), the layer's share of the
base latency, the latency already saved, the latency still to come (shares of
the base latency), then the previous layer's action rescaled to [0, 1].

**Budget.** A hard constraint, AMC's way: before a ``keep`` action is applied
it is limited so that, even if every later layer took ``keep_min``, the
latency estimate stays within budget (removed blocks count zero). That estimate is anchored on two true
predictions per layer, at keep 1 and at ``keep_min`` (channels rounded to
``round_to`` as ``compress`` rounds them), and affine in the layer's channel
scale (input keep x output keep; output keep for depthwise) in between; the
operators outside the layers likewise, in the mean keep ratio. Per-operator
overhead makes latency far from proportional to channels, so a MACs-style
scaling would misjudge the budget. After the last
layer the true prediction is computed; if it is still over budget, every keep
ratio is scaled down (factor 0.9 per round, floor ``keep_min``) until it fits;
at the floor, with ``drop`` among the techniques, removable blocks are removed
one at a time (the one leaving the least predicted latency first) until the
prediction fits, and only then, if still over, the strongest policy is taken;
``info["repaired"]`` says so. With an objective made with ``fill_budget``
the policy is then widened into the budget it leaves unused, removed blocks
coming back once no widening fits (:meth:`Objective.fill`; ``info["filled"]``
counts the steps). A budget below the latency of the strongest
compression raises ``ConfigError`` (a ``ValueError``) at construction, stating
that latency.

**Reward** (at the last step; 0 before): ``"acc"`` top-1 accuracy (AMC
resource-constrained), ``"acc_log_latency"`` ``-(1 - acc) * log(latency_ms)``
(AMC accuracy-guaranteed). ``info`` carries accuracy, latency, size, the
policy and whether the budget held.

**Version history.** v0: first version; the ``drop`` technique added 2026-12-02 (opt-in, so
episodes without it are unchanged).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch.nn as nn

from edgecompress.compressors import LayerPolicy, Policy
from edgecompress.compressors.structured import kept_channels
from edgecompress.errors import ConfigError

__all__ = ["TECHNIQUE_CHOICES", "CompressionEnv"]

WBITS_BINS = (2, 4, 6, 8, 16, 32)
CLUSTER_BINS = (0, 4, 8, 16, 32, 64, 256)
ABITS_BINS = (8, 16, 32)
TECHNIQUE_CHOICES = ("keep", "rank", "sparsity", "wbits", "clusters", "abits", "drop")
REWARDS = ("acc", "acc_log_latency")
KIND_CODE = {"conv": 0.0, "depthwise": 0.5, "linear": 1.0}
N_FEATURES = 10


def _bin(x: float, choices: Sequence[int]) -> int:
    i = int(np.clip(np.floor((x + 1) / 2 * len(choices)), 0, len(choices) - 1))
    return choices[i]


class CompressionEnv(gym.Env):
    metadata = {"render_modes": []}  # noqa: RUF012

    def __init__(
        self,
        model: str | nn.Module = "lenet5",
        checkpoint: str | None = None,
        dataset: str = "fashion-mnist",
        data_dir: str | None = None,
        device: str = "raspberry-pi-4",
        budget_ms: float | None = None,
        budget_ratio: float | None = 0.5,
        techniques: Sequence[str] = ("keep",),
        reward: str = "acc",
        val_samples: int = 1000,
        bn_batches: int = 0,
        keep_min: float = 0.2,
        rank_min: float = 0.2,
        sparsity_max: float = 0.9,
        round_to: int = 1,
        seed: int = 0,
        objective: Any = None,
    ) -> None:
        super().__init__()
        bad = [t for t in techniques if t not in TECHNIQUE_CHOICES]
        if bad or not techniques:
            raise ConfigError(f"techniques {list(techniques)} invalid; choose from {', '.join(TECHNIQUE_CHOICES)}")
        if reward not in REWARDS:
            raise ConfigError(f"reward {reward!r} invalid; valid: {', '.join(REWARDS)}")
        self.techniques = tuple(techniques)
        self.reward_kind = reward
        self.keep_min, self.rank_min, self.sparsity_max = keep_min, rank_min, sparsity_max
        self.objective = objective or self._build_objective(
            model, checkpoint, dataset, data_dir, device, val_samples, bn_batches, round_to, seed
        )
        analysis = self.objective.analysis
        self.round_to = int(getattr(self.objective, "round_to", 1))
        self.layers = list(analysis.layers)
        self.groups = {s.name: s.group for s in self.layers}
        self.base_ms = self.objective.base_latency_ms()
        # Per-layer share of the base latency (by the same estimator), for the observation and the limiter.
        from edgecompress.latency_models import estimate_latency

        rows = {r.layer: r.ms for r in estimate_latency(self.objective.model, analysis.input_shape,
                                                          self.objective.device).rows}  # fmt: skip
        self.layer_ms = np.array([rows.get(s.name, 0.0) for s in self.layers])
        self.fixed_ms = self.base_ms - float(self.layer_ms.sum())
        if budget_ms is None:
            if budget_ratio is None or not 0 < budget_ratio <= 1:
                raise ConfigError(f"give budget_ms, or budget_ratio in (0, 1]; got budget_ratio={budget_ratio!r}")
            budget_ms = budget_ratio * self.base_ms
        self.budget_ms = float(budget_ms)
        self.objective.budget_ms = self.budget_ms
        floor = self.objective(self._strongest()).latency_ms
        if floor > self.budget_ms:
            raise ConfigError(  # a ValueError too
                f"budget {self.budget_ms:.4f} ms cannot be met: the strongest compression allowed reaches "
                f"{floor:.4f} ms on {self.objective.device} (base {self.base_ms:.4f} ms); raise the budget to at "
                f"least {floor:.4f} ms (budget_ratio {floor / self.base_ms:.3f}) or allow more techniques"
            )
        self.min_ms = floor
        # Latency does not scale with in_keep x out_keep on real devices (per-operator overhead stays; the
        # operators between layers shrink too). So the limiter's surrogate is anchored per layer at two true
        # estimates, keep 1 and keep_min (both rounded as compress() rounds), and is affine in the layer's
        # channel scale in between; the non-layer operators likewise, in the mean keep ratio.
        self.layer_ms_min = self.layer_ms.copy()
        self.fixed_min_ms = self.fixed_ms
        self._scale_min = np.ones(len(self.layers))
        if "keep" in self.techniques:
            self._group_keep: dict[int, float] = {}
            self._scale_min = self._scales(0, self.keep_min, self.keep_min)[0]
            keep_only = Policy({s.name: LayerPolicy(keep=self.keep_min) for s in self.layers if s.prunable},
                               base={"input_shape": list(self.objective.input_shape)})  # fmt: skip
            from edgecompress.compressors import compress

            small, _ = compress(self.objective.model, keep_only, analysis=analysis, round_to=self.round_to)
            at_min = estimate_latency(small, analysis.input_shape, self.objective.device)
            rows_min = {r.layer: r.ms for r in at_min.rows}
            self.layer_ms_min = np.array([rows_min.get(s.name, 0.0) for s in self.layers])
            self.fixed_min_ms = at_min.total_ms - float(self.layer_ms_min.sum())
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

    @staticmethod
    def _build_objective(model, checkpoint, dataset, data_dir, device, val_samples, bn_batches, round_to, seed):  # type: ignore[no-untyped-def]
        import warnings

        from edgecompress.checkpoint import load_checkpoint
        from edgecompress.data import load_dataset
        from edgecompress.models import create_model
        from edgecompress.objective import Objective

        bundle = load_dataset(dataset, data_dir, seed=seed)
        if checkpoint is not None:
            net, _spec = load_checkpoint(checkpoint)
        elif isinstance(model, nn.Module):
            net = model
        else:
            warnings.warn(f"no checkpoint given: {model} is scored with random weights", stacklevel=3)
            net = create_model(model, bundle.num_classes, bundle.in_channels, input_size=bundle.input_size)
        shape = (1, bundle.in_channels, bundle.input_size, bundle.input_size)
        return Objective(net.eval(), bundle.val_subset(val_samples), device, input_shape=shape,
                         train_data=bundle.train, bn_batches=bn_batches, round_to=round_to, seed=seed)  # fmt: skip

    # ---- policy helpers ----
    def _strongest(self) -> Policy:
        fields: dict[str, Any] = {}
        if "keep" in self.techniques:
            fields["keep"] = self.keep_min
        if "rank" in self.techniques:
            fields["rank"] = self.rank_min
        layers = {s.name: LayerPolicy(**(fields if s.prunable or "keep" not in fields else
                                         {k: v for k, v in fields.items() if k != "keep"}))
                  for s in self.layers}  # fmt: skip
        if "drop" in self.techniques:
            layers.update({s.name: LayerPolicy(drop=True) for s in self.layers if s.block})
        return Policy(layers, base={"input_shape": list(self.objective.input_shape)})

    def _decode(self, action: np.ndarray) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for t, a in zip(self.techniques, np.clip(action, -1, 1), strict=True):
            u = float((a + 1) / 2)
            if t == "keep":
                out[t] = round(self.keep_min + u * (1 - self.keep_min), 4)
            elif t == "rank":
                out[t] = round(self.rank_min + u * (1 - self.rank_min), 4)
            elif t == "sparsity":
                out[t] = round(u * self.sparsity_max, 4)
            elif t == "wbits":
                out[t] = _bin(float(a), WBITS_BINS)
            elif t == "clusters":
                out[t] = _bin(float(a), CLUSTER_BINS)
            elif t == "drop":
                out[t] = bool(a > 0)
            else:
                out[t] = _bin(float(a), ABITS_BINS)
        return out

    def _keep_of_group(self, group: int, default: float) -> float:
        return self._group_keep.get(group, default)

    def _scales(self, upto: int, keep_here: float, rest_keep: float) -> tuple[np.ndarray, float]:
        """Per layer channel scale (in x out keep, out for depthwise, rounded as compress() rounds) and the
        mean keep ratio of the prunable layers: committed layers at their keeps, this one at keep_here, the
        rest at rest_keep."""
        scales = np.ones(len(self.layers))
        keeps = []
        prev_keep = 1.0
        for i, spec in enumerate(self.layers):
            if i < upto:
                out_keep = self._keep_of_group(spec.group, 1.0)
            elif i == upto:
                out_keep = keep_here if spec.prunable else 1.0
            else:
                out_keep = self._group_keep.get(spec.group, rest_keep) if spec.prunable else 1.0
            if spec.prunable:
                keeps.append(out_keep)
            if out_keep < 1.0 and spec.out_channels:
                out_keep = kept_channels(spec.out_channels, out_keep, self.round_to) / spec.out_channels
            in_keep = 1.0 if i == 0 else prev_keep
            scales[i] = out_keep if spec.kind == "depthwise" else in_keep * out_keep
            prev_keep = out_keep
        return scales, float(np.mean(keeps)) if keeps else 1.0

    def _estimate(self, upto: int, keep_here: float, rest_keep: float) -> float:
        """Surrogate latency (see the class docstring): affine per layer between its keep_min and keep 1 values."""
        scales, mean_keep = self._scales(upto, keep_here, rest_keep)
        span = np.where(self._scale_min < 1.0, 1.0 - self._scale_min, 1.0)
        t = np.clip((scales - self._scale_min) / span, 0.0, 1.0)
        t = np.where(self._scale_min < 1.0, t, 1.0)
        per_layer = self.layer_ms_min + (self.layer_ms - self.layer_ms_min) * t
        gone = [i for i, spec in enumerate(self.layers) if self._block_drop.get(spec.block, False)]
        per_layer[gone] = 0.0
        layers = float(np.sum(per_layer))
        share = float(np.clip((mean_keep - self.keep_min) / (1 - self.keep_min), 0.0, 1.0)) if self.keep_min < 1 else 1
        return layers + self.fixed_min_ms + (self.fixed_ms - self.fixed_min_ms) * share

    # ---- gymnasium API ----
    def _reset_state(self) -> None:
        self._t = 0
        self._chosen: list[dict[str, Any]] = []
        self._group_keep = {}
        self._block_drop: dict[str, bool] = {}
        self._prev = np.zeros(len(self.techniques), dtype=np.float32)

    def _obs(self) -> np.ndarray:
        s = self.layers[min(self._t, len(self.layers) - 1)]
        base = self.base_ms or 1.0
        done_ms = self._estimate(self._t, 1.0, 1.0) if self._t else self.base_ms
        saved = max(0.0, self.base_ms - done_ms) / base
        rest = float(self.layer_ms[self._t + 1 :].sum()) / base if self._t + 1 < len(self.layers) else 0.0
        feats = [
            s.index / max(1, len(self.layers) - 1), KIND_CODE[s.kind], s.in_channels / self._max["in_channels"],
            s.out_channels / self._max["out_channels"], s.stride[0] / self._max["stride"],
            s.kernel[0] / self._max["kernel"], s.params / self._max["params"], self.layer_ms[s.index] / base,
            saved, rest,
        ]  # fmt: skip
        return np.clip(np.array([*feats, *((self._prev + 1) / 2)], dtype=np.float32), 0.0, 1.0)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):  # type: ignore[override]
        super().reset(seed=seed)
        self._reset_state()
        return self._obs(), {}

    def step(self, action: np.ndarray):  # type: ignore[override]
        spec = self.layers[self._t]
        choice = self._decode(np.asarray(action, dtype=np.float32))
        if "drop" in choice:
            if not spec.block:
                choice["drop"] = False
            else:  # the block's first layer decides; its other layers follow
                choice["drop"] = self._block_drop.setdefault(spec.block, choice["drop"])
        if "keep" in choice:
            if not spec.prunable:
                choice["keep"] = 1.0
            elif spec.group in self._group_keep:
                choice["keep"] = self._group_keep[spec.group]  # coupled layers share one ratio
            else:
                keep = choice["keep"]
                while keep > self.keep_min and self._estimate(self._t, keep, self.keep_min) > self.budget_ms:
                    keep = max(self.keep_min, round(keep - 0.02, 4))
                choice["keep"] = keep
                self._group_keep[spec.group] = keep
        self._chosen.append(choice)
        self._prev = np.asarray(action, dtype=np.float32).clip(-1, 1)
        self._t += 1
        if self._t < len(self.layers):
            return self._obs(), 0.0, False, False, {}
        return self._finish()

    def _policy(self, scale: float = 1.0) -> Policy:
        layers = {}
        for spec, choice in zip(self.layers, self._chosen, strict=True):
            if choice.get("drop"):
                layers[spec.name] = LayerPolicy(drop=True)  # the layer leaves the model: nothing else applies
                continue
            fields = dict(choice)
            fields.pop("drop", None)
            if "keep" in fields and spec.prunable:
                fields["keep"] = max(self.keep_min, round(fields["keep"] * scale, 4))
            layers[spec.name] = LayerPolicy(**fields)
        return Policy(layers, base={"input_shape": list(self.objective.input_shape)})

    def _at_floor(self, policy: Policy) -> bool:
        """Every prunable layer at keep_min or removed: scaling the keeps down cannot shrink it further."""
        if "keep" not in self.techniques:
            return True
        layers = [policy.get(s.name) for s in self.layers if s.prunable]
        return all(lp.keep <= self.keep_min or lp.drop for lp in layers)

    def _drop_until_within(self, policy: Policy) -> Policy:
        """Keeps at their floor and still over budget: remove blocks, the one whose removal leaves the least
        predicted latency first, until the prediction fits (or no block is left). Removing one block spares
        the accuracy the strongest policy (every block removed) would cost."""
        blocks = self.objective.analysis.blocks()
        predict = self.objective.predict_ms
        while predict(policy) > self.budget_ms:
            options = [
                Policy({**policy.layers, **dict.fromkeys(names, LayerPolicy(drop=True))}, base=policy.base)
                for names in blocks.values()
                if not policy.get(names[0]).drop
            ]
            if not options:
                break
            policy = min(options, key=predict)
        return policy

    def _finish(self):  # type: ignore[no-untyped-def]
        scale, repaired, filled = 1.0, False, 0
        policy = self._policy()
        drop = "drop" in self.techniques
        if getattr(self.objective, "fill_budget", False):
            # Repair by prediction first (scoring is the costly part), then widen into the unused budget.
            while self.objective.predict_ms(policy) > self.budget_ms and scale > 1e-3 and not self._at_floor(policy):
                scale *= 0.9
                repaired = True
                policy = self._policy(scale)
            if drop and self.objective.predict_ms(policy) > self.budget_ms:
                policy, repaired = self._drop_until_within(policy), True
            policy, filled = self.objective.fill(policy)
        result = self.objective(policy)
        while result.latency_ms > self.budget_ms and scale > 1e-3:
            repaired = True
            if self._at_floor(policy):
                if drop:
                    policy = self._drop_until_within(policy)
                    result = self.objective(policy)
                if result.latency_ms > self.budget_ms:
                    policy = self._strongest()
                    result = self.objective(policy)
                break
            scale *= 0.9
            policy = self._policy(scale)
            result = self.objective(policy)
        if self.reward_kind == "acc":
            reward = result.accuracy
        else:
            reward = -(1 - result.accuracy) * math.log(max(result.latency_ms, 1e-6))
        info = {"accuracy": result.accuracy, "latency_ms": result.latency_ms, "budget_ms": self.budget_ms,
                "stored_bytes": result.stored_bytes, "policy": policy.to_dict(), "repaired": repaired, "filled": filled,
                "within_budget": result.latency_ms <= self.budget_ms,
                "latency_source": result.latency_source}  # fmt: skip
        return self._obs(), float(reward), True, False, info
