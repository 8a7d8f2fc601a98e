"""Gymnasium environments for layer-by-layer compression search.

Role: ``CompressionEnv`` (registered as ``edgecompress/LayerCompression-v0``)
walks the compressible layers of a model one step per layer; the action is
that layer's compression choices, the reward is accuracy under a latency
budget. It must call the shared objective (compress -> accuracy + latency +
size) and never implement compression or latency itself. Not implemented yet:
arrives with the reinforcement-learning search issue.
"""

__all__: list[str] = []
