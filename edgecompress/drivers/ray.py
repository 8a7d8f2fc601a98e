"""``edgecompress search --agent ray``: parallel trials with Ray Tune, Optuna's sampler as the search algorithm.

* ``workers`` trials run at once, one CPU each (and ``gpus_per_trial`` of a GPU
  each when set: Ray then places trials on the GPUs, scoring on ``cuda``) (torch uses one thread per
  trial); a private local Ray bound to 127.0.0.1 is started unless
  ``ray_address`` names a cluster (a cluster recorded by an earlier
  ``ray start`` is never joined implicitly). The private instance is shut
  down when the search returns (a cluster this call connected to is left),
  and dies with the process that started it if it never returns, a
  ``kill -9`` included (a watchdog, :mod:`edgecompress.drivers._reaper`,
  kills what Ray's own clean-up leaves). The environment variables Ray sets
  and the signal handlers Tune installs are put back as they were.
* The objective (base model, validation subset, BatchNorm batches, analysis)
  is put in Ray's object store once (``tune.with_parameters``); trials read
  it from there, never re-sending it.
* The search algorithm is :class:`ray.tune.search.optuna.OptunaSearch` over
  the same define-by-run space as ``--agent optuna``. Ray Tune's searchers
  take one scalar metric, so the budget enters as the score
  ``accuracy`` when the policy is within budget and ``-latency / budget``
  (always below every feasible score) when it is not.
* Every finished trial is written to the shared episode log, best policy and
  plots as it finishes, like the other agents; the log is the count. The
  sampler's history is an Optuna study, ``RUN_FOLDER/study.db``. Re-running the
  same command resumes: a fresh Tuner runs the missing number of trials, its
  sampler continuing that study (trials a killed process left running are
  failed first), so nothing is lost or counted twice whenever the kill came.
  Tune's own experiment state (``RUN_FOLDER/ray``, trial folders) is written
  but never read back: ``Tuner.restore`` unpickles it, and after a kill it
  forgot the trials finished since its last save, which then ran again under
  new ids.

Ray is imported here only, so the other agents never pay for it.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import logging
import os
import secrets
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape

from edgecompress._imports import optional
from edgecompress._progress import progress_bar
from edgecompress.config import RunConfig
from edgecompress.drivers import _reaper
from edgecompress.drivers.optuna import make_sampler
from edgecompress.errors import ConfigError
from edgecompress.search.runlog import RunLog
from edgecompress.search.setup import SearchSetup

__all__ = ["STUDY_FILE", "run"]

STUDY_FILE = "study.db"
"""The search algorithm's Optuna study (SQLite) in the run folder: what a re-run continues from."""


def _trial(config: dict[str, Any], setup: SearchSetup | None = None) -> dict[str, Any]:
    assert setup is not None  # Tune passes it through with_parameters
    torch.set_num_threads(1)
    params = {k: v for k, v in config.items() if not k.startswith("_")}
    policy, filled = setup.fill(setup.space.from_params(params))
    ev = setup.objective(policy)
    within = setup.within(ev)
    return {
        "score": ev.accuracy if within else -(1 + setup.budget.excess(ev.latency_ms, ev.energy_mj)),
        "accuracy": ev.accuracy,
        "latency_ms": ev.latency_ms,
        "within_budget": within,
        "record_json": json.dumps(setup.record(ev, filled=filled)),
    }


@contextlib.contextmanager
def _loopback_only(ray: Any) -> Iterator[None]:
    """Start Ray's servers on the loopback address only, restoring the caller's environment afterwards.

    Ray turns a loopback ``_node_ip_address`` into the machine's external address and then binds its GCS,
    raylets and agents there (and on every interface), unauthenticated by default. With
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (what Ray does on a laptop) the node address is the loopback
    one and every server binds it; ``tests/drivers/test_optuna_ray_report.py`` reads the listening sockets.
    Ray reads the setting when it is imported, so the loaded module's copy is set for the call as well.
    """
    name = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
    old_env = os.environ.get(name)
    constants = ray._private.ray_constants
    old_value = constants.ENABLE_RAY_CLUSTER
    os.environ[name] = "0"
    constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = old_value
        if old_env is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old_env


