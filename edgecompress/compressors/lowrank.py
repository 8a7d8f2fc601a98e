"""Low-rank approximation by truncated SVD.

A linear layer W (out x in) becomes two linears, in -> r (no bias) then r -> out
(with the bias). A convolution's weight, reshaped to out x (in * kh * kw),
becomes a kh x kw convolution with r outputs (same stride, padding, dilation)
followed by a 1 x 1 convolution to out channels. The singular values are split
evenly (sqrt) between the factors. r = round(rank x full rank), at least 1, rounded up to ``round_to`` like channels.
Grouped and depthwise convolutions are skipped (their kernels are per group).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from edgecompress.compressors.base import CompressionContext, Knob, layers_asking, register_knob, register_technique
from edgecompress.compressors.constraints import effective_weight


class LowRank(nn.Sequential):
    """Two factors that replace one layer; ``[0]`` consumes the input, ``[1]`` produces the output."""


def rank_for(rank_ratio: float, full: int, round_to: int = 1) -> int:
    """round(rank_ratio x full), at least 1, rounded up to a multiple of ``round_to`` (capped at full)."""
    r = max(1, round(rank_ratio * full))
    if round_to > 1:
        r = min(full, -(-r // round_to) * round_to)
    return r


def factorise(module: nn.Module, rank_ratio: float, round_to: int = 1) -> tuple[LowRank, int, int, float]:
    """Return (factorised module, r, full rank, relative Frobenius reconstruction error)."""
    weight = effective_weight(module)
    matrix = weight.reshape(weight.shape[0], -1)
    full = min(matrix.shape)
    r = rank_for(rank_ratio, full, round_to)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    root = s[:r].sqrt()
    first_w = root[:, None] * vh[:r]
    second_w = u[:, :r] * root[None, :]
    approx = second_w @ first_w
    rel_error = float(torch.linalg.norm(matrix - approx) / torch.linalg.norm(matrix).clamp_min(1e-12))
    bias = getattr(module, "bias", None)
    first: nn.Linear | nn.Conv2d
    second: nn.Linear | nn.Conv2d
    if isinstance(module, nn.Linear):
        first = nn.Linear(module.in_features, r, bias=False)
        second = nn.Linear(r, module.out_features, bias=bias is not None)
        first_w = first_w.reshape(first.weight.shape)
    else:
        assert isinstance(module, nn.Conv2d)
        first = nn.Conv2d(
            module.in_channels, r, module.kernel_size, stride=module.stride,  # type: ignore[arg-type]
            padding=module.padding, dilation=module.dilation, bias=False,  # type: ignore[arg-type]
        )  # fmt: skip
        second = nn.Conv2d(r, module.out_channels, 1, bias=bias is not None)
    with torch.no_grad():
        first.weight.copy_(first_w.reshape(first.weight.shape))
        second.weight.copy_(second_w.reshape(second.weight.shape))
        if bias is not None and second.bias is not None:
            second.bias.copy_(bias.detach())
    return LowRank(first, second), r, full, rel_error


RANK = register_knob(
    Knob(
        "rank",
        "lowrank",
        "float",
        low=0.2,
        high=1.0,
        movable="low",
        help="kept rank as a fraction of the full rank (SVD)",
    )
)


@register_technique
class LowRankApproximation:
    name = "lowrank"

    def apply(self, ctx: CompressionContext) -> None:
        for name in layers_asking(ctx, lambda lp: lp.rank < 1.0):
            module = ctx.model.get_submodule(name)
            rank = ctx.policy.get(name).rank
            if isinstance(module, nn.Conv2d) and module.groups > 1:
                ctx.skip(name, self.name, f"grouped convolution (groups={module.groups}): SVD would mix groups")
                continue
            if not isinstance(module, (nn.Conv2d, nn.Linear)):
                ctx.skip(name, self.name, f"{type(module).__name__} is not a conv or linear layer")
                continue
            matrix_shape = (module.weight.shape[0], module.weight[0].numel())
            full = min(matrix_shape)
            round_to = int(ctx.options.get("round_to", 1))
            if rank_for(rank, full, round_to) >= full:
                ctx.skip(name, self.name, f"rank {rank} of full rank {full} rounds to full rank")
                continue
            new, r, full, err = factorise(module, rank, round_to)
            parent_name, _, attr = name.rpartition(".")
            parent = ctx.model.get_submodule(parent_name) if parent_name else ctx.model
            setattr(parent, attr, new)
            before = module.weight.numel()
            after = sum(p.numel() for p in new.parameters() if p.ndim > 1)
            if after >= before:
                ctx.warnings.append(
                    f"lowrank: {name} at rank {r}/{full} has {after} weights, not fewer than the original {before}"
                )
            ctx.record(name, self.name, rank=r, full_rank=full, rel_error=round(err, 6))
