"""Compression techniques, one module each, behind one interface and a registry.

Role: structured pruning (torch-pruning's dependency graph), unstructured
pruning (magnitude, Lookahead), quantization (per-layer fake quantization),
weight sharing (k-means codebooks, Huffman-coded storage), low-rank
factorisation (SVD) and removal of residual blocks; ``compress(model, policy)``
composes them in a fixed, documented order and reports exactly what changed
and what was skipped. It must never modify the input model. Each technique
declares the policy fields a search may set and their ranges (``KNOBS``),
next to its code; the search space reads them from there. Distillation,
which trains, lives in :mod:`edgecompress.training`.
"""

from edgecompress.compressors.base import KNOBS, Knob
from edgecompress.compressors.compress import ORDER, compress, report_for
from edgecompress.compressors.policy import LayerPolicy, Policy
from edgecompress.compressors.report import CompressionReport

__all__ = ["KNOBS", "ORDER", "CompressionReport", "Knob", "LayerPolicy", "Policy", "compress", "report_for"]