def _shut_down(ray: Any, watchdog: Any) -> None:
    """When the search returns (or at exit, if it never did): stop the private Ray, or leave the cluster, then
    let the watchdog (private Ray only) kill whatever outlived the shutdown, and wait for it."""
    with contextlib.suppress(Exception):
        ray.shutdown()
    if watchdog is not None:
        _reaper.stop(watchdog)


def _logger(tune: Any, on_complete: Any) -> Any:
    """A Tune callback that reports finished trials to this process; pickles (into Tune's state) as a no-op."""

    class TrialLogger(tune.Callback):  # type: ignore[misc,name-defined]
        on_complete: Any = None

        def __getstate__(self) -> dict[str, Any]:
            return {}

        def __setstate__(self, state: dict[str, Any]) -> None:
            self.on_complete = None

        def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            if self.on_complete is not None:
                self.on_complete(trial)

    logger = TrialLogger()
    logger.on_complete = on_complete  # set on the instance, so pickling the class does not drag it along
    return logger


def run(setup: SearchSetup, cfg: RunConfig, console: Console, *, progress: bool = True) -> dict[str, Any]:
    environment = dict(os.environ)  # Ray sets variables of its own when imported and started: all put back
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    try:
        return _run(setup, cfg, console, progress=progress)
    finally:
        for key in set(os.environ) - set(environment):
            del os.environ[key]
        os.environ.update(environment)


def _run(setup: SearchSetup, cfg: RunConfig, console: Console, *, progress: bool) -> dict[str, Any]:
    optional("ray.tune", needed_for="search.agent ray")  # missing: said before anything is written
    s = cfg.search
    run_dir = Path(cfg.out).resolve()
    if s.sampler == "nsga2":
        raise ConfigError("--agent ray takes one scalar metric: use sampler tpe or random (nsga2 runs with optuna)")
    log = setup.open_log(cfg, f"ray tune ({s.sampler} via OptunaSearch, {s.workers} workers)", console=console)
    started = time.perf_counter()
    done = len(log.records)
    remaining = s.episodes - done
    errors: list[str] = []
    if done:
        console.print(f"resuming {escape(str(run_dir))}: {done} of {s.episodes} trials done")
    if remaining > 0:
        errors = _search(setup, cfg, log, remaining, progress=progress)
        if len(log.records) < s.episodes and not errors:  # Tune stops on Ctrl-C and returns what finished
            console.print(f"[yellow]stopped after {len(log.records)} of {s.episodes} trials[/]; run the same "
                          "command again to continue")  # fmt: skip
    return setup.result(log, time.perf_counter() - started, scored_here=False, workers=s.workers, errors=errors)


