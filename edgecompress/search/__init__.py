"""The search core: one policy space, one budget, one objective, one run-folder log, for every driver.

* :mod:`~edgecompress.search.space`: :class:`PolicySpace`, the parameters
  every driver searches, read from the techniques' knobs;
* :mod:`~edgecompress.search.budget`: the latency limit, AMC's per-step
  limiter, the end-of-episode repair, the budget fill;
* :mod:`~edgecompress.search.objective`: :class:`Objective`, which only
  scores a policy (compress, recalibrate, fine-tune, evaluate, price);
* :mod:`~edgecompress.search.runlog`: the run folder (episodes, best and
  top-k policies, plots);
* :mod:`~edgecompress.search.setup`: :class:`SearchSetup`, what a driver is
  handed.

Drivers (:mod:`edgecompress.drivers`) propose policies over this core and
nothing else.
"""

from edgecompress.search.budget import Budget, Limiter, fill
from edgecompress.search.objective import Evaluation, Objective, policy_latency
from edgecompress.search.runlog import RunLog
from edgecompress.search.setup import SearchSetup, create_setup
from edgecompress.search.space import PolicySpace

__all__ = [
    "Budget",
    "Evaluation",
    "Limiter",
    "Objective",
    "PolicySpace",
    "RunLog",
    "SearchSetup",
    "create_setup",
    "fill",
    "policy_latency",
]
