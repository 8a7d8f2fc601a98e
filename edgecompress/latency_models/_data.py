"""Where the public latency measurements live (``../shared/latency-data`` by default)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_data_dir"]


def default_data_dir() -> Path:
    """$EDGECOMPRESS_LATENCY_DATA, else ../shared/latency-data beside the repository, else beside the cwd."""
    env = os.environ.get("EDGECOMPRESS_LATENCY_DATA")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    for candidate in (repo.parent / "shared" / "latency-data", Path.cwd().parent / "shared" / "latency-data"):
        if candidate.is_dir():
            return candidate
    return repo.parent / "shared" / "latency-data"
