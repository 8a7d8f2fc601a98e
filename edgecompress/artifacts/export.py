"""``edgecompress export``: deployable files from a replayed (compressed) model, verified before they are kept.

Formats:

* ``onnx`` - fp32 ONNX (opset 17, dynamic batch) of the model with its
  constraints folded in (pruned shapes, factor pairs, quantized/shared weight
  values); checked with ``onnx.checker``; ONNX Runtime outputs compared with
  PyTorch on the test split (max abs difference, top-1 agreement).
* ``onnx-fp16`` - the same graph in float16, converted by onnxconverter-common
  (``keep_io_types``: inputs and outputs stay fp32, one Cast in and one out;
  the converter returns the graph topologically sorted), for Jetson GPUs
  (TensorRT / CUDA provider).
* ``onnx-int8`` - ONNX Runtime static quantization, QDQ format, per-channel
  int8 weights, activations calibrated on training batches. Only the layers
  whose policy says ``abits <= 8`` are quantized (``all_layers`` quantizes
  every layer); every other node stays float (``nodes_to_exclude``).
  ``symmetric`` makes activations symmetric too, as TensorRT wants.
* ``torchscript`` - ``torch.jit.trace`` of the folded model; ``torch.jit.load``
  runs it without edgecompress.
* ``archive`` - the packed storage the size report counts
  (:mod:`edgecompress.compressors.archive`); ``edgecompress`` loads it back.

Every export reports where its numbers come from: parity and accuracy are
measured on the test split, latency in ONNX Runtime on this machine.
"""

from __future__ import annotations

import copy
import io
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import Subset

from edgecompress._imports import optional
from edgecompress._inputs import example
from edgecompress._io import check_output, replace_atomically
from edgecompress._logging import quiet_library_logs
from edgecompress.artifacts.archive import load_archive, pack_archive
from edgecompress.artifacts.checkpoint import check_data_matches
from edgecompress.artifacts.compressed import load_compressed
from edgecompress.compressors.constraints import float_view, qdq_view
from edgecompress.data import batches, first_batches, load_dataset
from edgecompress.errors import ConfigError, EdgeCompressError
from edgecompress.latency_models.litert import to_tflite
from edgecompress.latency_models.onnx import EXPORTERS, export_module, int8_selection, module_of_node, runner, to_onnx
from edgecompress.latency_models.profiler import (
    pre_process_for_quantization,
    time_model,
    time_onnx,
    unshare_float_constants,
)
from edgecompress.training import evaluate

__all__ = ["FORMATS", "export_model", "module_of_node"]

FORMATS = ("onnx", "onnx-fp16", "onnx-int8", "tflite", "tflite-int8", "torchscript", "archive")
SCALES = ("auto", "trained", "calibrated")
TARGETS = ("generic", "tensorrt")


def _parity(run: Any, reference: nn.Module, dataset: Any, samples: int | None, reference_name: str) -> dict[str, Any]:
    """Run ``run`` and the PyTorch ``reference`` on the test split; compare outputs and accuracy."""
    max_diff, agree, correct, total = 0.0, 0, 0, 0
    with torch.no_grad():
        for x, y in batches(dataset, 256):
            if samples is not None:
                if total >= samples:
                    break
                x, y = x[: samples - total], y[: samples - total]  # exactly the first ``samples`` images
            ref, got = reference(x), run(x)
            max_diff = max(max_diff, float((got - ref).abs().max()))
            agree += int((got.argmax(1) == ref.argmax(1)).sum())
            correct += int((got.argmax(1) == y).sum())
            total += len(y)
    return {
        "samples": total,
        "max_abs_diff": max_diff,
        "top1_agreement": agree / total,
        "top1": correct / total,
        "reference": reference_name,
    }


