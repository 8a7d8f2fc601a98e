"""edgecompress: hardware-aware AutoML model compression.

Searches per-layer mixed compression policies (structured and unstructured
pruning, quantization, weight sharing, low-rank factorisation, distillation)
for a target device under a latency budget.
"""

__version__ = "0.1.0"

from edgecompress.compressors import CompressionReport, LayerPolicy, Policy, compress, distill
from edgecompress.models import create_model, list_models

__all__ = [
    "CompressionReport",
    "LayerPolicy",
    "Policy",
    "__version__",
    "compress",
    "create_model",
    "distill",
    "list_models",
]
