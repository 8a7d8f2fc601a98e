"""Checkpoints: a state_dict plus a JSON model spec, loadable with ``weights_only=True``.

The file is a plain dict ``{"format", "version", "spec", "state_dict"}`` where
``spec`` is a JSON string, so ``torch.load(path, weights_only=True)`` reads it
without unpickling any code. The spec names the model, its input shape, the
dataset it was trained on, its measured accuracy and the software versions.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from edgecompress.errors import CheckpointError
from edgecompress.models import create_model

__all__ = [
    "CHECKPOINT_FORMAT",
    "COMPRESSED_FORMAT",
    "ModelSpec",
    "cpu_name",
    "load_checkpoint",
    "load_compressed",
    "rebuild_structure",
    "save_checkpoint",
    "save_compressed",
    "software_versions",
]

CHECKPOINT_FORMAT = "edgecompress.checkpoint"
CHECKPOINT_VERSION = 1


def cpu_name() -> str:
    """The CPU model as the OS names it (Linux: /proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def software_versions() -> dict[str, str]:
    import torchvision

    from edgecompress import __version__

    return {
        "edgecompress": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


@dataclass
class ModelSpec:
    """What a checkpoint holds: enough to rebuild the model and to say where its numbers came from."""

    model: str
    num_classes: int
    in_channels: int
    input_size: int
    dataset: str
    seed: int
    metrics: dict[str, float] = field(default_factory=dict)
    """Measured accuracies, e.g. ``{"test_acc": 0.91, "val_acc": 0.92}``, on the named dataset's splits."""
    train: dict[str, Any] = field(default_factory=dict)
    """The training settings and wall time that produced the weights."""
    versions: dict[str, str] = field(default_factory=software_versions)
    created: str = ""

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, self.in_channels, self.input_size, self.input_size)

    def build(self) -> nn.Module:
        return create_model(self.model, self.num_classes, self.in_channels, input_size=self.input_size)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        known = set(cls.__dataclass_fields__)
        missing = {"model", "num_classes", "in_channels", "input_size", "dataset", "seed"} - set(data)
        if missing:
            raise CheckpointError(f"model spec lacks {sorted(missing)}")
        return cls(**{k: v for k, v in data.items() if k in known})


def _save_payload(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Write atomically (temp file, then rename) so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def _load_payload(path: Path, what: str) -> Any:
    """``torch.load(weights_only=True)``; any failure becomes a CheckpointError naming ``what`` and the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise CheckpointError(f"cannot read {what} {path}: {exc}") from exc


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, spec: ModelSpec) -> Path:
    """Write atomically (temp file, then rename) so a crash never leaves half a checkpoint."""
    return _save_payload(path, {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "spec": json.dumps(asdict(spec), sort_keys=True),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    })  # fmt: skip


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[nn.Module, ModelSpec]:
    """Rebuild the model a checkpoint describes and load its weights (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    payload = _load_payload(path, "checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an edgecompress checkpoint (no '{CHECKPOINT_FORMAT}' header)")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {payload.get('version')!r}; this edgecompress reads version "
            f"{CHECKPOINT_VERSION}"
        )
    try:
        spec = ModelSpec.from_dict(json.loads(payload["spec"]))
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} has a corrupt model spec: {exc}") from exc
    model = spec.build()
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit model {spec.model!r}: {exc}") from exc
    model.eval()
    return model, spec


COMPRESSED_FORMAT = "edgecompress.compressed"


def save_compressed(
    path: str | os.PathLike[str],
    model: nn.Module,
    spec: ModelSpec,
    policy: Any,
    *,
    round_to: int,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write a compressed model: base spec + policy (JSON strings) + state_dict, loadable ``weights_only``.

    The structure (kept channels, factor ranks, masks, codebooks, quantizers)
    is rebuilt by re-applying the policy to a freshly built base model, then
    every tensor is overwritten from the state_dict: no pickled code.
    """
    return _save_payload(path, {
        "format": COMPRESSED_FORMAT,
        "version": CHECKPOINT_VERSION,
        "spec": json.dumps(asdict(spec), sort_keys=True),
        "policy": json.dumps(policy.to_dict(), sort_keys=True),
        "round_to": int(round_to),
        "metrics": json.dumps(metrics or {}, sort_keys=True),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    })  # fmt: skip


def rebuild_structure(spec: ModelSpec, policy: Any, round_to: int) -> nn.Module:
    """The compressed model's structure: the policy applied to a freshly built base model.

    Kept channels, factor ranks and codebook sizes depend only on the policy
    and ``round_to``; every value (weights, masks, indices, quantizer ranges)
    is meant to be overwritten by the caller from a saved state.
    """
    from edgecompress.compressors import compress

    needs_calibration = any(lp.abits == 8 for lp in policy.layers.values())
    calibration = [torch.zeros(spec.input_shape)] if needs_calibration else None  # ranges replaced by the caller
    model, _ = compress(spec.build().eval(), policy, calibration, input_shape=spec.input_shape, round_to=round_to)
    return model


def load_compressed(path: str | os.PathLike[str]) -> tuple[nn.Module, ModelSpec, Any, dict[str, Any]]:
    """Rebuild a compressed model written by :func:`save_compressed`: (model, base spec, policy, metrics)."""
    from edgecompress.compressors import Policy

    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise CheckpointError(f"compressed model {path} does not exist (give a replay folder or its model.pt)")
    with path.open("rb") as f:
        if f.read(4) == b"ECAR":
            from edgecompress.compressors.archive import load_archive

            return load_archive(path)
    payload = _load_payload(path, "compressed model")
    if not isinstance(payload, dict) or payload.get("format") != COMPRESSED_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        hint = " (that is a base checkpoint: run `edgecompress replay` first)" if found == CHECKPOINT_FORMAT else ""
        raise CheckpointError(f"{path} is not an edgecompress compressed model (format {found!r}){hint}")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has version {payload.get('version')!r}; this edgecompress reads "
                              f"{CHECKPOINT_VERSION}")  # fmt: skip
    try:
        spec = ModelSpec.from_dict(json.loads(payload["spec"]))
        policy = Policy.from_dict(json.loads(payload["policy"]), str(path))
        metrics = json.loads(payload.get("metrics", "{}"))
        policy.base["round_to"] = int(payload["round_to"])
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} has a corrupt header: {exc}") from exc
    model = rebuild_structure(spec, policy, int(payload["round_to"]))
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the policy's structure: {exc}") from exc
    model.eval()
    return model, spec, policy, metrics
