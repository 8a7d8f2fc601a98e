"""Checkpoints: a state_dict plus a JSON model spec, loadable with ``weights_only=True``.

The file is a plain dict ``{"format", "version", "spec", "state_dict"}`` where
``spec`` is a JSON string, so ``torch.load(path, weights_only=True)`` reads it
without unpickling any code. The spec names the model, its input shape, the
dataset it was trained on, its measured accuracy and the software versions.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from edgecompress._io import replace_atomically
from edgecompress.compressors import Policy, compress
from edgecompress.errors import CheckpointError
from edgecompress.models import create_model, is_user_factory
from edgecompress.version import software_versions

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "ModelSpec",
    "check_data_matches",
    "check_factory",
    "load_checkpoint",
    "load_payload",
    "rebuild_structure",
    "save_checkpoint",
    "save_payload",
    "with_round_to",
]

CHECKPOINT_FORMAT = "edgecompress.checkpoint"
CHECKPOINT_VERSION = 1


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
    data: dict[str, Any] = field(default_factory=dict)
    """How the data was served to the model (``input_size``, ``channels``, ``mean``, ``std``): what replay and
    export pass back to ``load_dataset`` so they feed the model as it was trained and searched."""
    source: dict[str, Any] = field(default_factory=dict)
    """Where the weights came from when they were trained elsewhere (``--weights``): file, sha256, format, notes."""

    def data_options(self) -> dict[str, Any]:
        """``load_dataset`` keyword arguments serving this model's data: its input size and channels, and the
        normalisation it was trained with when one was given."""
        options: dict[str, Any] = {"input_size": self.input_size, "channels": self.in_channels}
        options.update({k: self.data[k] for k in ("mean", "std") if self.data.get(k) is not None})
        return options

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, self.in_channels, self.input_size, self.input_size)

    def build(self, *, trust_factory: str | None = None, where: str = "the file") -> nn.Module:
        """A fresh model of this spec. A user factory (``package.module:function``) named by the spec is
        imported and called only when ``trust_factory`` names the same factory (see :func:`check_factory`);
        ``where`` names the file the spec came from in the refusal."""
        check_factory(self.model, trust_factory, where)
        return create_model(self.model, self.num_classes, self.in_channels, input_size=self.input_size)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        known = set(cls.__dataclass_fields__)
        missing = {"model", "num_classes", "in_channels", "input_size", "dataset", "seed"} - set(data)
        if missing:
            raise CheckpointError(f"model spec lacks {sorted(missing)}")
        return cls(**{k: v for k, v in data.items() if k in known})


def save_payload(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Write atomically (temp file, then rename) so a crash never leaves half a file."""
    return replace_atomically(path, lambda tmp: torch.save(payload, tmp))


