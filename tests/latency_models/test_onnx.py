"""The one ONNX path: what export ships is what a measured search times and what the profiler probes."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgecompress import Policy, compress
from edgecompress.compressors.constraints import float_view
from edgecompress.errors import ConfigError
from edgecompress.latency_models import profiler
from edgecompress.latency_models.onnx import export_module, runner, to_onnx

SHAPE = (1, 1, 28, 28)


def test_the_profilers_copy_gives_the_same_graph_byte_for_byte() -> None:
    torch.manual_seed(0)
    small = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
    cases = [profiler.build_op(profiler.parse_key("conv|8|16|3|1|1|14|14|fp32")), (small, torch.randn(1, 1, 8, 8))]
    for module, x in cases:
        assert export_module(module, x) == profiler._export(module, x)


def test_to_onnx_folds_the_compression_and_keeps_a_dynamic_batch(lenet5) -> None:  # type: ignore[no-untyped-def]
    model, analysis = lenet5
    policy = Policy.uniform(model, keep=0.5, wbits=4, exclude=["fc3"], round_to=8)
    small, _ = compress(model, policy, analysis=analysis)
    run = runner(to_onnx(small, SHAPE), threads=1)
    x = torch.randn(5, *SHAPE[1:])
    assert np.allclose(run(x).numpy(), float_view(small)(x).detach().numpy(), atol=1e-4)


def test_dynamo_exporter_gives_the_same_outputs(lenet5) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("onnxscript")
    model, _ = lenet5
    x = torch.randn(3, *SHAPE[1:])
    ts = runner(to_onnx(model, SHAPE), threads=1)(x)
    dyn = runner(to_onnx(model, SHAPE, exporter="dynamo"), threads=1)(x)
    assert torch.allclose(ts, dyn, atol=1e-5) and dyn.shape == (3, 10)
    with pytest.raises(ConfigError, match="unknown ONNX exporter 'jit'; valid: torchscript, dynamo"):
        to_onnx(model, SHAPE, exporter="jit")


def test_quantizing_an_operator_leaves_the_callers_logging_alone() -> None:
    root = logging.getLogger()
    before = (root.level, list(root.handlers), list(root.filters))
    module, x = profiler.build_op(profiler.parse_key("conv|8|16|3|1|1|14|14|fp32"))
    assert profiler.quantize_qdq(profiler._export(module, x), x)
    assert (root.level, list(root.handlers), list(root.filters)) == before
