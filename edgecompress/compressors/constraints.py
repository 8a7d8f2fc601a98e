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
    "QDQActivation",
    "QDQWeight",
    "SharedWeights",
    "WeightFakeQuant",
    "attach_input_quantizer",
    "effective_weight",
    "qdq_view",
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


class QDQWeight(nn.Module):
    """A weight on its trained per-output-channel grid, written so that ONNX export emits a
    QuantizeLinear/DequantizeLinear pair with exactly these scales (zero point 0: symmetric)."""

    scale: torch.Tensor
    zero_point: torch.Tensor

    def __init__(self, scale: torch.Tensor, bits: int) -> None:
        super().__init__()
        self.bits = bits
        self.register_buffer("scale", scale.detach().reshape(-1).to(torch.float32).clone())
        self.register_buffer("zero_point", torch.zeros(self.scale.numel(), dtype=torch.int32))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        # int8 storage for every bit width <= 8: a 4-bit grid's levels lie in [-7, 7], inside int8's range
        return torch.fake_quantize_per_channel_affine(w, self.scale, self.zero_point, 0, -128, 127)


class QDQActivation(nn.Module):
    """A layer input quantized with fixed (trained) parameters: a QuantizeLinear/DequantizeLinear pair in ONNX.

    Asymmetric uint8 (what :class:`ActFakeQuant` trains) or, ``symmetric``, int8 with zero point 0 over the
    same range (what TensorRT's explicit quantization expects)."""

    def __init__(self, scale: float, zero_point: int, qmin: int, qmax: int) -> None:
        super().__init__()
        self.scale, self.zero_point, self.qmin, self.qmax = scale, zero_point, qmin, qmax

    @classmethod
    def from_trained(cls, quantizer: ActFakeQuant, *, symmetric: bool = False) -> QDQActivation:
        if not quantizer.calibrated:
            raise RuntimeError("activation quantizer used before calibration")
        if symmetric:
            bound = float(torch.maximum(quantizer.min_val.abs(), quantizer.max_val.abs()))
            return cls(float(torch.tensor(max(bound / 127.0, 1e-12), dtype=torch.float32)), 0, -128, 127)
        scale, zero_point = quantizer.scale_zero_point()
        return cls(float(scale), int(zero_point), 0, 255)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, self.qmin, self.qmax)

    def extra_repr(self) -> str:
        return f"scale={self.scale:.6g}, zero_point={self.zero_point}, range=[{self.qmin}, {self.qmax}]"


def qdq_view(model: nn.Module, *, symmetric: bool = False) -> tuple[nn.Module, dict[str, dict[str, Any]]]:
    """A copy for int8 export that keeps what training learned: every weight quantized to <= 8 bits becomes a
    :class:`QDQWeight` with the scales its fake quantizer used, every input quantizer of <= 8 bits a
    :class:`QDQActivation` with its trained range; all other constraints are folded as in :func:`float_view`.

    Returns the copy and, per layer, what it carries (``weight_bits``, ``weight_scale``, ``input_scale``,
    ``input_zero_point``) so the exported graph can be checked against it."""
    view = copy.deepcopy(model)
    weights: dict[str, tuple[torch.Tensor, int]] = {}
    for name, module in view.named_modules():
        chain = transforms(module)
        fake = next((t for t in chain if isinstance(t, WeightFakeQuant) and t.bits <= 8), None)
        if fake is None:
            continue
        w = module.parametrizations.weight.original.detach()  # type: ignore[union-attr,operator]
        for t in chain:  # the weight the quantizer saw: the original through the transforms before it
            if t is fake:
                break
            w = t(w)
        weights[name] = (_weight_scale(w, fake.bits).reshape(-1), fake.bits)
    bake(view)
    carried: dict[str, dict[str, Any]] = {}
    for name, module in view.named_modules():
        if name in weights:
            scale, bits = weights[name]
            register(module, QDQWeight(scale, bits))
            carried.setdefault(name, {}).update(weight_bits=bits, weight_scale=scale)
        quantizer = getattr(module, "input_quantizer", None)
        if isinstance(quantizer, ActFakeQuant):
            if quantizer.bits <= 8:
                qdq = QDQActivation.from_trained(quantizer, symmetric=symmetric)
                module.input_quantizer = qdq
                carried.setdefault(name, {}).update(input_scale=qdq.scale, input_zero_point=qdq.zero_point)
            else:
                for key, hook in list(module._forward_pre_hooks.items()):
                    if hook is _quantize_input:
                        del module._forward_pre_hooks[key]
                del module.input_quantizer
    return view.eval(), carried
