"""Per-operator latency profiler: measures operator signatures in isolation on the machine it runs on.

This file imports nothing from edgecompress and needs only torch and
onnxruntime (plus onnx for int8, fp16 and TensorRT), or the LiteRT interpreter (``ai-edge-litert``)
for ``--runtime litert``, so it can be copied to a Raspberry Pi or a Jetson and
run there on a plan written elsewhere:

    edgecompress profile --model resnet20 --plan-only --out plan.json        # on your computer
    python3 profiler.py plan.json --out pi4-table.json --threads 4            # on the device

    edgecompress profile --runtime litert --plan-only --out plan-litert/      # converts every operator
    python3 profiler.py plan-litert --out pi4-litert.json --threads 4         # LiteRT interpreter on the device

The plan lists operator signatures (``kind|cin|cout|k|s|g|h|w|precision``);
the table is JSON: device metadata plus ``entries`` key -> median ms. Each
operator is exported alone to ONNX (or run in PyTorch), warmed up, then timed
``repeats`` times; the median is kept. The fixed cost of one inference call
(an almost empty graph) is measured too and stored as ``overhead_ms``;
estimates subtract it from every entry and add it once per model. Re-running
with an existing ``--out`` extends the table and skips what is measured; the
file is rewritten atomically every few entries, so an interrupted run loses
almost nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

TABLE_FORMAT = "edgecompress.latency_table"
TABLE_VERSION = 1
PLAN_FORMAT = "edgecompress.profile_plan"
KINDS = ("conv", "depthwise", "linear", "add", "pool-max", "pool-avg", "pool-global")
PRECISIONS = {
    "onnxruntime": ("fp32", "fp16", "int8"),
    # a Jetson's GPU through ONNX Runtime (onnxruntime-gpu): the CUDA provider, or TensorRT's engines
    "onnxruntime-cuda": ("fp32", "fp16", "int8"),
    "onnxruntime-tensorrt": ("fp32", "fp16", "int8"),
    "litert": ("fp32", "int8"),
    "torch": ("fp32",),
}
OVERHEAD_KEY = "overhead"  # the plan's file for the fixed cost of one call (a ReLU on 8 values)


def parse_key(key: str) -> dict[str, Any]:
    """``conv|16|32|3|2|1|28|28|fp32`` -> fields (the inverse of ``make_key``)."""
    parts = key.split("|")
    if len(parts) != 9 or parts[0] not in KINDS:
        raise ValueError(f"bad operator signature {key!r}: want kind|cin|cout|k|s|g|h|w|precision")
    kind, *nums, precision = parts
    cin, cout, k, s, g, h, w = (int(v) for v in nums)
    return {"kind": kind, "cin": cin, "cout": cout, "k": k, "s": s, "g": g, "h": h, "w": w, "precision": precision}


def make_key(kind: str, cin: int, cout: int, k: int, s: int, g: int, h: int, w: int, precision: str) -> str:
    return f"{kind}|{cin}|{cout}|{k}|{s}|{g}|{h}|{w}|{precision}"


def build_op(sig: dict[str, Any]):  # type: ignore[no-untyped-def]
    """A one-operator module and an input for the signature."""
    import torch
    import torch.nn as nn

    kind, cin, cout, k, s, g, h, w = (sig[x] for x in ("kind", "cin", "cout", "k", "s", "g", "h", "w"))
    if kind in ("conv", "depthwise"):
        return nn.Conv2d(cin, cout, k, s, k // 2, groups=g), torch.randn(1, cin, h, w)
    if kind == "linear":
        return nn.Linear(cin, cout), torch.randn(1, cin)
    if kind == "add":

        class Add(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.register_buffer("other", torch.randn(1, cin, h, w))

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return x + self.get_buffer("other")  # one Add node of two full-size operands

        return Add(), torch.randn(1, cin, h, w)
    if kind == "pool-max":
        return nn.MaxPool2d(k, s), torch.randn(1, cin, h, w)
    if kind == "pool-avg":
        return nn.AvgPool2d(k, s), torch.randn(1, cin, h, w)
    if kind == "pool-global":
        return nn.AdaptiveAvgPool2d(1), torch.randn(1, cin, h, w)
    raise ValueError(f"unknown operator kind {kind!r}; valid: {', '.join(KINDS)}")


def _export(module, x) -> bytes:  # type: ignore[no-untyped-def]
    """ONNX bytes of ``module`` on ``x``'s shape: a copy of ``edgecompress.latency_models.onnx.export_module``
    (TorchScript exporter), kept here so this file runs without edgecompress; a test checks they agree."""
    import warnings

    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module.eval(), (x,), buf,  # type: ignore[arg-type]
            dynamo=False, opset_version=17, input_names=["x"], output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
        )  # fmt: skip
    return buf.getvalue()


def pre_process_for_quantization(src: Path, dst: Path) -> None:
    """ONNX Runtime's recommended pre-processing before ``quantize_static`` (shape inference and graph
    optimisation). Without it, ONNX Runtime 1.32 on x86 fused only 3 of the 21 convolutions of a QDQ zoo
    ResNet-20 (untrained, as the host validation builds it) into QLinearConv, running the rest as Dequantize,
    fp32 Conv, Quantize: 2.4x slower than fp32 instead of 1.4x faster. (Exports of trained, replayed ResNet-20s
    fused all 21 either way.)"""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(src), str(dst))


def quantize_qdq(model_bytes: bytes, x, op_types=None, exclude=(), symmetric: bool = False) -> bytes:  # type: ignore[no-untyped-def]
    """QDQ int8 (uint8 activations calibrated on ``x``, per-channel int8 weights) of every operator the quantizer
    supports, or of the ``op_types`` given, less the nodes named in ``exclude``. ``symmetric``: int8 activations
    with zero point 0, the only kind TensorRT takes (as ``export --target tensorrt`` writes)."""
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"x": x.numpy() if hasattr(x, "numpy") else x}])

        def get_next(self):  # type: ignore[no-untyped-def]
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, ready, dst = Path(tmp) / "op.onnx", Path(tmp) / "op.pre.onnx", Path(tmp) / "op.int8.onnx"
        src.write_bytes(model_bytes)
        with _quiet_onnxruntime():
            pre_process_for_quantization(src, ready)
            quantize_static(
                str(ready), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8, weight_type=QuantType.QInt8,
                op_types_to_quantize=op_types, nodes_to_exclude=list(exclude),
                extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True},
            )  # fmt: skip
        return unshare_float_constants(dst.read_bytes(), exclude)[0]


def unshare_float_constants(model_bytes: bytes, float_nodes) -> tuple[bytes, int]:  # type: ignore[no-untyped-def]
    """Give the float nodes of a QDQ graph their constants back in float.

    The exporter stores equal constants once (the folded BatchNorm biases of layers that share their values, as
    untrained or identically initialised ones do), and ONNX Runtime's quantizer quantizes such a shared bias for
    its quantized users, so a float user (named in ``float_nodes``) then reads it through a DequantizeLinear.
    ONNX Runtime's CPU provider does not compute a DequantizeLinear of constants ahead of time, and a
    convolution whose bias is not a constant is not given its blocked (NCHWc) kernel: on a 2-core x86 VM a
    ResNet-20 at 28x28 with half its layers at int8 ran 1.7x slower (1.09 against 0.63 ms, the same outputs).
    Each float user reads its own float copy (the DequantizeLinear computed now, the values it would compute);
    quantized users keep theirs. Returns the graph and the number of constants copied."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    names = set(float_nodes)
    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    consts = {t.name: t for t in graph.initializer}
    users: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    copied, dropped = 0, []
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or not all(i in consts for i in node.input if i):
            continue
        floats = [u for u in users.get(node.output[0], []) if u.name in names]
        if not floats:
            continue
        q = numpy_helper.to_array(consts[node.input[0]]).astype(np.float64)
        scale = numpy_helper.to_array(consts[node.input[1]]).astype(np.float64)
        zero = (
            numpy_helper.to_array(consts[node.input[2]]).astype(np.float64)
            if len(node.input) > 2 and node.input[2]
            else np.zeros(())
        )
        if scale.ndim == 1 and scale.size > 1:  # per axis
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % q.ndim
            shape = [1] * q.ndim
            shape[axis] = scale.size
            scale = scale.reshape(shape)
            zero = zero.reshape(shape) if zero.ndim else zero
        name = f"{node.output[0]}_float"
        graph.initializer.append(numpy_helper.from_array(((q - zero) * scale).astype(np.float32), name))
        copied += 1
        for user in floats:
            for j, i in enumerate(user.input):
                if i == node.output[0]:
                    user.input[j] = name
        if len(floats) == len(users[node.output[0]]):
            dropped.append(node)
    for node in dropped:
        graph.node.remove(node)
    used = {i for node in graph.node for i in node.input}
    for t in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(t)
    return (model.SerializeToString() if copied else model_bytes), copied


