"""LiteRT (TensorFlow Lite) files from PyTorch models, through Google's ``litert-torch`` converter.

Why ``litert-torch``: it is the maintained successor of ``ai-edge-torch`` (the
same team; ``ai-edge-torch`` is now a shim that installs it), it lowers a
``torch.export`` program straight to a LiteRT flatbuffer without TensorFlow or
an ONNX detour (``onnx2tf`` re-implements every ONNX operator in Keras and
drags in TensorFlow), and its int8 path is PyTorch's own PT2E quantization
with the quantizer that matches LiteRT's kernels. The interpreter that runs the
files is ``ai-edge-litert`` (``pip install ai-edge-litert`` on a Pi).

What :func:`to_tflite` makes, from the model's float view (pruned channels
really removed, removed blocks really gone, factor pairs as two layers):

* fp32: the graph at batch 1 (what a Pi runs), NCHW input as in PyTorch
  (the converter inserts the layout transposes).
* int8: PT2E static quantization with LiteRT's symmetric quantizer: int8
  weights per output channel, int8 activations per tensor calibrated on
  training images, int8 input and output (the file records their scale and
  zero point; :class:`~edgecompress.latency_models.profiler.Session` applies
  them). Every layer is quantized, which is what LiteRT's integer kernels and
  the Pi 4 measurements assume.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from edgecompress._imports import optional
from edgecompress.compressors.constraints import float_view
from edgecompress.errors import EdgeCompressError
from edgecompress.latency_models.profiler import OVERHEAD_KEY, build_op, overhead_module, parse_key, plan_file_name
from edgecompress.latency_models.table import write_plan

__all__ = ["LiteRTConversionError", "tflite_operators", "to_tflite"]

NEEDED_FOR = "LiteRT export (pip install 'edgecompress[litert]')"


class LiteRTConversionError(EdgeCompressError):
    """The model holds an operator the LiteRT converter cannot lower."""


@contextlib.contextmanager
def _quiet() -> Iterator[list[str]]:
    """The converter's progress lines off, its C++ log lines (file descriptor 2) and the quantizer's prints
    (``sys.stdout``) captured, for this block only; yields the captured lines once the block ends."""
    lines: list[str] = []
    pytree = logging.getLogger("torch.utils._pytree")  # a deprecation note logged when litert_torch imports
    level = pytree.level
    pytree.setLevel(logging.ERROR)
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture, contextlib.redirect_stdout(io.StringIO()) as said:
        os.dup2(capture.fileno(), 2)
        try:
            litert_torch = optional("litert_torch", needed_for=NEEDED_FOR)
            show = litert_torch.config.show_progress
            litert_torch.config.show_progress = False
            try:
                yield lines
            finally:
                litert_torch.config.show_progress = show
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            pytree.setLevel(level)
            capture.seek(0)
            lines.extend(capture.read().decode(errors="replace").splitlines() + said.getvalue().splitlines())


def _layer_of(module: nn.Module, example: torch.Tensor, op: str) -> str:
    """The module path that calls ``op`` (``aten.special_i1e.default``) in ``module``'s exported graph."""
    program = torch.export.export(module, (example,))
    for node in program.graph.nodes:
        if node.op == "call_function" and str(node.target).removeprefix("aten.") == op.removeprefix("aten."):
            stack = node.meta.get("nn_module_stack") or {}
            if stack:
                path, _cls = list(stack.values())[-1]
                return str(path) or "the model's own forward"
            return "the model's own forward"
    return "an unknown layer"


def _one_partition_per_call(graph_module: Any) -> None:
    """Tell apart the calls of a module used more than once (LeNet-5's one ``act`` ReLU after every layer).

    The quantizer groups operators into partitions by the module that made them; every call of a shared
    module then lands in one partition with several outputs, only the first is annotated, and preparing the
    model fails ("'relu_1' not in ..."). ``torch.export`` names the k-th call ``...@k``: carry that into the
    partition key."""
    for node in graph_module.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if stack:
            key = list(stack)[-1]
            if "@" in key:
                fqn, cls = stack[key]
                stack[key] = (f"{fqn}@{key.rsplit('@', 1)[1]}", cls)


