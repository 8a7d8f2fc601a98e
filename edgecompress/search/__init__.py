"""Black-box search drivers over the same policy space and objective as the RL environment.

Role: Optuna (TPE under a latency constraint, NSGA-II Pareto fronts, SQLite or
URL storage, resumable studies) and Ray Tune (parallel and multi-machine
trials; ray is imported lazily so other drivers never pay for it). Drivers
only propose policies; scoring is the shared objective's job. Not implemented
yet: arrives with the Optuna / Ray Tune issue.
"""

__all__: list[str] = []
