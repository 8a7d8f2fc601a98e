"""BatchNorm re-estimation: running statistics recomputed for a compressed model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from edgecompress._inputs import call, move
from edgecompress.training.accelerator import on_device, resolve_accelerator

__all__ = ["recalibrate_batchnorm"]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, inputs: Sequence[Any], *, accelerator: str | torch.device = "cpu") -> None:
    """Re-estimate BatchNorm running statistics of a compressed model (cumulative average over ``inputs``).

    The forward passes run on ``accelerator`` in fp32; the model (statistics
    included) is back on its own device, in eval mode, afterwards.
    """
    device = resolve_accelerator(accelerator)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or not inputs:
        return
    momenta = {m: m.momentum for m in norms}
    with on_device(model, device):
        try:
            for m in norms:
                m.reset_running_stats()
                m.momentum = None  # cumulative moving average: every batch weighs the same
            model.train()
            for x in inputs:
                call(model, move(x, device, non_blocking=True))  # a tensor, or a tuple / dict of inputs
        finally:
            for m, momentum in momenta.items():
                m.momentum = momentum
            model.eval()
