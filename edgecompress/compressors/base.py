"""The one interface every technique implements, the context they share, and the registry.

A technique is an object with a ``name`` and ``apply(ctx)``. ``apply`` changes
``ctx.model`` (a private copy; never the caller's model) for the layers whose
policy asks for it and records, for every layer it did not handle as asked,
a :class:`Skip` with the reason. Techniques never print; ``compress`` reports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
import torch.nn as nn

from edgecompress._inputs import InputSpec
from edgecompress.analysis import ModelAnalysis
from edgecompress.compressors.policy import LayerPolicy, Policy

__all__ = [
    "KNOBS",
    "TECHNIQUES",
    "CompressionContext",
    "Knob",
    "Skip",
    "Technique",
    "register_knob",
    "register_technique",
    "weight_modules",
]


@dataclass(frozen=True)
class Skip:
    layer: str
    technique: str
    reason: str


@dataclass
class CompressionContext:
    model: nn.Module
    policy: Policy
    analysis: ModelAnalysis
    """Analysis of the *base* model: layer names, shapes and coupled groups the policy refers to."""
    calibration: list[torch.Tensor] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    skipped: list[Skip] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    details: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per layer, what each technique did (e.g. ``{"lowrank": {"rank": 3, "rel_error": 0.2}}``)."""
    removed: set[str] = field(default_factory=set)
    """Base layers no longer in the model (their block was removed); later techniques skip them."""

    def skip(self, layer: str, technique: str, reason: str) -> None:
        self.skipped.append(Skip(layer, technique, reason))

    def record(self, layer: str, technique: str, **info: Any) -> None:
        self.details.setdefault(layer, {})[technique] = info

    @property
    def input_shape(self) -> InputSpec:
        """What the model is fed: a shape or example inputs (``edgecompress._inputs``)."""
        return self.analysis.input_shape


class Technique(Protocol):
    name: str

    def apply(self, ctx: CompressionContext) -> None: ...


TECHNIQUES: dict[str, Technique] = {}


def register_technique(cls: Callable[[], Technique]) -> Callable[[], Technique]:
    inst = cls()
    TECHNIQUES[inst.name] = inst
    return cls


@dataclass(frozen=True)
class Knob:
    """One policy field a search may set, declared next to the technique that applies it.

    The search space (``edgecompress.search.space``) reads every driver's
    parameters from these, so a new technique's range is written once, here.

    kind ``float``: a value in [low, high] (rounded to 4 decimals); the RL
    environment maps its action in [-1, 1] linearly onto the range.
    kind ``choice``: one of ``choices``; the environment bins [-1, 1] into
    ``len(choices)`` equal parts. kind ``bool``: the environment's action > 0.
    scope ``layer``: one value per layer; ``group``: one per coupled channel
    group, prunable layers only (``keep``); ``block``: one per removable
    residual block (``drop``). ``movable`` names the end a user may move
    (``keep_min``, ``rank_min``, ``sparsity_max``). ``exclusive``: a layer
    taking a non-identity value gets no other field (a removed layer).
    """

    field: str
    technique: str
    kind: Literal["float", "choice", "bool"]
    low: float = 0.0
    high: float = 1.0
    choices: tuple[int, ...] = ()
    scope: Literal["layer", "group", "block"] = "layer"
    movable: Literal["low", "high", ""] = ""
    exclusive: bool = False
    help: str = ""

    @property
    def identity(self) -> Any:
        """The value that leaves a layer unchanged (LayerPolicy's default)."""
        return getattr(LayerPolicy(), self.field)

    @property
    def strongest(self) -> Any:
        """The value that compresses most (the floor a budget is checked against)."""
        if self.kind == "bool":
            return True
        if self.kind == "float":
            return self.high if self.movable == "high" else self.low
        return self.identity


KNOBS: dict[str, Knob] = {}
"""Policy field -> its knob, for every registered technique."""


def register_knob(knob: Knob) -> Knob:
    """Declare a searchable policy field; KNOBS stays in LayerPolicy's field order, whatever the import order."""
    if knob.field not in LayerPolicy.__dataclass_fields__:
        raise ValueError(f"knob {knob.field!r} is not a LayerPolicy field")
    KNOBS[knob.field] = knob
    order = list(LayerPolicy.__dataclass_fields__)
    for name in sorted(KNOBS, key=order.index):
        KNOBS[name] = KNOBS.pop(name)
    return knob


def weight_modules(model: nn.Module, name: str) -> list[tuple[str, nn.Module]]:
    """The conv/linear modules that now implement base layer ``name``.

    Usually the layer itself; after low-rank factorisation, its two factors.
    """
    module = model.get_submodule(name)
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        return [(name, module)]
    return [(f"{name}.{n}", m) for n, m in module.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def layers_asking(ctx: CompressionContext, predicate: Callable[[Any], bool]) -> Iterable[str]:
    """Base layer names (forward order) still in the model whose policy satisfies ``predicate``."""
    for spec in ctx.analysis.layers:
        if spec.name not in ctx.removed and predicate(ctx.policy.get(spec.name)):
            yield spec.name
