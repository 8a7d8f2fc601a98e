"""What a model is fed: an input shape, or example inputs (a tensor, a tuple of tensors, a dict of tensors).

Every function of edgecompress that takes ``input_shape`` takes either:

* a shape, ``(1, 3, 96, 96)`` (a tuple or list of ints): the model is fed zeros of that shape;
* example inputs: one tensor (``model(x)``), a tuple of tensors (``model(*xs)``, e.g. a two-input
  model) or a dict of tensors (``model(**kw)``, e.g. ``{"image": ..., "mask": ...}``), used as given.

Analysis, latency tracing, torch-pruning's dependency graph, calibration and ONNX export all feed the
model through :func:`call`, so one rule holds everywhere. Batches of data follow the same rule: the
input part of a ``(inputs, target)`` pair may be a tensor, a tuple or a dict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

import torch

from edgecompress.errors import ConfigError

__all__ = [
    "ExampleInputs",
    "InputSpec",
    "batch_len",
    "call",
    "describe",
    "example",
    "is_shape",
    "move",
    "normalise",
    "shapes",
]

ExampleInputs: TypeAlias = torch.Tensor | tuple[torch.Tensor, ...] | dict[str, torch.Tensor]
InputSpec: TypeAlias = tuple[int, ...] | ExampleInputs


def is_shape(spec: Any) -> bool:
    """A shape: a non-empty tuple or list of positive ints (not tensors)."""
    return (
        isinstance(spec, (tuple, list))
        and len(spec) > 0
        and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in spec)
    )


def normalise(spec: Any, what: str = "input_shape") -> InputSpec:
    """``spec`` checked and in canonical form (a shape as a tuple, a list of tensors as a tuple)."""
    if is_shape(spec):
        return tuple(int(d) for d in spec)
    if isinstance(spec, torch.Tensor):
        return spec
    if isinstance(spec, Mapping) and spec and all(isinstance(k, str) for k in spec):
        if all(isinstance(v, torch.Tensor) for v in spec.values()):
            return dict(spec)
    elif isinstance(spec, (tuple, list)) and spec and all(isinstance(t, torch.Tensor) for t in spec):
        return tuple(spec)
    raise ConfigError(
        f"{what} = {_brief(spec)}: not a shape or example inputs. Valid: a shape such as (1, 3, 96, 96), one "
        "tensor (model(x)), a tuple of tensors (model(*inputs)) or a dict of tensors (model(**inputs))"
    )


def _brief(spec: Any) -> str:
    text = repr(spec)
    return text if len(text) <= 80 else text[:77] + "..."


def example(spec: InputSpec) -> ExampleInputs:
    """The inputs to feed: zeros for a shape, the example inputs themselves otherwise."""
    spec = normalise(spec)
    if is_shape(spec):
        return torch.zeros(tuple(spec))  # type: ignore[arg-type]
    return spec  # type: ignore[return-value]


def call(model: Any, inputs: Any) -> Any:
    """``model(x)``, ``model(*xs)`` or ``model(**kw)`` as ``inputs`` is a tensor, a tuple/list or a dict."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def move(inputs: Any, device: Any, **kwargs: Any) -> Any:
    """``inputs`` (a tensor, tuple/list or dict of tensors) moved with ``Tensor.to(device, **kwargs)``."""
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device, **kwargs)
    if isinstance(inputs, Mapping):
        return {k: move(v, device, **kwargs) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(move(v, device, **kwargs) for v in inputs)
    return inputs


def batch_len(inputs: Any) -> int:
    """The batch size of ``inputs``: the first dimension of its first tensor."""
    if isinstance(inputs, torch.Tensor):
        return int(inputs.shape[0])
    if isinstance(inputs, Mapping):
        return batch_len(next(iter(inputs.values())))
    if isinstance(inputs, Sequence) and inputs:
        return batch_len(inputs[0])
    raise ConfigError(f"cannot tell the batch size of {_brief(inputs)}")


def shapes(spec: InputSpec) -> list[int] | list[list[int]] | dict[str, list[int]]:
    """The JSON form run records and policy files keep: one shape, a list of shapes, or a dict of shapes."""
    spec = normalise(spec)
    if is_shape(spec):
        return list(spec)  # type: ignore[arg-type]
    if isinstance(spec, torch.Tensor):
        return list(spec.shape)
    if isinstance(spec, dict):
        return {k: list(v.shape) for k, v in spec.items()}
    return [list(t.shape) for t in spec]  # type: ignore[union-attr]


def describe(spec: InputSpec) -> str:
    """A short text for reports: ``(1, 3, 96, 96)``, ``2 inputs (1, 3, 32, 32), (1, 8)``, ``image (..), ..``."""
    got = shapes(spec)
    if isinstance(got, dict):
        return ", ".join(f"{k} {tuple(v)}" for k, v in got.items())
    if got and isinstance(got[0], list):
        return f"{len(got)} inputs " + ", ".join(str(tuple(s)) for s in got)  # type: ignore[arg-type]
    return str(tuple(got))
