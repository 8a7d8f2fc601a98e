"""Where training and scoring run: accelerator names, mixed precision, memory layout, model placement.

``resolve_accelerator`` turns a config name (``auto``, ``cpu``, ``cuda``, ``mps``)
into a ``torch.device``, or raises :class:`~edgecompress.errors.ConfigError`
saying what this machine's torch can see. ``autocast`` is the mixed-precision
context for a device and precision; ``on_device`` moves a model to the
accelerator for the duration of a ``with`` block and back to where it was after
it (also when the block raises), so callers outside training never see a model
on a GPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import AbstractContextManager

import torch
import torch.nn as nn

from edgecompress.errors import ConfigError, did_you_mean

__all__ = [
    "ACCELERATORS",
    "PRECISIONS",
    "autocast",
    "check_precision",
    "describe",
    "grad_scaler",
    "model_device",
    "on_device",
    "resolve_accelerator",
    "step",
    "to_device",
    "use_channels_last",
]

ACCELERATORS = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("fp32", "bf16", "fp16")


def _cuda_missing() -> str:
    build = f"a build for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    count = torch.cuda.device_count()
    return (
        f"accelerator 'cuda' asked for, but CUDA is not available: torch {torch.__version__} is {build} and sees "
        f"{count} CUDA device{'s' if count != 1 else ''} (torch.cuda.device_count() = {count}). "
        "Check the GPU driver and CUDA_VISIBLE_DEVICES, install a torch build for this machine's CUDA, "
        "or pass --accelerator cpu (or auto, which uses a GPU only when there is one)."
    )


def _mps_missing() -> str:
    built = torch.backends.mps.is_built()
    why = "built with MPS support but finds no usable Apple GPU" if built else "built without MPS support (macOS only)"
    return (
        f"accelerator 'mps' asked for, but MPS is not available: torch {torch.__version__} is {why}. "
        "Pass --accelerator cpu (or auto, which uses a GPU only when there is one)."
    )


def resolve_accelerator(name: str | torch.device) -> torch.device:
    """The ``torch.device`` for an accelerator name: ``cpu``, ``cuda``, ``mps``, or ``auto`` (CUDA, MPS, CPU).

    A ``torch.device`` is accepted too (checked the same way). Asking for a GPU
    this machine's torch cannot use raises ``ConfigError``, whose message starts
    ``accelerator 'cuda' asked for, but CUDA is not available`` (or ``'mps'``
    / ``MPS``) and says what torch found and what to pass instead.
    """
    if isinstance(name, torch.device):
        kind = name.type
        if kind == "cuda" and not torch.cuda.is_available():
            raise ConfigError(_cuda_missing())
        if kind == "mps" and not torch.backends.mps.is_available():
            raise ConfigError(_mps_missing())
        if kind not in ("cpu", "cuda", "mps"):
            raise ConfigError(f"accelerator device {name} is not supported; valid: cpu, cuda, mps")
        return name
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(_cuda_missing())
        return torch.device("cuda")
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(_mps_missing())
        return torch.device("mps")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    hint = " Did you mean 'cuda' (or 'auto')?" if name.lower() == "gpu" else did_you_mean(name, ACCELERATORS)
    raise ConfigError(f"unknown accelerator {name!r}.{hint} Valid accelerators: {', '.join(ACCELERATORS)}")


def check_precision(device: torch.device, precision: str) -> None:
    """Raise ``ConfigError`` unless ``precision`` can run on ``device`` (checked before any work starts)."""
    if precision not in PRECISIONS:
        raise ConfigError(
            f"unknown precision {precision!r}.{did_you_mean(precision, PRECISIONS)} "
            f"Valid precisions: {', '.join(PRECISIONS)}"
        )
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"precision fp16 on {device.type}: fp16 autocast needs CUDA (it trains with a gradient scaler there); "
            "use --precision bf16 or fp32"
        )
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"precision bf16: {torch.cuda.get_device_name(device)} has no bfloat16 support; use --precision fp16 "
            "or fp32"
        )


def autocast(device: torch.device, precision: str) -> AbstractContextManager[object]:
    """The mixed-precision context for ``precision`` on ``device``: nothing for fp32, ``torch.autocast`` else.

    bf16 runs on CUDA, the CPU (and MPS where torch supports it); fp16 on CUDA only.
    """
    check_precision(device, precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return torch.autocast("cuda", dtype=torch.float16)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """The loss scaler fp16 training needs on CUDA (small gradients underflow in fp16); None otherwise."""
    check_precision(device, precision)
    if precision == "fp16" and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


def step(loss: torch.Tensor, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> bool:
    """Backward and one optimizer step, through ``scaler`` when given; whether the optimizer stepped.

    A gradient scaler skips the step of a batch whose scaled gradients overflowed (the first batches of fp16
    training, while it finds its scale) and lowers its scale; a learning-rate schedule should then not advance
    either (PyTorch warns when a scheduler steps before its optimizer has)."""
    if scaler is None:
        loss.backward()
        opt.step()
        return True
    scaler.scale(loss).backward()
    scaler.step(opt)  # waits for the GPU (it reads whether the gradients overflowed)
    scale = scaler.get_scale()  # so reading the scale here costs no further wait
    scaler.update()
    return scaler.get_scale() >= scale


def use_channels_last(device: torch.device, setting: bool | None) -> bool:
    """NHWC layout: ``setting`` when given, else on for CUDA (tensor cores want it) and off elsewhere."""
    return setting if setting is not None else device.type == "cuda"


def describe(device: torch.device) -> str:
    """Where work runs, for logs and run records: ``cuda:0 (NVIDIA H200, 139 GiB)``, ``cpu (2 threads)``."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return f"cuda:{index} ({props.name}, {props.total_memory / 2**30:.0f} GiB)"
    if device.type == "cpu":
        threads = torch.get_num_threads()
        return f"cpu ({threads} thread{'s' if threads != 1 else ''})"
    return str(device)


def model_device(model: nn.Module) -> torch.device | None:
    """The device of ``model``'s first parameter (else first buffer); None for a model holding no tensors."""
    for param in model.parameters():
        return param.device
    for buffer in model.buffers():
        return buffer.device
    return None


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type != "cuda" or a.index is None or b.index is None:
        return True
    return a.index == b.index


@contextlib.contextmanager
def on_device(model: nn.Module, device: torch.device, channels_last: bool = False) -> Iterator[nn.Module]:
    """Run the block with ``model`` on ``device`` (NHWC if ``channels_last``); put it back afterwards.

    On exit, also after an exception, the model returns to the device it was on
    (a model without tensors stays where it is) and to the contiguous layout. A
    model already on ``device`` is not touched: CPU runs stay exactly as they were.
    """
    original = model_device(model)
    move = original is not None and not _same_device(original, device)
    if move:
        model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        if move:
            assert original is not None
            model.to(original)
        if channels_last:
            model.to(memory_format=torch.contiguous_format)


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """A batch on ``device`` (asynchronous from pinned memory); NHWC for 4-D inputs when ``channels_last``."""
    x = x.to(device, non_blocking=True)
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x
