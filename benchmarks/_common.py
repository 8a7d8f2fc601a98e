"""Shared helpers for benchmark scripts: machine description and JSON output.

One results file per benchmark and variant: ``benchmarks/results/<benchmark>__<variant>.json``
(``<benchmark>.json`` for a benchmark with one variant), each holding exactly one run of one
command with its own date, machine, versions and command line. A new run of the same variant
replaces its file; earlier runs live in git history. ``benchmarks/reproduce.py`` re-runs the
recorded commands and ``benchmarks/render_readme.py`` writes benchmarks/README.md from the files.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from edgecompress.version import cpu_name, software_versions

RESULTS_DIR = "benchmarks/results"


def machine() -> dict[str, Any]:
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "machine": platform.machine(), "system": platform.system()}


def result_path(benchmark: str, variant: str = "") -> str:
    """Default output of one benchmark variant: ``benchmarks/results/<benchmark>__<variant>.json``."""
    return f"{RESULTS_DIR}/{benchmark}__{variant}.json" if variant else f"{RESULTS_DIR}/{benchmark}.json"


def write_result(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write one run's record: date (UTC), the exact command, machine, versions, then the payload."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "versions": software_versions(),
        **payload,
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
