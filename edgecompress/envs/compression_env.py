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
8, 16, 32, 64, 256), ``abits`` (bins over 8, 16, 32). Layers whose output
channels are the network's outputs ignore ``keep``.

**Observation.** AMC's layer embedding, every entry in [0, 1]: layer index,
kind (conv 0, depthwise 0.5, linear 1), input and output channels, stride,
kernel, parameters (each over the model's largest), the layer's share of the
base latency, the latency already saved, the latency still to come (shares of
the base latency), then the previous layer's action rescaled to [0, 1].

**Budget.** A hard constraint, AMC's way: before a ``keep`` action is applied
it is limited so that, even if every later layer took ``keep_min``, the
latency estimate stays within budget. That estimate is each layer's base
latency x the product of its input and output keep ratios (as ``compress``
rounds them to ``round_to`` channels), plus a non-layer term interpolated by
the mean keep ratio between its values at keep 1 and at the strongest
compression, so it equals the true estimate at both ends. After the last
layer the true prediction is computed; if it is still over budget, every keep
ratio is scaled down (factor 0.9 per round, floor ``keep_min``) until it fits,
and ``info["repaired"]`` says so. A budget below the latency of the strongest
compression raises ``ConfigError`` (a ``ValueError``) at construction, stating
that latency.

**Reward** (at the last step; 0 before): ``"acc"`` top-1 accuracy (AMC
resource-constrained), ``"acc_log_latency"`` ``-(1 - acc) * log(latency_ms)``
(AMC accuracy-guaranteed). ``info`` carries accuracy, latency, size, the
policy and whether the budget held.

**Version history.** v0: first version.
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
TECHNIQUE_CHOICES = ("keep", "rank", "sparsity", "wbits", "clusters", "abits")
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
        # The layers' quadratic scaling misses two things: operators outside the compressible layers (pooling,
        # activations, adds) shrink with the channels too, and per-operator overhead does not shrink at all.
        # The non-layer term is therefore taken as what the true estimate leaves after the layers' surrogate,
        # at keep 1 (fixed_ms) and at the strongest compression (fixed_min_ms), interpolated in between by
        # the mean keep ratio: exact at both ends.
        self.fixed_min_ms = self.fixed_ms
        if "keep" in self.techniques:
            self._group_keep: dict[int, float] = {}
            layers_at_min = self._estimate(0, self.keep_min, self.keep_min) - self.fixed_ms  # fixed_min not set yet
            self.fixed_min_ms = max(0.0, floor - layers_at_min)
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
            else:
                out[t] = _bin(float(a), ABITS_BINS)
        return out

    def _keep_of_group(self, group: int, default: float) -> float:
        return self._group_keep.get(group, default)

    def _estimate(self, upto: int, keep_here: float, rest_keep: float) -> float:
        """Surrogate latency: committed layers at their keeps, this one at keep_here, the rest at rest_keep."""
        total = 0.0
        prev_keep = 1.0
        keeps = []
        for i, spec in enumerate(self.layers):
            if i < upto:
                out_keep = self._keep_of_group(spec.group, 1.0)
            elif i == upto:
                out_keep = keep_here if spec.prunable else 1.0
            else:
                out_keep = self._group_keep.get(spec.group, rest_keep) if spec.prunable else 1.0
            if spec.prunable:
                keeps.append(out_keep)  # the policy's ratios drive the non-layer term
            if out_keep < 1.0 and spec.out_channels:  # the channels compress() really keeps (round_to)
                out_keep = kept_channels(spec.out_channels, out_keep, self.round_to) / spec.out_channels
            in_keep = 1.0 if i == 0 else prev_keep
            scale = out_keep if spec.kind == "depthwise" else in_keep * out_keep
            total += self.layer_ms[i] * scale
            prev_keep = out_keep
        fixed_min = getattr(self, "fixed_min_ms", self.fixed_ms)
        if keeps and fixed_min != self.fixed_ms and self.keep_min < 1:
            share = (float(np.mean(keeps)) - self.keep_min) / (1 - self.keep_min)
            total += fixed_min + (self.fixed_ms - fixed_min) * float(np.clip(share, 0.0, 1.0))
        else:
            total += self.fixed_ms
        return total

    # ---- gymnasium API ----
    def _reset_state(self) -> None:
        self._t = 0
        self._chosen: list[dict[str, Any]] = []
        self._group_keep = {}
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
            fields = dict(choice)
            if "keep" in fields and spec.prunable:
                fields["keep"] = max(self.keep_min, round(fields["keep"] * scale, 4))
            layers[spec.name] = LayerPolicy(**fields)
        return Policy(layers, base={"input_shape": list(self.objective.input_shape)})

    def _finish(self):  # type: ignore[no-untyped-def]
        scale, repaired = 1.0, False
        policy = self._policy()
        result = self.objective(policy)
        while result.latency_ms > self.budget_ms and scale > 1e-3:
            scale *= 0.9
            repaired = True
            policy = self._policy(scale)
            result = self.objective(policy)
            if all(lp.keep <= self.keep_min for lp in policy.layers.values()) and result.latency_ms > self.budget_ms:
                policy = self._strongest()
                result = self.objective(policy)
                break
        if self.reward_kind == "acc":
            reward = result.accuracy
        else:
            reward = -(1 - result.accuracy) * math.log(max(result.latency_ms, 1e-6))
        info = {"accuracy": result.accuracy, "latency_ms": result.latency_ms, "budget_ms": self.budget_ms,
                "stored_bytes": result.stored_bytes, "policy": policy.to_dict(), "repaired": repaired,
                "within_budget": result.latency_ms <= self.budget_ms,
                "latency_source": result.latency_source}  # fmt: skip
        return self._obs(), float(reward), True, False, info
