"""Compressed models: the base spec, the policy and the compressed weights, loadable ``weights_only``.

``model.pt`` (written by ``replay``) is a plain dict of JSON strings and
tensors; the structure is rebuilt by re-applying the policy to a freshly built
base model (:func:`edgecompress.artifacts.checkpoint.rebuild_structure`), then
every tensor is overwritten from the saved state: no pickled code.
:func:`load_compressed` also reads the packed archive (``.ecar``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch.nn as nn

from edgecompress.artifacts.archive import load_archive
from edgecompress.artifacts.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    ModelSpec,
    load_payload,
    rebuild_structure,
    save_payload,
    with_round_to,
)
from edgecompress.compressors import Policy
from edgecompress.errors import CheckpointError

__all__ = ["COMPRESSED_FORMAT", "load_compressed", "save_compressed"]

COMPRESSED_FORMAT = "edgecompress.compressed"


def save_compressed(
    path: str | os.PathLike[str],
    model: nn.Module,
    spec: ModelSpec,
    policy: Policy,
    *,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write a compressed model: base spec + policy (JSON strings) + state_dict, loadable ``weights_only``.

    The structure (kept channels, factor ranks, masks, codebooks, quantizers)
    is rebuilt by re-applying the policy to a freshly built base model, then
    every tensor is overwritten from the state_dict: no pickled code.
    """
    return save_payload(path, {
        "format": COMPRESSED_FORMAT,
        "version": CHECKPOINT_VERSION,
        "spec": json.dumps(asdict(spec), sort_keys=True),
        "policy": json.dumps(policy.to_dict(), sort_keys=True),
        "round_to": policy.round_to,  # also in the policy (schema 2); kept for readers of schema 1
        "metrics": json.dumps(metrics or {}, sort_keys=True),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    })  # fmt: skip


def load_compressed(
    path: str | os.PathLike[str], *, trust_factory: str | None = None
) -> tuple[nn.Module, ModelSpec, Policy, dict[str, Any]]:
    """Rebuild a compressed model written by :func:`save_compressed`: (model, base spec, policy, metrics).

    ``trust_factory``: the ``package.module:function`` the caller chose, if the file names one."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise CheckpointError(f"compressed model {path} does not exist (give a replay folder or its model.pt)")
    with path.open("rb") as f:
        if f.read(4) == b"ECAR":
            return load_archive(path, trust_factory=trust_factory)
    payload = load_payload(path, "compressed model")
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
        policy = with_round_to(policy, int(payload["round_to"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} has a corrupt header: {exc}") from exc
    model = rebuild_structure(spec, policy, trust_factory=trust_factory, where=f"compressed model {path}")
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the policy's structure: {exc}") from exc
    model.eval()
    return model, spec, policy, metrics
