"""The one way heavy optional dependencies are imported: lazily, with a clear error when missing.

``import edgecompress`` and ``edgecompress --help`` must stay fast, so ray,
optuna, stable_baselines3, onnxruntime, torch_pruning, onnxscript and
torchvision's model zoo are imported where they are used, through
:func:`optional`, never at module import. The error names the package to
install and what needed it (Optuna's ``_imports.try_import`` serves the
same purpose).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from edgecompress.errors import EdgeCompressError

__all__ = ["HEAVY", "optional"]

HEAVY = {
    "ray": "ray[tune]",
    "optuna": "optuna",
    "stable_baselines3": "stable-baselines3",
    "onnxruntime": "onnxruntime",
    "onnx": "onnx",
    "onnxscript": "onnxscript",
    "onnxconverter_common": "onnxconverter-common",
    "torch_pruning": "torch-pruning",
    "torchvision": "torchvision",
    "matplotlib": "matplotlib",
    "scipy": "scipy",
    "gymnasium": "gymnasium",
}
"""Module -> the distribution that provides it (what the error tells the user to install)."""


def optional(module: str, *, needed_for: str) -> ModuleType:
    """Import ``module`` (e.g. ``"optuna"`` or ``"ray.tune"``) or raise naming the package to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        dist = HEAVY.get(top, top)
        raise EdgeCompressError(
            f"{needed_for} needs the package {dist!r}, which cannot be imported ({exc}); "
            f"install it with: pip install '{dist}'"
        ) from None