def _time(model_bytes: bytes, input_shape: tuple[int, ...], threads: int, repeats: int) -> dict[str, float]:
    out = {}
    for batch in (1, 64):
        x = torch.randn((batch, *input_shape[1:]))
        out[f"batch{batch}_ms"] = time_onnx(
            model_bytes, x, threads, 10, repeats if batch == 1 else max(repeats // 5, 5)
        )
    return out


FP16_MIN_SUBNORMAL, FP16_MAX = 5.96e-08, 65504.0


def _fp16(model: Any) -> tuple[bytes, dict[str, Any]]:
    """``model`` (fp32 ONNX) with float16 weights and activations, float32 inputs and outputs.

    Weights outside float16's range are clamped into it (nonzero magnitudes below the smallest subnormal
    up to it, finite ones above the largest down to it); the converter warns once per tensor and end of
    the range, and those warnings are counted here rather than printed.
    """
    float16 = optional("onnxconverter_common.float16", needed_for="onnx-fp16 export")
    from importlib.metadata import version

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        half = float16.convert_float_to_float16(
            model, keep_io_types=True, min_positive_val=FP16_MIN_SUBNORMAL, max_finite_val=FP16_MAX
        )
    clamped = 0
    for w in caught:  # pass on anything but the converter's per-tensor clamping notes
        if str(w.message).startswith("the float32 number"):
            clamped += 1
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    return half.SerializeToString(), {
        "converter": f"onnxconverter-common {version('onnxconverter-common')}",
        "io_types": "float32 (cast to and from float16 inside the graph)",
        "clamp_warnings": clamped,
    }


def _int8(
    fp32: bytes,
    model: nn.Module,
    policy: Any,
    train_data: Any,
    *,
    all_layers: bool,
    symmetric: bool,
    calibration_batches: int,
    seed: int,
) -> tuple[bytes, dict[str, Any]]:
    optional("onnx", needed_for="onnx-int8 export")  # before the quantizer, which needs it
    quantization = optional("onnxruntime.quantization", needed_for="onnx-int8 export")
    CalibrationDataReader, QuantFormat = quantization.CalibrationDataReader, quantization.QuantFormat
    QuantType, quantize_static = quantization.QuantType, quantization.quantize_static
    int8_layers = sorted(name for name, lp in policy.layers.items() if lp.abits <= 8)
    if not all_layers and not int8_layers:
        raise ConfigError(
            "the policy asks for 8-bit activations on no layer (abits <= 8), so onnx-int8 would quantize nothing; "
            "search with the abits technique, or pass --all-layers to quantize every layer (scales calibrated on "
            "training batches; symmetric with --target tensorrt)"
        )

    quantized, excluded, ops = int8_selection(fp32, None if all_layers else int8_layers)
    drawn = [x.numpy() for x in first_batches(train_data, calibration_batches, 32, seed=seed)]

    class Reader(CalibrationDataReader):  # type: ignore[misc,valid-type]
        def __init__(self) -> None:
            self.items = iter([{"x": x} for x in drawn])

        def get_next(self):  # type: ignore[no-untyped-def]
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as tmp, quiet_library_logs("onnxruntime"):  # its per-operator advice
        src, ready, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "fp32.pre.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(fp32)
        pre_process_for_quantization(src, ready)  # else most convolutions stay float between Q/DQ pairs
        quantize_static(
            str(ready),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=ops,
            nodes_to_exclude=excluded,
            extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True},
        )
        data, unshared = unshare_float_constants(dst.read_bytes(), excluded)
    return data, {
        "quantized_nodes": quantized,
        "float_nodes": excluded,
        "float_constants_unshared": unshared,
        "op_types": ops,
        "calibration": f"{len(drawn)} training batches of 32",
        "symmetric": symmetric,
    }


