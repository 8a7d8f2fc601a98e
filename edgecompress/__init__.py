"""edgecompress: hardware-aware AutoML model compression.

Searches per-layer mixed compression policies (structured and unstructured
pruning, quantization, weight sharing, low-rank factorisation, distillation)
for a target device under a latency budget.
"""

__version__ = "0.1.0"

from edgecompress.models import create_model, list_models

__all__ = ["__version__", "create_model", "list_models"]
