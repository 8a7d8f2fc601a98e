"""``compress(model, policy)``: all techniques composed in one fixed, documented order.

Order: block removal -> structured pruning -> low-rank factorisation -> unstructured sparsity ->
weight sharing (layers with ``clusters``) or weight quantization (``wbits``)
-> activation quantization (``abits``, calibrated). Pruning first so later
steps work on the surviving channels; factorisation before sparsity so masks
apply to the factors actually run; sharing and quantization last because they
encode the final values; block removal first because every later step
skips the layers it removed. The input model is never modified (a deep copy is
compressed) and the same inputs give bit-identical outputs: every step is
deterministic (stable sorts, linear k-means initialisation, no sampling).

Everything that decides the model's structure comes from the policy (its
``round_to`` included), so ``compress(model, policy)`` has no structural
argument to get wrong. A policy that records what was applied (``applied``)
is checked against what this call produced, and its recorded 8-bit
activation ranges are used when no calibration data is given.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn

# Importing the technique modules registers them.
import edgecompress.compressors.lowrank
import edgecompress.compressors.sharing
import edgecompress.compressors.structured
import edgecompress.compressors.unstructured  # noqa: F401
from edgecompress._inputs import ExampleInputs, InputSpec, is_shape, normalise
from edgecompress.analysis import ModelAnalysis, analyze_model, measure_layers
from edgecompress.compressors.base import TECHNIQUES, CompressionContext, layers_asking, weight_modules
from edgecompress.compressors.depth import removed_layers
from edgecompress.compressors.policy import Policy
from edgecompress.compressors.quantization import CALIBRATION_BATCHES
from edgecompress.compressors.report import CompressionReport, LayerReport, module_storage
from edgecompress.errors import PolicyError

__all__ = ["ORDER", "compress", "report_for"]

ORDER = ("depth", "structured", "lowrank", "unstructured", "sharing", "quantization")


def _calibration_batches(data: Any, limit: int) -> list[Any]:
    """Input batches: a tensor, dict or tuple of tensors each (a pair's first item when items are pairs)."""
    if data is None:
        return []
    if isinstance(data, torch.Tensor):
        return [data]
    out: list[Any] = []
    for item in data:
        x = item[0] if isinstance(item, (tuple, list)) else item
        ok = isinstance(x, torch.Tensor) or (
            isinstance(x, (tuple, list, dict)) and all(isinstance(t, torch.Tensor) for t in
                                                       (x.values() if isinstance(x, dict) else x))
        )  # fmt: skip
        if not ok:
            raise PolicyError(
                "calibration_data must yield input batches (a tensor, or a tuple or dict of tensors) or "
                f"(inputs, target) pairs, got {type(x).__name__}"
            )
        out.append(x)
        if len(out) >= limit:
            break
    return out


def compress(
    model: nn.Module,
    policy: Policy,
    calibration_data: torch.Tensor | Iterable[Any] | None = None,
    *,
    input_shape: InputSpec | None = None,
    example_inputs: ExampleInputs | None = None,
    analysis: ModelAnalysis | None = None,
    importance: str = "l1",
    unstructured: str = "magnitude",
    calibration_batches: int = CALIBRATION_BATCHES,
) -> tuple[nn.Module, CompressionReport]:
    """Apply ``policy`` to a copy of ``model``; return the compressed copy (eval mode) and its report.

    ``input_shape`` (a shape, fed as zeros) or ``example_inputs`` (a tensor, a tuple of tensors for
    ``model(*inputs)``, a dict for ``model(**inputs)``) is what the model is traced on; it defaults to the
    analysis's, then to the policy's ``base["input_shape"]`` (a single-input shape); pass the
    base model's ``analysis`` to skip recomputing it (searches call this often).
    Kept channels and ranks round up to ``policy.round_to``.
    ``calibration_data`` (input batches or (input, target) pairs; the first
    ``calibration_batches`` are used) calibrates the layers asking for 8-bit
    activations; without it, the ranges ``policy.applied`` records are used,
    and a layer with neither is an error.
    """
    if example_inputs is not None:
        if input_shape is not None:
            raise PolicyError("compress() takes input_shape or example_inputs, not both")
        input_shape = normalise(example_inputs, "example_inputs")
    if input_shape is None:
        if analysis is not None:
            input_shape = analysis.input_shape
        elif "input_shape" in policy.base and is_shape(policy.base["input_shape"]):
            input_shape = tuple(policy.base["input_shape"])
        else:
            raise PolicyError(
                "compress() needs input_shape or example_inputs (or a policy whose base names a single input shape)"
            )
    if analysis is None:
        analysis = analyze_model(model, input_shape)
    policy.check_layers([s.name for s in analysis.layers])
    new = copy.deepcopy(model).eval()
    ctx = CompressionContext(
        model=new,
        policy=policy,
        analysis=analysis,
        calibration=_calibration_batches(calibration_data, calibration_batches),
        options={"importance": importance, "round_to": policy.round_to, "unstructured": unstructured},
    )
    # torch-pruning traces the graph with autograd, so gradients are on even inside a caller's no_grad()
    # (load_compressed under no_grad rebuilt an unpruned model). Techniques detach themselves.
    with torch.enable_grad():
        for name in ORDER:
            TECHNIQUES[name].apply(ctx)
    _hold_biases(ctx)
    new.eval()
    report = _report(ctx, model)
    _check_recorded(policy, report)
    return new, report


def _hold_biases(ctx: CompressionContext) -> None:
    """``bias_bits`` 16: round each bias to fp16 and hold it there (``requires_grad`` off), so fine-tuning
    leaves the model computing with exactly the bias it stores."""
    fp16_max = float(torch.finfo(torch.float16).max)
    for name in layers_asking(ctx, lambda lp: lp.bias_bits == 16):
        held = 0
        for module_name, m in weight_modules(ctx.model, name):
            bias = getattr(m, "bias", None)
            if not isinstance(bias, nn.Parameter):
                continue
            largest = float(bias.detach().abs().max())
            if largest > fp16_max:
                raise PolicyError(
                    f"layer {name!r}: bias_bits = 16, but {module_name}.bias holds {largest:g}, beyond fp16's "
                    f"largest value {fp16_max:g}; keep bias_bits = 32 for this layer"
                )
            with torch.no_grad():
                bias.copy_(bias.half().float())
            bias.requires_grad_(False)
            held += bias.numel()
        if held:
            ctx.record(name, "bias", bits=16, values=held)


def _check_recorded(policy: Policy, report: CompressionReport) -> None:
    """Refuse to return a model other than the one the policy records having been applied."""
    got = report.applied()
    for layer, record in policy.applied.items():
        for key in ("channels", "rank"):
            if key in record and got.get(layer, {}).get(key) != record[key]:
                raise PolicyError(
                    f"policy records layer {layer!r} with {key} {record[key]}, but compressing with it gives "
                    f"{got.get(layer, {}).get(key, 'the layer unchanged')} (round_to {policy.round_to}); the policy "
                    "was edited or made by another version. Delete its 'applied' section to accept the new model."
                )


def _report(ctx: CompressionContext, base: nn.Module) -> CompressionReport:
    model = ctx.model
    after = measure_layers(model, ctx.input_shape)
    layers: list[LayerReport] = []
    peak_before = peak_after = 0
    for spec in ctx.analysis.layers:
        mods = [] if spec.name in ctx.removed else weight_modules(model, spec.name)
        names = [n for n, _ in mods]
        recs = [after[n] for n in names if n in after]
        stored = huff = params = nonzero = 0
        encodings: list[str] = []
        lp = ctx.policy.get(spec.name)
        for _, m in mods:
            sizes, p, nz = module_storage(m, bias_bits=lp.bias_bits)
            stored += sizes.stored_bytes
            huff += sizes.huffman_bytes
            params += p
            nonzero += nz
            encodings.append(sizes.encoding)
        out_after = recs[-1]["out_channels"] if recs else 0
        layers.append(
            LayerReport(
                name=spec.name,
                kind=spec.kind,
                params_before=spec.params,
                params_after=params,
                nonzero_after=nonzero,
                macs_before=spec.macs,
                macs_after=sum(r["macs"] for r in recs),
                dense_bytes_before=spec.weight_bytes,
                dense_bytes_after=params * 4,
                stored_bytes_after=stored,
                huffman_bytes_after=huff,
                out_channels_before=spec.out_channels,
                out_channels_after=out_after,
                encoding="removed" if spec.name in ctx.removed else "+".join(encodings),
                applied=ctx.details.get(spec.name, {}),
            )
        )
        in_before = spec.in_channels * spec.in_hw[0] * spec.in_hw[1]
        peak_before = max(peak_before, 4 * in_before + spec.activation_bytes)
        if recs:
            first, last = recs[0], recs[-1]
            in_after = first["in_channels"] * first["in_hw"][0] * first["in_hw"][1]
            in_bytes = -(-in_after * lp.abits // 8)
            peak_after = max(peak_after, in_bytes + last["activation_bytes"])
        _check_achieved(ctx, spec.name, spec.out_channels, out_after, lp)
    return CompressionReport(
        layers=layers,
        peak_activation_bytes_before=peak_before,
        peak_activation_bytes_after=peak_after,
        model_params_before=sum(p.numel() for p in base.parameters()),
        model_params_after=sum(p.numel() for p in model.parameters()),
        skipped=list(ctx.skipped),
        warnings=list(ctx.warnings),
    )


def _check_achieved(ctx: CompressionContext, name: str, c_before: int, c_after: int, lp: Any) -> None:
    """Warn where what was achieved differs from what was asked by more than rounding explains."""
    if name in ctx.removed:
        return
    skipped = {s.technique for s in ctx.skipped if s.layer == name}
    if lp.keep < 1 and "structured" not in skipped and c_before:
        achieved = c_after / c_before
        step = max(1, int(getattr(ctx.policy, "round_to", 1) or 1))  # kept channels round up to a multiple of it
        if abs(achieved - lp.keep) > step / c_before:
            ctx.warnings.append(f"{name}: keep asked {lp.keep:.3f}, achieved {achieved:.3f} ({c_after}/{c_before})")
    info = ctx.details.get(name, {}).get("unstructured")
    if info and abs(info["achieved"] - lp.sparsity) > 1.0 / max(info["weights"], 1) + 1e-9:
        ctx.warnings.append(f"{name}: sparsity asked {lp.sparsity:.3f}, achieved {info['achieved']:.3f}")


def report_for(model: nn.Module, base: nn.Module, policy: Policy, analysis: ModelAnalysis) -> CompressionReport:
    """The size/MACs report of an already compressed ``model`` (e.g. after fine-tuning changed its values)."""
    ctx = CompressionContext(model=model, policy=policy, analysis=analysis, removed=removed_layers(policy, analysis))
    return _report(ctx, base)
