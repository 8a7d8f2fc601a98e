"""The run config as every workflow loads it: the schema's checks plus the installed device profiles."""

from __future__ import annotations

import os
from typing import Any

import torch

from edgecompress.config import RunConfig, load_config
from edgecompress.errors import ConfigError
from edgecompress.latency_models.devices import DEVICE_ALIASES, list_devices
from edgecompress.training.accelerator import check_precision, resolve_accelerator

__all__ = ["load_run_config"]


def load_run_config(path: str | os.PathLike[str] | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """:func:`edgecompress.config.load_config`, with ``device`` checked against ``edgecompress devices`` and the
    accelerator and precision against this machine (a GPU asked for and missing fails before any work)."""
    cfg = load_config(path, overrides, known_devices=list_devices(), device_aliases=DEVICE_ALIASES)
    if cfg.device in DEVICE_ALIASES:  # a former name: the run records the profile's name
        cfg = cfg.model_copy(update={"device": DEVICE_ALIASES[cfg.device]})
    check_precision(resolve_accelerator(cfg.train.accelerator), cfg.train.precision)
    s = cfg.search
    if s.gpus_per_trial:
        if cfg.train.accelerator == "cpu":
            raise ConfigError(
                f"search.gpus_per_trial = {s.gpus_per_trial} reserves GPU shares, but train.accelerator is 'cpu': "
                "pass --accelerator cuda (or auto) so trials score on the GPU they reserve"
            )
        if not s.ray_address and torch.cuda.device_count() == 0:
            raise ConfigError(
                f"search.gpus_per_trial = {s.gpus_per_trial} (--gpus-per-trial), but this machine has no CUDA GPU "
                f"(torch {torch.__version__} sees none): use 0, or --ray-address to join a cluster that has GPUs"
            )
    return cfg
