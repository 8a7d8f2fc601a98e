"""``edgecompress search --agent optuna``: TPE (one objective) or NSGA-II (a Pareto front) over the policy space.

* ``sampler: tpe`` maximises validation accuracy; the latency budget is an
  Optuna constraint (``latency - budget <= 0``), so infeasible trials are
  scored but ranked below every feasible one.
* ``sampler: nsga2`` maximises accuracy and minimises predicted latency and
  stored size (three objectives; with ``energy_objective``, predicted energy
  a fourth), under the same constraint; the Pareto front is ``pareto.json``.
* An energy budget (``budget_energy_mj``) is a second constraint
  (``energy - budget <= 0``).
* ``sampler: random`` samples the same space uniformly (the baseline).

The study lives in ``study.db`` (SQLite) in the run folder unless
``storage`` names another database URL (several machines can then share one
study). Each trial stores its scores as user attributes, so the episode log is
rebuilt from the study after a crash. Re-running the same command resumes:
only the missing number of completed trials is run, finished trials are
never re-run, and trials left running by a killed process are failed and not
counted (at once for the run folder's own study, which this process holds the
lock on; by Optuna's heartbeat in a shared ``storage``).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

from rich.console import Console

from edgecompress._imports import optional
from edgecompress._io import write_json_atomic
from edgecompress._progress import progress_bar
from edgecompress.config import RunConfig
from edgecompress.errors import ConfigError
from edgecompress.search.setup import SearchSetup

__all__ = ["check_storage", "make_sampler", "open_storage", "run", "storage_url"]


def storage_url(cfg: RunConfig) -> str:
    return cfg.search.storage or f"sqlite:///{(Path(cfg.out) / 'study.db').resolve()}"


STORAGE_HINT = (
    "give a SQLAlchemy URL such as sqlite:////abs/path/study.db or postgresql://user@host/db, or leave it unset "
    "for RUN_FOLDER/study.db"
)


def check_storage(cfg: RunConfig) -> None:
    """Before any work: a ``search.storage`` that is not a database URL at all (it is opened by the driver)."""
    if cfg.search.storage is None:
        return
    sqlalchemy = optional("sqlalchemy", needed_for="search.storage")
    try:
        sqlalchemy.engine.make_url(cfg.search.storage)
    except Exception as exc:
        raise ConfigError(
            f"search.storage {cfg.search.storage!r} is not a database URL ({exc}); {STORAGE_HINT}"
        ) from None


def open_storage(optuna: Any, url: str) -> Any:
    """Optuna's RDB storage at ``url`` with heartbeats (a trial left RUNNING by a killed process is marked FAIL
    after the grace period); a ConfigError naming the URL when it cannot be parsed or opened."""
    try:
        return optuna.storages.RDBStorage(url, heartbeat_interval=30, grace_period=90)
    except Exception as exc:  # SQLAlchemy's ArgumentError (a malformed URL), OperationalError (cannot open), ...
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(
            f"search.storage {url!r} cannot be opened as an Optuna study database ({type(exc).__name__}: "
            f"{reason}); {STORAGE_HINT}"
        ) from None


def make_sampler(kind: str, seed: int, trials: int, multi: bool) -> Any:
    optuna = optional("optuna", needed_for="search.agent optuna / ray")

    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=max(4, min(10, trials // 4)))
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, trials // 6)))
    return optuna.samplers.RandomSampler(seed=seed)


def run(
    setup: SearchSetup, cfg: RunConfig, console: Console, *, progress: bool = True, _stop_after: int | None = None
) -> dict[str, Any]:
    optuna = optional("optuna", needed_for="search.agent optuna")

    s = cfg.search
    run_dir = Path(cfg.out)
    objective, space, budget = setup.objective, setup.space, setup.budget
    multi = s.sampler == "nsga2"
    energy_objective = multi and s.energy_objective
    if energy_objective and not objective.energy:
        raise ConfigError(
            f"search.energy_objective needs a device with an energy model, and {cfg.device!r} has none; "
            f"{objective.energy_note.removeprefix('not modelled: ')}"
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = open_storage(optuna, storage_url(cfg))
    metrics = ["accuracy", "latency_ms", "stored_bytes", "energy_mj"] if multi else ["accuracy"]
    metrics = metrics if energy_objective else metrics[:3]
    directions: list[Any] = ["maximize"] + ["minimize"] * (len(metrics) - 1)
    # Seeded by the number of trials already stored: a resumed study does not replay the first samples.
    existing = 0
    try:
        existing = len(optuna.load_study(study_name=cfg.name, storage=storage).trials)
    except KeyError:
        pass
    study = optuna.create_study(
        study_name=cfg.name,
        storage=storage,
        directions=directions,
        load_if_exists=True,
        sampler=make_sampler(s.sampler, s.seed + existing, s.episodes, multi),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(metrics)
    log = setup.open_log(cfg, f"optuna ({s.sampler})", console=console, storage=storage_url(cfg))
    complete = optuna.trial.TrialState.COMPLETE
    if s.storage is None:
        # The study lives in this run folder, which this process holds the lock on: a trial still RUNNING
        # was left by a process that died. Fail it now instead of waiting out the heartbeat grace period.
        # (A shared --storage may have trials running on other machines: those are left to the heartbeat.)
        for stale in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            study.tell(stale.number, state=optuna.trial.TrialState.FAIL)
            console.print(f"trial {stale.number} was left running by a process that stopped: marked failed")

    def sync() -> None:
        """Record every completed trial the episode log lacks (the study is the truth)."""
        logged = {r.get("trial") for r in log.records}
        for ft in sorted(study.get_trials(deepcopy=False, states=(complete,)), key=lambda t: t.number):
            if ft.number not in logged and "record" in ft.user_attrs:
                log.record({**ft.user_attrs["record"], "trial": ft.number})

    sync()
    started = time.perf_counter()
    done = len(study.get_trials(deepcopy=False, states=(complete,)))
    remaining = s.episodes - done
    if done:
        console.print(f"resuming {run_dir}: {done} of {s.episodes} trials done ({storage_url(cfg)})")

    interrupted: list[int] = []

    def fn(trial: Any) -> Any:
        # Ctrl-C in a trial: the trial is pruned (a resumed study does not count it), the study stops, and the
        # interrupt goes on once Optuna has returned (Optuna would log it as a failure, traceback and all).
        try:
            return score(trial)
        except KeyboardInterrupt:
            interrupted.append(trial.number)
            trial.study.stop()
            raise optuna.TrialPruned("interrupted (Ctrl-C)") from None

    def score(trial: Any) -> Any:
        policy = space.suggest(trial)
        filled = 0
        if not multi:  # a Pareto front keeps latency free
            policy, filled = setup.fill(policy)
        ev = objective(policy)
        record = setup.record(ev, filled=filled)
        trial.set_user_attr("record", record)
        # The budget as an Optuna constraint: feasible when latency - budget <= 0 (TPE and NSGA-II honour it).
        trial.set_constraint("latency_over_budget_ms", ev.latency_ms - budget.limit_ms)
        if budget.energy_limit_mj is not None:
            mj = ev.energy_mj if ev.energy_mj is not None else float("inf")
            trial.set_constraint("energy_over_budget_mj", mj - budget.energy_limit_mj)
        if not multi:
            return ev.accuracy
        values = (ev.accuracy, ev.latency_ms, float(ev.stored_bytes), ev.energy_mj)
        return values[: len(metrics)]

    with progress_bar(progress) as bar:
        task = bar.add_task(f"optuna {s.sampler}", total=s.episodes, completed=done, status="")

        def on_done(study_: Any, ft: Any) -> None:
            sync()
            n = len(study_.get_trials(deepcopy=False, states=(complete,)))
            status = setup.status(log, "trial")
            bar.update(task, completed=n, status=status)
            if _stop_after is not None and n >= _stop_after:
                study_.stop()

        if remaining > 0:
            study.optimize(
                fn,
                n_trials=remaining,
                callbacks=[on_done, optuna.study.MaxTrialsCallback(s.episodes, states=(complete,))],
            )
    sync()
    if interrupted:
        raise KeyboardInterrupt
    if multi:
        front = [{"trial": t.number, **t.user_attrs["record"]} for t in study.best_trials]
        write_json_atomic(run_dir / "pareto.json", front)
    return setup.result(log, time.perf_counter() - started, storage=storage_url(cfg))
