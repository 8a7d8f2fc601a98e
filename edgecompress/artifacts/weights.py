"""Weights trained elsewhere: read a weights file, find its state_dict, fit it to a named architecture.

Users arrive with a model trained outside edgecompress (a torchvision
``mobilenet_v2`` / ``resnet18``, or their own factory) and a weights file.
:func:`read_weights` accepts:

* a plain **state_dict** (``torch.save(model.state_dict(), path)``): a mapping
  whose values are all tensors;
* a **checkpoint dict** holding one under ``state_dict`` (PyTorch Lightning,
  many training scripts), ``model`` or ``model_state_dict`` (the first of those
  keys that holds a mapping of tensors is taken; the other entries, such as
  optimizer states or epoch counters, are ignored), or an edgecompress
  checkpoint (``edgecompress train``; its spec is ignored, its weights used);
* a **TorchScript** archive (``torch.jit.script(model).save(path)`` or
  ``torch.jit.trace``), read with ``torch.jit.load``, of which only the
  parameters and buffers are used;
* a whole **pickled nn.Module** (``torch.save(model, path)``), only with
  ``trust_pickle=True`` (``--trust-pickle``), see below.

Keys wrapped by ``nn.DataParallel`` / DDP (``module.``), by Lightning modules
(``model.``) or by ``torch.compile`` (``_orig_mod.``) are unwrapped when every
key carries the prefix, repeatedly (``model.module.`` goes too); each stripping
is recorded in :attr:`LoadedWeights.notes` for the user to see.

Safety rule: files are read with ``torch.load(weights_only=True)``, which
builds only tensors, numbers, strings and containers. Unpickling anything else
(a whole ``nn.Module``, an arbitrary object in a checkpoint's extras) imports
and runs code named in the file, so such files are refused unless the caller
passes ``trust_pickle=True`` (``--trust-pickle``), which is meant only for
files the user made. Saving ``model.state_dict()`` avoids the question.

The architecture always comes from the user (``name`` in
:func:`model_from_weights`: a built-in name, ``torchvision:NAME`` or a user
factory ``package.module:function``), even for TorchScript and pickled
modules: edgecompress's compressors rewrite Python ``nn.Module`` trees, and a
TorchScript module cannot be turned back into one, while a pickled module is
only trusted for its weights. The number of classes and input channels are
read from the file when not given (:func:`infer_num_classes`,
:func:`infer_in_channels`). :func:`fit_weights` checks every key and shape
before loading and reports all differences in one message.

Every failure raises :class:`~edgecompress.errors.CheckpointError` naming the
file, the bad value and what would be valid.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from edgecompress.errors import CheckpointError, ModelError
from edgecompress.models import create_model

__all__ = [
    "STATE_DICT_KEYS",
    "STRIPPED_PREFIXES",
    "LoadedWeights",
    "file_sha256",
    "fit_weights",
    "infer_in_channels",
    "infer_num_classes",
    "model_from_weights",
    "read_weights",
]

STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict")
"""Keys of a checkpoint dict that may hold the state_dict, in the order they are tried."""

STRIPPED_PREFIXES = {
    "module.": "nn.DataParallel / DistributedDataParallel",
    "model.": "a Lightning module or wrapper",
    "_orig_mod.": "torch.compile",
}
"""Key prefixes removed when every key of a state_dict carries one, and what adds them."""

_CHECKPOINT_FORMAT = "edgecompress.checkpoint"  # edgecompress.artifacts.checkpoint.CHECKPOINT_FORMAT
_SHOWN = 5  # keys shown per kind of difference in a fit error


@dataclass
class LoadedWeights:
    """A state_dict read from a user's weights file, and what was done to get it."""

    state_dict: dict[str, torch.Tensor]
    kind: str
    """What the file held: ``"state_dict"``, ``"checkpoint dict (key 'state_dict')"`` (or ``'model'``,
    ``'model_state_dict'``), ``"edgecompress checkpoint"``, ``"TorchScript"``, ``"pickled nn.Module"``."""
    notes: list[str]
    """What was done, in words for the user (prefixes stripped, keys taken, counters tolerated)."""
    path: str
    sha256: str
    """Of the file's bytes, for reports saying which weights were used."""
    stripped_prefix: str = ""
    """The prefixes removed from every key, joined (``"model.module."``); :func:`fit_weights` puts them back
    when the model's own keys carry them."""


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file, read in chunks (what ``LoadedWeights.sha256`` and a run's ``base.pt`` record)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_weights(path: str | os.PathLike[str], *, trust_pickle: bool = False) -> LoadedWeights:
    """Read a weights file (see the module docstring for the formats) into a plain state_dict on the CPU.

    ``trust_pickle``: allow ``torch.load(weights_only=False)`` for files holding pickled Python objects
    (a whole ``nn.Module``); unpickling runs code from the file, so pass it only for files you made.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"weights file {path} is a folder; give the file torch.save or TorchScript wrote")
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    try:
        sha256 = file_sha256(path)
    except OSError as exc:
        raise CheckpointError(f"cannot read weights file {path}: {exc}") from None
    notes: list[str] = []
    if _is_torchscript(path):
        state_dict, kind = _read_torchscript(path), "TorchScript"
        notes.append(
            "read the parameters and buffers of a TorchScript module; its code is not used (TorchScript cannot "
            "be turned back into the Python modules edgecompress compresses), so the architecture is the one "
            "you named"
        )
    else:
        state_dict, kind = _find_state_dict(_load(path, trust_pickle, notes), path, notes)
    state_dict, stripped = _strip_prefixes(state_dict, notes)
    return LoadedWeights(state_dict, kind, notes, str(path), sha256, stripped)


def infer_num_classes(state_dict: Mapping[str, torch.Tensor]) -> int | None:
    """Outputs of the classifier: ``out_features`` of the last 2-D weight in key order; None without one."""
    found = None
    for key, value in state_dict.items():
        if key.endswith("weight") and isinstance(value, torch.Tensor) and value.dim() == 2:
            found = int(value.shape[0])
    return found


def infer_in_channels(state_dict: Mapping[str, torch.Tensor]) -> int | None:
    """Input channels of the first convolution: dim 1 of the first 4-D weight in key order; None without one."""
    for key, value in state_dict.items():
        if key.endswith("weight") and isinstance(value, torch.Tensor) and value.dim() == 4:
            return int(value.shape[1])
    return None


def fit_weights(model: nn.Module, weights: LoadedWeights, *, name: str | None = None) -> None:
    """Load ``weights`` into ``model`` (``load_state_dict(strict=True)`` semantics), checking first.

    Every missing key, unexpected key and shape mismatch is found before anything is loaded and reported in
    one CheckpointError (``name``, default the model's class, names the model in it). BatchNorm
    ``num_batches_tracked`` counters absent from the file (older files) keep the model's values. What was
    tolerated or converted is appended to ``weights.notes``.
    """
    name = name or type(model).__name__
    expected = model.state_dict()
    given = weights.state_dict
    if weights.stripped_prefix and _differences(expected, given)[:2] != ([], []):
        restored = {weights.stripped_prefix + k: v for k, v in given.items()}
        restored_missing, restored_unexpected, _ = _differences(expected, restored)
        if not restored_unexpected and set(restored_missing) <= _counters(expected):
            given = restored
            weights.notes.append(
                f"put the prefix {weights.stripped_prefix!r} back on every key: model {name!r} has it too"
            )
    missing, unexpected, mismatched = _differences(expected, given)
    counters = [k for k in missing if k in _counters(expected)]
    missing = [k for k in missing if k not in counters]
    if missing or unexpected or mismatched:
        raise CheckpointError(_fit_message(weights.path, name, expected, given, missing, unexpected, mismatched))
    if counters:
        weights.notes.append(
            f"the file lacks {len(counters)} BatchNorm num_batches_tracked counter(s) (older files do); "
            "the model's were kept"
        )
    converted = sorted(
        {f"{given[k].dtype} -> {v.dtype}" for k, v in expected.items() if k in given and given[k].dtype != v.dtype}
    )
    if converted:
        weights.notes.append(f"converted tensors to the model's dtypes ({', '.join(converted)})")
    try:
        model.load_state_dict(given, strict=False)  # strictness checked above, counters tolerated
    except RuntimeError as exc:  # e.g. a dtype that cannot be copied
        raise CheckpointError(f"weights {weights.path} do not fit model {name!r}: {exc}") from None


def model_from_weights(
    name: str,
    path: str | os.PathLike[str],
    *,
    num_classes: int | None = None,
    in_channels: int | None = None,
    input_size: int,
    trust_pickle: bool = False,
) -> tuple[nn.Module, LoadedWeights, int, int]:
    """Build model ``name`` and load the weights file ``path`` into it; returns it in eval mode with the
    weights read, the number of classes and the input channels used.

    ``name`` is always needed, whatever the file holds (see the module docstring): a built-in name,
    ``torchvision:NAME`` or ``package.module:function`` (the caller passes what the user typed, so the
    factory is imported without a further gate). ``num_classes`` defaults to the outputs of the file's
    classifier, ``in_channels`` to the file's first convolution (else 3). A ``num_classes`` that disagrees
    with the file shows up in the fit error.
    """
    weights = read_weights(path, trust_pickle=trust_pickle)
    if num_classes is None:
        num_classes = infer_num_classes(weights.state_dict)
        if num_classes is None:
            raise CheckpointError(
                f"cannot tell the number of classes of weights {weights.path}: it has no 2-D (linear classifier) "
                "weight; pass --num-classes (num_classes=) with the number of outputs the model was trained with"
            )
        weights.notes.append(f"{num_classes} classes, read from the file's last linear layer")
    if in_channels is None:
        in_channels = infer_in_channels(weights.state_dict)
        if in_channels is None:
            in_channels = 3
            weights.notes.append("no convolution weight in the file: assumed 3 input channels")
        else:
            weights.notes.append(f"{in_channels} input channel(s), read from the file's first convolution")
    try:
        model = create_model(name, num_classes, in_channels, input_size=input_size)
    except ModelError as exc:
        raise CheckpointError(f"cannot build model {name!r} for weights {weights.path}: {exc}") from exc
    fit_weights(model, weights, name=name)
    model.eval()
    return model, weights, num_classes, in_channels


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive is a zip with ``<archive>/constants.pkl`` or ``<archive>/code/``; torch.save's
    zips have neither."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    for entry in names:
        parts = entry.split("/")
        if len(parts) >= 2 and (parts[1] == "constants.pkl" or (parts[1] == "code" and len(parts) > 2)):
            return True
    return False


def _read_torchscript(path: Path) -> dict[str, torch.Tensor]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.load is deprecated in favour of torch.export
            module = torch.jit.load(str(path), map_location="cpu")
        state = module.state_dict()
    except Exception as exc:  # torch raises RuntimeError and others for corrupt archives
        raise CheckpointError(f"cannot read weights file {path} as TorchScript: {_reason(exc)}") from None
    return {str(k): v.detach() for k, v in state.items()}


def _load(path: Path, trust_pickle: bool, notes: list[str]) -> Any:
    """``torch.load(weights_only=True)``; a file holding other pickled objects is refused unless trusted."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        message = str(exc)
        if "weights_only" not in message and "Weights only" not in message:
            raise CheckpointError(f"cannot read weights file {path}: {_not_torch(exc)}") from None
        unsafe = re.search(r"GLOBAL ([\w.]+)", message)
        if not trust_pickle:
            if unsafe is None:  # the safe unpickler met bytes it does not know: not a torch file
                raise CheckpointError(f"cannot read weights file {path}: {_not_torch(exc)}") from None
            raise CheckpointError(
                f"weights file {path} holds pickled Python objects besides tensors (here "
                f"{unsafe.group(1)}; e.g. a whole model saved with torch.save(model, path)), and unpickling "
                "those runs code from the file, so edgecompress reads only tensors, numbers, strings and "
                "containers (torch.load(weights_only=True)). If you made the file yourself, pass --trust-pickle "
                "(in Python trust_pickle=True); otherwise save the weights alone: "
                "torch.save(model.state_dict(), path)"
            ) from None
    except Exception as exc:  # torch raises several types (EOFError, RuntimeError) for other files
        raise CheckpointError(f"cannot read weights file {path}: {_not_torch(exc)}") from None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # anything the pickle names may fail to import or run
        if unsafe is None:
            raise CheckpointError(f"cannot read weights file {path}: {_not_torch(exc)}") from None
        raise CheckpointError(
            f"cannot read weights file {path} even with --trust-pickle: {_reason(exc)} (a pickled model needs "
            "the code of its classes importable here; saving model.state_dict() avoids that)"
        ) from None
    notes.append("read with --trust-pickle (torch.load(weights_only=False)): the file's pickled objects were run")
    return payload


def _find_state_dict(payload: Any, path: Path, notes: list[str]) -> tuple[dict[str, torch.Tensor], str]:
    if isinstance(payload, nn.Module):
        return _module_state(payload), "pickled nn.Module"
    if not isinstance(payload, Mapping):
        raise CheckpointError(
            f"weights file {path} holds a {type(payload).__name__}, not a state_dict; save "
            "torch.save(model.state_dict(), path)"
        )
    if not payload:
        raise CheckpointError(
            f"weights file {path} holds an empty dict; expected a state_dict (names -> tensors) or a dict "
            f"holding one under {', '.join(repr(k) for k in STATE_DICT_KEYS)}"
        )
    if payload.get("format") == _CHECKPOINT_FORMAT and isinstance(payload.get("state_dict"), Mapping):
        notes.append(_edgecompress_note(payload))
        return _as_state_dict(payload["state_dict"], path, "the edgecompress checkpoint's 'state_dict'"), (
            "edgecompress checkpoint"
        )
    if payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return _as_state_dict(payload, path, "the file"), "state_dict"
    for key in STATE_DICT_KEYS:
        inner = payload.get(key)
        if isinstance(inner, nn.Module):  # {"model": module}, loaded with --trust-pickle
            notes.append(f"took the state_dict of the nn.Module under the key {key!r}")
            return _module_state(inner), f"pickled nn.Module (key {key!r})"
        if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            others = [str(k) for k in payload if k != key]
            notes.append(
                f"took the state_dict under the key {key!r} of a checkpoint dict"
                + (f" (ignored: {_listing(others)})" if others else "")
            )
            return _as_state_dict(inner, path, f"the state_dict under {key!r}"), f"checkpoint dict (key {key!r})"
    if any(isinstance(v, torch.Tensor) for v in payload.values()):
        return _as_state_dict(payload, path, "the file"), "state_dict"  # raises, naming the non-tensor entries
    keys = [str(k) for k in payload]
    raise CheckpointError(
        f"weights file {path} holds no state_dict: a dict with keys {_listing(keys) or '(none)'}; expected a "
        f"state_dict (names -> tensors) or a dict holding one under {', '.join(repr(k) for k in STATE_DICT_KEYS)}"
    )


def _as_state_dict(mapping: Mapping[Any, Any], path: Path, where: str) -> dict[str, torch.Tensor]:
    if not mapping:
        raise CheckpointError(f"weights file {path}: {where} is empty; it should map parameter names to tensors")
    bad_keys = [k for k in mapping if not isinstance(k, str)]
    if bad_keys:
        raise CheckpointError(
            f"weights file {path}: {where} has keys that are not strings ({_listing([repr(k) for k in bad_keys])}); "
            "a state_dict maps parameter names to tensors"
        )
    bad = [f"{k} ({type(v).__name__})" for k, v in mapping.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"weights file {path}: {where} holds {len(bad)} entr{'y' if len(bad) == 1 else 'ies'} that are not "
            f"tensors ({_listing(bad)}); a state_dict maps parameter and buffer names to tensors: save "
            "torch.save(model.state_dict(), path)"
        )
    return {k: v.detach() for k, v in mapping.items()}


def _module_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def _strip_prefixes(state_dict: dict[str, torch.Tensor], notes: list[str]) -> tuple[dict[str, torch.Tensor], str]:
    stripped = ""
    changed = True
    while changed:
        changed = False
        for prefix, origin in STRIPPED_PREFIXES.items():
            if all(k.startswith(prefix) and len(k) > len(prefix) for k in state_dict):
                state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
                stripped += prefix
                notes.append(f"stripped the prefix {prefix!r} ({origin}) from {len(state_dict)} keys")
                changed = True
                break
    return state_dict, stripped


def _edgecompress_note(payload: Mapping[str, Any]) -> str:
    try:
        model = json.loads(payload["spec"])["model"]
    except (KeyError, TypeError, ValueError):
        model = None
    saved = f" of model {model!r}" if isinstance(model, str) else ""
    return f"took the state_dict of an edgecompress checkpoint{saved}; its spec is not used, the model is yours"


def _counters(state: Mapping[str, torch.Tensor]) -> set[str]:
    return {k for k in state if k.endswith("num_batches_tracked")}


def _differences(
    expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]
) -> tuple[list[str], list[str], list[tuple[str, tuple[int, ...], tuple[int, ...]]]]:
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    mismatched = [
        (k, tuple(v.shape), tuple(given[k].shape))
        for k, v in expected.items()
        if k in given and tuple(v.shape) != tuple(given[k].shape)
    ]
    return missing, unexpected, mismatched


def _fit_message(
    path: str,
    name: str,
    expected: Mapping[str, torch.Tensor],
    given: Mapping[str, torch.Tensor],
    missing: list[str],
    unexpected: list[str],
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
) -> str:
    parts = []
    if missing:
        parts.append(f"{_count(len(missing), 'missing key')} ({_listing(missing)})")
    if unexpected:
        parts.append(f"{_count(len(unexpected), 'unexpected key')} ({_listing(unexpected)})")
    if mismatched:
        shown = [f"{k}: model {_shape(m)}, file {_shape(f)}" for k, m, f in mismatched]
        parts.append(f"{_count(len(mismatched), 'shape mismatch', 'shape mismatches')} ({_listing(shown)})")
    hints = []
    file_classes, model_classes = infer_num_classes(given), infer_num_classes(expected)
    if file_classes is not None and model_classes is not None and file_classes != model_classes:
        hints.append(
            f"the file's classifier has {file_classes} outputs and the model's {model_classes}: pass "
            f"--num-classes {file_classes}, or leave it out to read it from the file"
        )
    file_channels, model_channels = infer_in_channels(given), infer_in_channels(expected)
    if file_channels is not None and model_channels is not None and file_channels != model_channels:
        hints.append(
            f"the file's first convolution takes {file_channels} input channel(s) and the model's "
            f"{model_channels}: leave in_channels out to read it from the file (and serve the data with "
            f"--channels {file_channels})"
        )
    if missing or unexpected:
        hints.append(
            f"missing and unexpected keys mean the file was saved from another architecture: is --model {name} "
            "the one the weights were trained with?"
        )
    elif not hints:
        hints.append(f"is --model {name} the variant (width, depth, --input-size) the weights were trained with?")
    return f"weights {path} do not fit model {name!r}: {', '.join(parts)}. Hint: {'; '.join(hints)}"


def _count(n: int, singular: str, plural: str | None = None) -> str:
    return f"{n} {singular if n == 1 else plural or singular + 's'}"


def _listing(items: list[str]) -> str:
    return ", ".join(items[:_SHOWN]) + (", ..." if len(items) > _SHOWN else "")


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _not_torch(exc: BaseException) -> str:
    detail = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\s*Check the documentation|$)", str(exc), re.S)
    reason = " ".join(detail.group(1).split()) if detail else _reason(exc)
    if len(reason) > 200:
        reason = reason[:200] + "..."
    return (
        "it is not a file torch.save or TorchScript wrote, or it is damaged "
        f"({reason}); expected a state_dict, a checkpoint dict holding one, or a TorchScript archive"
    )