@contextlib.contextmanager
def _quiet_onnxruntime():  # type: ignore[no-untyped-def]
    """A copy of ``edgecompress._logging.quiet_library_logs("onnxruntime")``: drops onnxruntime's root-logger
    warnings inside the block, leaving the host process's logging as it was."""
    import logging

    marker = f"{os.sep}onnxruntime{os.sep}"

    def keep(record: logging.LogRecord) -> bool:
        return marker not in record.pathname or record.levelno >= logging.ERROR

    root = logging.getLogger()
    guard = logging.NullHandler()
    root.addFilter(keep)
    root.addHandler(guard)
    try:
        yield
    finally:
        root.removeHandler(guard)
        root.removeFilter(keep)


def _to_fp16(model_bytes: bytes, keep_io_types: bool = True) -> bytes:
    """float16 weights and activations, float32 input and output (``keep_io_types``, else float16 ones too):
    onnxconverter-common's converter, as ``export --format onnx-fp16`` uses (a device without it: ONNX Runtime's
    copy of the same converter)."""
    import onnx

    try:
        from onnxconverter_common.float16 import convert_float_to_float16
    except ImportError:
        from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load_from_string(model_bytes), keep_io_types=keep_io_types)
    return model.SerializeToString()


# ---- runtimes: the one interface every deployable file is run and timed through ----
#
# export's verification, replay's and compare's measured latency, the search's measured latency and this
# profiler all open models through open_session(), so a runtime added here is added everywhere.

RUNTIMES = ("onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt", "litert")
_ORT_PROVIDERS = {
    "onnxruntime": ("CPUExecutionProvider",),
    "onnxruntime-cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "onnxruntime-tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}
