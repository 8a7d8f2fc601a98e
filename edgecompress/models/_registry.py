"""Model registry: built-in small-input models, torchvision models, user factories.

``create_model`` accepts three kinds of names:

* a built-in name (``list_models()``), registered with :func:`register_model`;
* ``torchvision:NAME`` for any torchvision classification model, built without
  pretrained weights (nothing is downloaded) and adapted to ``in_channels``;
* ``package.module:factory`` for a user model; the factory is called with the
  keyword arguments it accepts among ``num_classes``, ``in_channels`` and
  ``input_size``.

A built-in model may name its family (``cifar-resnet``, ``mobilenetv2``, ...):
:func:`students_for` answers with the smaller members of a model's family, the
compact students distillation can train from it.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn

from edgecompress.errors import ModelError, did_you_mean

__all__ = ["ModelEntry", "create_model", "is_user_factory", "list_models", "register_model", "students_for"]

Factory = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    factory: Factory
    description: str
    family: str | None = None
    """Models of one family share their design and differ in depth or width (:func:`students_for`)."""


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, description: str, *, family: str | None = None) -> Callable[[Factory], Factory]:
    """Decorator registering ``factory(num_classes, in_channels, input_size)`` under ``name``, in ``family``."""

    def deco(factory: Factory) -> Factory:
        if name in _REGISTRY:
            raise ModelError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelEntry(name, factory, description, family)
        return factory

    return deco


def list_models() -> list[str]:
    """Names of the built-in models (``torchvision:NAME`` and user factories come on top)."""
    return sorted(_REGISTRY)


def model_descriptions() -> dict[str, str]:
    return {name: _REGISTRY[name].description for name in list_models()}


@functools.cache
def _param_count(name: str) -> int:
    """Parameters of the built-in ``name`` at 28x28, 1 channel, 10 classes (the scale students are ranked on)."""
    model = _REGISTRY[name].factory(num_classes=10, in_channels=1, input_size=28)
    return sum(p.numel() for p in model.parameters())


def students_for(name: str) -> list[str]:
    """The built-in models of ``name``'s family with fewer parameters than ``name``, smallest first.

    Parameters are counted at 28x28, 1 channel, 10 classes (ties broken by
    name). A name outside the built-in registry (``torchvision:NAME``, a user
    factory) or a model registered without a family has no students: ``[]``.
    """
    entry = _REGISTRY.get(name)
    if entry is None or entry.family is None:
        return []
    size = _param_count(name)
    family = [n for n, e in _REGISTRY.items() if e.family == entry.family and n != name]
    return sorted((n for n in family if _param_count(n) < size), key=lambda n: (_param_count(n), n))


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ModelError(f"{name} must be a positive integer, got {value!r}")


def is_user_factory(name: str) -> bool:
    """``package.module:function``: a name ``create_model`` imports (running that module's code) to build."""
    return ":" in name and not name.startswith("torchvision:") and name not in _REGISTRY


def create_model(name: str, num_classes: int = 10, in_channels: int = 1, *, input_size: int = 28) -> nn.Module:
    """Build a fresh (randomly initialised) model by name.

    Unknown names raise :class:`ModelError` listing the known names, with a
    "did you mean" suggestion.
    """
    _check_positive("num_classes", num_classes)
    _check_positive("in_channels", in_channels)
    _check_positive("input_size", input_size)
    if name.startswith("torchvision:"):
        return _torchvision_model(name.split(":", 1)[1], num_classes, in_channels)
    if name in _REGISTRY:
        return _REGISTRY[name].factory(num_classes=num_classes, in_channels=in_channels, input_size=input_size)
    if is_user_factory(name):
        return _user_model(name, num_classes, in_channels, input_size)
    raise ModelError(
        f"unknown model {name!r}.{did_you_mean(name, list_models())} Known models: "
        f"{', '.join(list_models())}; also 'torchvision:NAME' (e.g. torchvision:resnet18) "
        "or a user factory 'package.module:function'."
    )


def _torchvision_model(arch: str, num_classes: int, in_channels: int) -> nn.Module:
    import torchvision.models as tvm

    known = tvm.list_models(module=tvm)
    if arch not in known:
        raise ModelError(
            f"unknown torchvision model {arch!r}.{did_you_mean(arch, known)} "
            f"torchvision classification models: {', '.join(sorted(known))}"
        )
    model = tvm.get_model(arch, weights=None, num_classes=num_classes)
    if in_channels != 3:
        _adapt_first_conv(model, in_channels, arch)
    return model


def _adapt_first_conv(model: nn.Module, in_channels: int, arch: str) -> None:
    """Replace the first 3-channel convolution by one taking ``in_channels`` inputs."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == 3:
                new = nn.Conv2d(
                    in_channels,
                    child.out_channels,
                    kernel_size=child.kernel_size,  # type: ignore[arg-type]
                    stride=child.stride,  # type: ignore[arg-type]
                    padding=child.padding,  # type: ignore[arg-type]
                    dilation=child.dilation,  # type: ignore[arg-type]
                    groups=child.groups,
                    bias=child.bias is not None,
                )
                setattr(parent, child_name, new)
                return
    raise ModelError(f"torchvision model {arch!r} has no 3-channel input convolution to adapt to {in_channels}")


def _user_model(spec: str, num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"cannot import {module_name!r} for user model {spec!r}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelError(f"{module_name!r} has no callable {attr!r} (user model {spec!r})")
    offered = {"num_classes": num_classes, "in_channels": in_channels, "input_size": input_size}
    params = inspect.signature(factory).parameters
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in offered.items() if takes_kwargs or k in params}
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise ModelError(f"user factory {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model
