"""Search drivers: who proposes the policies. One registry, one signature, one search core.

A driver is a function ``run(setup, cfg, console, *, progress) -> dict``
that proposes policies from ``setup.space``, scores them with
``setup.objective`` (after ``setup.fill``) and records them with ``setup.open_log(...)``; the budget,
objective and run folder are the core's (:mod:`edgecompress.search`), so a
policy found by any driver replays the same way. Registered drivers:

* ``ddpg``: AMC's DDPG (Stable-Baselines3) through the Gymnasium environment;
* ``optuna``: TPE under the budget constraint, NSGA-II Pareto fronts, random;
  SQLite or RDB studies, resumable;
* ``ray``: Ray Tune trials in parallel (Optuna's sampler as the search algorithm);
* ``random``: uniform random policies from the space (the baseline), resumable.

Heavy libraries (SB3, Optuna, Ray) are imported by the driver that needs them,
when it runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from edgecompress.errors import ConfigError, did_you_mean

__all__ = ["DRIVERS", "get_driver", "register_driver"]

Driver = Callable[..., dict[str, Any]]

DRIVERS: dict[str, tuple[str, str]] = {
    "ddpg": ("edgecompress.drivers.ddpg", "AMC's DDPG agent on Stable-Baselines3 (episodes)"),
    "optuna": ("edgecompress.drivers.optuna", "Optuna: TPE, NSGA-II or random sampler (trials)"),
    "ray": ("edgecompress.drivers.ray", "Ray Tune: parallel trials, Optuna's sampler (trials)"),
    "random": ("edgecompress.drivers.random", "uniform random policies from the space (the baseline)"),
}
"""Driver name -> (module defining ``run``, one-line description)."""


def register_driver(name: str, module: str, description: str) -> None:
    """Make ``module.run`` available as ``search.agent: name``."""
    if name in DRIVERS:
        raise ConfigError(f"driver {name!r} is already registered")
    DRIVERS[name] = (module, description)


def get_driver(name: str) -> Driver:
    """The ``run`` function of driver ``name``; unknown names list the known ones, with a suggestion."""
    if name not in DRIVERS:
        raise ConfigError(f"unknown search driver {name!r}.{did_you_mean(name, DRIVERS)} Known: {', '.join(DRIVERS)}")
    run: Driver = importlib.import_module(DRIVERS[name][0]).run
    return run