GPU_RUNTIMES = ("onnxruntime-cuda", "onnxruntime-tensorrt")
PROVIDERS = {"cpu": "onnxruntime", "cuda": "onnxruntime-cuda", "tensorrt": "onnxruntime-tensorrt"}
"""``--provider`` (ONNX Runtime's execution provider) -> the runtime it names."""
GPU_IO = (
    "input copied to the GPU once and outputs left there (ONNX Runtime IO binding); each timed call is the "
    "kernel launches and the wait for the GPU, as the operator runs inside a model"
)
RUNTIME_FORMATS = {"onnxruntime": "onnx", "onnxruntime-cuda": "onnx", "onnxruntime-tensorrt": "onnx",
                   "litert": "tflite"}  # fmt: skip


def _litert_interpreter():  # type: ignore[no-untyped-def]
    """LiteRT's interpreter class: ``ai-edge-litert`` (current), else the older ``tflite-runtime`` a Pi may have."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from tflite_runtime.interpreter import Interpreter  # type: ignore[import-not-found,no-redef]
    return Interpreter


def runtime_missing(runtime: str) -> str | None:
    """``None`` when ``runtime`` can run on this machine, else what is missing (one sentence)."""
    if runtime not in RUNTIMES:
        return f"unknown runtime {runtime!r}; valid: {', '.join(RUNTIMES)}"
    if runtime == "litert":
        try:
            _litert_interpreter()
        except ImportError:
            return "the LiteRT interpreter is not installed (pip install ai-edge-litert)"
        return None
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed"
    wanted, listed = _ORT_PROVIDERS[runtime][0], tuple(ort.get_available_providers())
    if wanted not in listed:
        extra = " and TensorRT" if runtime.endswith("tensorrt") else ""
        return (
            f"this onnxruntime ({ort.__version__}) has no {wanted} (it has {', '.join(listed)}); "
            f"install onnxruntime-gpu{extra}"
        )
    if runtime in GPU_RUNTIMES:  # onnxruntime-gpu lists its GPU providers whether or not they can start here
        started = _session_providers(runtime, listed)
        if wanted not in started:
            return _fell_back(ort.__version__, wanted, started)
    return None


def runtime_for(runtime: str | None, provider: str | None, default: str = "onnxruntime") -> str:
    """The runtime that ``--runtime`` and ``--provider`` (either, both agreeing, or neither: ``default``) name;
    ValueError for an unknown provider or two that disagree."""
    if provider is None:
        return runtime or default
    if provider not in PROVIDERS:
        raise ValueError(f"--provider {provider!r} is not one of: {', '.join(PROVIDERS)}")
    if runtime not in (None, PROVIDERS[provider]):
        raise ValueError(f"--provider {provider} is --runtime {PROVIDERS[provider]}, not --runtime {runtime}")
    return PROVIDERS[provider]


def _fell_back(version: str, wanted: str, started) -> str:  # type: ignore[no-untyped-def]
    return (
        f"onnxruntime {version} lists {wanted} but started a session on {', '.join(started)} (its log says "
        "why: a CUDA, cuDNN or TensorRT library it could not load, or no GPU)"
    )


@functools.lru_cache(maxsize=None)  # noqa: UP033 (functools.cache is Python 3.9+; JetPack 5 has 3.8)
def _session_providers(runtime: str, listed: tuple[str, ...]) -> tuple[str, ...]:
    """The providers a one-ReLU session of ``runtime`` starts on (``listed``, what onnxruntime lists, keys
    the cache)."""
    module, x = overhead_module()
    return tuple(_ort_session(_export(module, x), runtime)[0].get_providers())


def _ort_session(model: bytes | str, runtime: str, threads: int = 1, config: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    """An ONNX Runtime session of ``model`` on ``runtime``'s providers (TensorRT with the flags the file's
    precision needs: :func:`tensorrt_options`), and those provider options."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    for key, value in (config or {}).items():
        so.add_session_config_entry(key, value)
    providers: list[Any] = list(_ORT_PROVIDERS[runtime])
    options: dict[str, str] = {}
    if runtime == "onnxruntime-tensorrt":
        options = tensorrt_options(model)
        providers[0] = (providers[0], options)
    return ort.InferenceSession(model, so, providers=providers), options


def available_runtimes() -> list[str]:
    """The runtimes :func:`open_session` can use on this machine."""
    return [r for r in RUNTIMES if runtime_missing(r) is None]


def tensorrt_options(model: bytes | str) -> dict[str, str]:
    """The TensorRT provider options a file's precision needs: TensorRT builds fp32 kernels unless a builder
    flag allows lower precision, whatever the graph's types, so an fp16 file (float16 weights) gets
    ``trt_fp16_enable`` and a QDQ int8 file (QuantizeLinear / DequantizeLinear nodes) ``trt_int8_enable``
    (explicit quantization: the file's scales, no calibration table). An fp32 file gets neither, so TensorRT
    does not time it in fp16."""
    import onnx

    graph = (
        onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(model, load_external_data=False)
    ).graph
    half = onnx.TensorProto.FLOAT16
    options = {}
    if any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in graph.node):
        options["trt_int8_enable"] = "True"
    values = [*graph.input, *graph.output, *graph.value_info]  # a pool in fp16 has no initializer to tell
    if (
        any(t.data_type == half for t in graph.initializer)
        or any(v.type.tensor_type.elem_type == half for v in values)
        or any(a.name == "to" and a.i == half for n in graph.node if n.op_type == "Cast" for a in n.attribute)
    ):
        options["trt_fp16_enable"] = "True"
    return options


