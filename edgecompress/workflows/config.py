"""The run config as every workflow loads it: the schema's checks plus the installed device profiles."""

from __future__ import annotations

import os
from typing import Any

from edgecompress.config import RunConfig, load_config
from edgecompress.latency_models.devices import list_devices
from edgecompress.training.accelerator import check_precision, resolve_accelerator

__all__ = ["load_run_config"]


def load_run_config(path: str | os.PathLike[str] | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """:func:`edgecompress.config.load_config`, with ``device`` checked against ``edgecompress devices`` and the
    accelerator and precision against this machine (a GPU asked for and missing fails before any work)."""
    cfg = load_config(path, overrides, known_devices=list_devices())
    check_precision(resolve_accelerator(cfg.train.accelerator), cfg.train.precision)
    return cfg
