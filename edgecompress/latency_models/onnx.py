"""The one ONNX path: every graph edgecompress times or ships is made by :func:`to_onnx`.

``export`` (the deployable file), the measured-latency search (each policy
timed against the base model), ``replay``'s measured latency, table
validation and the in-graph profiling probes all call :func:`to_onnx`, so the
graph a search times is the graph ``export`` ships: the model's float view
(compression constraints folded: pruned shapes, factor pairs, quantized or
shared weight values), opset 17, input ``x``, output ``logits``, a dynamic
batch axis. ``profiler.py``, which must run on a device without
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
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from edgecompress._imports import optional
from edgecompress.compressors.constraints import float_view
from edgecompress.errors import ConfigError
from edgecompress.latency_models.profiler import time_onnx

__all__ = ["EXPORTERS", "INPUT_NAME", "OPSET", "OUTPUT_NAME", "measure_ms", "ort_session", "runner", "to_onnx"]

EXPORTERS = ("torchscript", "dynamo")
OPSET = 17
INPUT_NAME = "x"
OUTPUT_NAME = "logits"


def export_module(module: nn.Module, example: torch.Tensor, *, exporter: str = "torchscript") -> bytes:
    """ONNX bytes of a plain module (no compression constraints) on ``example``'s shape, dynamic batch."""
    if exporter not in EXPORTERS:
        raise ConfigError(f"unknown ONNX exporter {exporter!r}; valid: {', '.join(EXPORTERS)}")
    module = module.eval()
    if exporter == "dynamo":
        optional("onnxscript", needed_for="the dynamo ONNX exporter")
        batch = torch.export.Dim("batch")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module, (example,), None, dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},), verbose=False, report=False,
            )  # fmt: skip
        assert program is not None
        return program.model_proto.SerializeToString()  # type: ignore[no-any-return]
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter: see the module docstring
        torch.onnx.export(
            module, (example,), buf, dynamo=False, opset_version=OPSET,  # type: ignore[arg-type]
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )  # fmt: skip
    return buf.getvalue()


def to_onnx(model: nn.Module, input_shape: tuple[int, ...], *, exporter: str = "torchscript") -> bytes:
    """fp32 ONNX of ``model`` with its compression constraints folded in (what deploys and what is timed)."""
    return export_module(float_view(model), torch.zeros(input_shape), exporter=exporter)


def ort_session(model_bytes: bytes | str, threads: int, providers: tuple[str, ...] = ("CPUExecutionProvider",)) -> Any:
    """An ONNX Runtime session with ``threads`` intra-op threads, quiet below errors."""
    ort = optional("onnxruntime", needed_for="running ONNX models")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model_bytes, so, providers=list(providers))


def runner(model_bytes: bytes, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The ONNX model as a callable on input batches (export verification)."""
    session = ort_session(model_bytes, threads)
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0]).float()


def measure_ms(
    model: nn.Module, input_shape: tuple[int, ...], *, threads: int = 2, warmup: int = 20, repeats: int = 100
) -> float:
    """Median ms of one ONNX Runtime inference of ``to_onnx(model)`` (CPU provider, ``threads`` threads)."""
    return time_onnx(to_onnx(model, input_shape), torch.randn(input_shape), threads, warmup, repeats)
