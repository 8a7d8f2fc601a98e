"""edgecompress: hardware-aware AutoML model compression.

Searches per-layer mixed compression policies (structured and unstructured
pruning, block removal, quantization, weight sharing, low-rank factorisation,
distillation) for a target device under a latency budget.

The public names below load on first use (PEP 562), so ``import edgecompress``
does not import torch: the CLI's ``--help`` and tools that only read policy
files stay fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from edgecompress.version import __version__

if TYPE_CHECKING:
    from edgecompress.artifacts.weights import model_from_weights
    from edgecompress.compressors import CompressionReport, LayerPolicy, Policy, compress  # type: ignore[no-redef]
    from edgecompress.models import create_model, list_models
    from edgecompress.training import distill
    from edgecompress.workflows.api import SearchResult, search_policy
    from edgecompress.workflows.compare import compare
    from edgecompress.workflows.compress import CompressResult, compress_for

__all__ = [
    "CompressResult",
    "CompressionReport",
    "LayerPolicy",
    "Policy",
    "SearchResult",
    "__version__",
    "compare",
    "compress",
    "compress_for",
    "create_model",
    "distill",
    "list_models",
    "model_from_weights",
    "search_policy",
]

_LAZY = {
    "CompressionReport": "edgecompress.compressors",
    "LayerPolicy": "edgecompress.compressors",
    "Policy": "edgecompress.compressors",
    "compress": "edgecompress.compressors",
    "create_model": "edgecompress.models",
    "list_models": "edgecompress.models",
    "distill": "edgecompress.training",
    "SearchResult": "edgecompress.workflows.api",
    "model_from_weights": "edgecompress.artifacts.weights",
    "search_policy": "edgecompress.workflows.api",
    "compare": "edgecompress.workflows.compare",
    "CompressResult": "edgecompress.workflows.compress",
    "compress_for": "edgecompress.workflows.compress",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edgecompress' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
