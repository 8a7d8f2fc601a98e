"""Quantization: per-layer fake quantization of weights and input activations.

Weights: symmetric, per output channel, ``wbits`` in {8, 6, 4, 2} (2^(b-1)-1
levels each side of zero) or fp16 rounding for 16. Activations: the layer's
input, per tensor, asymmetric uint8 for ``abits`` 8 with the range calibrated
on a few batches (min/max), fp16 rounding for 16. Both use the straight-through
estimator so distillation fine-tunes through them. Real int8/fp16 kernels are
the exporter's job; this module only simulates their numerics.
"""

from __future__ import annotations

import torch

import edgecompress.compressors.constraints as constraints
from edgecompress._inputs import call
from edgecompress.compressors.base import (
    CompressionContext,
    Knob,
    layers_asking,
    register_knob,
    register_technique,
    weight_modules,
)
from edgecompress.errors import PolicyError

__all__ = ["CALIBRATION_BATCHES", "Quantization"]

CALIBRATION_BATCHES = 4
"""Input batches 8-bit activation ranges are calibrated on (min/max), wherever a policy is applied."""


WBITS = register_knob(
    Knob(
        "wbits", "quantization", "choice", choices=(2, 4, 6, 8, 16, 32), help="weight bits (16 = fp16, 32 = unchanged)"
    )
)
ABITS = register_knob(
    Knob(
        "abits",
        "quantization",
        "choice",
        choices=(8, 16, 32),
        help="input activation bits (8 calibrated, 16 = fp16, 32 = unchanged)",
    )
)


@register_technique
class Quantization:
    name = "quantization"

    def apply(self, ctx: CompressionContext) -> None:
        for name in layers_asking(ctx, lambda lp: lp.wbits < 32 and lp.clusters == 0):
            bits = ctx.policy.get(name).wbits
            for _, m in weight_modules(ctx.model, name):
                constraints.register(m, constraints.WeightFakeQuant(bits))
            ctx.record(name, "wquant", wbits=bits)
        act = list(layers_asking(ctx, lambda lp: lp.abits < 32))
        if not act:
            return
        quantizers = []
        for name in act:
            bits = ctx.policy.get(name).abits
            first = weight_modules(ctx.model, name)[0][1]  # the factor that consumes the layer's input
            quantizers.append(constraints.attach_input_quantizer(first, bits))
            ctx.record(name, "aquant", abits=bits)
        to_calibrate = {n: q for n, q in zip(act, quantizers, strict=True) if q.bits == 8}
        if not to_calibrate:
            return
        if not ctx.calibration:
            recorded = {n: ctx.policy.applied.get(n, {}).get("act_range") for n in to_calibrate}
            missing = [n for n, r in recorded.items() if r is None]
            if missing:
                raise PolicyError(
                    f"layers {', '.join(missing)} ask for 8-bit activations and the policy records no calibrated "
                    "range for them: pass calibration_data (a few input batches) to compress()"
                )
            for name, q in to_calibrate.items():
                lo, hi = recorded[name]  # type: ignore[misc]
                q.min_val.fill_(lo)
                q.max_val.fill_(hi)
        else:
            was_training = ctx.model.training
            ctx.model.eval()
            for q in to_calibrate.values():
                q.observing = True
            with torch.no_grad():
                for x in ctx.calibration:
                    call(ctx.model, x)
            for q in to_calibrate.values():
                q.observing = False
            ctx.model.train(was_training)
        for name, q in to_calibrate.items():
            ctx.record(name, "aquant", abits=8, act_range=[float(q.min_val), float(q.max_val)])