def load_payload(path: Path, what: str) -> Any:
    """``torch.load(weights_only=True)``; any failure becomes a CheckpointError naming ``what`` and the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" not in str(exc):
            raise CheckpointError(f"cannot read {what} {path}: {exc}") from None
        # torch's own advice is to re-run with weights_only=False, i.e. to let the file run code: not ours.
        raise CheckpointError(
            f"cannot read {what} {path}: it holds pickled Python objects besides tensors (a whole pickled model, "
            "or a crafted file), and unpickling those can run code, so edgecompress reads only tensors, "
            "numbers, strings and containers (torch.load(weights_only=True)). Save a plain state_dict "
            "(torch.save(model.state_dict(), path)) or an edgecompress checkpoint (`edgecompress train`)"
        ) from None
    except Exception as exc:  # torch raises several types for corrupt files
        reason = str(exc).strip() or type(exc).__name__
        if path.stat().st_size == 0:
            reason = "the file is empty"
        raise CheckpointError(
            f"cannot read {what} {path}: {reason} (not a file torch.save wrote: a state_dict or an edgecompress "
            "checkpoint)"
        ) from None


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, spec: ModelSpec) -> Path:
    """Write atomically (temp file, then rename) so a crash never leaves half a checkpoint."""
    return save_payload(path, {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "spec": json.dumps(asdict(spec), sort_keys=True),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    })  # fmt: skip


def check_factory(name: str, trusted: str | None, where: str = "the file") -> None:
    """Refuse a user factory a file names unless the user named the same one (``--model`` / ``--trust-factory``).

    A checkpoint or policy that passes ``weights_only=True`` can still name any importable module as its
    model factory; importing it runs that module's code (it ran ``os:getpid``, and a stray ``evilmod.py`` in the
    working folder). So the file may only repeat what the user chose.
    """
    if is_user_factory(name) and trusted != name:
        raise CheckpointError(
            f"{where} names the model factory {name!r}; edgecompress imports and calls a factory named in a file "
            f"only when you name the same one, because importing a module runs its code: pass --model {name} "
            f"(or --trust-factory {name}; in Python trust_factory={name!r})"
            + (f"; you named {trusted!r}" if trusted else "")
        )


def load_checkpoint(path: str | os.PathLike[str], *, trust_factory: str | None = None) -> tuple[nn.Module, ModelSpec]:
    """Rebuild the model a checkpoint describes and load its weights (``weights_only=True``).

    ``trust_factory``: the ``package.module:function`` the caller chose, if the checkpoint names one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} is a folder, not a checkpoint file (a replay folder? export and replay take those)"
            if path.is_dir()
            else f"checkpoint {path} does not exist"
        )
    payload = load_payload(path, "checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not an edgecompress checkpoint (no '{CHECKPOINT_FORMAT}' header); weights trained elsewhere "
            "(a state_dict) load with --weights and --model NAME instead"
        )
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {payload.get('version')!r}; this edgecompress reads version "
            f"{CHECKPOINT_VERSION}"
        )
    try:
        spec = ModelSpec.from_dict(json.loads(payload["spec"]))
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} has a corrupt model spec: {exc}") from exc
    model = spec.build(trust_factory=trust_factory, where=f"checkpoint {path}")
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit model {spec.model!r}: {exc}") from exc
    model.eval()
    return model, spec


def rebuild_structure(
    spec: ModelSpec, policy: Policy, *, trust_factory: str | None = None, where: str = "the file"
) -> nn.Module:
    """The compressed model's structure: the policy applied to a freshly built base model.

    Kept channels, factor ranks and codebook sizes depend only on the policy
    (its ``round_to`` included); every value (weights, masks, indices,
    quantizer ranges) is meant to be overwritten by the caller from a saved state.
    """
    needs_calibration = any(lp.abits == 8 for lp in policy.layers.values())
    calibration = [torch.zeros(spec.input_shape)] if needs_calibration else None  # ranges replaced by the caller
    model, _ = compress(
        spec.build(trust_factory=trust_factory, where=where).eval(), policy, calibration, input_shape=spec.input_shape
    )
    return model


def with_round_to(policy: Policy, round_to: int) -> Policy:
    """``policy`` with the rounding a file recorded beside it (files written before policy schema 2)."""
    return policy if policy.round_to == round_to else dataclasses.replace(policy, round_to=int(round_to))


def check_data_matches(spec: ModelSpec, bundle: Any, source: str | os.PathLike[str]) -> None:
    """A CheckpointError when the data is not served as ``spec``'s model was trained (classes, input channels,
    input size): scores would fail deep inside a run, or measure another task than the latency prices."""
    said = {"classes": "{} classes", "channels": "{}-channel inputs", "size": "{} px inputs"}
    served = {"classes": bundle.num_classes, "channels": bundle.in_channels, "size": bundle.input_size}
    held = {"classes": spec.num_classes, "channels": spec.in_channels, "size": spec.input_size}
    differ = [k for k in served if served[k] != held[k]]
    if differ:
        raise CheckpointError(
            f"{source} holds a {spec.model} for {', '.join(said[k].format(held[k]) for k in differ)}, but the "
            f"data is served as {', '.join(said[k].format(served[k]) for k in differ)}; serve the data as the "
            "checkpoint was trained (--input-size, --channels), or give a checkpoint trained for this data"
        )