class Session:
    """One model loaded in one runtime. ``run(x)`` takes an input batch (an array or tensor, or a feed dict
    name -> array for a multi-input ONNX model) and returns the first output as a float32 array.

    A LiteRT model exported at batch 1 runs a larger batch one sample at a time; int8 inputs and outputs are
    quantized and dequantized with the scale and zero point the file records."""

    def __init__(self, model: bytes | str, runtime: str = "onnxruntime", threads: int = 2,
                 config: dict[str, str] | None = None) -> None:  # fmt: skip
        missing = runtime_missing(runtime)
        if missing is not None:
            raise RuntimeError(f"cannot run a model with {runtime}: {missing}")
        self.runtime, self.threads = runtime, threads
        self.kernels = ""
        if runtime == "litert":
            interpreter_class = _litert_interpreter()
            kind = "model_path" if isinstance(model, str) else "model_content"
            self._it = interpreter_class(**{kind: model}, num_threads=threads)
            self.kernels = "XNNPACK delegate (LiteRT's default CPU kernels)"
            try:
                self._it.allocate_tensors()
            except RuntimeError as exc:  # XNNPACK refuses some int8 files (e.g. scale ratios it cannot represent)
                if "XNNPACK" not in str(exc):
                    raise
                import importlib

                resolver = importlib.import_module(interpreter_class.__module__).OpResolverType
                self._it = interpreter_class(
                    **{kind: model}, num_threads=threads,
                    experimental_op_resolver_type=resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                )  # fmt: skip
                self._it.allocate_tensors()
                self.kernels = (
                    f"LiteRT built-in kernels: the default XNNPACK delegate refused this file ({str(exc).strip()}); "
                    "on the device create the interpreter with "
                    "experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES"
                )
            self._in = self._it.get_input_details()
            self._out = self._it.get_output_details()[0]
            self.input_names = [d["name"] for d in self._in]
            self.batch: int | None = int(self._in[0]["shape"][0])
        else:
            import onnxruntime as ort

            self._ort, self.provider_options = _ort_session(model, runtime, threads, config)
            wanted, active = _ORT_PROVIDERS[runtime][0], self._ort.get_providers()
            if wanted not in active:  # onnxruntime falls back to the next provider when one fails to start
                raise RuntimeError(f"cannot run a model with {runtime}: {_fell_back(ort.__version__, wanted, active)}")
            self.providers = active
            self.input_names = [i.name for i in self._ort.get_inputs()]
            first = self._ort.get_inputs()[0].shape[0]
            self.batch = first if isinstance(first, int) else None

    def feed(self, x):  # type: ignore[no-untyped-def]
        """``x`` as this session's feed: a dict name -> array."""
        if isinstance(x, dict):
            return x
        return {self.input_names[0]: x.numpy() if hasattr(x, "numpy") else x}

    def device_call(self, feed, device: str = "cuda"):  # type: ignore[no-untyped-def]
        """A call running this session on ``feed`` (a feed dict) copied to ``device`` once, its outputs left
        there (IO binding): :data:`GPU_IO`. ``run_with_iobinding`` returns once the GPU has finished. The call
        returns the binding, whose ``copy_outputs_to_cpu()`` reads the outputs."""
        import numpy as np
        import onnxruntime as ort

        binding = self._ort.io_binding()
        for name, arr in feed.items():
            value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr), device, 0)
            binding.bind_ortvalue_input(name, value)
        for out in self._ort.get_outputs():
            binding.bind_output(out.name, device, 0)

        def call():  # type: ignore[no-untyped-def]
            self._ort.run_with_iobinding(binding)
            return binding

        return call

    def run(self, x):  # type: ignore[no-untyped-def]
        import numpy as np

        feed = self.feed(x)
        if self.runtime != "litert":
            return np.asarray(self._ort.run(None, feed)[0], dtype=np.float32)
        (arr,) = feed.values()
        if self.batch is not None and arr.shape[0] != self.batch:
            if self.batch == 1:
                return np.concatenate([self._invoke(arr[i : i + 1]) for i in range(arr.shape[0])])
            self._it.resize_tensor_input(self._in[0]["index"], list(arr.shape))
            self._it.allocate_tensors()
            self.batch = arr.shape[0]
        return self._invoke(arr)

    def _invoke(self, arr):  # type: ignore[no-untyped-def]
        import numpy as np

        d = self._in[0]
        if d["dtype"] in (np.int8, np.uint8):  # an int8 file: quantize the input as the file says
            scale, zero = d["quantization"]
            info = np.iinfo(d["dtype"])
            arr = np.clip(np.round(arr / scale) + zero, info.min, info.max).astype(d["dtype"])
        self._it.set_tensor(d["index"], np.ascontiguousarray(arr, dtype=d["dtype"]))
        self._it.invoke()
        out = self._it.get_tensor(self._out["index"])
        if self._out["dtype"] in (np.int8, np.uint8):
            scale, zero = self._out["quantization"]
            return (out.astype(np.float32) - zero) * scale
        return np.array(out, dtype=np.float32)


def open_session(model: bytes | str, runtime: str = "onnxruntime", threads: int = 2,
                 config: dict[str, str] | None = None) -> Session:  # fmt: skip
    """``model`` (file bytes or a path) loaded in ``runtime`` with ``threads`` threads."""
    return Session(model, runtime, threads, config)


