"""Compression techniques, one module each, behind one interface and a registry.

Role: structured pruning (torch-pruning's dependency graph), unstructured
pruning (magnitude, Lookahead), quantization (per-layer fake quantization),
weight sharing (k-means codebooks, Huffman-coded storage), low-rank
factorisation (SVD) and knowledge distillation; ``compress(model, policy)``
composes them in a fixed, documented order and reports exactly what changed
and what was skipped. It must never modify the input model.
"""

from edgecompress.compressors.compress import ORDER, compress
from edgecompress.compressors.distill import distill
from edgecompress.compressors.policy import LayerPolicy, Policy
from edgecompress.compressors.report import CompressionReport

__all__ = ["ORDER", "CompressionReport", "LayerPolicy", "Policy", "compress", "distill"]
