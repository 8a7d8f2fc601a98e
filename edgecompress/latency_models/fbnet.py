"""The FBNet blocks of ``fbnet_pi4_block_deltas.csv``, rebuilt to be traced: MobileNet-style blocks on a Pi 4.

The CSV (HW-NAS-Bench's Raspberry Pi 4 lookup tables, MIT) gives, per layer
position of FBNet's CIFAR search space (input side, in and out channels,
stride), each block's latency minus the ``k3_e1`` block's at the same
position. The blocks are HW-NAS-Bench's (``fbnet_models/model_infer.py``):
``kK_eE`` is an inverted residual (1x1 expansion to E x Cin, KxK depthwise at
the stride, 1x1 projection, BatchNorm and ReLU, a residual add when the shape
is kept); ``_g2`` makes both 1x1 convolutions grouped (2 groups) with a
channel shuffle after the first; ``skip`` is the identity, or a 1x1
projection where the stride or width changes.

Split as NAS-Bench-201's: rows with an even ``layer`` may be fitted
(:func:`load_fbnet_rows` with ``split="calibration"``); odd rows are holdout,
read only by validation (``split="holdout"``).
"""

from __future__ import annotations

import csv
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from edgecompress.errors import EdgeCompressError
from edgecompress.latency_models._data import default_data_dir
from edgecompress.latency_models.ops import OpRecord, trace_ops

__all__ = ["BLOCKS", "FBNET_FILE", "block_ops", "fbnet_block", "load_fbnet_rows"]

FBNET_FILE = "fbnet_pi4_block_deltas.csv"
BLOCKS = ("k3_e1", "k3_e1_g2", "k3_e3", "k3_e6", "k5_e1", "k5_e1_g2", "k5_e3", "k5_e6", "skip")
"""FBNet's nine blocks; ``k3_e1`` is the reference every delta is taken against."""
SPLITS = ("calibration", "holdout")


class _ChannelShuffle(nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).permute(0, 2, 1, 3, 4).contiguous().view(n, c, h, w)


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, expansion: int, kernel: int, stride: int, groups: int) -> None:
        super().__init__()
        mid = cin * expansion
        self.residual = cin == cout and stride == 1
        self.expand = nn.Sequential(nn.Conv2d(cin, mid, 1, groups=groups, bias=False), nn.BatchNorm2d(mid), nn.ReLU())
        self.shuffle = _ChannelShuffle(groups) if groups > 1 else nn.Identity()
        self.depthwise = nn.Sequential(
            nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU()
        )
        self.project = nn.Sequential(nn.Conv2d(mid, cout, 1, groups=groups, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.shuffle(self.expand(x))))
        return y + x if self.residual else y


class _Skip(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body: nn.Module = nn.Identity()
        if stride == 2 or cin != cout:
            self.body = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # type: ignore[no-any-return]


def fbnet_block(name: str, cin: int, cout: int, stride: int) -> nn.Module:
    """One of :data:`BLOCKS` at a position, in eval mode."""
    if name not in BLOCKS:
        raise EdgeCompressError(f"unknown FBNet block {name!r}; valid: {', '.join(BLOCKS)}")
    if name == "skip":
        return _Skip(cin, cout, stride).eval()
    kernel, expansion = int(name[1]), int(name.split("_")[1][1:])
    return _InvertedResidual(cin, cout, expansion, kernel, stride, 2 if name.endswith("_g2") else 1).eval()


@lru_cache(maxsize=512)
def _ops(name: str, h: int, cin: int, cout: int, stride: int) -> tuple[OpRecord, ...]:
    return tuple(trace_ops(fbnet_block(name, cin, cout, stride), (1, cin, h, h)))


def block_ops(row: dict[str, Any], name: str) -> tuple[OpRecord, ...]:
    """The traced operators of block ``name`` at ``row``'s position (cached)."""
    return _ops(name, int(row["H_in"]), int(row["Cin"]), int(row["Cout"]), int(row["stride"]))


def load_fbnet_rows(data_dir: str | os.PathLike[str] | None, split: str) -> list[dict[str, Any]]:
    """The layer rows of one split: ``calibration`` (even ``layer``, may be fitted) or ``holdout`` (odd, only
    for validation). The whole-network intercept row is not a layer and is never returned."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of: {', '.join(SPLITS)}")
    path = (default_data_dir() if data_dir is None else Path(data_dir)) / FBNET_FILE
    if not path.exists():
        raise EdgeCompressError(
            f"FBNet block data not found: {path}. Point --data-dir (or $EDGECOMPRESS_LATENCY_DATA) at the folder "
            f"holding {FBNET_FILE}"
        )
    with path.open(newline="") as f:
        layers = [r for r in csv.DictReader(f) if r["layer"].isdigit()]
    want = 0 if split == "calibration" else 1
    return [
        {"layer": int(r["layer"]), "H_in": int(r["H_in"]), "Cin": int(r["Cin"]), "Cout": int(r["Cout"]),
         "stride": int(r["stride"]), "delta_ms": {b: float(r[f"delta_ms_{b}"]) for b in BLOCKS}}
        for r in layers if int(r["layer"]) % 2 == want
    ]  # fmt: skip
