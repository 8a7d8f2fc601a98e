"""Block removal: a residual block whose shortcut is the identity, removed whole.

At small input sizes a network's latency is mostly per-operator overhead
(``benchmarks/replay_export.py --techniques keep,drop``, 2 threads: ResNet-20
at 28x28 with half its channels ran 1.62x faster, a searched policy with
three of its nine blocks removed 2.05x), so removing operators pays where
thinning them does not. A block is removed when any of
its layers asks ``drop``; it becomes ``nn.Identity`` (exact for the blocks
:func:`edgecompress.analysis.register_removable_block` admits), its layers
leave the model, and the later techniques skip them. Runs first, so pruning
works on the blocks that stay.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from edgecompress.analysis import ModelAnalysis
from edgecompress.compressors.base import CompressionContext, Knob, register_knob, register_technique
from edgecompress.errors import PolicyError


def removed_blocks(policy: Any, analysis: ModelAnalysis) -> dict[str, list[str]]:
    """Block -> its layers, for every block the policy removes (any of its layers asks ``drop``)."""
    blocks = analysis.blocks()
    asking = [s for s in analysis.layers if policy.get(s.name).drop]
    stray = [s.name for s in asking if not s.block]
    if stray:
        removable = ", ".join(blocks) or "none in this model"
        raise PolicyError(
            f"drop asked on {', '.join(stray)}, which belong to no removable block (a residual block with an "
            f"identity shortcut); removable blocks: {removable}"
        )
    return {b: blocks[b] for b in dict.fromkeys(s.block for s in asking)}


def removed_layers(policy: Any, analysis: ModelAnalysis) -> set[str]:
    """Every layer of the blocks the policy removes."""
    return {name for names in removed_blocks(policy, analysis).values() for name in names}


DROP = register_knob(
    Knob(
        "drop",
        "depth",
        "bool",
        scope="block",
        exclusive=True,
        help="remove the residual block (it becomes its identity shortcut)",
    )
)


@register_technique
class BlockRemoval:
    name = "depth"

    def apply(self, ctx: CompressionContext) -> None:
        for block, members in removed_blocks(ctx.policy, ctx.analysis).items():
            parent_name, _, child = block.rpartition(".")
            parent = ctx.model.get_submodule(parent_name) if parent_name else ctx.model
            setattr(parent, child, nn.Identity())
            ctx.removed.update(members)
            asked = [m for m in members if ctx.policy.get(m).drop]
            if len(asked) < len(members):
                ctx.warnings.append(f"depth: block {block} removed because {', '.join(asked)} asked; "
                                    f"{', '.join(m for m in members if m not in asked)} go with it")  # fmt: skip
            for m in members:
                ctx.record(m, self.name, block=block, removed=True)
