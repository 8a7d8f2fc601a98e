"""The one ONNX path: every graph edgecompress times or ships is made by :func:`to_onnx`.

``export`` (the deployable file), the measured-latency search (each policy
timed against the base model), ``replay``'s measured latency, table
validation and the in-graph profiling probes all call :func:`to_onnx`, so the
graph a search times is the graph ``export`` ships: the model's float view
(compression constraints folded: pruned shapes, factor pairs, quantized or
shared weight values), opset 17, input ``x``, output ``logits``, a dynamic
batch axis (inputs ``x0, x1, ...`` for a tuple of example inputs, a dict's
keys for a dict). ``profiler.py``, which must run on a device without
edgecompress, carries a minimal copy (``profiler._export``); a test checks
that both give byte-identical graphs.

Exporter: TorchScript (``torch.onnx.export(dynamo=False)``) by default, the
dynamo exporter (onnxscript) with ``exporter="dynamo"``. Both export every
zoo model to the same outputs, but a dynamo export costs tens of times more
wall time per graph (``benchmarks/onnx_exporters.py``), which a
measured-latency search pays once per policy, and it needs onnxscript, which
a Pi or Jetson install need not have. The TorchScript exporter's deprecation
warning is silenced inside this call only.
"""

from __future__ import annotations

import io
import statistics
import warnings
from collections.abc import Callable, Collection
from typing import Any

import torch
import torch.nn as nn

from edgecompress._imports import optional
from edgecompress._inputs import ExampleInputs, InputSpec, example, is_shape, normalise
from edgecompress.compressors.constraints import float_view
from edgecompress.errors import ConfigError, EdgeCompressError
from edgecompress.latency_models.profiler import (
    open_session,
    quantize_qdq,
    runtime_missing,
    time_onnx,
    time_onnx_interleaved,
)

__all__ = [
    "EXPORTERS",
    "INPUT_NAME",
    "OPSET",
    "OUTPUT_NAME",
    "input_names",
    "int8_selection",
    "measure_ms",
    "module_of_node",
    "onnx_feed",
    "runner",
    "speedup_against",
    "to_int8",
    "to_onnx",
]  # fmt: skip

EXPORTERS = ("torchscript", "dynamo")
OPSET = 17
INPUT_NAME = "x"
OUTPUT_NAME = "logits"


WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
INT8_GLUE_OPS = ("Add", "MaxPool", "GlobalAveragePool")
"""Quantized with the weighted operators only when every one of those is: an int8 export of some layers keeps
the element-wise operators in float, as ``export --format onnx-int8`` does."""


def module_of_node(node_name: str) -> str:
    """Module path of an exported node: ``/layers/layers.0/conv1/conv1.0/Conv`` -> ``layers.0.conv1.0``.

    The TorchScript exporter names each scope by the child's name, prefixed by
    its parent's scope name when the parent is a container (``layers.0``).
    """
    parts = [p for p in node_name.split("/") if p][:-1]
    path: list[str] = []
    prev = ""
    for part in parts:
        if prev and part.startswith(prev + "."):
            path.append(part[len(prev) + 1 :])
        else:
            path.append(part)
        prev = part
    return ".".join(path)


def int8_selection(fp32: bytes, layers: Collection[str] | None) -> tuple[list[str], list[str], list[str]]:
    """Which nodes of an exported graph an int8 export quantizes: the weighted operators of ``layers`` (module
    paths; None: all), plus the element-wise ones where every weighted operator is. Returns (quantized weighted
    nodes, float weighted nodes, operator types to quantize)."""
    onnx = optional("onnx", needed_for="int8 graphs")
    weighted = [n for n in onnx.load_from_string(fp32).graph.node if n.op_type in WEIGHTED_OPS]

    def chosen(node: Any) -> bool:
        module = module_of_node(node.name)
        return layers is None or any(module == m or module.startswith(m + ".") for m in layers)

    quantized = [n.name for n in weighted if chosen(n)]
    excluded = [n.name for n in weighted if not chosen(n)]
    return quantized, excluded, list(WEIGHTED_OPS) + ([] if excluded else list(INT8_GLUE_OPS))


def to_int8(fp32: bytes, x: Any, layers: Collection[str] | None = None) -> bytes:
    """QDQ int8 of an exported graph as the host table's int8 entries were measured (uint8 activations calibrated
    on ``x``, per-channel int8 weights), over the nodes :func:`int8_selection` picks."""
    _, excluded, ops = int8_selection(fp32, layers)
    return quantize_qdq(fp32, x, op_types=ops, exclude=excluded)


def input_names(example: ExampleInputs) -> list[str]:
    """The ONNX graph's input names for ``example``: ``x`` for one tensor, ``x0, x1, ...`` for a tuple, the keys
    of a dict."""
    if isinstance(example, torch.Tensor):
        return [INPUT_NAME]
    if isinstance(example, dict):
        return list(example)
    return [f"{INPUT_NAME}{i}" for i in range(len(example))]