def _search(setup: SearchSetup, cfg: RunConfig, log: RunLog, remaining: int, *, progress: bool) -> list[str]:
    """Run ``remaining`` more trials in a fresh Tuner; returns the errors of the trials that failed."""
    optuna = optional("optuna", needed_for="search.agent ray")
    ray = optional("ray", needed_for="search.agent ray")
    tune = optional("ray.tune", needed_for="search.agent ray")
    ConcurrencyLimiter = optional("ray.tune.search", needed_for="search.agent ray").ConcurrencyLimiter
    OptunaSearch = optional("ray.tune.search.optuna", needed_for="search.agent ray").OptunaSearch

    s = cfg.search
    gpus = torch.cuda.device_count()  # gpus_per_trial was checked against it by load_run_config
    # What Ray and Tune change in this process is put back when the search returns: the SIGINT / SIGTERM
    # handlers Tune installs, and the Ray instance (or connection) this call started (the environment: run).
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    shut_down = None
    if not ray.is_initialized():
        if s.ray_address:
            ray.init(address=s.ray_address, logging_level=logging.WARNING, log_to_driver=False)
            shut_down = functools.partial(_shut_down, ray, None)
        else:
            # A private instance: never join a cluster some earlier `ray start` left recorded (address "local"),
            # never listen on an external interface (loopback node address, see _loopback_only).
            # It dies with this process, a kill -9 included (_reaper: a watchdog kills what Ray leaves).
            token = secrets.token_hex(8)
            watchdog = _reaper.start(token)
            shut_down = functools.partial(_shut_down, ray, watchdog)
            atexit.register(shut_down)
            with _loopback_only(ray), _reaper.marking(token):
                ray.init(
                    address="local", num_cpus=s.workers, num_gpus=gpus if s.gpus_per_trial else 0,
                    include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
                )  # fmt: skip
    try:
        return _tune(setup, cfg, log, remaining, progress=progress, ray=ray, tune=tune, optuna=optuna,
                     ConcurrencyLimiter=ConcurrencyLimiter, OptunaSearch=OptunaSearch)  # fmt: skip
    finally:
        if shut_down is not None:
            shut_down()
            atexit.unregister(shut_down)
        if threading.current_thread() is threading.main_thread():
            for sig, handler in handlers.items():
                if handler is not None:
                    signal.signal(sig, handler)


def _tune(
    setup: SearchSetup,
    cfg: RunConfig,
    log: RunLog,
    remaining: int,
    *,
    progress: bool,
    ray: Any,
    tune: Any,
    optuna: Any,
    ConcurrencyLimiter: Any,
    OptunaSearch: Any,
) -> list[str]:
    """The Tuner's run of ``remaining`` trials (Ray is up); the errors of the trials that failed."""
    s = cfg.search
    run_dir = Path(cfg.out).resolve()

    trainable = tune.with_resources(
        tune.with_parameters(_trial, setup=setup),
        {"cpu": 1, "gpu": s.gpus_per_trial} if s.gpus_per_trial else {"cpu": 1},
    )
    logged = {r.get("trial") for r in log.records}

    def record(trial_id: str, result: dict[str, Any]) -> None:
        if trial_id in logged or "record_json" not in result or len(log.records) >= s.episodes:
            return
        logged.add(trial_id)
        log.record({**json.loads(result["record_json"]), "reward": result["score"], "trial": trial_id})

    # The sampler's history is an Optuna study in the run folder, so a re-run continues it in a fresh Tuner;
    # trials a killed process left running there are failed (this process holds the folder's lock).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(f"sqlite:///{run_dir / STUDY_FILE}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with contextlib.suppress(KeyError):
        study = optuna.load_study(study_name="ray", storage=storage)
        for stale in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            study.tell(stale.number, state=optuna.trial.TrialState.FAIL)
    with progress_bar(progress) as bar:
        task = bar.add_task(f"ray tune x{s.workers}", total=s.episodes, completed=len(log.records), status="")

        def on_complete(trial: Any) -> None:
            record(trial.trial_id, trial.last_result or {})
            status = setup.status(log, "trial")
            bar.update(task, completed=len(log.records), status=status)

        searcher = OptunaSearch(
            space=setup.space,
            metric="score",
            mode="max",
            sampler=make_sampler(s.sampler, s.seed + len(log.records), s.episodes, multi=False),
            study_name="ray",
            storage=storage,
        )
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=ConcurrencyLimiter(searcher, max_concurrent=s.workers),
                num_samples=remaining,
                max_concurrent_trials=s.workers,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name="ray", storage_path=str(run_dir), verbose=0, callbacks=[_logger(tune, on_complete)]
            ),
        )
        results = list(tuner.fit())  # type: ignore[call-overload]
    for result in results:
        if result.error is None and result.metrics:
            record(result.metrics.get("trial_id", ""), result.metrics)
    return [str(r.error) for r in results if r.error is not None]
