"""Export: ONNX fp32 / fp16 / int8, TorchScript and the archive, each verified against PyTorch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgecompress.artifacts.checkpoint import ModelSpec
from edgecompress.artifacts.compressed import load_compressed, save_compressed
from edgecompress.artifacts.export import export_model, module_of_node
from edgecompress.compressors import LayerPolicy, Policy, compress
from edgecompress.errors import CheckpointError, ConfigError

DEVICES = ["raspberry-pi-4"]


def test_onnx_export_matches_pytorch(replayed) -> None:  # type: ignore[no-untyped-def]
    out = replayed["root"] / "m.onnx"
    r = export_model(replayed["out"], "onnx", out, data_dir=replayed["data"], val_size=60, measure=False)
    assert out.stat().st_size == r["bytes"]
    assert r["checker"].startswith("onnx.checker passed")
    assert r["parity"]["samples"] == 50
    assert r["parity"]["top1_agreement"] >= 0.995 and r["parity"]["max_abs_diff"] < 1e-3
    with pytest.raises(ConfigError, match="exists; choose another --out or pass --force"):
        export_model(replayed["out"], "onnx", out, data_dir=replayed["data"], val_size=60, measure=False)
    # --verify-samples N: exactly the first N test images, and the PyTorch figure is taken on the same ones.
    from torch.utils.data import Subset

    from edgecompress.data import load_dataset
    from edgecompress.training import evaluate

    r = export_model(replayed["out"], "onnx", out, data_dir=replayed["data"], val_size=60, measure=False,
                     force=True, verify_samples=7)  # fmt: skip
    assert r["parity"]["samples"] == 7
    model = load_compressed(replayed["out"])[0]
    test = load_dataset("fashion-mnist", data_dir=replayed["data"], val_size=60).test
    assert r["accuracy_pytorch"] == evaluate(model, Subset(test, range(7)), topk=(1,))["top1"]


def test_int8_export_quantizes_only_abits8_layers_and_keeps_accuracy(replayed) -> None:  # type: ignore[no-untyped-def]
    out = replayed["root"] / "m8.onnx"
    r = export_model(
        replayed["out"], "onnx-int8", out, data_dir=replayed["data"], val_size=60, measure=False, scales="calibrated"
    )
    assert [module_of_node(n) for n in r["int8"]["quantized_nodes"]] == ["conv2"]
    assert sorted(module_of_node(n) for n in r["int8"]["float_nodes"]) == ["conv1", "fc1", "fc2", "fc3"]
    # Stated bound: within 4 points (2 of the 50 test images) of the PyTorch compressed model.
    assert abs(r["parity"]["top1"] - r["accuracy_pytorch"]) <= 0.04
    import onnx

    ops = {n.op_type for n in onnx.load(out).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_int8_refuses_policy_without_8bit_layers(replayed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = replayed["model"]
    spec = ModelSpec("lenet5", 10, 1, 28, "fashion-mnist", 0)
    policy = Policy.uniform(model, keep=0.5, base={"input_shape": [1, 1, 28, 28]})
    compressed, _ = compress(model, policy)
    path = save_compressed(tmp_path / "m.pt", compressed, spec, policy)
    with pytest.raises(ConfigError, match=r"asks for 8-bit activations on no layer .* --all-layers"):
        export_model(path, "onnx-int8", tmp_path / "x.onnx", data_dir=replayed["data"], val_size=60, measure=False)
    r = export_model(
        path, "onnx-int8", tmp_path / "y.onnx", data_dir=replayed["data"], val_size=60, measure=False, all_layers=True
    )
    assert len(r["int8"]["quantized_nodes"]) == 5 and r["int8"]["float_nodes"] == []


def test_fp16_and_torchscript_exports(replayed) -> None:  # type: ignore[no-untyped-def]
    half = export_model(
        replayed["out"],
        "onnx-fp16",
        replayed["root"] / "m16.onnx",
        data_dir=replayed["data"],
        val_size=60,
        measure=False,
    )
    assert half["parity"]["top1_agreement"] >= 0.98 and half["parity"]["max_abs_diff"] < 0.1
    ts_path = replayed["root"] / "m.ts"
    ts = export_model(replayed["out"], "torchscript", ts_path, data_dir=replayed["data"], val_size=60)
    assert ts["parity"]["max_abs_diff"] == 0.0
    # Loadable by plain torch, with edgecompress made unimportable.
    code = (
        "import sys; sys.modules['edgecompress'] = None; import torch; "
        f"m = torch.jit.load({str(ts_path)!r}); print(tuple(m(torch.zeros(2, 1, 28, 28)).shape))"
    )
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "(2, 10)"


def test_archive_round_trip_identical_and_sized_as_reported(replayed) -> None:  # type: ignore[no-untyped-def]
    path = replayed["root"] / "m.ecar"
    r = export_model(replayed["out"], "archive", path, data_dir=replayed["data"], val_size=60)
    assert r["parity"]["max_abs_diff"] == 0.0 and r["parity"]["top1_agreement"] == 1.0
    assert r["archive"]["layer_bytes"] == replayed["report"]["size"]["huffman_bytes_after"]
    assert (
        path.stat().st_size
        == r["archive"]["layer_bytes"] + r["archive"]["other_tensor_bytes"] + r["archive"]["header_bytes"]
    )
    restored, *_ = load_compressed(path)  # edgecompress loads archives where it loads compressed models
    original, *_ = load_compressed(replayed["out"])
    x = torch.randn(16, 1, 28, 28)
    assert torch.equal(restored(x), original(x))
    from edgecompress.artifacts.archive import load_archive

    path.write_bytes(b"XXXX" + path.read_bytes()[4:])
    with pytest.raises(CheckpointError, match=r"is not an edgecompress archive \(bad magic b'XXXX'\)"):
        load_archive(path)


def test_archive_codes_every_encoding_exactly(tmp_path: Path) -> None:
    """Sparse, quantized, shared, fp16, factorised layers: coded bytes equal the report's, outputs identical."""
    from edgecompress.artifacts.archive import load_archive, pack_archive

    spec = ModelSpec("resnet20", 10, 1, 28, "fashion-mnist", 0)
    torch.manual_seed(0)
    model = spec.build().eval()
    choices = [
        dict(sparsity=0.9),
        dict(wbits=4, sparsity=0.7),
        dict(clusters=16, sparsity=0.95),
        dict(wbits=16),
        dict(rank=0.5),
        dict(keep=0.5, wbits=8, abits=8),
        dict(clusters=4),
        dict(wbits=2, sparsity=0.99),
        {},
    ]
    policy = Policy({}, base={"input_shape": [1, 1, 28, 28]})
    names = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    for i, name in enumerate(names):
        policy = policy.with_layer(name, **choices[i % len(choices)])
    policy = policy.with_layer("layers.7.conv1", drop=True)  # a removed block: nothing stored for it
    compressed, report = compress(model, policy, [torch.randn(8, 1, 28, 28)])
    encodings = {e.split("-")[0] for layer in report.layers for e in layer.encoding.split("+")}
    assert {"dense", "bitmask", "relative", "removed"} <= encodings
    blob, info = pack_archive(compressed, spec, policy)
    assert info["layer_bytes"] == report.totals["huffman_bytes_after"]
    import io

    restored, *_ = load_archive(io.BytesIO(blob))
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(restored(x), compressed(x))


