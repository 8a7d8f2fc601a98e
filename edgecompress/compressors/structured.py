"""Structured pruning: whole output channels removed for real, with torch-pruning.

Channels are removed through torch-pruning's dependency graph, so the layers
that consume them (next convs, BatchNorms, the flatten into a linear) shrink
too, and coupled layers (convs feeding one residual add, a depthwise conv and
its producer) lose the same channels. A coupled group keeps the largest
``keep`` any member asks for (the most conservative choice), and a note says
so when members disagree. Importance: ``l1`` filter norm (Li et al. 2016;
for a coupled group, summed over its layers; default), ``l2`` the same with
L2 norms, or ``bn`` (BatchNorm scale, Network Slimming, via torch-pruning).
``round_to`` rounds kept channels up to a multiple (SIMD-friendly widths).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from edgecompress._inputs import call, example
from edgecompress.compressors.base import CompressionContext, Knob, register_knob, register_technique
from edgecompress.compressors.constraints import effective_weight
from edgecompress.errors import PolicyError

IMPORTANCES = ("l1", "l2", "bn")


def _filter_norms(model: nn.Module, members: list[str], p: int) -> torch.Tensor:
    """Sum over the coupled layers of each output channel's filter p-norm (Li et al. 2016 for p=1)."""
    total = None
    for name in members:
        w = effective_weight(model.get_submodule(name))
        norms = w.reshape(w.shape[0], -1).norm(p=p, dim=1)
        total = norms if total is None else total + norms
    assert total is not None
    return total


def kept_channels(channels: int, keep: float, round_to: int = 1) -> int:
    """Channels kept for a keep ratio: round(keep x channels), at least 1, rounded up to ``round_to``."""
    n = max(1, round(keep * channels))
    if round_to > 1:
        n = min(channels, math.ceil(n / round_to) * round_to)
    return n


KEEP = register_knob(
    Knob(
        "keep",
        "structured",
        "float",
        low=0.2,
        high=1.0,
        scope="group",
        movable="low",
        help="fraction of output channels kept; one ratio per coupled channel group",
    )
)


@register_technique
class StructuredPruning:
    name = "structured"

    def apply(self, ctx: CompressionContext) -> None:
        keep = {s.name: ctx.policy.get(s.name).keep for s in ctx.analysis.layers if s.name not in ctx.removed}
        if all(k == 1.0 for k in keep.values()):
            return
        import torch_pruning as tp

        round_to = int(ctx.options.get("round_to", 1))
        importance = str(ctx.options.get("importance", "l1"))
        if importance not in IMPORTANCES:
            raise PolicyError(f"unknown channel importance {importance!r}; valid: {', '.join(IMPORTANCES)}")
        model = ctx.model
        specs = {s.name: s for s in ctx.analysis.layers}
        if not any(specs[n].prunable and k < 1.0 for n, k in keep.items()):
            dg = None  # nothing to prune: the dependency graph (which may not build for this model) is not needed
        else:
            dg = tp.DependencyGraph().build_dependency(
                model, example_inputs=example(ctx.input_shape), forward_fn=call, verbose=False
            )
        for all_members in ctx.analysis.groups().values():
            members = [m for m in all_members if m in keep]  # removed blocks' layers are gone
            if not members:
                continue
            asked = [keep[m] for m in members]
            if all(k == 1.0 for k in asked):
                continue
            if not specs[members[0]].prunable:
                for m in members:
                    if keep[m] < 1.0:
                        why = specs[m].prune_note or "its output channels are the network's outputs (classifier)"
                        ctx.skip(m, self.name, why)
                continue
            assert dg is not None
            group_keep = max(asked)
            asking = [m for m in members if keep[m] < 1.0]
            if group_keep == 1.0:
                full = ", ".join(m for m in members if keep[m] == 1.0)
                for m in asking:
                    ctx.skip(m, self.name, f"output channels coupled (residual add / depthwise) with {full}, "
                             "which keep all channels")  # fmt: skip
                continue
            if len(set(asked)) > 1:
                ctx.warnings.append(
                    f"structured: layers {', '.join(members)} share output channels (coupled); "
                    f"all keep {group_keep} (the largest asked; asked {asked})"
                )
            root = model.get_submodule(members[0])
            pruner = dg.get_pruner_of_module(root)
            channels = int(pruner.get_out_channels(root))
            n_keep = kept_channels(channels, group_keep, round_to)
            if n_keep >= channels:
                for m in asking:
                    ctx.skip(m, self.name, f"keep {group_keep} of {channels} channels rounds to all of them")
                continue
            if importance == "bn":
                full = dg.get_pruning_group(root, pruner.prune_out_channels, idxs=list(range(channels)))
                scores = tp.importance.BNScaleImportance(normalizer=None)(full)
                if scores is None:
                    for m in members:
                        ctx.skip(m, self.name, "no BatchNorm follows this group; importance 'bn' cannot rank it")
                    continue
            else:
                scores = _filter_norms(model, members, 1 if importance == "l1" else 2)
            # Stable sort: equal scores prune the lowest channel index first, deterministically.
            order = torch.argsort(scores.detach().cpu(), stable=True)
            drop = sorted(int(i) for i in order[: channels - n_keep])
            group = dg.get_pruning_group(root, pruner.prune_out_channels, idxs=drop)
            if not dg.check_pruning_group(group):
                for m in members:
                    ctx.skip(m, self.name, "torch-pruning refused the group (it would leave a layer empty)")
                continue
            group.prune()
            for m in members:
                ctx.record(m, self.name, channels=channels, kept=n_keep, asked=keep[m], group_keep=group_keep)