def time_model(model: bytes | str, x, threads: int, warmup: int, repeats: int, *, runtime: str = "onnxruntime",  # type: ignore[no-untyped-def]
               feed=None, config=None) -> float:  # fmt: skip
    """Median ms of ``repeats`` runs after ``warmup`` in a new session of ``runtime`` (``config``: ONNX Runtime
    session config entries). ``x``: the model's one input (tensor or array) or a feed dict; or pass ``feed``.
    On a GPU runtime the input stays on the GPU and so do the outputs (:data:`GPU_IO`)."""
    session = open_session(model, runtime, threads, config)
    batch = session.feed(feed if feed is not None else x)
    if runtime == "litert":  # prepared once: the timed loop is the interpreter's set + invoke
        (arr,) = batch.values()
        call = lambda: session._invoke(arr)  # noqa: E731
    elif runtime in GPU_RUNTIMES:
        call = session.device_call(batch)
    else:
        call = lambda: session._ort.run(None, batch)  # noqa: E731
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def time_onnx(model_bytes: bytes | str, x, threads: int, warmup: int, repeats: int, feed=None, config=None) -> float:  # type: ignore[no-untyped-def]
    """:func:`time_model` in ONNX Runtime's CPU provider."""
    return time_model(model_bytes, x, threads, warmup, repeats, feed=feed, config=config)


def time_onnx_interleaved(
    models: dict[str, bytes | str],
    feeds: dict[str, Any],
    threads: int,
    rounds: int,
    warmup: int,
    repeats: int,
    progress: Any = None,
    runtime: str | dict[str, str] = "onnxruntime",
) -> dict[str, list[float]]:
    """Median ms per round of each model (files of ``runtime``, or ``runtime[name]`` per model), the models
    timed in turn, ``rounds`` times over.

    On a shared machine latency drifts by tens of percent within a minute;
    timing the models round-robin exposes all of them to the same drift, so
    per-round ratios between them (speed-ups) hold where absolute figures do
    not. ``feeds[name]`` is the input array of model ``name``. Each model gets
    a new session every round: on this 2-core VM a session can stay 1.5-2x
    slower than an identical model's for its whole life (measured 2026-11-25:
    two ResNet-20s with the same 8/8/16 channels, 0.090 and 0.127 ms in the
    same rounds, and the other way round in the next process), so the median
    over rounds sees different sessions. ``progress(done, total, name, ms)``
    is called after each timing.
    """
    out: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            engine = runtime if isinstance(runtime, str) else runtime[name]
            out[name].append(time_model(model, feeds[name], threads, warmup, repeats, runtime=engine))
            if progress is not None:
                done = sum(len(v) for v in out.values())
                progress(done, rounds * len(models), name, out[name][-1])
    return out


def time_torch(module, x, threads: int, warmup: int, repeats: int) -> float:  # type: ignore[no-untyped-def]
    import torch

    torch.set_num_threads(threads)
    module.eval()
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            module(x)
        for _ in range(repeats):
            t = time.perf_counter()
            module(x)
            times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def plan_file_name(key: str) -> str:
    """File name of a signature's pre-converted model in a plan folder: ``conv|16|...|fp32`` -> ``conv_16_..._fp32``."""
    return key.replace("|", "_") + ".tflite"


def measure(key: str, runtime: str, threads: int, warmup: int, repeats: int, files=None, convert=None) -> float:  # type: ignore[no-untyped-def]
    """Median milliseconds of one operator signature in isolation.

    LiteRT runs files converted ahead of time (a device need not have the converter): ``files`` maps a
    signature to its ``.tflite`` (bytes or a path, from a plan folder), else ``convert(module, x, precision)``
    makes one here."""
    import torch

    sig = parse_key(key)
    torch.manual_seed(0)
    module, x = build_op(sig)
    if runtime == "torch":
        return time_torch(module, x, threads, warmup, repeats)
    if runtime == "litert":
        return time_model(_litert_file(key, module, x, sig["precision"], files, convert), x, threads, warmup,
                          repeats, runtime="litert")  # fmt: skip
    model = _export(module, x)
    if sig["precision"] == "int8":
        model = quantize_qdq(model, x, symmetric=runtime == "onnxruntime-tensorrt")
    elif sig["precision"] == "fp16":  # float16 in and out: inside an fp16 network no operator casts its input
        model, x = _to_fp16(model, keep_io_types=False), x.half()  # (an fp16 file casts once at each end)
    return time_model(model, x, threads, warmup, repeats, runtime=runtime)


def _litert_file(key, module, x, precision, files, convert):  # type: ignore[no-untyped-def]
    if files is not None and key in files:
        return files[key]
    if convert is None:
        raise ValueError(
            f"no LiteRT file for {key} in the plan and no converter here: write the plan with "
            "`edgecompress profile --runtime litert --plan-only` (it converts every operator)"
        )
    return convert(module, x, precision)


def overhead_module():  # type: ignore[no-untyped-def]
    """What the fixed cost of one inference call is measured on: one ReLU on 8 values."""
    import torch

    return torch.nn.ReLU(), torch.randn(1, 8)


