"""``edgecompress search --agent ddpg``: the AMC search loop around the environment and the agent.

Resumable, and a resumed run equals an uninterrupted one: the agent's whole
learning state (networks, optimizers, replay buffer, counters, noise and the
global random states) is one file, ``agent_state.npz`` (plain arrays and a
JSON record, read with ``allow_pickle=False``), replaced atomically once an
episode's gradient steps are done (``AMCDDPG.checkpoint_hook``), and it
records how many episodes the log held then. The episode log is appended as
each policy is scored. Re-running the same command on the same run folder
continues from that state (the log is cut back to it if a kill fell between
the two). A state that is torn, foreign, from another set-up or ahead of the
log is said in a warning and a fresh agent continues the count: the log is
never dropped. Files an older edgecompress wrote (``agent.zip``,
``replay_buffer.pkl`` / ``.npz``, ``rng_state.npz``) are never read: SB3's zip
and a pickle can run code when loaded.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from edgecompress._progress import progress_bar
from edgecompress.agents.amc import AMCDDPG
from edgecompress.config import RunConfig
from edgecompress.envs import CompressionEnv
from edgecompress.search.setup import SearchSetup

__all__ = ["STATE_FILE", "run"]

STATE_FILE = "agent_state.npz"
LEGACY_FILES = ("agent.zip", "replay_buffer.pkl", "replay_buffer.npz", "rng_state.npz")
"""What edgecompress 0.1 and early 0.2 saved the agent as; never read (SB3's zip unpickles, so may a .pkl)."""


def run(setup: SearchSetup, cfg: RunConfig, console: Console, *, progress: bool = True) -> dict[str, Any]:
    s = cfg.search
    run_dir = Path(cfg.out)
    env = CompressionEnv(setup=setup, reward=s.reward)
    n_layers = len(env.layers)
    state_path = run_dir / STATE_FILE
    warmup = s.warmup_episodes if s.warmup_episodes is not None else min(100, s.episodes // 3)
    if s.warmup_episodes is None and state_path.exists():
        # The default warm-up follows --episodes; a re-run asking more episodes resumes the agent it saved
        # (its warm-up, which is over or continues), not a new one.
        saved = AMCDDPG.saved_shape(state_path).get("warmup_episodes")
        warmup = saved if isinstance(saved, int) else warmup
    log = setup.open_log(cfg, "ddpg (AMC on Stable-Baselines3)", console=console)

    def warn(message: str) -> None:
        console.print(f"[yellow]warning:[/] {escape(message)}")

    def new_agent(seed: int) -> AMCDDPG:
        return AMCDDPG(env, n_layers=n_layers, warmup_episodes=warmup, seed=seed,
                       tensorboard_log=str(run_dir / "tensorboard"))  # fmt: skip

    agent = new_agent(s.seed)  # as a fresh run builds it; a saved state is restored into it
    logged: int | None = None
    if state_path.exists():
        try:
            logged = int(agent.load_state(state_path).get("logged", -1))
            if not 0 <= logged <= len(log.records):
                raise ValueError(f"it records {logged} logged episodes, the log holds {len(log.records)}")
        except ValueError as exc:
            warn(f"cannot resume the agent from {state_path}: {exc}")
            logged = None
    if logged is not None:
        log.truncate(logged)  # a kill between writing the log and saving the agent: that episode runs again
        console.print(f"resuming {escape(str(run_dir))}: {logged} episodes done")
    else:
        legacy = [name for name in LEGACY_FILES if (run_dir / name).exists()]
        if legacy:
            warn(f"{run_dir} holds {', '.join(legacy)} from an older edgecompress; they are not read (loading "
                 "them can run code)")  # fmt: skip
        if log.records:  # agent state lost or missing: never a reason to drop the log
            warn(f"{run_dir}: {len(log.records)} episodes logged without an agent state to resume; a fresh agent "
                 "(empty replay buffer, new warm-up) continues the count")  # fmt: skip
            agent = new_agent(s.seed + len(log.records))
        elif state_path.exists():
            agent = new_agent(s.seed)  # the failed restore may have half set this one
    offset = len(log.records) - agent.episodes_done  # episodes logged before this agent existed
    remaining = s.episodes - len(log.records)
    started = time.perf_counter()
    with progress_bar(progress) as bar:
        task = bar.add_task("search", total=s.episodes, completed=len(log.records), status="")

        def on_episode(final: float, info: dict[str, Any]) -> None:
            log.record({
                "policy": info["policy"], "accuracy": info["accuracy"], "latency_ms": info["latency_ms"],
                "budget_ms": info["budget_ms"], "stored_bytes": info["stored_bytes"], "reward": final,
                "within_budget": info["within_budget"], "repaired": info["repaired"], "filled": info.get("filled", 0),
                "latency_source": info["latency_source"],
                "accuracy_source": setup.accuracy_source,
                **{k: info[k] for k in ("energy_mj", "energy_source", "budget_energy_mj") if k in info},
            })  # fmt: skip
            bar.update(task, completed=offset + agent.episodes_done, status=setup.status(log, "policy"))

        def checkpoint() -> None:
            """The agent's whole state, once the episode's training is done, with the log's length: a resumed
            run continues exactly as an uninterrupted one."""
            agent.save_state(state_path, meta={"logged": len(log.records)})

        agent.episode_end_hook = on_episode
        agent.checkpoint_hook = checkpoint
        try:
            if remaining > 0:
                agent.learn(total_timesteps=remaining * n_layers, reset_num_timesteps=False)
        finally:
            if getattr(agent, "_logger", None) is not None:
                agent.logger.close()  # the TensorBoard writer's thread ends with it
    return setup.result(log, time.perf_counter() - started)
