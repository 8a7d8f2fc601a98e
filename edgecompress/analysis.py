"""Layer analysis: one :class:`LayerSpec` per compressible layer, from a real forward pass.

Compressible layers are ``nn.Conv2d`` (``kind`` "conv", or "depthwise" when
every group has one input channel) and ``nn.Linear``. Shapes come from forward
hooks on a batch-1 input, so the numbers are what a forward pass implies:

* ``params`` = weight + bias elements;
* ``macs`` = output elements x (in_channels / groups) x kernel area (conv),
  output elements x in_features (linear);
* ``weight_bytes`` = params x 4 (fp32), ``activation_bytes`` = output elements x 4.

Channel coupling comes from torch-pruning's dependency graph: layers whose
output channels must be removed together (convolutions feeding one residual
add, a depthwise convolution and its producer) share a ``group``; a layer whose
outputs are the network's outputs is not ``prunable``.

Removable blocks: a residual block whose shortcut is the identity can be
removed whole (the block becomes its shortcut), which saves every operator
it dispatches, not only MACs: at small input sizes per-operator overhead
dominates latency. Which module classes qualify is a registry
(:func:`register_removable_block`); a layer inside one names it in ``block``.
This module only reads a model; it never changes one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn as nn

from edgecompress._inputs import ExampleInputs, InputSpec, call, example, normalise, shapes

__all__ = [
    "LayerSpec",
    "ModelAnalysis",
    "analyze_model",
    "blocks_of",
    "compressible_layers",
    "measure_layers",
    "register_removable_block",
    "removable_blocks",
]

LayerKind = Literal["conv", "depthwise", "linear"]
FP32_BYTES = 4


@dataclass(frozen=True)
class LayerSpec:
    """One compressible layer as the searches and compressors see it."""

    index: int
    """Position in forward-execution order among compressible layers."""
    name: str
    kind: LayerKind
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int
    bias: bool
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    params: int
    macs: int
    weight_bytes: int
    activation_bytes: int
    group: int = -1
    """Coupled-channel group id (the index of its first layer); equal ids must keep equal output channels."""
    prunable: bool = True
    """False where the output channels are the network's outputs (the classifier)."""
    coupled_with: tuple[str, ...] = ()
    """The other layers whose output channels are tied to this one's."""
    block: str = ""
    """The removable residual block (module name) this layer belongs to; empty when none."""
    prune_note: str = ""
    """Why structured pruning leaves this layer's output channels alone, when it is not for being an output."""


@dataclass
class ModelAnalysis:
    input_shape: InputSpec
    """What the model was fed: a shape (zeros) or example inputs (see :mod:`edgecompress._inputs`)."""
    layers: list[LayerSpec]
    model_params: int
    """Every parameter of the model (BatchNorm included), not only the compressible layers'."""
    notes: list[str] = field(default_factory=list)

    @property
    def totals(self) -> dict[str, int]:
        return {
            "layers": len(self.layers),
            "params": sum(s.params for s in self.layers),
            "macs": sum(s.macs for s in self.layers),
            "weight_bytes": sum(s.weight_bytes for s in self.layers),
            "activation_bytes": sum(s.activation_bytes for s in self.layers),
            "model_params": self.model_params,
            "groups": len({s.group for s in self.layers}),
        }

    def groups(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for s in self.layers:
            out.setdefault(s.group, []).append(s.name)
        return out

    def blocks(self) -> dict[str, list[str]]:
        """Removable block -> its compressible layers (forward order)."""
        return blocks_of(self.layers)

    def layer(self, name: str) -> LayerSpec:
        for s in self.layers:
            if s.name == name:
                return s
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_shape": shapes(self.input_shape),
            "layers": [asdict(s) for s in self.layers],
            "totals": self.totals,
            "groups": {str(k): v for k, v in self.groups().items()},
            "notes": self.notes,
        }


def blocks_of(layers: Iterable[LayerSpec]) -> dict[str, list[str]]:
    """Removable block -> the names of its layers among ``layers`` (in their order)."""
    out: dict[str, list[str]] = {}
    for s in layers:
        if s.block:
            out.setdefault(s.block, []).append(s.name)
    return out


def compressible_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Conv2d and Linear modules by qualified name, in definition order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


_REMOVABLE: list[tuple[type[nn.Module], Callable[[nn.Module], bool] | None]] = []


