"""Shared helpers for benchmark scripts: machine description and JSON output."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from edgecompress.checkpoint import cpu_name, software_versions


def machine() -> dict[str, Any]:
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "machine": platform.machine(), "system": platform.system()}


def write_result(path: str | Path, payload: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "versions": software_versions(),
        **payload,
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