def constant_values(graph: Any) -> dict[str, Any]:
    """Initializer and Constant-node values of an ONNX graph by tensor name, as numpy arrays."""
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def _fold_weight_quantization(model: Any) -> int:
    """Store quantized weights as integers: every QuantizeLinear of a constant (an initializer, through
    Identity nodes) is computed now, its integer tensor becoming the DequantizeLinear's input, as ONNX
    Runtime's and TensorRT's quantized graphs have it. Unused Identity and Constant nodes are dropped.
    Returns the number of weights folded."""
    import numpy as np
    from onnx import numpy_helper

    graph = model.graph
    values = constant_values(graph)
    source = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"}

    def resolve(name: str) -> str:
        while name in source:
            name = source[name]
        return name

    nodes = list(graph.node)  # one wrapper per node (protobuf wrappers are not stable identities)
    folded, drop = 0, set()
    for index, node in enumerate(nodes):
        if node.op_type != "QuantizeLinear" or any(resolve(i) not in values for i in node.input[:3]):
            continue
        w, scale, zero = (values[resolve(i)] for i in node.input[:3])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * w.ndim
        if scale.ndim == 1 and w.ndim > 0:
            shape[axis] = -1
        info = np.iinfo(zero.dtype)
        q = np.clip(np.round(w / scale.reshape(shape)) + zero.reshape(shape).astype(np.int64), info.min, info.max)
        name = node.output[0] + "_int"
        graph.initializer.append(numpy_helper.from_array(q.astype(zero.dtype), name))
        for consumer in nodes:
            consumer.input[:] = [name if i == node.output[0] else i for i in consumer.input]
        drop.add(index)
        folded += 1
    kept = [n for i, n in enumerate(nodes) if i not in drop]
    while True:  # drop what nothing reads any more (the Identity chains and Constants of folded weights)
        used = {i for n in kept for i in n.input} | {o.name for o in graph.output}
        left = [n for n in kept if n.op_type not in ("Identity", "Constant") or any(o in used for o in n.output)]
        if len(left) == len(kept):
            break
        kept = left
    kept = [copy.deepcopy(n) for n in kept]
    del graph.node[:]
    graph.node.extend(kept)
    used = {i for n in kept for i in n.input}
    keep_init = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep_init)
    return folded