def register_removable_block(cls: type[nn.Module], when: Callable[[nn.Module], bool] | None = None) -> None:
    """Declare instances of ``cls`` (those for which ``when(module)`` holds, when given) removable: the
    module computes ``x + f(x)`` (or ``relu(x + f(x))`` on non-negative ``x``), so replacing it with
    ``nn.Identity`` leaves exactly its shortcut, ``x``."""
    _REMOVABLE.append((cls, when))


def _torchvision_removable() -> None:
    from torchvision.models.mobilenetv2 import InvertedResidual

    if not any(cls is InvertedResidual for cls, _ in _REMOVABLE):
        register_removable_block(InvertedResidual, lambda m: bool(m.use_res_connect))


def removable_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """Modules of ``model`` that can be removed whole (outermost first; a block inside another removable
    block is not listed separately)."""
    _torchvision_removable()
    out: dict[str, nn.Module] = {}
    for name, m in model.named_modules():
        if name and any(isinstance(m, cls) and (when is None or when(m)) for cls, when in _REMOVABLE):
            if not any(name.startswith(b + ".") for b in out):
                out[name] = m
    return out


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    return (int(v[0]), int(v[1]))


def _hw(t: torch.Tensor) -> tuple[int, int]:
    return (int(t.shape[-2]), int(t.shape[-1])) if t.dim() == 4 else (1, 1)