def overhead_ms(runtime: str, threads: int, warmup: int, repeats: int, files=None, convert=None) -> float:  # type: ignore[no-untyped-def]
    """The fixed cost of one inference call: a graph with one ReLU on 8 values."""
    module, x = overhead_module()
    if runtime == "torch":
        return time_torch(module, x, threads, warmup, repeats)
    if runtime == "litert":
        model = _litert_file(OVERHEAD_KEY, module, x, "fp32", files, convert)
        return time_model(model, x, threads, warmup, repeats, runtime="litert")
    return time_model(_export(module, x), x, threads, warmup, repeats, runtime=runtime)


# ---- in-graph profiling: operator times inside whole models (ONNX Runtime's own profiler) ----


def _node_key(args: dict[str, Any], precision: str = "fp32") -> tuple[str | None, bool]:
    """Signature of one profiled ONNX Runtime node from its logical shapes; (None, _) for layout/glue nodes."""
    op = args.get("op_name", "")
    ins = [next(iter(t.values())) for t in args.get("input_type_shape", [])]
    outs = [next(iter(t.values())) for t in args.get("output_type_shape", [])]
    if not ins or not outs:
        return None, False
    x, y = ins[0], outs[0]
    if op in ("Conv", "FusedConv") and len(ins) >= 2 and len(x) == 4:
        w = ins[1]
        cin, cout, k = x[1], w[0], w[-1]
        g = max(1, cin // max(1, w[1]))
        stride = max(1, round(x[2] / max(1, y[2])))  # padded convs: out = ceil(in / stride)
        kind = "depthwise" if g > 1 and g == cin == cout else "conv"
        return make_key(kind, cin, cout, k, stride, g, x[2], x[3], precision), len(ins) >= 4
    if op in ("Gemm", "MatMul", "FusedGemm") and len(x) == 2:
        return make_key("linear", x[1], y[1], 1, 1, 1, 1, 1, precision), False
    if op == "GlobalAveragePool" and len(x) == 4:
        return make_key("pool-global", x[1], x[1], 0, 0, 1, x[2], x[3], precision), False
    if op in ("MaxPool", "AveragePool") and len(x) == 4:
        s = max(1, round(x[2] / max(1, y[2])))
        kind = "pool-max" if op == "MaxPool" else "pool-avg"
        return make_key(kind, x[1], x[1], s, s, 1, x[2], x[3], precision), False
    if op in ("Add", "Sum") and len(x) == 4:
        return make_key("add", x[1], x[1], 1, 1, 1, x[2], x[3], precision), False
    return None, False


def profile_onnx_file(path: Path, threads: int, warmup: int, repeats: int) -> dict[str, Any]:
    """Per-node median kernel times (ms) of one model in ONNX Runtime, and its end-to-end median."""
    import tempfile

    import numpy as np
    import onnxruntime as ort

    model_bytes = path.read_bytes()
    probe = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    inp = probe.get_inputs()[0]
    feed = {
        inp.name: np.random.default_rng(0)
        .standard_normal([d if isinstance(d, int) else 1 for d in inp.shape])
        .astype(np.float32)
    }
    end_to_end = time_onnx(model_bytes, None, threads, warmup, repeats, feed=feed)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        so.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
        for _ in range(warmup + repeats):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    per_node: dict[str, list[float]] = {}
    info: dict[str, dict[str, Any]] = {}
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"):
            per_node.setdefault(e["name"], []).append(e["dur"] / 1000.0)
            info[e["name"]] = e.get("args", {})
    nodes = []
    for name, durs in per_node.items():
        key, fused = _node_key(info[name])
        nodes.append({"node": name, "op": info[name].get("op_name"), "key": key, "fused_add": fused,
                      "ms": statistics.median(durs[warmup:] or durs)})  # fmt: skip
    return {"file": path.name, "end_to_end_ms": end_to_end, "nodes": nodes}


def run_in_graph(
    files: list[Path],
    out: Path,
    *,
    threads: int = 2,
    warmup: int = 20,
    repeats: int = 100,
    device: str = "",
    progress: Any = None,
) -> dict[str, Any]:
    """Build a table of in-graph operator times from whole models (each a probe of the search space).

    Entries are medians over every node with that signature. Over the probes'
    end-to-end times (measured without the profiler) a non-negative least-squares
    fit gives the per-inference overhead (``overhead_ms + overhead_per_op_ms x
    operators``: reorders, glue nodes, dispatch) and ``node_time_scale``, the
    factor between profiled node times and their share of an unprofiled run. Residual adds that the runtime fused into a
    convolution are inside that convolution's entry (``fused_adds``).
    """
    import numpy as np

    samples: dict[str, list[float]] = {}
    fits = []
    for i, path in enumerate(files):
        prof = profile_onnx_file(path, threads, warmup, repeats)
        priced = 0.0
        n_ops = 0
        for node in prof["nodes"]:
            if node["key"] is not None:
                samples.setdefault(node["key"], []).append(node["ms"])
                priced += node["ms"]
                n_ops += 1
        fits.append((n_ops, priced, prof["end_to_end_ms"]))
        if progress is not None:
            progress(i + 1, len(files), path.name, prof["end_to_end_ms"])
    # Profiling inflates node times and misses glue between nodes: fit end-to-end = base + per_op x
    # operators + scale x (sum of node times), on relative error, over the probes.
    from scipy.optimize import nnls

    a = np.array([[1.0, n, priced] for n, priced, _ in fits])
    y = np.array([e for _, _, e in fits])
    (base, per_op, scale), _ = nnls(a / y[:, None], np.ones_like(y))
    meta = {
        "device": device or platform.node(), "machine": platform.machine(), "system": platform.platform(),
        "runtime": "onnxruntime", "threads": threads, "batch": 1, "warmup": warmup, "repeats": repeats,
        "statistic": "median", "measured_by": "edgecompress profiler (in-graph, ONNX Runtime profiling)",
        "mode": "in-graph", "fused_adds": True, "probes": [p.name for p in files],
        "overhead_ms": float(base), "overhead_per_op_ms": float(per_op), "node_time_scale": float(scale),
        "versions": _versions("onnxruntime"), "updated": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }  # fmt: skip
    entries = {k: {"ms": statistics.median(v), "samples": len(v)} for k, v in samples.items()}
    table = {"format": TABLE_FORMAT, "version": TABLE_VERSION, "meta": meta, "entries": entries}
    _write(out, table)
    return table


def channel_block(runtime: str = "onnxruntime", cpuinfo: str = "/proc/cpuinfo") -> int:
    """Channels ONNX Runtime's CPU convolutions compute in one SIMD block on this machine (MLAS NCHWc):
    16 with AVX-512F, 8 with AVX2, else 1 (ARM, other runtimes, no /proc/cpuinfo). Tables record it so
    interpolation between measured channel counts rounds up to whole blocks, as the runtime does."""
    if runtime != "onnxruntime" or platform.machine().lower() not in ("x86_64", "amd64"):
        return 1
    try:
        flags = next((line.split(":", 1)[1].split() for line in open(cpuinfo) if line.startswith("flags")), [])
    except OSError:
        return 1
    return 16 if "avx512f" in flags else 8 if "avx2" in flags else 1


def gpu_name() -> str:
    """The GPU this machine's CUDA runtimes use: torch's name for CUDA device 0, a Jetson's board model
    (``/proc/device-tree/model``), or ``""`` when neither says."""
    try:
        import torch

        if torch.cuda.is_available():
            return str(torch.cuda.get_device_name(0))
    except ImportError:
        pass
    try:
        return Path("/proc/device-tree/model").read_text().strip("\x00\n ")
    except OSError:
        return ""


def runtime_meta(runtime: str) -> dict[str, Any]:
    """What a table records about how it was measured beyond the runtime's name: the provider and, on a GPU,
    which GPU and how inputs and outputs were placed."""
    meta: dict[str, Any] = {}
    if runtime in _ORT_PROVIDERS:
        meta["provider"] = _ORT_PROVIDERS[runtime][0]
        meta["fp16_io"] = "float16"  # fp16 operators timed float16 in and out (no Cast at either end)
    if runtime in GPU_RUNTIMES:
        meta["gpu"] = gpu_name()
        meta["io"] = GPU_IO
    if runtime == "onnxruntime-tensorrt":  # tables before 2026-12-04 timed fp16 / int8 files without the flags
        meta["trt_flags"] = "per file (tensorrt_options); int8 with symmetric activations"
    return meta


def _versions(runtime: str) -> dict[str, str]:
    import torch

    out = {"torch": torch.__version__, "python": sys.version.split()[0]}
    if runtime.startswith("onnxruntime"):
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    if runtime == "litert":
        from importlib.metadata import PackageNotFoundError, version

        for package in ("ai-edge-litert", "tflite-runtime"):
            try:
                out[package] = version(package)
            except PackageNotFoundError:
                pass
    return out


def _write(path: Path, table: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def run(
    keys: list[str],
    out: Path,
    *,
    runtime: str = "onnxruntime",
    threads: int = 2,
    warmup: int = 20,
    repeats: int = 50,
    device: str = "",
    progress: Any = None,
    passes: int = 1,
    files: dict[str, Any] | None = None,
    convert: Any = None,
) -> dict[str, Any]:
    """Measure every key not yet in ``out`` (created if missing); return the table.

    ``files`` / ``convert``: LiteRT's pre-converted operator files, or a converter (see :func:`measure`).

    With ``passes`` > 1 the whole list is measured that many times over, one
    pass after the other, and each entry is the median of its passes: on a
    shared machine whose speed changes for minutes at a time, a single pass
    prices some operators in a fast spell and others in a slow one. A key
    measured in fewer passes than asked is completed on a re-run.
    """
    if passes < 1:
        raise ValueError(f"passes must be >= 1, got {passes}")
    if runtime not in PRECISIONS:
        raise ValueError(f"unknown runtime {runtime!r}; valid: {', '.join(PRECISIONS)}")
    if runtime != "torch" and runtime_missing(runtime) is not None:
        raise ValueError(f"cannot profile with runtime {runtime}: {runtime_missing(runtime)}")
    bad = sorted({parse_key(k)["precision"] for k in keys} - set(PRECISIONS[runtime]))
    if bad:
        raise ValueError(f"runtime {runtime} cannot measure precision {', '.join(bad)}; valid: {PRECISIONS[runtime]}")
    meta = {
        "device": device or platform.node(), "machine": platform.machine(), "system": platform.platform(),
        "runtime": runtime, "threads": threads, "batch": 1, "warmup": warmup, "repeats": repeats,
        "statistic": "median", "measured_by": "edgecompress profiler", "versions": _versions(runtime),
        **runtime_meta(runtime),
    }  # fmt: skip
    if out.exists():
        try:
            table = json.loads(out.read_text())
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
            raise ValueError(f"{out} exists and is not JSON ({exc}); refusing to extend or replace it") from None
        if not isinstance(table, dict) or table.get("format") != TABLE_FORMAT or table.get("version") != TABLE_VERSION:
            raise ValueError(f"{out} is not a version-{TABLE_VERSION} latency table; refusing to extend it")
        old = table["meta"]
        fields = ["runtime", "threads", "machine", *(f for f in ("gpu", "io", "trt_flags") if f in meta)]
        if any(parse_key(k)["precision"] == "fp16" for k in [*keys, *table.get("entries", {})]):
            fields.append("fp16_io")  # tables before 2026-12-04 timed fp16 operators with a Cast at each end
        for field in fields:
            if old.get(field) != meta.get(field):
                raise ValueError(
                    f"{out} was measured with {field}={old.get(field)!r}, this run has {meta.get(field)!r}; "
                    "write to another --out"
                )
    else:
        table = {"format": TABLE_FORMAT, "version": TABLE_VERSION, "meta": meta, "entries": {}}
    table["meta"]["channel_block"] = channel_block(runtime)  # same machine and runtime (checked above)
    if "overhead_ms" not in table["meta"]:
        table["meta"]["overhead_ms"] = overhead_ms(runtime, threads, warmup, max(repeats, 200), files, convert)
    entries = table["entries"]

    def done_passes(key: str) -> int:
        entry = entries.get(key)
        return 0 if entry is None else len(entry.get("passes_ms", [entry["ms"]]))

    wanted = list(dict.fromkeys(keys))
    total = sum(max(0, passes - done_passes(k)) for k in wanted)
    count = 0
    for p in range(passes):
        for key in wanted:
            if done_passes(key) > p:
                continue
            ms = measure(key, runtime, threads, warmup, repeats, files, convert)
            old = entries.get(key)
            runs = ([] if old is None else old.get("passes_ms", [old["ms"]])) + [ms]
            entries[key] = {"ms": statistics.median(runs), "date": time.strftime("%Y-%m-%d")}
            if len(runs) > 1:
                entries[key]["passes_ms"] = runs
            count += 1
            if progress is not None:
                progress(count, total, key, ms)
            if count % 10 == 0:
                _write(out, table)
    table["meta"]["updated"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    table["meta"]["passes"] = max(passes, int(table["meta"].get("passes", 1)))
    _write(out, table)
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Measure the operator signatures of a profile plan.")
    parser.add_argument(
        "plan", type=Path,
        help="folder of probe .onnx models (in-graph profiling, recommended) or an isolated-operator plan JSON, "
        "both written by `edgecompress profile --plan-only`",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, required=True, help="table JSON (extended if it exists)")
    parser.add_argument("--runtime", choices=sorted(PRECISIONS), default=None,
                        help="default: the plan's (a LiteRT plan folder), else onnxruntime")  # fmt: skip
    parser.add_argument("--provider", choices=sorted(PROVIDERS), default=None,
                        help="ONNX Runtime's execution provider: cpu, cuda or tensorrt (the same as --runtime "
                        "onnxruntime, onnxruntime-cuda, onnxruntime-tensorrt)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--passes", type=int, default=1, help="measure the plan N times over, median per operator")
    parser.add_argument("--device", default="", help="device name to record (default: the host name)")
    args = parser.parse_args(argv)
    try:
        args.runtime = runtime_for(args.runtime, args.provider, default=None)  # type: ignore[arg-type]
    except ValueError as exc:
        sys.exit(str(exc))

    def show(done: int, total: int, key: str, ms: float) -> None:
        print(f"[{done}/{total}] {key}: {ms:.4f} ms", flush=True)

    op_files = None
    if args.plan.is_dir() and (args.plan / "plan.json").exists():  # a plan folder with converted operators
        plan_dir, args.plan = args.plan, args.plan / "plan.json"
        listed = json.loads(args.plan.read_text()).get("files", {})
        op_files = {key: str(plan_dir / name) for key, name in listed.items()}
    if args.plan.is_dir():  # a folder of probe models: in-graph profiling
        files = sorted(args.plan.glob("*.onnx"))
        if not files:
            sys.exit(f"{args.plan} holds no .onnx probe models")
        if args.runtime not in (None, "onnxruntime"):
            sys.exit(
                f"--runtime {args.runtime}: in-graph profiling (a folder of probe models) times ONNX Runtime's CPU "
                "provider only; profile operators alone instead, from a plan written by `edgecompress profile "
                "--plan-only` without --in-graph"
            )
        run_in_graph(files, args.out, threads=args.threads, warmup=args.warmup, repeats=max(args.repeats, 50),
                     device=args.device, progress=show)  # fmt: skip
        print(f"wrote {args.out}")
        return
    plan = json.loads(args.plan.read_text())
    if plan.get("format") != PLAN_FORMAT:
        sys.exit(f"{args.plan} is not a profile plan")

    runtime = args.runtime or plan.get("runtime", "onnxruntime")
    if plan.get("runtime", runtime) != runtime:
        sys.exit(f"{args.plan} was written for --runtime {plan['runtime']}, not {runtime}")
    try:
        run(plan["keys"], args.out, runtime=runtime, threads=args.threads, warmup=args.warmup,
            repeats=args.repeats, device=args.device, progress=show, passes=args.passes, files=op_files)  # fmt: skip
    except ValueError as exc:  # a runtime this machine lacks, a table measured otherwise: one line, no traceback
        sys.exit(f"profiler.py: {exc}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
