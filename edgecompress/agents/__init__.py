"""Search agents that drive the compression environment.

``AMCDDPG`` is Stable-Baselines3's DDPG with AMC's specifics (truncated-normal
noise schedule, warm-up episodes, reward back-fill with a moving-average
baseline, discount 1); not a second RL library.
"""

from edgecompress.agents.amc import AMCDDPG

__all__ = ["AMCDDPG"]
