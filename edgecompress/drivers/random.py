"""``search.agent: random``: policies drawn uniformly from the space, scored in turn (the baseline).

Each drawn policy gets the repair every driver's policies get
(:meth:`edgecompress.search.budget.Budget.repair`, by predicted latency and energy: keeps
scaled down, then blocks removed), and the fill when ``search.fill_budget``,
so the baseline searches the same feasible set as the DDPG agent.

Resumable: policy ``i`` is drawn from a generator seeded with ``(seed, i)``,
so a re-run on the same run folder continues with the next index and the
episode log gets exactly the policies an uninterrupted run would have.
"""

from __future__ import annotations

import random
import time
from typing import Any

from rich.console import Console

from edgecompress._progress import progress_bar
from edgecompress.config import RunConfig
from edgecompress.search.setup import SearchSetup

__all__ = ["run"]


def run(setup: SearchSetup, cfg: RunConfig, console: Console, *, progress: bool = True) -> dict[str, Any]:
    s = cfg.search
    log = setup.open_log(cfg, "random (uniform over the policy space)", console=console)
    done = len(log.records)
    if done:
        console.print(f"resuming {cfg.out}: {done} of {s.episodes} policies done")
    started = time.perf_counter()
    with progress_bar(progress) as bar:
        task = bar.add_task("random", total=s.episodes, completed=done, status="")
        for i in range(done, s.episodes):
            drawn = setup.space.sample(random.Random(f"{s.seed}:{i}"))
            policy, _, repaired = setup.repair(drawn)
            policy, filled = setup.fill(policy)
            ev = setup.objective(policy)
            log.record(setup.record(ev, filled=filled, repaired=repaired))
            bar.update(task, completed=i + 1, status=setup.status(log, "policy"))
    return setup.result(log, time.perf_counter() - started)
