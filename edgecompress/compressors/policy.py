"""Compression policies: one :class:`LayerPolicy` per compressible layer.

A policy is data, not code: it round-trips through JSON (``Policy.save`` /
``Policy.load``), names the base model it was made for, and is validated on
load. Every field's default means "unchanged", so a layer missing from a
policy is left as it is.

A policy carries everything ``compress(model, policy)`` needs to rebuild one
model exactly, with no other argument: the ratios asked (``layers``), the
rounding in force (``round_to``: kept channels and ranks round up to a
multiple of it) and, once a policy has been applied, what was applied
(``applied``: per layer the channels kept, the rank kept, the calibrated
8-bit activation range). ``compress`` checks the counts it gets against
``applied`` and restores the recorded activation ranges, so a policy found
by any search replays to the model that search scored, or fails loudly.

Schema history: version 1 kept ``round_to`` in ``base`` (where ``compress``
ignored it); version 2 (edgecompress 0.2) has ``round_to`` and ``applied``.
Version 1 files load, their ``base.round_to`` becoming ``round_to``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch.nn as nn

from edgecompress._io import read_json, write_json_atomic
from edgecompress.analysis import compressible_layers
from edgecompress.errors import PolicyError, did_you_mean

__all__ = ["ABITS", "BIAS_BITS", "POLICY_SCHEMA_VERSION", "WBITS", "LayerPolicy", "Policy"]

POLICY_SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
APPLIED_FIELDS = {"channels": "kept output channels", "rank": "kept rank", "act_range": "[min, max] of 8-bit input"}
WBITS = (32, 16, 8, 6, 4, 2)
ABITS = (32, 16, 8)
BIAS_BITS = (32, 16)


@dataclass(frozen=True)
class LayerPolicy:
    """One layer's compression choices. Defaults mean unchanged.

    keep:      fraction of output channels kept by structured pruning, 0 < keep <= 1.
    rank:      low-rank ratio of the full rank, 0 < rank <= 1; 1 = not factorised.
    sparsity:  fraction of weights zeroed by unstructured pruning, 0 <= sparsity < 1.
    wbits:     uniform weight bits, one of 32, 16, 8, 6, 4, 2 (16 = fp16).
    clusters:  weight-sharing codebook size, 0 = off, else 2..256.
    abits:     input activation bits, one of 32, 16, 8 (16 = fp16).
    drop:      remove the residual block this layer belongs to (the block becomes its identity
               shortcut); only for layers of a removable block (``ModelAnalysis.blocks()``), and
               any layer of a block asking removes the whole block.
    bias_bits: bits of the stored bias, 32 or 16: at 16 the bias is rounded to fp16 and held there
               (not trained further), so the model computes with exactly what is stored. Not a
               search knob: a storage choice for size budgets (a LeNet-5's biases are a fifth of
               its Deep-Compressed bytes at fp32).
    """

    keep: float = 1.0
    rank: float = 1.0
    sparsity: float = 0.0
    wbits: int = 32
    clusters: int = 0
    abits: int = 32
    drop: bool = False
    bias_bits: int = 32

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, layer: str = "") -> None:
        where = f"layer {layer!r}: " if layer else ""

        def bad(name: str, value: Any, valid: str) -> PolicyError:
            return PolicyError(f"{where}{name} = {value!r} is invalid; valid: {valid}")

        for name in ("keep", "rank", "sparsity"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad(name, value, "a number")
        for name in ("wbits", "clusters", "abits", "bias_bits"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad(name, value, "an integer")
        if not isinstance(self.drop, bool):
            raise bad("drop", self.drop, "true or false")
        if not 0 < self.keep <= 1:
            raise bad("keep", self.keep, "0 < keep <= 1")
        if not 0 < self.rank <= 1:
            raise bad("rank", self.rank, "0 < rank <= 1")
        if not 0 <= self.sparsity < 1:
            raise bad("sparsity", self.sparsity, "0 <= sparsity < 1")
        if self.wbits not in WBITS:
            raise bad("wbits", self.wbits, ", ".join(map(str, WBITS)))
        if self.clusters != 0 and not 2 <= self.clusters <= 256:
            raise bad("clusters", self.clusters, "0 (off) or 2..256")
        if self.abits not in ABITS:
            raise bad("abits", self.abits, ", ".join(map(str, ABITS)))
        if self.bias_bits not in BIAS_BITS:
            raise bad("bias_bits", self.bias_bits, ", ".join(map(str, BIAS_BITS)))

    @property
    def is_identity(self) -> bool:
        return self == LayerPolicy()

    def to_dict(self) -> dict[str, Any]:
        """Only the fields that differ from the defaults (compact, readable policy files)."""
        default = LayerPolicy()
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != getattr(default, f.name)
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], layer: str = "") -> LayerPolicy:
        if not isinstance(data, Mapping):
            raise PolicyError(f"layer {layer!r}: expected a mapping of fields, got {type(data).__name__}")
        valid = [f.name for f in fields(cls)]
        for key in data:
            if key not in valid:
                raise PolicyError(
                    f"layer {layer!r}: unknown field {key!r}.{did_you_mean(str(key), valid)} "
                    f"Valid fields: {', '.join(valid)}"
                )
        obj = cls.__new__(cls)
        for f in fields(cls):
            object.__setattr__(obj, f.name, data.get(f.name, f.default))
        obj.validate(layer)
        return obj


@dataclass
class Policy:
    """Layer name -> LayerPolicy for one base model.

    ``base`` identifies that model (``model`` name, ``input_shape``,
    ``num_classes``, optionally ``checkpoint``); ``meta`` carries scores and
    provenance written by searches (free-form JSON). ``round_to`` is the
    rounding of kept channels and ranks (1: exactly as asked; searches use
    their ``search.round_to``); ``applied`` records what compressing with
    this policy produced (see the module docstring).
    """

    layers: dict[str, LayerPolicy]
    base: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    version: int = POLICY_SCHEMA_VERSION
    round_to: int = 1
    applied: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, lp in self.layers.items():
            if not isinstance(lp, LayerPolicy):
                raise PolicyError(f"layer {name!r}: expected a LayerPolicy, got {type(lp).__name__}")
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1:
            raise PolicyError(f"round_to = {self.round_to!r} is invalid; valid: an integer >= 1")
        self.applied = _check_applied(self.applied)

    def replace(self, **changes: Any) -> Policy:
        """A copy with ``changes`` (any field); ``applied`` is dropped unless given, since it described the old one."""
        return Policy(
            changes.get("layers", dict(self.layers)),
            changes.get("base", dict(self.base)),
            changes.get("meta", dict(self.meta)),
            changes.get("version", self.version),
            changes.get("round_to", self.round_to),
            changes.get("applied", {}),
        )

    def get(self, name: str) -> LayerPolicy:
        return self.layers.get(name, LayerPolicy())

    @classmethod
    def uniform(
        cls,
        model: nn.Module | Iterable[str],
        *,
        base: dict[str, Any] | None = None,
        exclude: Iterable[str] = (),
        round_to: int = 1,
        **fields_: Any,
    ) -> Policy:
        """The same choice on every compressible layer (conv and linear) of ``model``."""
        names = list(compressible_layers(model)) if isinstance(model, nn.Module) else list(model)
        lp = LayerPolicy.from_dict(fields_, "<uniform>")
        skip = set(exclude)
        return cls({n: lp for n in names if n not in skip}, base=dict(base or {}), round_to=round_to)

    def with_layer(self, name: str, **changes: Any) -> Policy:
        layers = dict(self.layers)
        layers[name] = replace(self.get(name), **changes)
        return self.replace(layers=layers)

    def with_applied(self, applied: Mapping[str, Mapping[str, Any]]) -> Policy:
        """This policy recording ``applied`` (``CompressionReport.applied()`` of compressing with it)."""
        return self.replace(applied={k: dict(v) for k, v in applied.items()})

    def check_layers(self, valid: Iterable[str]) -> None:
        """Raise for a layer name the model does not have, with a suggestion."""
        valid = list(valid)
        for name in self.layers:
            if name not in valid:
                raise PolicyError(
                    f"policy names layer {name!r}, which the model does not have.{did_you_mean(name, valid)} "
                    f"Compressible layers: {', '.join(valid)}"
                )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "edgecompress.policy",
            "version": POLICY_SCHEMA_VERSION,
            "round_to": self.round_to,
            "base": self.base,
            "layers": {name: lp.to_dict() for name, lp in self.layers.items()},
            "applied": self.applied,
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "policy") -> Policy:
        if not isinstance(data, Mapping) or data.get("format") != "edgecompress.policy":
            raise PolicyError(f"{source} is not an edgecompress policy (no 'format: edgecompress.policy')")
        version = data.get("version")
        if version not in READABLE_VERSIONS:
            raise PolicyError(
                f"{source} has policy schema version {version!r}; this edgecompress reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}"
            )
        layers = data.get("layers", {})
        if not isinstance(layers, Mapping):
            raise PolicyError(f"{source}: 'layers' must be a mapping of layer name to fields")
        unknown = set(data) - {"format", "version", "round_to", "base", "layers", "applied", "meta"}
        if unknown and version >= 2:  # version-1 files were read leniently; keep reading them
            raise PolicyError(f"{source}: unknown top-level keys {sorted(unknown)}")
        parsed = {str(name): LayerPolicy.from_dict(lp, str(name)) for name, lp in layers.items()}
        base = dict(data.get("base") or {})
        # Version 1 kept the rounding in base (where compress() ignored it); it is the rounding the search used.
        round_to = base.pop("round_to", 1) if version == 1 else data.get("round_to", 1)
        try:
            return cls(parsed, base, dict(data.get("meta") or {}), POLICY_SCHEMA_VERSION, round_to,
                       dict(data.get("applied") or {}))  # fmt: skip
        except PolicyError as exc:
            raise PolicyError(f"{source}: {exc}") from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: nn.Module | None = None) -> Policy:
        """Read and validate a policy file; with ``model``, also check every layer name."""
        data = read_json(path, "policy file", PolicyError)
        policy = cls.from_dict(data, str(path))
        if model is not None:
            policy.check_layers(compressible_layers(model))
        return policy

    def summary(self) -> dict[str, Any]:
        return {name: asdict(lp) for name, lp in self.layers.items()}


def _check_applied(applied: Any) -> dict[str, dict[str, Any]]:
    """Validate an ``applied`` section: layer -> {channels: int, rank: int, act_range: [min, max]}."""
    if not isinstance(applied, Mapping):
        raise PolicyError(f"'applied' must map layer names to records, got {type(applied).__name__}")
    out: dict[str, dict[str, Any]] = {}
    for layer, record in applied.items():
        if not isinstance(record, Mapping):
            raise PolicyError(f"applied[{layer!r}] must be a mapping, got {type(record).__name__}")
        for key, value in record.items():
            if key not in APPLIED_FIELDS:
                raise PolicyError(
                    f"applied[{layer!r}]: unknown field {key!r}.{did_you_mean(str(key), APPLIED_FIELDS)} "
                    f"Valid fields: {', '.join(f'{k} ({v})' for k, v in APPLIED_FIELDS.items())}"
                )
            if key == "act_range":
                ok = (isinstance(value, (list, tuple)) and len(value) == 2
                      and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
                      and value[0] <= value[1])  # fmt: skip
                if not ok:
                    raise PolicyError(f"applied[{layer!r}].act_range = {value!r} is invalid; valid: [min, max]")
            elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PolicyError(f"applied[{layer!r}].{key} = {value!r} is invalid; valid: an integer >= 1")
        out[str(layer)] = dict(record)
    return out