def _convert(module: nn.Module, example: torch.Tensor, quant_config: Any = None) -> bytes:
    litert_torch = optional("litert_torch", needed_for=NEEDED_FOR)
    try:
        edge = litert_torch.convert(module, (example,), quant_config=quant_config)
    except Exception as exc:  # the converter raises RuntimeError/ValueError with the aten op in the text
        text = str(exc)
        found = re.search(r"Lowering not found: (\S+)", text)
        if found is None:
            raise LiteRTConversionError(
                f"the LiteRT converter (litert-torch) failed on this model: {type(exc).__name__}: "
                f"{text.splitlines()[0] if text else ''}; export --format onnx runs it in ONNX Runtime instead"
            ) from None
        op = found.group(1)
        layer = _layer_of(module, example, op)
        raise LiteRTConversionError(
            f"LiteRT cannot convert operator {op} (used by layer {layer!r}): litert-torch has no lowering for it. "
            "Replace that layer with operators LiteRT supports, or export --format onnx / onnx-int8, which "
            "ONNX Runtime runs on a Pi as well"
        ) from None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.tflite"
        edge.export(str(path))
        return path.read_bytes()


def to_tflite(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    int8: bool = False,
    calibration: Iterable[torch.Tensor] = (),
    fold: bool = True,
) -> tuple[bytes, dict[str, Any]]:
    """A LiteRT flatbuffer of ``model`` (its float view when ``fold``) at batch 1, and what was done.

    ``int8``: full-integer PT2E quantization; ``calibration`` yields input batches (any batch size; each
    image is run once through the observers)."""
    if not (isinstance(input_shape, tuple) and all(isinstance(d, int) for d in input_shape)):
        raise EdgeCompressError(
            f"LiteRT export takes a model with one tensor input; this model's inputs are {input_shape!r}. "
            "Use --format onnx for several inputs"
        )
    view = (float_view(model) if fold else model).eval()
    example = torch.zeros((1, *input_shape[1:]))
    info: dict[str, Any] = {"batch": 1, "layout": "NCHW input and output, as in PyTorch"}
    with _quiet() as log, torch.no_grad():
        litert_torch = optional("litert_torch", needed_for=NEEDED_FOR)
        info["converter"] = f"litert-torch {litert_torch.__version__}"
        if not int8:
            data = _convert(view, example)
        else:
            from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
            from litert_torch.quantize.quant_config import QuantConfig
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

            quantizer = PT2EQuantizer().set_global(
                get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
            )
            try:
                graph_module = torch.export.export(view, (example,)).module()
                _one_partition_per_call(graph_module)
                prepared = prepare_pt2e(graph_module, quantizer)
            except Exception as exc:
                raise LiteRTConversionError(
                    f"torch.export cannot trace this model for int8 quantization: {type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}"
                ) from None
            images = 0
            for batch in calibration:
                for i in range(batch.shape[0]):
                    prepared(batch[i : i + 1])
                    images += 1
            if images == 0:
                raise EdgeCompressError("int8 LiteRT export needs calibration images; none were given")
            quantized = convert_pt2e(prepared, fold_quantize=False)
            data = _convert(quantized, example, QuantConfig(pt2e_quantizer=quantizer))
            info["int8"] = {
                "scheme": "PT2E static, LiteRT's symmetric quantizer: int8 weights per output channel, "
                "int8 activations per tensor, int8 input and output",
                "calibration": f"{images} training images",
                "layers": "all",
            }
    info["converter_log_lines"] = len(log)
    return data, info


def tflite_operators(data: bytes) -> list[str]:
    """The operator names in a LiteRT file, in execution order (the interpreter's op details, read with the
    default XNNPACK delegate off so that delegated operators keep their names)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_content=data, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    return [str(op["op_name"]) for op in interpreter._get_ops_details()]


def convert_operator(module: nn.Module, x: torch.Tensor, precision: str) -> bytes:
    """One profiler operator (``profiler.build_op``) as a LiteRT file: fp32, or int8 calibrated on ``x``."""
    if precision not in ("fp32", "int8"):
        raise EdgeCompressError(f"LiteRT operators are profiled at fp32 or int8, not {precision!r}")
    data, _ = to_tflite(module, tuple(x.shape), int8=precision == "int8", calibration=[x], fold=False)
    return data


def write_litert_plan(keys: list[str], folder: Path, model: str, progress: Any = None) -> Path:
    """A plan folder for ``profiler.py`` on a device without the converter: ``plan.json`` and one converted
    ``.tflite`` per signature (plus the per-call overhead graph). A re-run keeps the files already there."""
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    for i, key in enumerate([OVERHEAD_KEY, *keys]):
        name = plan_file_name(key)
        if not (folder / name).exists():
            torch.manual_seed(0)
            if key == OVERHEAD_KEY:
                module, x = overhead_module()
                precision = "fp32"
            else:
                sig = parse_key(key)
                module, x = build_op(sig)
                precision = sig["precision"]
            tmp = folder / (name + ".tmp")
            tmp.write_bytes(convert_operator(module.eval(), x, precision))
            tmp.replace(folder / name)
        files[key] = name
        if progress is not None:
            progress(i + 1, len(keys) + 1, key, 0.0)
    return write_plan(keys, folder / "plan.json", model, runtime="litert", files=files)
