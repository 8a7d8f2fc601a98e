"""Compression policies: one :class:`LayerPolicy` per compressible layer.

A policy is data, not code: it round-trips through JSON (``Policy.save`` /
``Policy.load``), names the base model it was made for, and is validated on
load. Every field's default means "unchanged", so a layer missing from a
policy is left as it is.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch.nn as nn

from edgecompress._io import read_json, write_json_atomic
from edgecompress.errors import PolicyError, did_you_mean

__all__ = ["ABITS", "POLICY_SCHEMA_VERSION", "WBITS", "LayerPolicy", "Policy"]

POLICY_SCHEMA_VERSION = 1
WBITS = (32, 16, 8, 6, 4, 2)
ABITS = (32, 16, 8)


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
    """

    keep: float = 1.0
    rank: float = 1.0
    sparsity: float = 0.0
    wbits: int = 32
    clusters: int = 0
    abits: int = 32
    drop: bool = False

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
        for name in ("wbits", "clusters", "abits"):
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
    provenance written by searches (free-form JSON).
    """

    layers: dict[str, LayerPolicy]
    base: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    version: int = POLICY_SCHEMA_VERSION

    def __post_init__(self) -> None:
        for name, lp in self.layers.items():
            if not isinstance(lp, LayerPolicy):
                raise PolicyError(f"layer {name!r}: expected a LayerPolicy, got {type(lp).__name__}")

    def get(self, name: str) -> LayerPolicy:
        return self.layers.get(name, LayerPolicy())

    @classmethod
    def uniform(
        cls,
        model: nn.Module | Iterable[str],
        *,
        base: dict[str, Any] | None = None,
        exclude: Iterable[str] = (),
        **fields_: Any,
    ) -> Policy:
        """The same choice on every compressible layer (conv and linear) of ``model``."""
        from edgecompress.analysis import compressible_layers

        names = list(compressible_layers(model)) if isinstance(model, nn.Module) else list(model)
        lp = LayerPolicy.from_dict(fields_, "<uniform>")
        skip = set(exclude)
        return cls({n: lp for n in names if n not in skip}, base=dict(base or {}))

    def with_layer(self, name: str, **changes: Any) -> Policy:
        layers = dict(self.layers)
        layers[name] = replace(self.get(name), **changes)
        return Policy(layers, dict(self.base), dict(self.meta), self.version)

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
            "version": self.version,
            "base": self.base,
            "layers": {name: lp.to_dict() for name, lp in self.layers.items()},
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "policy") -> Policy:
        if not isinstance(data, Mapping) or data.get("format") != "edgecompress.policy":
            raise PolicyError(f"{source} is not an edgecompress policy (no 'format: edgecompress.policy')")
        if data.get("version") != POLICY_SCHEMA_VERSION:
            raise PolicyError(
                f"{source} has policy schema version {data.get('version')!r}; this edgecompress reads "
                f"version {POLICY_SCHEMA_VERSION}"
            )
        layers = data.get("layers", {})
        if not isinstance(layers, Mapping):
            raise PolicyError(f"{source}: 'layers' must be a mapping of layer name to fields")
        parsed = {str(name): LayerPolicy.from_dict(lp, str(name)) for name, lp in layers.items()}
        return cls(parsed, dict(data.get("base") or {}), dict(data.get("meta") or {}), POLICY_SCHEMA_VERSION)

    def save(self, path: str | os.PathLike[str]) -> Path:
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: nn.Module | None = None) -> Policy:
        """Read and validate a policy file; with ``model``, also check every layer name."""
        data = read_json(path, "policy file", PolicyError)
        policy = cls.from_dict(data, str(path))
        if model is not None:
            from edgecompress.analysis import compressible_layers

            policy.check_layers(compressible_layers(model))
        return policy

    def summary(self) -> dict[str, Any]:
        return {name: asdict(lp) for name, lp in self.layers.items()}
