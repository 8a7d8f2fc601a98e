"""Search agents that drive the compression environment.

Role: the AMC-style DDPG agent, built on Stable-Baselines3's DDPG with AMC's
specifics (truncated-normal noise schedule, warm-up episodes, reward
back-fill with a moving-average baseline); not a second RL library. Not
implemented yet: arrives with the reinforcement-learning search issue.
"""

__all__: list[str] = []