def _fold_batchnorm_into_quantized_conv(model: Any) -> int:
    """Fold each BatchNormalization that directly follows a convolution with integer (DequantizeLinear) weights
    into it, keeping the weights on their trained grid: per output channel the BatchNorm factor
    f = gamma / sqrt(var + eps) moves into the weight scale (|f| x scale; the integer levels change sign where
    f < 0) and into the bias ((b - mean) x f + beta). The integers stay exactly as trained; only float scales
    change, so the graph computes the same function up to float rounding, and runtimes see the
    DequantizeLinear -> Conv pattern their int8 kernels fuse. Returns the number of BatchNorms folded."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    nodes = list(graph.node)
    values = constant_values(graph)
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    for n in nodes:  # constants the exporter deduplicated reach their readers through Identity nodes
        if n.op_type == "Identity" and n.input[0] in values:
            values[n.output[0]] = values[n.input[0]]
    folded = 0
    dropped = []
    for bn in nodes:
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1:
            continue
        conv = producer.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or len(consumers.get(conv.output[0], [])) != 1:
            continue
        dq = producer.get(conv.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits or dq.input[1] not in inits:
            continue
        if len(consumers.get(dq.input[0], [])) != 1 or len(consumers.get(dq.input[1], [])) != 1:
            continue
        found = [values.get(i) for i in bn.input[1:5]]
        if any(v is None for v in found):
            continue
        gamma, beta, mean, var = (np.asarray(v, dtype=np.float64) for v in found)
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        f = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
        levels = numpy_helper.to_array(inits[dq.input[0]])
        scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
        if scale.ndim != 1 or len(scale) != len(f) or levels.dtype != np.int8 or np.abs(levels).max() > 127:
            continue
        sign = np.where(f < 0, -1, 1).reshape((-1,) + (1,) * (levels.ndim - 1))
        bias = values[conv.input[2]].astype(np.float64) if len(conv.input) > 2 and conv.input[2] else np.zeros(len(f))
        inits[dq.input[0]].CopyFrom(numpy_helper.from_array((levels * sign).astype(np.int8), dq.input[0]))
        inits[dq.input[1]].CopyFrom(numpy_helper.from_array((scale * np.abs(f)).astype(np.float32), dq.input[1]))
        bias_name = conv.output[0] + "_folded_bias"
        graph.initializer.append(numpy_helper.from_array(((bias - mean) * f + beta).astype(np.float32), bias_name))
        inputs = [*list(conv.input[:2]), bias_name]
        new_conv = helper.make_node("Conv", inputs, list(bn.output), name=conv.name)
        new_conv.attribute.extend(conv.attribute)
        conv.CopyFrom(new_conv)
        dropped.append(bn.name)
        folded += 1
    kept = [copy.deepcopy(n) for n in nodes if n.op_type != "BatchNormalization" or n.name not in dropped]
    del graph.node[:]
    graph.node.extend(kept)
    used = {i for n in graph.node for i in n.input}
    keep_init = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep_init)
    return folded


def _int8_trained(model: nn.Module, shape: Any, *, symmetric: bool) -> tuple[bytes, dict[str, Any]]:
    """int8 ONNX carrying the policy's trained quantization: QuantizeLinear/DequantizeLinear pairs with the
    scales its fake quantizers used (weights per output channel, zero point 0; layer inputs per tensor), the
    weights stored as integers. Layers the policy left in float stay float."""
    onnx = optional("onnx", needed_for="onnx-int8 export")
    view, carried = qdq_view(model, symmetric=symmetric)
    if not carried:
        raise ConfigError(
            "the policy quantizes no weight or activation to 8 bits or fewer, so there are no trained scales to "
            "export; pass --scales calibrated (with --all-layers to quantize every layer)"
        )
    proto = onnx.load_from_string(export_module(view, example(shape)))
    folded = _fold_weight_quantization(proto)
    batchnorms = _fold_batchnorm_into_quantized_conv(proto)
    return proto.SerializeToString(), {
        "scales": "trained (the policy's fake quantization, kept from fine-tuning)",
        "weights": {k: v["weight_bits"] for k, v in carried.items() if "weight_bits" in v},
        "activations": sorted(k for k, v in carried.items() if "input_scale" in v),
        "weights_stored_as_int": folded,
        "batchnorms_folded": batchnorms,
        "symmetric": symmetric,
        "carried": {
            k: {kk: (vv.tolist() if isinstance(vv, torch.Tensor) else vv) for kk, vv in v.items()}
            for k, v in carried.items()
        },
    }


def _policy_quantizes(policy: Any) -> bool:
    return any(lp.wbits <= 8 or lp.abits <= 8 for lp in policy.layers.values())


def export_model(
    model_dir: str | Path,
    fmt: str,
    out: str | Path,
    *,
    data_dir: str | None = None,
    all_layers: bool = False,
    symmetric: bool = False,
    scales: str = "auto",
    target: str = "generic",
    calibration_batches: int = 8,
    verify_samples: int | None = None,
    threads: int = 2,
    repeats: int = 100,
    measure: bool = True,
    force: bool = False,
    seed: int = 0,
    val_size: int = 5000,
    exporter: str = "torchscript",
    trust_factory: str | None = None,
) -> dict[str, Any]:
    """Export the compressed model in ``model_dir`` (a replay folder or its model.pt) as ``fmt`` to ``out``."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    if scales not in SCALES:
        raise ConfigError(f"unknown --scales {scales!r}; valid: {', '.join(SCALES)}")
    if target not in TARGETS:
        raise ConfigError(f"unknown --target {target!r}; valid: {', '.join(TARGETS)}")
    symmetric = symmetric or target == "tensorrt"
    if exporter not in EXPORTERS:
        raise ConfigError(f"unknown ONNX exporter {exporter!r}; valid: {', '.join(EXPORTERS)}")
    if all_layers and scales == "trained":
        raise ConfigError(
            "--all-layers quantizes layers the policy left in float, which have no trained scales: "
            "use --scales calibrated with --all-layers (or drop --all-layers)"
        )
    if exporter != "torchscript" and fmt == "onnx-int8":
        raise ConfigError(
            "onnx-int8 picks the layers to quantize by the TorchScript exporter's node scopes; "
            f"--exporter {exporter} names nodes otherwise: use --exporter torchscript"
        )
    out = Path(out)
    check_output(out, folder=False, error=ConfigError)  # before the work, not after it
    if out.exists() and not force:
        raise ConfigError(f"{out} exists; choose another --out or pass --force to replace it")
    started = time.perf_counter()
    model, spec, policy, metrics = load_compressed(model_dir, trust_factory=trust_factory)
    shape = spec.input_shape
    bundle = load_dataset(spec.dataset, data_dir, val_size=val_size, **spec.data_options())
    check_data_matches(spec, bundle, model_dir)
    folded = float_view(model).eval()
    result: dict[str, Any] = {
        "format": fmt,
        "out": str(out),
        "model": spec.model,
        "source_model": str(model_dir),
        "verified_on": f"{spec.dataset} test split",
    }
    data: bytes
    if fmt in ("onnx", "onnx-fp16", "onnx-int8"):
        onnx = optional("onnx", needed_for="ONNX export")
        fp32 = to_onnx(model, shape, exporter=exporter)
        result["exporter"] = exporter
        data = fp32
        if fmt == "onnx-fp16":
            data, result["fp16"] = _fp16(onnx.load_from_string(fp32))
        elif fmt == "onnx-int8" and (scales == "trained" or (scales == "auto" and not all_layers
                                                                and _policy_quantizes(policy))):  # fmt: skip
            data, result["int8"] = _int8_trained(model, shape, symmetric=symmetric)
        elif fmt == "onnx-int8":
            data, info = _int8(
                fp32,
                model,
                policy,
                bundle.train,
                all_layers=all_layers,
                symmetric=symmetric,
                calibration_batches=calibration_batches,
                seed=seed,
            )
            result["int8"] = info
        onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
        result["checker"] = "onnx.checker passed (full_check)"
        if "scales" in result.get("int8", {}):  # trained scales: the graph encodes the fake-quantized model itself
            reference, described = model, "the compressed PyTorch model, fake quantization included (what it encodes)"
        else:
            reference, described = folded, "PyTorch model with constraints folded (what the export encodes)"
        result["parity"] = _parity(runner(data, threads), reference, bundle.test, verify_samples, described)
        if measure:
            result["measured"] = {
                **_time(data, shape, threads, repeats),
                "fp32_reference": _time(fp32, shape, threads, repeats) if fmt != "onnx" else None,
                "source": f"ONNX Runtime CPU provider on this machine, {threads} threads, median",
            }
    elif fmt in ("tflite", "tflite-int8"):
        int8 = fmt == "tflite-int8"
        drawn = (x for x in first_batches(bundle.train, calibration_batches, 32, seed=seed)) if int8 else ()
        data, result["litert"] = to_tflite(model, shape, int8=int8, calibration=drawn)
        run = runner(data, threads, runtime="litert")
        result["litert"]["kernels"] = run.kernels  # type: ignore[attr-defined]
        result["parity"] = _parity(run, folded, bundle.test, verify_samples,
                                   "PyTorch model with constraints folded (what the export encodes)")  # fmt: skip
        if measure:
            x = torch.randn((1, *shape[1:]))
            result["measured"] = {
                "batch1_ms": time_model(data, x, threads, 10, repeats, runtime="litert"),
                "batch1_ms_1thread": time_model(data, x, 1, 10, repeats, runtime="litert"),
                "source": f"LiteRT interpreter ({result['litert']['kernels']}) on this machine, {threads} threads and "
                "1 thread, median",
            }
    elif fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecated in favour of torch.export, still supported
            traced = torch.jit.trace(folded, torch.zeros(shape))
            buf = io.BytesIO()
            torch.jit.save(traced, buf)
            data = buf.getvalue()
            loaded = torch.jit.load(io.BytesIO(data))
        result["parity"] = _parity(loaded, folded, bundle.test, verify_samples, "PyTorch model with constraints folded")
    else:
        data, info = pack_archive(model, spec, policy, metrics=metrics)
        restored, *_ = load_archive(io.BytesIO(data), trust_factory=spec.model)  # the model just loaded
        result["archive"] = info
        result["parity"] = _parity(restored, model, bundle.test, verify_samples,
                                   "the compressed PyTorch model (activation quantizers included)")  # fmt: skip
    # The compressed PyTorch model on the very images the export was verified on: the two top-1s compare.
    checked = bundle.test if verify_samples is None else Subset(bundle.test, range(result["parity"]["samples"]))
    result["accuracy_pytorch"] = evaluate(model, checked, topk=(1,))["top1"]
    result["bytes"] = len(data)
    replace_atomically(out, lambda tmp: tmp.write_bytes(data))
    result["seconds"] = time.perf_counter() - started
    if result["parity"]["top1_agreement"] < 0.995 and fmt in ("onnx", "tflite", "torchscript", "archive"):
        raise EdgeCompressError(
            f"{fmt} export disagrees with PyTorch on {1 - result['parity']['top1_agreement']:.2%} of the test "
            f"images (max abs difference {result['parity']['max_abs_diff']:.3g}); written to {out} for inspection"
        )
    return result
