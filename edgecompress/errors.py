"""The project's exception types.

Every error a user can cause (a bad flag, config key, policy field, table file,
data folder) is raised as one of these, with the bad value and what would be
valid in the message. ``assert`` is kept for internal invariants only.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "EdgeCompressError",
    "ModelError",
    "PolicyError",
    "did_you_mean",
]


class EdgeCompressError(Exception):
    """Base class: the CLI prints these as one clean line instead of a traceback."""


class ConfigError(EdgeCompressError, ValueError):
    """A config file, config key or command-line value is invalid."""


class DataError(EdgeCompressError, FileNotFoundError):
    """A dataset cannot be found or read."""


class ModelError(EdgeCompressError, ValueError):
    """A model name or model factory is unknown or unusable."""


class CheckpointError(EdgeCompressError, ValueError):
    """A checkpoint file is missing, corrupt, or for another model."""


class PolicyError(EdgeCompressError, ValueError):
    """A compression policy (file or object) has a bad field, value or layer name."""


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest choice, or ``""`` if none is close."""
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""
