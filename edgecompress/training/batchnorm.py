"""BatchNorm re-estimation: running statistics recomputed for a compressed model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

__all__ = ["recalibrate_batchnorm"]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, inputs: Sequence[torch.Tensor]) -> None:
    """Re-estimate BatchNorm running statistics of a compressed model (cumulative average over ``inputs``)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or not inputs:
        return
    momenta = {m: m.momentum for m in norms}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    model.train()
    for x in inputs:
        model(x)
    for m, momentum in momenta.items():
        m.momentum = momentum
    model.eval()