def onnx_feed(example: ExampleInputs) -> dict[str, Any]:
    """ONNX Runtime's feed (name -> array) for inputs shaped like ``example``."""
    tensors = [example] if isinstance(example, torch.Tensor) else list(example.values() if isinstance(example, dict)
                                                                       else example)  # fmt: skip
    return {n: t.detach().cpu().numpy() for n, t in zip(input_names(example), tensors, strict=True)}


def export_module(module: nn.Module, example: ExampleInputs, *, exporter: str = "torchscript") -> bytes:
    """ONNX bytes of a plain module (no compression constraints) on ``example``'s shapes, dynamic batch.

    ``example``: one tensor, a tuple of tensors (inputs ``x0, x1, ...``) or a dict of tensors (inputs named
    by its keys)."""
    if exporter not in EXPORTERS:
        raise ConfigError(f"unknown ONNX exporter {exporter!r}; valid: {', '.join(EXPORTERS)}")
    module = module.eval()
    names = input_names(example)
    if isinstance(example, dict):
        args: tuple[Any, ...] = ()
        kwargs: dict[str, Any] | None = example
    else:
        args, kwargs = ((example,) if isinstance(example, torch.Tensor) else tuple(example)), None
    if exporter == "dynamo":
        optional("onnxscript", needed_for="the dynamo ONNX exporter")
        batch = torch.export.Dim("batch")
        dims = {0: batch}
        dynamic: Any = {k: dims for k in names} if kwargs is not None else tuple(dims for _ in args)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module, args, None, kwargs=kwargs, dynamo=True, input_names=names, output_names=[OUTPUT_NAME],
                dynamic_shapes=dynamic, verbose=False, report=False,
            )  # fmt: skip
        assert program is not None
        return program.model_proto.SerializeToString()  # type: ignore[no-any-return]
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter: see the module docstring
        torch.onnx.export(
            module, args, buf, kwargs=kwargs, dynamo=False, opset_version=OPSET,  # type: ignore[arg-type]
            input_names=names, output_names=[OUTPUT_NAME],
            dynamic_axes={**{n: {0: "batch"} for n in names}, OUTPUT_NAME: {0: "batch"}},
        )  # fmt: skip
    return buf.getvalue()


def to_onnx(model: nn.Module, input_shape: InputSpec, *, exporter: str = "torchscript") -> bytes:
    """fp32 ONNX of ``model`` with its compression constraints folded in (what deploys and what is timed);
    ``input_shape``: a shape, or example inputs (:mod:`edgecompress._inputs`)."""
    return export_module(float_view(model), example(input_shape), exporter=exporter)


def runner(model_bytes: bytes, threads: int, runtime: str = "onnxruntime") -> Callable[[Any], torch.Tensor]:
    """A deployable file (ONNX, or LiteRT with ``runtime="litert"``) as a callable on input batches (export
    verification), through :func:`~edgecompress.latency_models.profiler.open_session`."""
    missing = runtime_missing(runtime)
    if missing is not None:
        raise ConfigError(f"cannot run the model with runtime {runtime!r}: {missing}")
    try:
        session = open_session(model_bytes, runtime, threads)
    except Exception as exc:  # the runtime refuses the file: said in one line, not a traceback
        raise EdgeCompressError(
            f"{runtime} cannot load the exported file: {type(exc).__name__}: {str(exc).strip()}"
        ) from None

    def run(x: Any) -> torch.Tensor:
        return torch.from_numpy(session.run(x if isinstance(x, torch.Tensor) else onnx_feed(x))).float()

    run.kernels = session.kernels  # type: ignore[attr-defined]
    return run


def measure_ms(
    model: nn.Module, input_shape: InputSpec, *, threads: int = 2, warmup: int = 20, repeats: int = 100
) -> float:
    """Median ms of one ONNX Runtime inference of ``to_onnx(model)`` (CPU provider, ``threads`` threads); a
    shape is fed random normal values, example inputs as given."""
    spec = normalise(input_shape)
    ex = torch.randn(spec) if is_shape(spec) else spec  # type: ignore[arg-type]
    return time_onnx(to_onnx(model, spec), None, threads, warmup, repeats, feed=onnx_feed(ex))  # type: ignore[arg-type]


def speedup_against(
    base: nn.Module, model: nn.Module, shape: tuple[int, ...], *, threads: int, rounds: int, warmup: int, repeats: int
) -> dict[str, float]:
    """``model`` timed against ``base`` on this CPU: their fp32 ONNX exports at ``shape`` in ONNX Runtime, in turn
    for ``rounds`` rounds (:func:`~edgecompress.latency_models.profiler.time_onnx_interleaved`); the medians of
    each one's per-round ms and of the per-round ratio base / model (the ratio holds where absolute ms drift)."""
    x = onnx_feed(torch.randn(shape))
    models: dict[str, bytes | str] = {"base": to_onnx(base, shape), "model": to_onnx(model, shape)}
    times = time_onnx_interleaved(models, dict.fromkeys(models, x), threads, rounds, warmup, repeats)
    return {
        "base_ms": statistics.median(times["base"]),
        "ms": statistics.median(times["model"]),
        "speedup": statistics.median(b / m for b, m in zip(times["base"], times["model"], strict=True)),
    }