def _spec_for(name: str, m: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> dict[str, Any]:
    # weight and bias, read as attributes so parametrized (compressed) layers count too
    weight, bias = m.weight, getattr(m, "bias", None)
    assert isinstance(weight, torch.Tensor)
    params = weight.numel() + (bias.numel() if bias is not None else 0)
    out_elems = out[0].numel()
    if isinstance(m, nn.Conv2d):
        kh, kw = _pair(m.kernel_size)
        depthwise = m.groups > 1 and m.groups == m.in_channels
        return dict(
            name=name, kind="depthwise" if depthwise else "conv", in_channels=m.in_channels,
            out_channels=m.out_channels, kernel=(kh, kw), stride=_pair(m.stride), padding=_pair(m.padding),
            groups=m.groups, bias=m.bias is not None, in_hw=_hw(inp), out_hw=_hw(out), params=params,
            macs=out_elems * (m.in_channels // m.groups) * kh * kw,
            weight_bytes=params * FP32_BYTES, activation_bytes=out_elems * FP32_BYTES,
        )  # fmt: skip
    assert isinstance(m, nn.Linear)
    return dict(
        name=name, kind="linear", in_channels=m.in_features, out_channels=m.out_features, kernel=(1, 1),
        stride=(1, 1), padding=(0, 0), groups=1, bias=m.bias is not None, in_hw=_hw(inp), out_hw=_hw(out),
        params=params, macs=out_elems * m.in_features,
        weight_bytes=params * FP32_BYTES, activation_bytes=out_elems * FP32_BYTES,
    )  # fmt: skip


def _grouped(m: nn.Module) -> bool:
    """A grouped convolution that is not depthwise (1 < groups < in_channels)."""
    return isinstance(m, nn.Conv2d) and 1 < m.groups < m.in_channels


def _channel_groups(
    model: nn.Module, example: ExampleInputs, names: list[str]
) -> tuple[dict[str, int], dict[str, bool], list[str], dict[str, str]]:
    """Union the layers whose output channels torch-pruning says must be pruned together.

    Returns group roots, prunability, notes and, per layer, why it is not prunable (besides being an
    output). A model torch-pruning cannot trace, and groups coupled to a grouped (not depthwise)
    convolution, which it does not prune group-consistently, are left unpruned with the reason: the other
    techniques still apply, and ``compress`` reports the skip instead of failing inside the library."""
    import torch_pruning as tp

    notes: list[str] = []
    reasons: dict[str, str] = {}
    modules = dict(model.named_modules())
    parent = {n: n for n in names}
    order = {n: i for i, n in enumerate(names)}

    def find(n: str) -> str:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    prunable = dict.fromkeys(names, True)
    try:
        with torch.enable_grad():  # torch-pruning traces with autograd, also inside a caller's no_grad()
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=example, forward_fn=call, verbose=False)
    except Exception as exc:  # the library's own failures on graphs it does not support (e.g. channel shuffles)
        why = (f"torch-pruning cannot trace this model's channel dependencies ({type(exc).__name__}: {exc}); "
               "structured pruning is off for it, the other techniques apply")  # fmt: skip
        notes.append(why)
        return {n: i for i, n in enumerate(names)}, dict.fromkeys(names, False), notes, dict.fromkeys(names, why)
    name_of = {m: n for n, m in modules.items()}
    unsafe: dict[str, str] = {}
    for n in names:
        m = modules[n]
        pruner = dg.get_pruner_of_module(m)
        if m not in dg.module2node or pruner is None:
            notes.append(f"{n}: not in torch-pruning's dependency graph; treated as uncoupled")
            continue
        group = dg.get_pruning_group(m, pruner.prune_out_channels, idxs=[0])
        consumers = 0
        for item in group:
            dep = item.dep
            target = name_of.get(dep.target.module)
            if target is None or target not in parent:
                continue
            if _grouped(dep.target.module):
                g = dep.target.module.groups
                what = "it is" if target == n else f"its channels are coupled to {target},"
                unsafe[n] = (f"{what} a grouped convolution (groups={g}), which torch-pruning does not prune "
                             "group-consistently")  # fmt: skip
            if dg.is_out_channel_pruning_fn(dep.handler):
                a, b = find(n), find(target)
                if a != b:
                    # Keep the earliest layer as the root so group ids are forward-order indices.
                    if order[a] < order[b]:
                        parent[b] = a
                    else:
                        parent[a] = b
            elif dg.is_in_channel_pruning_fn(dep.handler):
                consumers += 1
        if consumers == 0:
            prunable[n] = False
    # An output layer makes its whole group unprunable; so does a coupling to a grouped convolution.
    blocked = {find(n) for n in names if not prunable[n]}
    for n, why in unsafe.items():
        if find(n) not in blocked:
            for other in names:
                if find(other) == find(n):
                    reasons.setdefault(other, why)
    blocked |= {find(n) for n in unsafe}
    root_index = {n: order[find(n)] for n in names}
    return root_index, {n: find(n) not in blocked for n in names}, notes, reasons


def measure_layers(model: nn.Module, input_shape: InputSpec) -> dict[str, dict[str, Any]]:
    """Shape, params and MACs of every conv/linear module, keyed by name, in forward-execution order
    (``input_shape``: a shape, fed as zeros, or example inputs)."""
    was_training = model.training
    model.eval()
    records: dict[str, dict[str, Any]] = {}
    calls: dict[str, int] = {}

    def hook(name: str) -> Any:
        def fn(m: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            calls[name] = calls.get(name, 0) + 1
            if name not in records:
                records[name] = _spec_for(name, m, inputs[0], output)
                records[name]["_calls"] = 0

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in compressible_layers(model).items()]
    try:
        with torch.no_grad():
            call(model, example(input_shape))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    for name, count in calls.items():
        records[name]["_calls"] = count
    return records


def analyze_model(model: nn.Module, input_shape: InputSpec = (1, 1, 28, 28)) -> ModelAnalysis:
    """Analyse ``model`` on a zero input of ``input_shape`` (batch 1), or on example inputs (a tensor, a tuple
    or a dict of tensors), without changing it."""
    input_shape = normalise(input_shape)
    was_training = model.training
    model.eval()
    layers = compressible_layers(model)
    records = measure_layers(model, input_shape)
    calls = {n: r.pop("_calls") for n, r in records.items()}
    notes = [f"{n}: defined but not used in the forward pass; left out" for n in layers if n not in records]
    notes += [f"{n}: called {c} times; counted once" for n, c in calls.items() if c > 1]
    names = list(records)  # forward-execution order (dicts keep insertion order)
    group, prunable, graph_notes, reasons = _channel_groups(model, example(input_shape), names)
    notes += graph_notes
    members: dict[int, list[str]] = {}
    for n in names:
        members.setdefault(group[n], []).append(n)
    block_of = {n: b for b in removable_blocks(model) for n in names if n.startswith(b + ".")}
    specs = [
        LayerSpec(index=i, group=group[n], prunable=prunable[n], prune_note=reasons.get(n, ""),
                  coupled_with=tuple(x for x in members[group[n]] if x != n), block=block_of.get(n, ""),
                  **records[n])
        for i, n in enumerate(names)
    ]  # fmt: skip
    model.train(was_training)
    return ModelAnalysis(
        input_shape=input_shape,
        layers=specs,
        model_params=sum(p.numel() for p in model.parameters()),
        notes=notes,
    )