def test_pruned_resnet_with_residual_adds_exports(replayed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    spec = ModelSpec("resnet20", 10, 1, 28, "fashion-mnist", 0)
    torch.manual_seed(0)
    model = spec.build().eval()
    policy = Policy.uniform(model, keep=0.5, base={"model": "resnet20", "input_shape": [1, 1, 28, 28]}, round_to=8)
    compressed, _ = compress(model, policy)
    path = save_compressed(tmp_path / "r.pt", compressed, spec, policy)
    r = export_model(path, "onnx", tmp_path / "r.onnx", data_dir=replayed["data"], val_size=60, measure=False)
    assert r["parity"]["max_abs_diff"] < 1e-3
    import onnx

    graph = onnx.load(tmp_path / "r.onnx").graph
    assert sum(n.op_type == "Add" for n in graph.node) == 9
    q = export_model(
        path, "onnx-int8", tmp_path / "r8.onnx", data_dir=replayed["data"], val_size=60, measure=False, all_layers=True
    )
    assert len(q["int8"]["quantized_nodes"]) == 22
    # Two blocks removed as well: two adds fewer, and the int8 export quantizes the 18 convolutions left.
    gone = {f"layers.{b}.conv{i}": LayerPolicy(drop=True) for b in (2, 8) for i in (1, 2)}
    dropped = policy.replace(layers={**policy.layers, **gone})
    compressed, _ = compress(model, dropped)
    path = save_compressed(tmp_path / "d.pt", compressed, spec, dropped)
    r = export_model(path, "onnx", tmp_path / "d.onnx", data_dir=replayed["data"], val_size=60, measure=False)
    assert r["parity"]["max_abs_diff"] < 1e-3
    assert sum(n.op_type == "Add" for n in onnx.load(tmp_path / "d.onnx").graph.node) == 7
    q = export_model(
        path, "onnx-int8", tmp_path / "d8.onnx", data_dir=replayed["data"], val_size=60, measure=False, all_layers=True
    )
    assert len(q["int8"]["quantized_nodes"]) == 18


def test_module_of_node() -> None:
    assert module_of_node("/layers/layers.0/conv1/Conv") == "layers.0.conv1"
    assert module_of_node("/layers/layers.3/shortcut/shortcut.0/Conv") == "layers.3.shortcut.0"
    assert module_of_node("/fc/Gemm") == "fc"
    assert module_of_node("/layers/layers.3/shortcut/shortcut.0/shortcut.0.1/Conv") == "layers.3.shortcut.0.1"


def _check_topologically_sorted(graph) -> None:  # type: ignore[no-untyped-def]
    """Every node's inputs are graph inputs, initializers or outputs of a node earlier in the list."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}  # "": optional input
    for position, node in enumerate(graph.node):
        missing = [name for name in node.input if name not in available]
        assert not missing, f"node {position} {node.name!r} ({node.op_type}) reads {missing} before they are produced"
        available.update(node.output)


def test_fp16_export_of_residual_resnet_is_sorted_checked_and_matches_pytorch(
    tiny_fmnist_shared: Path, tmp_path: Path
) -> None:
    """onnxconverter-common's fp16 graph: topologically sorted (each residual add reads a tensor produced a
    block earlier), float32 inputs/outputs, float16 weights; ONNX Runtime agrees with PyTorch.

    Tolerance: max |logit difference| < 2e-3 against logits of magnitude ~0.3 (float16's relative step is
    ~1e-3; measured 1.2e-4 on the test split, 1.0e-4 on random inputs), top-1 agreement >= 0.98."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    from edgecompress.compressors.constraints import float_view

    spec = ModelSpec("resnet20", 10, 1, 28, "fashion-mnist", 0)
    torch.manual_seed(0)
    model = spec.build().train()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for _ in range(3):
            model(torch.randn(16, 1, 28, 28))
    model.eval()
    policy = Policy.uniform(model, keep=0.5, base={"model": "resnet20", "input_shape": [1, 1, 28, 28]}, round_to=8)
    compressed, _ = compress(model, policy)
    path = save_compressed(tmp_path / "r.pt", compressed, spec, policy)
    out = tmp_path / "r16.onnx"
    r = export_model(path, "onnx-fp16", out, data_dir=str(tiny_fmnist_shared), val_size=60, measure=False)
    assert r["checker"].startswith("onnx.checker passed")
    assert r["fp16"]["converter"].startswith("onnxconverter-common ") and r["fp16"]["clamp_warnings"] == 0
    assert r["parity"]["samples"] == 50
    assert r["parity"]["top1_agreement"] >= 0.98 and r["parity"]["max_abs_diff"] < 2e-3

    half = onnx.load(out)
    onnx.checker.check_model(half, full_check=True)
    graph = half.graph
    _check_topologically_sorted(graph)
    assert sum(n.op_type == "Add" for n in graph.node) == 9  # the residual adds survive the conversion
    FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert [v.type.tensor_type.elem_type for v in (*graph.input, *graph.output)] == [FLOAT, FLOAT]
    weights = [t for t in graph.initializer if t.data_type in (FLOAT, FLOAT16)]
    assert weights and all(t.data_type == FLOAT16 for t in weights)
    casts = [n for n in graph.node if n.op_type == "Cast"]
    assert len(casts) == 2  # one in (fp32 -> fp16), one out (fp16 -> fp32): no cast pairs left inside

    # Run independently of the export's own check: float32 in, float32 out, any batch size.
    session = ort.InferenceSession(out.read_bytes(), providers=["CPUExecutionProvider"])
    torch.manual_seed(1)
    x = torch.randn(5, 1, 28, 28)
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert got.dtype == np.float32 and got.shape == (5, 10)
    reference = float_view(load_compressed(path)[0]).eval()  # outside no_grad: rebuilding traces autograd
    with torch.no_grad():
        ref = reference(x).numpy()
    assert float(np.abs(got - ref).max()) < 2e-3


