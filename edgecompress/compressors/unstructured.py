"""Unstructured pruning: per-layer magnitude pruning, or Lookahead pruning (Park et al., ICLR 2020).

``sparsity`` s zeroes floor(s x N) of a layer's N weights (every factor of a
factorised layer). Magnitude scores |w|. Lookahead scores
|w[j, k]| x ||w_prev[k, :]|| x ||w_next[:, j]||: the weight's magnitude times
the norm of the weights feeding its input channel k and of those reading its
output channel j. Neighbours are the adjacent layers in forward order when
their channel counts connect (a depthwise next layer uses its own filter j);
where they do not (flatten, residual joins) that factor is 1. The masks are
parametrizations, so fine-tuning cannot revive a pruned weight.
"""

from __future__ import annotations

import torch
import torch.nn as nn

import edgecompress.compressors.constraints as constraints
from edgecompress._inputs import InputSpec
from edgecompress.analysis import measure_layers
from edgecompress.compressors.base import (
    CompressionContext,
    Knob,
    layers_asking,
    register_knob,
    register_technique,
    weight_modules,
)
from edgecompress.compressors.constraints import effective_weight
from edgecompress.errors import PolicyError

METHODS = ("magnitude", "lookahead")


def forward_order(model: nn.Module, input_shape: InputSpec) -> list[nn.Module]:
    """Conv and linear modules in the order a forward pass calls them."""

    return [model.get_submodule(name) for name in measure_layers(model, input_shape)]


def _out_norms(m: nn.Module) -> torch.Tensor:
    w = effective_weight(m)
    return w.reshape(w.shape[0], -1).norm(dim=1)


def _in_norms(m: nn.Module) -> torch.Tensor:
    w = effective_weight(m)
    if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels:
        return w.reshape(w.shape[0], -1).norm(dim=1)  # depthwise: input channel j is filter j
    return w.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1)


def _in_ch(m: nn.Module) -> int:
    return m.in_channels if isinstance(m, nn.Conv2d) else m.in_features  # type: ignore[return-value]


def _out_ch(m: nn.Module) -> int:
    return m.out_channels if isinstance(m, nn.Conv2d) else m.out_features  # type: ignore[return-value]


def lookahead_scores(module: nn.Module, prev: nn.Module | None, nxt: nn.Module | None) -> torch.Tensor:
    w = effective_weight(module)
    scores = w.abs()
    grouped = isinstance(module, nn.Conv2d) and module.groups > 1
    if prev is not None and _out_ch(prev) == _in_ch(module) and not grouped:
        shape = [1, -1] + [1] * (w.dim() - 2)
        scores = scores * _out_norms(prev).view(shape)
    if nxt is not None and _in_ch(nxt) == _out_ch(module):
        if not (isinstance(nxt, nn.Conv2d) and nxt.groups > 1 and nxt.groups != nxt.in_channels):
            shape = [-1] + [1] * (w.dim() - 1)
            scores = scores * _in_norms(nxt).view(shape)
    return scores


def magnitude_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Mask keeping all but the floor(sparsity x N) lowest scores (ties: lowest index pruned first)."""
    n_prune = int(sparsity * scores.numel())
    mask = torch.ones(scores.numel())
    if n_prune > 0:
        order = torch.argsort(scores.flatten(), stable=True)
        mask[order[:n_prune]] = 0.0
    return mask.view_as(scores)


def staged_sparsity(final: float, stage: int, stages: int) -> float:
    """A layer's sparsity after ``stage`` of ``stages`` when each stage removes the same fraction of the
    surviving weights (density ``(1 - final) ** (stage / stages)``), rounded to 5 decimals; gradual pruning
    reaches high sparsity with far less damage per stage than equal steps in sparsity, which leave most of the
    pruning to the last stage."""
    if not 0 < stage <= stages:
        raise ValueError(f"stage {stage} is not in 1..{stages}")
    return round(1 - (1 - final) ** (stage / stages), 5)


SPARSITY = register_knob(
    Knob("sparsity", "unstructured", "float", low=0.0, high=0.9, movable="high", help="fraction of weights zeroed")
)


@register_technique
class UnstructuredPruning:
    name = "unstructured"

    def apply(self, ctx: CompressionContext) -> None:
        names = list(layers_asking(ctx, lambda lp: lp.sparsity > 0))
        if not names:
            return
        method = str(ctx.options.get("unstructured", "magnitude"))
        if method not in METHODS:
            raise PolicyError(f"unknown unstructured pruning method {method!r}; valid: {', '.join(METHODS)}")
        order = forward_order(ctx.model, ctx.input_shape) if method == "lookahead" else []
        position = {id(m): i for i, m in enumerate(order)}
        # Lookahead scores use the weights before any layer of this pass is masked (the paper's one-shot form).
        plans: list[tuple[str, nn.Module, torch.Tensor, float]] = []
        for name in names:
            sparsity = ctx.policy.get(name).sparsity
            for _, m in weight_modules(ctx.model, name):
                if method == "lookahead" and id(m) in position:
                    i = position[id(m)]
                    prev = order[i - 1] if i > 0 else None
                    nxt = order[i + 1] if i + 1 < len(order) else None
                    scores = lookahead_scores(m, prev, nxt)
                else:
                    scores = effective_weight(m).abs()
                plans.append((name, m, scores, sparsity))
        zeros: dict[str, list[int]] = {}
        for name, m, scores, sparsity in plans:
            mask = magnitude_mask(scores, sparsity)
            constraints.register(m, constraints.Mask(mask))
            counts = zeros.setdefault(name, [0, 0])
            counts[0] += int((mask == 0).sum())
            counts[1] += mask.numel()
        for name, (zero, total) in zeros.items():
            ctx.record(name, self.name, method=method, zeroed=zero, weights=total, achieved=zero / total)
