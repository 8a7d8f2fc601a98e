"""The package version and the facts every record of a measurement carries (software, CPU)."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

__all__ = ["__version__", "cpu_name", "software_versions"]

__version__ = "0.2.0"


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
    """Versions of what produced a number: edgecompress, torch, torchvision, Python, the platform."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"edgecompress": __version__}
    for dist in ("torch", "torchvision", "onnxruntime"):
        loaded = sys.modules.get(dist)
        try:  # an imported module's own version names its build (torch 2.14.1+cu130)
            out[dist] = str(loaded.__version__) if loaded is not None else version(dist)
        except (PackageNotFoundError, AttributeError):
            out[dist] = "not installed"
    out["python"] = sys.version.split()[0]
    out["platform"] = platform.platform()
    return out