def _dequantize_params(path: Path) -> dict[str, tuple]:  # type: ignore[type-arg]
    """Per DequantizeLinear node: (module path, scale array, zero-point array, integer input dtype or None)."""
    import onnx

    from edgecompress.artifacts.export import constant_values

    graph = onnx.load(path).graph
    values = constant_values(graph)
    out = {}
    for node in graph.node:
        if node.op_type == "DequantizeLinear":
            stored = values.get(node.input[0])
            out[node.name] = (module_of_node(node.name), values[node.input[1]], values[node.input[2]],
                              None if stored is None else stored.dtype)  # fmt: skip
    return out


def test_trained_int8_holds_the_policys_scales_exactly(replayed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The trained scales, read back from the graph: conv2's 4-bit weights as integers in [-7, 7] with the
    per-channel scales its fake quantizer used, its input with the trained uint8 scale and zero point."""
    import numpy as np

    from edgecompress.compressors.constraints import ActFakeQuant, _weight_scale, transforms

    out = tmp_path / "t8.onnx"
    r = export_model(replayed["out"], "onnx-int8", out, data_dir=replayed["data"], val_size=60, measure=False)
    assert r["int8"]["scales"].startswith("trained") and r["int8"]["weights"] == {"conv2": 4}
    assert r["int8"]["activations"] == ["conv2"] and r["int8"]["weights_stored_as_int"] == 1
    model, *_ = load_compressed(replayed["out"])
    conv2 = model.get_submodule("conv2")
    chain = transforms(conv2)
    w = conv2.parametrizations.weight.original.detach()
    for t in chain[:-1]:  # the weight the 4-bit quantizer (last in the chain) saw
        w = t(w)
    want_w = _weight_scale(w, 4).reshape(-1).numpy()
    quantizer = conv2.input_quantizer
    assert isinstance(quantizer, ActFakeQuant)
    want_s, want_z = (float(v) for v in quantizer.scale_zero_point())
    import onnx

    graph = onnx.load(out).graph
    params = _dequantize_params(out)
    (conv,) = [n for n in graph.node if n.op_type == "Conv" and module_of_node(n.name) == "conv2"]
    feeding = {o: n.name for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    x_dq, w_dq = params[feeding[conv.input[0]]], params[feeding[conv.input[1]]]
    assert w_dq[3] == np.int8 and x_dq[3] is None  # integer weights stored; the input quantized at run time
    assert sum(p[3] == np.int8 for p in params.values()) == 1  # only conv2's weights are quantized
    _, scale, zero, _ = w_dq
    assert np.array_equal(scale, want_w.astype(np.float32)) and not zero.any()
    (w_node,) = [n for n in graph.node if n.name == feeding[conv.input[1]]]
    (stored,) = [t for t in graph.initializer if t.name == w_node.input[0]]
    assert stored.data_type == onnx.TensorProto.INT8
    levels = onnx.numpy_helper.to_array(stored)
    assert levels.shape == tuple(conv2.weight.shape) and np.abs(levels).max() <= 7  # the 4-bit grid, kept
    _, scale, zero, _ = x_dq
    assert float(scale) == np.float32(want_s) and int(zero) == int(want_z) and zero.dtype == np.uint8
    assert abs(r["parity"]["top1"] - r["accuracy_pytorch"]) <= 0.04  # 2 of 50 images
    # Checked against the fake-quantized model it encodes: the same logits up to float rounding (a value on a
    # rounding boundary can land one level apart: one uint8 step of a layer input)
    assert r["parity"]["reference"].startswith("the compressed PyTorch model, fake quantization included")
    assert r["parity"]["top1_agreement"] >= 0.98 and r["parity"]["max_abs_diff"] < 0.05


def test_tensorrt_target_has_zero_zero_points_everywhere(replayed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    for scales in ("trained", "calibrated"):
        out = tmp_path / f"trt-{scales}.onnx"
        r = export_model(replayed["out"], "onnx-int8", out, data_dir=replayed["data"], val_size=60, measure=False,
                         scales=scales, target="tensorrt")  # fmt: skip
        assert r["int8"]["symmetric"] is True
        params = _dequantize_params(out)
        assert params and all(not z.any() for _, _, z, _ in params.values()), scales
        # int8 everywhere (int32 for biases, which ONNX Runtime's quantizer stores at the product scale)
        assert {z.dtype for _, _, z, _ in params.values()} <= {np.dtype(np.int8), np.dtype(np.int32)}, scales


def test_trained_scales_need_a_quantized_policy(replayed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = replayed["model"]
    spec = ModelSpec("lenet5", 10, 1, 28, "fashion-mnist", 0)
    policy = Policy.uniform(model, keep=0.5, base={"input_shape": [1, 1, 28, 28]})
    compressed, _ = compress(model, policy)
    path = save_compressed(tmp_path / "m.pt", compressed, spec, policy)
    with pytest.raises(ConfigError, match=r"quantizes no weight or activation .* --scales calibrated"):
        export_model(path, "onnx-int8", tmp_path / "x.onnx", data_dir=replayed["data"], scales="trained",
                     val_size=60, measure=False)  # fmt: skip
    with pytest.raises(ConfigError, match=r"unknown --scales 'learned'; valid: auto, trained, calibrated"):
        export_model(path, "onnx-int8", tmp_path / "x.onnx", scales="learned")
    with pytest.raises(ConfigError, match=r"unknown --target 'openvino'; valid: generic, tensorrt"):
        export_model(path, "onnx-int8", tmp_path / "x.onnx", target="openvino")


# ---- LiteRT (TensorFlow Lite) ----


def test_tflite_of_a_pruned_resnet_with_a_removed_block_matches_pytorch(replayed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Channels really removed (the file's convolutions have the kept widths), blocks really gone (two
    residual adds fewer), run in the LiteRT interpreter at batch 1 and agreeing with PyTorch."""
    import numpy as np

    from edgecompress.latency_models.litert import tflite_operators
    from edgecompress.latency_models.profiler import open_session

    spec = ModelSpec("resnet20", 10, 1, 28, "fashion-mnist", 0)
    torch.manual_seed(0)
    model = spec.build().eval()
    policy = Policy.uniform(model, keep=0.5, base={"model": "resnet20", "input_shape": [1, 1, 28, 28]}, round_to=8)
    gone = {f"layers.{b}.conv{i}": LayerPolicy(drop=True) for b in (2, 8) for i in (1, 2)}
    dropped = policy.replace(layers={**policy.layers, **gone})
    compressed, _ = compress(model, dropped)
    path = save_compressed(tmp_path / "d.pt", compressed, spec, dropped)
    out = tmp_path / "d.tflite"
    r = export_model(path, "tflite", out, data_dir=replayed["data"], val_size=60, measure=False)
    assert r["litert"]["converter"].startswith("litert-torch ") and r["litert"]["batch"] == 1
    assert r["parity"]["samples"] == 50
    assert r["parity"]["top1_agreement"] >= 0.995 and r["parity"]["max_abs_diff"] < 1e-4
    ops = tflite_operators(out.read_bytes())
    assert ops.count("ADD") == 7  # 9 residual adds less the 2 removed blocks
    assert ops.count("CONV_2D") + ops.count("DEPTHWISE_CONV_2D") == 21 - 4
    # Independently of the export's own check: NCHW float input, the PyTorch model's logits.
    session = open_session(out.read_bytes(), "litert", 1)
    x = torch.randn(3, 1, 28, 28)
    from edgecompress.compressors.constraints import float_view

    want = float_view(compressed)(x).detach().numpy()
    assert np.abs(session.run(x) - want).max() < 1e-4


def test_tflite_int8_runs_integer_and_keeps_accuracy(replayed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    from edgecompress.latency_models.profiler import open_session

    out = tmp_path / "m8.tflite"
    r = export_model(replayed["out"], "tflite-int8", out, data_dir=replayed["data"], val_size=60, repeats=5,
                     calibration_batches=2)  # fmt: skip
    assert r["litert"]["int8"]["calibration"] == "64 training images"
    session = open_session(out.read_bytes(), "litert", 1)
    assert session._in[0]["dtype"] == np.int8 and session._out["dtype"] == np.int8
    # Stated bound: within 4 points (2 of the 50 test images) of the PyTorch compressed model.
    assert abs(r["parity"]["top1"] - r["accuracy_pytorch"]) <= 0.04
    assert r["measured"]["batch1_ms"] > 0 and r["measured"]["batch1_ms_1thread"] > 0
    assert r["bytes"] < export_model(replayed["out"], "tflite", tmp_path / "m.tflite", data_dir=replayed["data"],
                                     val_size=60, measure=False)["bytes"] / 2  # fmt: skip


def test_an_operator_litert_cannot_convert_is_named_with_its_layer() -> None:
    from edgecompress.latency_models.litert import LiteRTConversionError, to_tflite

    class Odd(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.special.i1e(x)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3)
            self.odd = Odd()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.odd(self.conv(x))

    with pytest.raises(LiteRTConversionError) as caught:
        to_tflite(Net().eval(), (1, 1, 8, 8))
    assert str(caught.value).startswith(
        "LiteRT cannot convert operator aten.special_i1e.default (used by layer 'odd'): litert-torch has no "
        "lowering for it."
    )


def test_trained_int8_folds_batchnorm_into_the_integer_weights_exactly(replayed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """ResNet-20 with 8-bit weights and inputs everywhere: each BatchNorm after a quantized convolution moves into
    that convolution's per-channel scale and bias; the integers are the trained levels (sign-flipped where the
    BatchNorm factor is negative) and the graph still computes the fake-quantized model."""
    import numpy as np
    import onnx

    spec = ModelSpec("resnet20", 10, 1, 28, "fashion-mnist", 0)
    torch.manual_seed(0)
    model = spec.build().train()
    with torch.no_grad():  # non-trivial BatchNorm statistics, some negative factors
        for _ in range(3):
            model(torch.randn(16, 1, 28, 28))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.mul_(torch.where(torch.rand_like(m.weight) < 0.2, -1.0, 1.0))
    model.eval()
    policy = Policy.uniform(model, wbits=8, abits=8, base={"model": "resnet20", "input_shape": [1, 1, 28, 28]})
    compressed, _ = compress(model, policy, torch.randn(64, 1, 28, 28))
    path = save_compressed(tmp_path / "q.pt", compressed, spec, policy)
    out = tmp_path / "q.onnx"
    r = export_model(path, "onnx-int8", out, data_dir=replayed["data"], val_size=60, measure=False, scales="trained")
    graph = onnx.load(out).graph
    convs = [n for n in graph.node if n.op_type == "Conv"]
    left = [n for n in graph.node if n.op_type == "BatchNormalization"]
    assert r["int8"]["batchnorms_folded"] == len(convs) - len(left) > 15
    levels = [onnx.numpy_helper.to_array(t) for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert levels and all(np.abs(v).max() <= 127 for v in levels)
    session = __import__("edgecompress.latency_models.profiler", fromlist=["x"]).open_session(out.read_bytes())
    x = torch.randn(8, 1, 28, 28)
    want = compressed(x).detach().numpy()
    got = session.run(x)
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()
    assert r["parity"]["top1_agreement"] >= 0.98
