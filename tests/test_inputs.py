"""Example inputs (a tensor, a tuple, a dict) through analysis, compress, the estimator and ONNX export."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecompress._inputs import batch_len, call, describe, example, normalise, shapes
from edgecompress.analysis import analyze_model
from edgecompress.compressors import LayerPolicy, Policy, compress
from edgecompress.errors import ConfigError, PolicyError
from edgecompress.latency_models import estimate_latency
from edgecompress.latency_models.onnx import input_names, onnx_feed, runner, to_onnx


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.side = nn.Linear(8, 16)
        self.head = nn.Linear(32 + 16, 5)

    def forward(self, image: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(image))))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.head(torch.cat([x, F.relu(self.side(extra))], 1))


class DictInputs(TwoInputs):
    def forward(self, image: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:  # called as model(**inputs)
        return super().forward(image, extra)


TUPLE = (torch.randn(1, 3, 16, 16), torch.randn(1, 8))
DICT = {"image": TUPLE[0], "extra": TUPLE[1]}


def test_normalise_and_shapes() -> None:
    assert normalise([1, 3, 8, 8]) == (1, 3, 8, 8)
    assert shapes(TUPLE) == [[1, 3, 16, 16], [1, 8]]
    assert shapes(DICT) == {"image": [1, 3, 16, 16], "extra": [1, 8]}
    assert describe(TUPLE) == "2 inputs (1, 3, 16, 16), (1, 8)"
    assert example((1, 2)).shape == (1, 2) and example(TUPLE) is not None
    assert batch_len(DICT) == 1 and batch_len([torch.zeros(4, 2)]) == 4
    with pytest.raises(ConfigError, match=r"^input_shape = 'abc': not a shape or example inputs"):
        normalise("abc")
    with pytest.raises(ConfigError, match="not a shape"):
        normalise((1, -3))


@pytest.mark.parametrize("inputs", [TUPLE, DICT], ids=["tuple", "dict"])
def test_example_inputs_through_analysis_compress_and_estimator(inputs) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = (DictInputs() if isinstance(inputs, dict) else TwoInputs()).eval()
    analysis = analyze_model(model, inputs)
    assert [s.name for s in analysis.layers] == ["conv1", "conv2", "side", "head"]
    assert analysis.layer("conv2").in_hw == (16, 16)
    assert analysis.to_dict()["input_shape"] == shapes(inputs)
    # conv1 -> conv2 is prunable; conv2 feeds the head through a concat, which torch-pruning follows.
    policy = Policy({"conv1": LayerPolicy(keep=0.5), "side": LayerPolicy(wbits=8)}, round_to=1)
    compressed, report = compress(model, policy, example_inputs=inputs)
    assert compressed.conv1.out_channels == 8 and compressed.conv2.in_channels == 8
    assert report.totals["params_after"] < report.totals["params_before"]
    out = call(compressed, inputs)
    assert out.shape == (1, 5)
    base_ms = estimate_latency(model, inputs, "raspberry-pi-4").total_ms
    small_ms = estimate_latency(compressed, inputs, "raspberry-pi-4").total_ms
    assert 0 < small_ms < base_ms
    # The same policy replays from the policy file's JSON with the example inputs.
    again, _ = compress(model, Policy.from_dict(policy.with_applied(report.applied()).to_dict()), input_shape=inputs)
    assert torch.equal(call(again, inputs), out)


def test_compress_refuses_both_and_neither() -> None:
    model = TwoInputs()
    with pytest.raises(PolicyError, match="not both"):
        compress(model, Policy({}), input_shape=(1, 3, 16, 16), example_inputs=TUPLE)
    with pytest.raises(PolicyError, match="needs input_shape or example_inputs"):
        compress(model, Policy({}))


@pytest.mark.parametrize("inputs", [TUPLE, DICT], ids=["tuple", "dict"])
def test_multi_input_onnx_export_runs_in_onnxruntime(inputs) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("onnxruntime")
    model = (DictInputs() if isinstance(inputs, dict) else TwoInputs()).eval()
    names = input_names(inputs)
    assert names == (["image", "extra"] if isinstance(inputs, dict) else ["x0", "x1"])
    run = runner(to_onnx(model, inputs), threads=1)
    batch = {k: v.repeat(3, *([1] * (v.ndim - 1))) for k, v in DICT.items()}
    batch_inputs = batch if isinstance(inputs, dict) else tuple(batch.values())
    got = run(batch_inputs)
    assert got.shape == (3, 5)
    assert torch.allclose(got, call(model, batch_inputs), atol=1e-5)
    assert set(onnx_feed(batch_inputs)) == set(names)
