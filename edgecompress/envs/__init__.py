"""Gymnasium environments for layer-by-layer compression search.

``CompressionEnv`` (registered as ``edgecompress/LayerCompression-v1``) walks
the compressible layers of a model one step per layer; the action is that
layer's compression choices, the reward is accuracy under a latency budget.
It adapts the search core (:mod:`edgecompress.search`) to Gymnasium and
implements no compression, latency or budget rule itself. See the class
docstring for spaces, reward, budget, arguments and version history.
"""

import gymnasium as gym

from edgecompress.envs.compression_env import CompressionEnv

ENV_ID = "edgecompress/LayerCompression-v1"
if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point="edgecompress.envs.compression_env:CompressionEnv")

__all__ = ["ENV_ID", "CompressionEnv"]
