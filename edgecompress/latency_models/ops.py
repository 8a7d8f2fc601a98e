"""Operator tracing: the list of operators a forward pass runs, with their costs' ingredients.

``trace_ops`` runs one batch-1 forward pass under a ``TorchFunctionMode`` and
records every convolution, linear layer, pooling and element-wise add or
multiply, with MACs and bytes moved (input + output activations + weights,
fp32). BatchNorm and ReLU are not listed: deployment runtimes (ONNX Runtime,
TFLite, TensorRT) fold BatchNorm into the preceding convolution and fuse the
activation, and in the calibration data they always accompany a convolution,
so their cost is part of the convolution's fitted coefficients. Where a
compiler cannot fuse an activation (its input has other readers), the
operator reading it records it (``OpRecord.acts``, see :func:`mark_fusions`)
for the profiles that price it. One tracer
serves both the device-model fit (NAS-Bench-201 networks) and prediction for
user models, so the two can never disagree about what an operator is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from edgecompress._inputs import InputSpec, call, example
from edgecompress.compressors.constraints import float_view

__all__ = ["OpRecord", "op_kind_features", "trace_ops"]

FP32 = 4


@dataclass(frozen=True)
class OpRecord:
    kind: str
    """conv_k1, conv_k3, conv_kN (other kernels), depthwise, linear, pool, add, mul, concat, copy (a reshape or
    ``contiguous`` that moves data: a channel shuffle's transpose); ``unknown`` for anything else (the
    function's name in ``detail``)."""
    macs: int
    bytes: int
    shape: tuple[int, ...]
    """Output shape (batch 1)."""
    layer: str = ""
    """The innermost conv/linear module running when the operator ran ("" outside any)."""
    cin: int = 0
    cout: int = 0
    kernel: int = 1
    stride: int = 1
    groups: int = 1
    in_hw: tuple[int, int] = (1, 1)
    detail: str = ""
    """For pooling: max, avg or global."""
    merged: str = ""
    """``conv``: a convolution reading the same input value as an earlier convolution of the pass with the same
    kernel, stride, padding, dilation and groups (a GPU compiler such as TensorRT fuses such siblings
    horizontally into one wider convolution); ``pool``: a pooling that repeats an earlier pooling on the same
    input (the same computation, done once); "" otherwise. An input value is a tensor, or the same element-wise
    activation (ReLU family) applied to the same tensor."""
    inputs: tuple[int, ...] = field(default=(), compare=False)
    """The operators whose outputs this one reads, as indices into the traced list (-1: a model input); through
    operators that are not listed (activations, BatchNorm, views) to the listed one before them."""
    fused: str = field(default="", compare=False)
    """``conv`` for an add a GPU compiler can fuse into the convolution that made one of its operands (TensorRT's
    convolution + element-wise sum fusion): that convolution's output is read by nothing else, and it has not
    absorbed another add (see :func:`mark_fusions`)."""
    acts: int = field(default=0, compare=False)
    """Standalone activations this operator reads: activation calls (ReLU family) that no compiler can fuse into
    the operator that made their input, because that operator is not a convolution, linear layer or add, or its
    output has other readers (two edges each applying ReLU to one node, a ReLU and a pooling reading one tensor).
    Each runs as an element-wise kernel of its own on a GPU compiler; ``act_bytes`` is what they move."""
    act_bytes: int = field(default=0, compare=False)


def _numel(t: Any) -> int:
    return t.numel() if isinstance(t, torch.Tensor) else 0


def _conv_kind(weight: torch.Tensor, groups: int) -> str:
    if groups > 1 and weight.shape[1] == 1:
        return "depthwise"
    k = weight.shape[-1]
    return f"conv_k{k}" if k in (1, 3) else "conv_kN"


# Functions that are not operators of their own in a deployed graph: folded (BatchNorm), fused into
# the preceding operator (ReLU family), or free (views, shapes, dropout at inference). A ``contiguous`` or
# ``reshape`` of a non-contiguous tensor is not free: it copies (recorded as ``copy`` before this list applies).
IGNORED = {
    "relu", "relu_", "relu6", "hardtanh", "hardtanh_", "batch_norm", "dropout", "flatten", "view", "reshape",
    "contiguous", "size", "dim", "__get__", "__getitem__", "__len__", "__setstate__", "detach", "float",
    "numel", "shape", "dtype", "device", "__format__", "__bool__", "to", "clone", "t", "permute", "transpose",
    "squeeze", "unsqueeze", "_has_compatible_shallow_copy_type", "requires_grad_", "is_floating_point",
    "zeros_like", "__eq__", "__index__", "__int__", "__hash__", "storage_offset", "stride", "data_ptr",
    "conv2d", "linear",
}  # fmt: skip


# Fused activations (in IGNORED): the same one applied to the same tensor gives the same value (two
# NAS-Bench-201 edges each apply ReLU to one node before their convolutions); value numbering follows them.
ACTIVATIONS = {"relu", "relu_", "relu6", "hardtanh", "hardtanh_"}


# Functions whose output is a new tensor made from no operator's result (a constant), whatever they read.
FRESH = {"zeros_like", "ones_like", "full_like", "empty_like", "zeros", "ones", "full", "empty"}
# Operators an add reading their output fuses into.
ADD_HOSTS = {"conv_k1", "conv_k3", "conv_kN", "depthwise"}
# Operators an activation reading their output fuses into (when nothing else reads that output).
ACT_HOSTS = {*ADD_HOSTS, "linear", "add"}


class _Recorder(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[OpRecord] = []
        self.stack: list[str] = []
        self._values: dict[int, Any] = {}  # id(tensor) -> value number
        self._pinned: list[torch.Tensor] = []  # tensors seen, kept alive so their ids are not reused
        self._seen: set[tuple[Any, ...]] = set()  # (kind, input value, geometry) of convolutions and poolings
        self._changes = 0
        self._producer: dict[int, int] = {}  # id(tensor) -> index of the listed operator that made it
        self.act_calls: list[tuple[int, int]] = []  # per activation call: (producer of its input, its input's size)
        self._act_of: dict[int, int] = {}  # id(tensor) -> the activation call that made it
        self.reads: list[tuple[tuple[int, int], ...]] = []  # per listed operator: (producer, activation call or -1)

    def producer(self, t: Any) -> int:
        return self._producer.get(id(t), -1) if isinstance(t, torch.Tensor) else -1

    def value(self, t: torch.Tensor) -> Any:
        if id(t) not in self._values:
            self._values[id(t)] = ("tensor", id(t))
            self._pinned.append(t)
        return self._values[id(t)]

    def merged(self, kind: str, x: torch.Tensor, *geometry: Any) -> str:
        """``kind`` when an earlier ``kind`` operator of this pass read the same input value with this geometry."""
        key = (kind, self.value(x), *geometry)
        if key in self._seen:
            return kind
        self._seen.add(key)
        return ""

    def pop(self) -> None:  # a forward hook must return None, or it replaces the output
        self.stack.pop()

    def add(
        self, kind: str, macs: int, nbytes: int, out: torch.Tensor, x: torch.Tensor, reads: Any = None, **geometry: Any
    ) -> None:
        """List an operator; ``reads``: the tensors it reads (default ``x``)."""
        in_hw = (int(x.shape[-2]), int(x.shape[-1])) if x.dim() == 4 else (1, 1)
        cin = int(x.shape[1]) if x.dim() >= 2 else int(x.numel())
        cout = int(out.shape[1]) if out.dim() >= 2 else int(out.numel())
        layer = self.stack[-1] if self.stack else ""
        read = reads if reads is not None else (x,)
        inputs = tuple(self.producer(t) for t in read)
        self.reads.append(tuple((p, self._act_of.get(id(t), -1)) for p, t in zip(inputs, read, strict=True)))
        self._act_of.pop(id(out), None)
        self.ops.append(
            OpRecord(kind, macs, nbytes, tuple(out.shape), layer, cin, cout, in_hw=in_hw, inputs=inputs, **geometry)
        )
        self._producer[id(out)] = len(self.ops) - 1
        self._pinned.append(out)  # kept alive: its id keys _producer, so no later tensor may reuse it

    def pass_on(self, name: str, args: Any, outs: Any) -> None:
        """Tensors made by a function that is not listed (an activation, a view, a split) come from the listed
        operator that made its first input, and a view of an activation's output is that activation's output;
        a fresh tensor (``FRESH``) comes from none."""
        first = args[0] if args else None
        if isinstance(first, (list, tuple)):
            first = first[0] if first else None
        source = -1 if name in FRESH else self.producer(first)
        act = self._act_of.get(id(first), -1) if isinstance(first, torch.Tensor) and name not in FRESH else -1
        for out in outs:
            self._pinned.append(out)  # kept alive: its id keys the maps below
            if source >= 0:
                self._producer[id(out)] = source
            else:  # made from no listed operator
                self._producer.pop(id(out), None)
            if name not in ACTIVATIONS:
                if act >= 0:
                    self._act_of[id(out)] = act
                else:
                    self._act_of.pop(id(out), None)

    def producers(self, value: Any) -> list[tuple[int, int]]:
        """(producer, activation call) of every tensor in ``value`` (a tensor, or tuples, lists and dicts of them):
        a model's outputs, which read what made them."""
        if isinstance(value, torch.Tensor):
            return [(self.producer(value), self._act_of.get(id(value), -1))]
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, (list, tuple)):
            return [p for v in value for p in self.producers(v)]
        return []

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if isinstance(out, (list, tuple)):  # chunk, split, unbind: each part comes from what made the input
            self.pass_on(name, args, [t for t in out if isinstance(t, torch.Tensor)])
            return out
        if not isinstance(out, torch.Tensor) or out.dim() == 0:
            return out
        listed = len(self.ops)
        try:
            return self._record(func, name, args, kwargs, out)
        finally:
            if len(self.ops) == listed:  # not listed (an activation, a view): it passes its input on
                self.pass_on(name, args, [out])

    def _record(self, func: Callable[..., Any], name: str, args: Any, kwargs: Any, out: torch.Tensor) -> Any:
        if name in ACTIVATIONS and args and isinstance(args[0], torch.Tensor):
            settings = {k: v for k, v in kwargs.items() if k != "inplace"}
            value = (self.value(args[0]), name, str(args[1:]), str(sorted(settings.items())))
            self._pinned.append(out)
            self._values[id(out)] = value
            self._act_of[id(out)] = len(self.act_calls)
            self.act_calls.append((self.producer(args[0]), args[0].numel()))
            return out
        if id(out) in self._values:  # an in-place operator (x += y) changed a tensor seen before: a new value
            self._changes += 1
            self._values[id(out)] = ("changed", self._changes, id(out))
        if func in (F.conv2d, torch.conv2d) or name == "conv2d":
            x, w = args[0], args[1]
            groups = kwargs.get("groups", args[6] if len(args) > 6 else 1)
            macs = out.numel() * w[0].numel()
            nbytes = FP32 * (x.numel() + out.numel() + w.numel())
            stride = kwargs.get("stride", args[3] if len(args) > 3 else 1)
            padding = kwargs.get("padding", args[4] if len(args) > 4 else 0)
            dilation = kwargs.get("dilation", args[5] if len(args) > 5 else 1)
            merged = self.merged("conv", x, tuple(w.shape[1:]), str(stride), str(padding), str(dilation), groups)
            stride = stride[0] if isinstance(stride, (tuple, list)) else stride
            self.add(_conv_kind(w, groups), macs, nbytes, out, x, kernel=int(w.shape[-1]), stride=int(stride),
                     groups=int(groups), merged=merged)  # fmt: skip
        elif func in (F.linear,) or name == "linear":
            x, w = args[0], args[1]
            self.add("linear", out.numel() * w.shape[1], FP32 * (x.numel() + out.numel() + w.numel()), out, x)
        elif name in (
            "avg_pool2d",
            "max_pool2d",
            "adaptive_avg_pool2d",
            "adaptive_max_pool2d",
            "max_pool2d_with_indices",
        ):
            x = args[0]
            if name.startswith("adaptive") and tuple(out.shape[-2:]) == tuple(x.shape[-2:]):
                return out  # an identity (e.g. LeNet-5's resize at 28x28): exporters drop it
            if name.startswith("adaptive"):
                detail, k, st = ("global", 0, 0) if out.shape[-1] == 1 else ("avg", 1, 1)
            else:
                k = kwargs.get("kernel_size", args[1] if len(args) > 1 else 1)
                st = kwargs.get("stride", args[2] if len(args) > 2 else None) or k
                k = k[0] if isinstance(k, (tuple, list)) else k
                st = st[0] if isinstance(st, (tuple, list)) else st
                detail = "avg" if name.startswith("avg") else "max"
            merged = self.merged("pool", x, name, tuple(out.shape), str(args[1:]), str(sorted(kwargs.items())))
            self.add("pool", 0, FP32 * (_numel(x) + out.numel()), out, x, kernel=int(k), stride=int(st), detail=detail,
                     merged=merged)  # fmt: skip
        elif name in ("add", "__add__", "__iadd__", "add_", "__radd__"):
            if isinstance(args[0], torch.Tensor) and len(args) > 1 and isinstance(args[1], torch.Tensor):
                self.add("add", 0, FP32 * 3 * out.numel(), out, args[0], reads=args[:2])
        elif name in ("contiguous", "reshape") and isinstance(args[0], torch.Tensor) and not args[0].is_contiguous():
            # a transpose or permute made real: the runtime moves every element (a channel shuffle's cost)
            self.add("copy", 0, FP32 * 2 * out.numel(), out, args[0], detail=name)
        elif name in ("cat", "concat", "concatenate"):
            parts = [t for t in args[0] if isinstance(t, torch.Tensor)] if args else []
            self.add("concat", 0, FP32 * 2 * out.numel(), out, out, reads=parts)
        elif name in ("mul", "__mul__", "mul_", "__rmul__"):
            tensors = [t for t in args[:2] if isinstance(t, torch.Tensor)]
            self.add("mul", 0, FP32 * 2 * out.numel(), out, tensors[0] if tensors else out, reads=tensors)
        elif name not in IGNORED and out.numel() > 1:
            # An operator no cost model or table knows: reported, never silently priced at zero.
            self.add("unknown", 0, FP32 * out.numel(), out, out, reads=[t for t in args if isinstance(t, torch.Tensor)],
                     detail=name)  # fmt: skip
        return out


def trace_ops(model: nn.Module, input_shape: InputSpec) -> list[OpRecord]:
    """The operators of one batch-1 forward pass of ``model`` in eval mode, in execution order.

    A compressed model is traced through its float view (constraints baked in,
    fake quantizers removed), so weight masks and quantizer arithmetic are not
    mistaken for operators.
    """

    if any(isinstance(m, (nn.utils.parametrize.ParametrizationList,)) for m in model.modules()) or any(
        hasattr(m, "input_quantizer") for m in model.modules()
    ):
        model = float_view(model)
    was_training = model.training
    model.eval()
    recorder = _Recorder()
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            handles.append(m.register_forward_pre_hook(lambda mod, args, n=name: recorder.stack.append(n)))
            handles.append(m.register_forward_hook(lambda mod, args, out: recorder.pop()))
    inputs = example(input_shape)
    try:
        with torch.no_grad(), recorder:
            output = call(model, inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    # The model's outputs read what made them (a convolution whose output is returned too absorbs no add).
    return mark_fusions(recorder.ops, [*recorder.reads, tuple(recorder.producers(output))], recorder.act_calls)


def mark_fusions(
    ops: list[OpRecord], reads: list[tuple[tuple[int, int], ...]], act_calls: list[tuple[int, int]]
) -> list[OpRecord]:
    """``ops`` with :attr:`OpRecord.acts` and :attr:`OpRecord.fused` set, from what each operator read
    (``reads``: per operator, per tensor read, its producer and the activation call that made it, -1 for none;
    one more entry may follow: what the model returns) and each activation call's (producer of its input,
    input size).

    The rules are TensorRT's documented layer fusions, applied where a tensor has one reader: an activation
    fuses into the convolution, linear layer or add that made its input when that output is read by nothing
    else (one activation call, no other reader); an add fuses into a convolution that made one of its operands
    when that convolution's output is read by nothing else (so by this add alone). A standalone activation is
    counted on the first operator reading it, or, read by none (returned, or read only by another activation),
    on the operator that made its input; on the model input or a constant and read by no operator, it is not
    counted.
    """
    direct = [0] * len(ops)  # readers of each operator's output, not through an activation
    acts_on = [0] * len(ops)  # activation calls on each operator's output
    for op_reads in reads:
        for p, a in op_reads:
            if p >= 0 and a < 0:
                direct[p] += 1
    for p, _ in act_calls:
        if p >= 0:
            acts_on[p] += 1
    standalone = {
        a for a, (p, _) in enumerate(act_calls)
        if not (p >= 0 and ops[p].kind in ACT_HOSTS and acts_on[p] == 1 and direct[p] == 0)
    }  # fmt: skip
    read_by = {a for op_reads in reads[: len(ops)] for _, a in op_reads}
    orphans: dict[int, set[int]] = {}  # maker -> its standalone activations no operator reads
    for a in standalone - read_by:
        if act_calls[a][0] >= 0:
            orphans.setdefault(act_calls[a][0], set()).add(a)
    counted: set[int] = set()
    out = []
    for i, (op, op_reads) in enumerate(zip(ops, reads, strict=False)):
        mine = {a for _, a in op_reads if a in standalone and a not in counted} | orphans.get(i, set())
        counted |= mine
        fused = ""
        if op.kind == "add" and any(
            a < 0 and p >= 0 and ops[p].kind in ADD_HOSTS and direct[p] == 1 and not acts_on[p] for p, a in op_reads
        ):
            fused = "conv"
        if mine or fused:
            op = replace(op, acts=len(mine), act_bytes=sum(2 * FP32 * act_calls[a][1] for a in mine), fused=fused)
        out.append(op)
    return out


def op_kind_features(ops: list[OpRecord]) -> dict[str, dict[str, float]]:
    """Per kind: number of operators, MACs (millions) and bytes moved (MB): the cost model's inputs."""
    out: dict[str, dict[str, float]] = {}
    for op in ops:
        f = out.setdefault(op.kind, {"count": 0.0, "mmacs": 0.0, "mbytes": 0.0})
        f["count"] += 1
        f["mmacs"] += op.macs / 1e6
        f["mbytes"] += op.bytes / 1e6
    return out
