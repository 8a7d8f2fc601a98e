"""Weight and activation transforms that stay in force while a compressed model trains.

They are ``torch.nn.utils.parametrize`` parametrizations (weights) and a
forward pre-hook with a child module (activations), so fine-tuning and
distillation train *through* them: pruned weights cannot revive, shared weights
stay tied to their centroid, quantized weights stay on their grid (gradients
pass by the straight-through estimator).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

__all__ = [
    "ActFakeQuant",
    "Mask",
    "SharedWeights",
    "WeightFakeQuant",
    "attach_input_quantizer",
    "effective_weight",
    "weight_of",
]


class Mask(nn.Module):
    """Zero the pruned weights: ``w * mask``."""

    mask: torch.Tensor

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.float32))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


class SharedWeights(nn.Module):
    """Weights tied to a codebook: ``centroids[index]`` where ``keep`` else 0.

    The centroids are trainable; assignments (``index``) stay fixed. A
    centroid's gradient is the *mean* of its weights' gradients, where Deep
    Compression used the sum: with the sum, a centroid shared by thousands of
    weights takes a step thousands of times larger than a plain weight and
    fine-tuning diverges at ordinary learning rates.
    """

    index: torch.Tensor
    keep: torch.Tensor
    counts: torch.Tensor

    def __init__(self, centroids: torch.Tensor, index: torch.Tensor, keep: torch.Tensor) -> None:
        super().__init__()
        self.centroids = nn.Parameter(centroids.clone())
        self.register_buffer("index", index.to(torch.int64))
        self.register_buffer("keep", keep.to(torch.bool))
        counts = torch.bincount(index[keep].flatten(), minlength=centroids.numel()).clamp_min(1)
        self.register_buffer("counts", counts.to(centroids.dtype))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        c = self.centroids
        # Same values forward; gradient divided by the cluster size backward.
        scaled = c.detach() + (c - c.detach()) / self.counts
        return torch.where(self.keep, scaled[self.index], torch.zeros((), dtype=w.dtype))


def _ste(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Forward exactly ``q`` (bit for bit: ``x - x.detach()`` is 0), backward identity (straight-through)."""
    return q.detach() + (x - x.detach())


def _weight_scale(w: torch.Tensor, bits: int) -> torch.Tensor:
    qmax = 2 ** (bits - 1) - 1
    scale = (w.reshape(w.shape[0], -1).abs().amax(dim=1) / qmax).clamp_min(1e-12)
    return scale.view((-1,) + (1,) * (w.dim() - 1))


def quant_levels(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer levels in [-(2^(b-1)-1), 2^(b-1)-1] of symmetric per-output-channel quantization."""
    qmax = 2 ** (bits - 1) - 1
    return torch.clamp(torch.round(w / _weight_scale(w, bits)), -qmax, qmax).to(torch.int64)


def quantize_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-output-channel uniform quantization (fp16 rounding for 16 bits), dequantized."""
    if bits >= 32:
        return w
    if bits == 16:
        return w.half().float()
    return quant_levels(w, bits).to(w.dtype) * _weight_scale(w, bits)


class WeightFakeQuant(nn.Module):
    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return _ste(w, quantize_weight(w, self.bits))

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class ActFakeQuant(nn.Module):
    """Per-tensor activation fake quantization: asymmetric uint8 for 8 bits, fp16 rounding for 16.

    While ``observing`` it records the running min and max of what passes
    (calibration) and lets it through unchanged.
    """

    min_val: torch.Tensor
    max_val: torch.Tensor

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits
        self.observing = False
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))

    @property
    def calibrated(self) -> bool:
        return bool(torch.isfinite(self.min_val)) and bool(torch.isfinite(self.max_val))

    def scale_zero_point(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo = torch.clamp(self.min_val, max=0.0)  # the range must hold 0 exactly (zero padding)
        hi = torch.clamp(self.max_val, min=0.0)
        scale = ((hi - lo) / 255.0).clamp_min(1e-12)
        zero_point = torch.clamp(torch.round(-lo / scale), 0, 255)
        return scale, zero_point

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bits >= 32:
            return x
        if self.bits == 16:
            return _ste(x, x.half().float())
        if self.observing:
            self.min_val.copy_(torch.minimum(self.min_val, x.detach().min()))
            self.max_val.copy_(torch.maximum(self.max_val, x.detach().max()))
            return x
        if not self.calibrated:
            raise RuntimeError("activation quantizer used before calibration")
        scale, zp = self.scale_zero_point()
        q = torch.clamp(torch.round(x / scale) + zp, 0, 255)
        return _ste(x, (q - zp) * scale)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


def _quantize_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    quantizer = module.get_submodule("input_quantizer")
    return (quantizer(args[0]), *args[1:])


def attach_input_quantizer(module: nn.Module, bits: int) -> ActFakeQuant:
    quantizer = ActFakeQuant(bits)
    module.add_module("input_quantizer", quantizer)
    module.register_forward_pre_hook(_quantize_input)
    return quantizer


def weight_of(module: nn.Module) -> torch.Tensor:
    """``module.weight``, typed (a parametrized attribute evaluates its chain on access)."""
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight the module computes with (after masks, ties and quantization), detached."""
    return weight_of(module).detach()


def register(module: nn.Module, transform: nn.Module) -> None:
    parametrize.register_parametrization(module, "weight", transform)


def transforms(module: nn.Module) -> list[nn.Module]:
    if not parametrize.is_parametrized(module, "weight"):
        return []
    return list(module.parametrizations.weight)  # type: ignore[union-attr,arg-type]


def bake(model: nn.Module) -> nn.Module:
    """Fold every weight parametrization into a plain weight, in place (values kept; constraints dropped).

    Used to start a further compression stage from a fine-tuned compressed
    model (prune -> fine-tune -> share -> fine-tune, as Deep Compression does),
    and before export. Activation quantizers are left in place.
    """
    for module in list(model.modules()):
        if parametrize.is_parametrized(module, "weight"):
            # A deep copy of a parametrized module shares its generated class with the original, and
            # removing a parametrization edits that class: give this module a class of its own first.
            cls = module.__class__
            module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model


def float_view(model: nn.Module) -> nn.Module:
    """A copy with every constraint folded away: baked weights, no activation quantizers.

    What a float runtime executes; used to count operators and time layers
    without the fake-quantization arithmetic, which no deployment runs.
    """

    view = bake(copy.deepcopy(model))
    for module in view.modules():
        for key, hook in list(module._forward_pre_hooks.items()):
            if hook is _quantize_input:
                del module._forward_pre_hooks[key]
        if isinstance(getattr(module, "input_quantizer", None), ActFakeQuant):
            del module.input_quantizer
    return view
