"""The policy space every driver searches, built from the techniques' own knobs.

Each technique declares the policy fields a search may set, with their range
and kind, next to its code (:class:`edgecompress.compressors.Knob`, e.g.
``keep`` in [0.2, 1] per coupled channel group in ``structured.py``).
:class:`PolicySpace` reads them and serves every driver from that one
declaration: the RL environment's action decoding (:meth:`decode`), Optuna's
define-by-run suggestions and Ray Tune's search space (:meth:`suggest`),
flat parameter dicts (:meth:`from_params`), uniform random sampling
(:meth:`sample`), and the policies a budget is checked against
(:meth:`strongest`). Every policy it makes carries the space's ``round_to``,
so ``compress(model, policy)`` rebuilds what was scored.

Parameters are named ``g<group>.keep`` (one per coupled channel group of
prunable layers), ``<block>.drop`` (one per removable block) and
``<layer>.<field>`` for the rest.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from edgecompress._inputs import InputSpec, normalise, shapes
from edgecompress.analysis import LayerSpec
from edgecompress.compressors import KNOBS, Knob, LayerPolicy, Policy
from edgecompress.config import SearchConfig
from edgecompress.errors import ConfigError, did_you_mean

__all__ = ["DEFAULT_ROUND_TO", "PolicySpace", "check_techniques"]

DEFAULT_ROUND_TO = SearchConfig.model_fields["round_to"].default
"""A searched policy's rounding unless the caller says otherwise: the config's ``search.round_to`` owns it."""


def check_techniques(techniques: Iterable[str]) -> tuple[str, ...]:
    """The techniques as a tuple, or a ConfigError naming the unknown one and the valid ones."""
    out = tuple(techniques)
    if not out:
        raise ConfigError(f"no techniques given; choose from {', '.join(KNOBS)}")
    for t in out:
        if t not in KNOBS:
            raise ConfigError(f"unknown technique {t!r}.{did_you_mean(t, KNOBS)} Valid techniques: {', '.join(KNOBS)}")
    if len(set(out)) != len(out):
        raise ConfigError(f"techniques {list(out)} name one twice")
    return out


@dataclass
class PolicySpace:
    """Per-layer policies over ``techniques`` for the layers of one analysed model.

    ``bounds`` moves a float knob's movable end (``{"keep": 0.3}`` sets keep_min,
    ``{"sparsity": 0.8}`` sparsity_max); ``round_to`` goes into every policy.
    """

    layers: list[LayerSpec]
    techniques: tuple[str, ...]
    input_shape: InputSpec
    """A shape or example inputs (:mod:`edgecompress._inputs`); policies record its shapes."""
    round_to: int = DEFAULT_ROUND_TO
    bounds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.techniques = check_techniques(self.techniques)
        self.input_shape = normalise(self.input_shape)
        for name, value in self.bounds.items():
            knob = KNOBS.get(name)
            if knob is None or not knob.movable:
                movable = [k for k, v in KNOBS.items() if v.movable]
                raise ConfigError(f"bound for {name!r} invalid; bounds can be set for: {', '.join(movable)}")
            # The movable end may go anywhere LayerPolicy accepts: keep, rank in (0, 1], sparsity in [0, 1).
            ok = 0 < value < knob.high if knob.movable == "low" else knob.low < value < 1
            if not ok:
                valid = f"0 < {name} < {knob.high}" if knob.movable == "low" else f"{knob.low} < {name} < 1"
                raise ConfigError(f"{name} bound {value!r} is invalid; valid: {valid}")

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickle a space saved by edgecompress 0.1 (Ray Tune's searcher state): its keep_min, rank_min and
        sparsity_max become bounds; its rounding is the default (policies are made from the live setup)."""
        if "bounds" not in state:
            old = {"keep": state.pop("keep_min", None), "rank": state.pop("rank_min", None),
                   "sparsity": state.pop("sparsity_max", None)}  # fmt: skip
            state["bounds"] = {k: v for k, v in old.items() if v is not None and v != KNOBS[k].strongest}
            state.setdefault("round_to", DEFAULT_ROUND_TO)
        self.__dict__.update(state)

    # ---- the knobs, with bounds applied
    def knob(self, technique: str) -> Knob:
        knob = KNOBS[technique]
        if technique in self.bounds:
            value = self.bounds[technique]
            knob = replace(knob, low=value) if knob.movable == "low" else replace(knob, high=value)
        return knob

    def range(self, technique: str) -> tuple[float, float]:
        k = self.knob(technique)
        return k.low, k.high

    @property
    def keep_min(self) -> float:
        return self.knob("keep").low

    # ---- which layers a knob applies to
    @staticmethod
    def applies(knob: Knob, spec: LayerSpec) -> bool:
        if knob.scope == "group":
            return spec.prunable
        if knob.scope == "block":
            return bool(spec.block)
        return True

    @staticmethod
    def param_name(knob: Knob, spec: LayerSpec) -> str:
        if knob.scope == "group":
            return f"g{spec.group}.{knob.field}"
        if knob.scope == "block":
            return f"{spec.block}.{knob.field}"
        return f"{spec.name}.{knob.field}"

    def parameters(self) -> dict[str, Knob]:
        """Every parameter of the space (name -> knob), in forward layer order."""
        out: dict[str, Knob] = {}
        for spec in self.layers:
            for t in self.techniques:
                knob = self.knob(t)
                if self.applies(knob, spec):
                    out.setdefault(self.param_name(knob, spec), knob)
        return out

    # ---- values
    @staticmethod
    def cast(knob: Knob, value: Any) -> Any:
        if knob.kind == "float":
            return round(float(value), 4)
        if knob.kind == "bool":
            return bool(value)
        return int(value)

    def decode(self, technique: str, action: float) -> Any:
        """The RL environment's action in [-1, 1] for ``technique`` as a policy value."""
        knob = self.knob(technique)
        a = float(np.clip(action, -1.0, 1.0))
        if knob.kind == "bool":
            return a > 0
        if knob.kind == "float":
            u = float((np.float32(a) + 1) / 2)  # float32, as edgecompress 0.1 computed it: identical episodes
            return round(knob.low + u * (knob.high - knob.low), 4)
        i = int(np.clip(np.floor((a + 1) / 2 * len(knob.choices)), 0, len(knob.choices) - 1))
        return knob.choices[i]

    # ---- policies
    def policy(self, layers: Mapping[str, LayerPolicy]) -> Policy:
        """A policy of this space: the given layers, the model's input shape, the space's rounding."""
        return Policy(dict(layers), base={"input_shape": shapes(self.input_shape)}, round_to=self.round_to)

    def from_params(self, params: Mapping[str, Any]) -> Policy:
        """A flat parameter dict (Optuna, Ray Tune) as a policy."""
        layers: dict[str, LayerPolicy] = {}
        for spec in self.layers:
            fields: dict[str, Any] = {}
            exclusive: dict[str, Any] = {}
            for t in self.techniques:
                knob = self.knob(t)
                if not self.applies(knob, spec):
                    continue
                value = self.cast(knob, _param(params, self.param_name(knob, spec)))
                if knob.exclusive and value != knob.identity:
                    exclusive = {knob.field: value}
                fields[knob.field] = value
            layers[spec.name] = LayerPolicy(**(exclusive or fields))
        return self.policy(layers)

    def suggest(self, trial: Any) -> Policy:
        """Ask an Optuna trial for every parameter; return the policy."""
        params: dict[str, Any] = {}
        for name, knob in self.parameters().items():
            if knob.kind == "float":
                params[name] = trial.suggest_float(name, knob.low, knob.high)
            elif knob.kind == "bool":
                params[name] = trial.suggest_categorical(name, [False, True])
            else:
                params[name] = trial.suggest_categorical(name, list(knob.choices))
        return self.from_params(params)

    def __call__(self, trial: Any) -> None:
        """Define-by-run search space (what Ray Tune's OptunaSearch calls; picklable, unlike a closure)."""
        self.suggest(trial)

    def sample(self, rng: random.Random) -> Policy:
        """A policy drawn uniformly from the space (floats uniform in range, choices uniform)."""
        params: dict[str, Any] = {}
        for name, knob in self.parameters().items():
            if knob.kind == "float":
                params[name] = rng.uniform(knob.low, knob.high)
            elif knob.kind == "bool":
                params[name] = rng.random() < 0.5
            else:
                params[name] = rng.choice(knob.choices)
        return self.from_params(params)

    def strongest(self) -> Policy:
        """The latency floor: every knob that removes work at its extreme (``keep`` and ``rank`` at their
        minimum, every removable block removed); sparsity, bits and codebooks, which the dense runtimes do
        not turn into speed, stay unchanged."""
        layers: dict[str, LayerPolicy] = {}
        for spec in self.layers:
            fields = {}
            for t in self.techniques:
                knob = self.knob(t)
                if self.applies(knob, spec) and knob.kind == "float" and knob.movable == "low":
                    fields[knob.field] = knob.strongest
            exclusive = [self.knob(t) for t in self.techniques if self.knob(t).exclusive]
            if any(self.applies(k, spec) for k in exclusive):
                fields = {k.field: k.strongest for k in exclusive if self.applies(k, spec)}
            layers[spec.name] = LayerPolicy(**fields)
        return self.policy(layers)

    def identity(self) -> Policy:
        """The base model unchanged."""
        return self.policy({})

    def uniform(self, keep: float) -> Policy:
        """One keep ratio on every prunable layer."""
        return self.policy({s.name: LayerPolicy(keep=keep) for s in self.layers if s.prunable})

    def scaled(self, policy: Policy, scale: float) -> Policy:
        """Every prunable layer's keep times ``scale`` (floor keep_min); removed layers stay removed."""
        if "keep" not in self.techniques:
            return policy
        layers = dict(policy.layers)
        for spec in self.layers:
            lp = policy.get(spec.name)
            if spec.prunable and not lp.drop:
                layers[spec.name] = replace(lp, keep=max(self.keep_min, round(lp.keep * scale, 4)))
        return policy.replace(layers=layers)

    def at_floor(self, policy: Policy) -> bool:
        """Every prunable layer at keep_min or removed: scaling the keeps down cannot shrink it further."""
        if "keep" not in self.techniques:
            return True
        return all(policy.get(s.name).keep <= self.keep_min or policy.get(s.name).drop for s in self.layers
                   if s.prunable)  # fmt: skip


def _param(params: Mapping[str, Any], key: str) -> Any:
    if key not in params:
        shown: Sequence[str] = sorted(params)[:5]
        raise ConfigError(f"parameter {key!r} missing; this space has {', '.join(shown)}...")
    return params[key]
