"""NAS-Bench-201 networks rebuilt in PyTorch, for calibrating device cost models.

The public Raspberry Pi and Jetson measurements in ``shared/latency-data``
time whole NAS-Bench-201 networks ("infer.tiny": C=16, N=5, 32x32 input). This
module rebuilds them from their ``arch_str`` exactly as the data's README
describes, so the same operator tracer that reads a user's model can read
them. It is only used to fit and validate device models.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["OPS", "NB201Network", "live_edges", "parse_arch"]

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")


def parse_arch(arch: str) -> list[list[tuple[str, int]]]:
    """``|op~0|+|op~0|op~1|+...`` -> for nodes 1..3, the (op, input node) edges."""
    nodes = []
    for group in arch.strip().split("+"):
        edges = []
        for token in group.strip("|").split("|"):
            op, _, src = token.partition("~")
            if op not in OPS:
                raise ValueError(f"unknown NAS-Bench-201 op {op!r} in {arch!r}; valid: {', '.join(OPS)}")
            edges.append((op, int(src)))
        nodes.append(edges)
    if len(nodes) != 3:
        raise ValueError(f"{arch!r}: a cell has 3 computed nodes, got {len(nodes)}")
    return nodes


def live_edges(nodes: list[list[tuple[str, int]]], fold_constants: bool = True) -> list[list[tuple[str, int]]]:
    """The edges that can affect the cell's output (node 3), without ``none`` edges.

    Deployment compilers fold these away: a ``none`` edge adds zero, and a node
    that reaches the output only through ``none`` edges is dead. With
    ``fold_constants`` (TFLite, TensorFlow), an operator applied to a constant
    is folded too: a node whose incoming edges are all ``none`` is constant,
    and so is everything computed only from it; when node 3 keeps no live edge
    the cell's output is constant zero (the measured latencies of such networks
    are ~0.01 ms: everything was folded). Without it (TensorRT built by
    torch2trt), unused layers are removed but layers on an all-zero input
    still run.
    """
    # Forward: a node is non-constant if a non-none edge brings it a non-constant input
    # (an op applied to a constant is a constant, folded at compile time).
    varies = [True, False, False, False]
    for j in (1, 2, 3):
        varies[j] = not fold_constants or any(op != "none" and varies[src] for op, src in nodes[j - 1])
    # Backward: keep the edges on a path to the output.
    live_node = [False, False, False, True]
    live: list[list[tuple[str, int]]] = [[], [], []]
    for j in (3, 2, 1):
        if not live_node[j]:
            continue
        for op, src in nodes[j - 1]:
            if op != "none" and varies[src]:
                live[j - 1].append((op, src))
                live_node[src] = True
    return live


class _Zero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


class _ReLUConvBN(nn.Sequential):
    def __init__(self, c: int, k: int, stride: int = 1) -> None:
        super().__init__(nn.ReLU(), nn.Conv2d(c, c, k, stride, k // 2, bias=False), nn.BatchNorm2d(c))


def _op(name: str, c: int) -> nn.Module:
    if name == "none":
        return _Zero()
    if name == "skip_connect":
        return nn.Identity()
    if name == "nor_conv_1x1":
        return _ReLUConvBN(c, 1)
    if name == "nor_conv_3x3":
        return _ReLUConvBN(c, 3)
    return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)


class _Cell(nn.Module):
    """A cell with its dead and ``none`` edges folded away (see :func:`live_edges`)."""

    def __init__(self, nodes: list[list[tuple[str, int]]], c: int, fold_constants: bool = True) -> None:
        super().__init__()
        self.nodes = live_edges(nodes, fold_constants)
        self.edges = nn.ModuleDict(
            {f"{j + 1}_{src}": _op(op, c) for j, edges in enumerate(self.nodes) for op, src in edges}
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states: list[torch.Tensor | None] = [x]
        for j, edges in enumerate(self.nodes):
            total = None
            for _, src in edges:
                inp = states[src]
                if inp is None:  # a node without live inputs (only without fold_constants): all zeros, one tensor
                    inp = states[src] = torch.zeros_like(x)
                out = self.edges[f"{j + 1}_{src}"](inp)
                total = out if total is None else total + out
            states.append(total)
        result = states[-1]
        return result if result is not None else torch.zeros_like(x)


class _Reduction(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.a = _ReLUConvBN(c_in, 3, stride=2)
        self.a[1] = nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False)
        self.a[2] = nn.BatchNorm2d(c_out)
        self.b = _ReLUConvBN(c_out, 3)
        self.shortcut = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(c_in, c_out, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x)) + self.shortcut(x)


class NB201Network(nn.Module):
    def __init__(self, arch: str, num_classes: int = 10, c: int = 16, n: int = 5, fold_constants: bool = True) -> None:
        super().__init__()
        nodes = parse_arch(arch)
        layers: list[nn.Module] = [nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)]
        for stage, width in enumerate((c, 2 * c, 4 * c)):
            if stage:
                layers.append(_Reduction(width // 2, width))
            layers += [_Cell(nodes, width, fold_constants) for _ in range(n)]
        layers += [nn.BatchNorm2d(4 * c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(4 * c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
