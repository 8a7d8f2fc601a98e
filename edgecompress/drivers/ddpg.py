"""``edgecompress search --agent ddpg``: the AMC search loop around the environment and the agent.

Resumable, and a resumed run equals an uninterrupted one: the agent (SB3's
zip), its replay buffer and the global random states (plain arrays,
``replay_buffer.npz`` and ``rng_state.npz``, never a pickle) are saved together
once an episode's gradient steps are done (``AMCDDPG.checkpoint_hook``), each
file replaced atomically; the episode log is appended as each policy is
scored. Re-running the same command on the same run folder continues from the
last checkpoint (the log is cut back to it if a crash fell in between); a torn
or missing agent state never costs the log (a fresh agent continues the count).
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from edgecompress._progress import progress_bar
from edgecompress.agents.amc import AMCDDPG
from edgecompress.config import RunConfig
from edgecompress.envs import CompressionEnv
from edgecompress.errors import ConfigError
from edgecompress.search.setup import SearchSetup

__all__ = ["load_rng_state", "run", "save_rng_state"]


def save_rng_state(path: Path) -> None:
    """Python's, NumPy's and torch's global random states (SB3 samples its replay buffer and target noise from
    them) as plain arrays, written atomically."""
    _, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    version, py_state, py_gauss = random.getstate()
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        np.savez(
            f, np_keys=np.asarray(keys), np_meta=np.array([pos, has_gauss], dtype=np.int64),
            np_gauss=np.array([cached]), torch=torch.get_rng_state().numpy(),
            py_state=np.array(py_state, dtype=np.int64),
            py_meta=np.array([version, np.nan if py_gauss is None else py_gauss]),
        )  # fmt: skip
    os.replace(tmp, path)


def load_rng_state(path: Path) -> None:
    """Restore what :func:`save_rng_state` wrote (``allow_pickle=False``)."""
    with np.load(path, allow_pickle=False) as d:
        pos, has_gauss = (int(v) for v in d["np_meta"])
        np.random.set_state(("MT19937", d["np_keys"], pos, has_gauss, float(d["np_gauss"][0])))
        torch.set_rng_state(torch.from_numpy(d["torch"].copy()))
        version, gauss = d["py_meta"]
        random.setstate((int(version), tuple(int(v) for v in d["py_state"]), None if np.isnan(gauss) else gauss))


def run(setup: SearchSetup, cfg: RunConfig, console: Console, *, progress: bool = True) -> dict[str, Any]:
    s = cfg.search
    run_dir = Path(cfg.out)
    env = CompressionEnv(setup=setup, reward=s.reward)
    n_layers = len(env.layers)
    warmup = s.warmup_episodes if s.warmup_episodes is not None else min(100, s.episodes // 3)
    agent_path, buffer_path, rng_path = run_dir / "agent.zip", run_dir / "replay_buffer.npz", run_dir / "rng_state.npz"
    if (run_dir / "replay_buffer.pkl").exists() and not buffer_path.exists():
        raise ConfigError(
            f"{run_dir} holds replay_buffer.pkl, written by edgecompress 0.1; resuming would unpickle it, which can "
            "run code, so edgecompress 0.2 does not read it. Search into a new --out (episodes.jsonl and "
            "best_policy.json of this folder stay valid), or delete the folder's agent.zip and replay_buffer.pkl "
            "if you trust neither."
        )
    log = setup.open_log(cfg, "ddpg (AMC on Stable-Baselines3)")
    agent: AMCDDPG | None = None
    if agent_path.exists() and buffer_path.exists():
        try:
            agent = AMCDDPG.load(agent_path, env=env)
            agent.load_buffer(buffer_path)
            if rng_path.exists():
                load_rng_state(rng_path)
        except Exception as exc:  # a torn or foreign file: the episode log stays the truth
            console.print(f"[yellow]warning:[/] cannot read the agent state in {run_dir} ({type(exc).__name__}); "
                          "a fresh agent continues after the logged episodes")  # fmt: skip
            agent = None
    if agent is not None:
        log.truncate(agent.episodes_done)  # a crash between writing the log and saving the agent
        console.print(f"resuming {run_dir}: {agent.episodes_done} episodes done")
    else:
        agent = AMCDDPG(env, n_layers=n_layers, warmup_episodes=warmup, seed=s.seed + len(log.records),
                        tensorboard_log=str(run_dir / "tensorboard"))  # fmt: skip
        if log.records:  # agent state lost or missing: never a reason to drop the log
            console.print(f"{run_dir}: {len(log.records)} episodes logged without an agent state to resume; a "
                          "fresh agent (empty replay buffer, new warm-up) continues the count")  # fmt: skip
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
            })  # fmt: skip
            bar.update(task, completed=offset + agent.episodes_done, status=setup.status(log, "policy"))

        def checkpoint() -> None:
            """The agent, its buffer and the random states, once the episode's training is done: a resumed
            run continues exactly as an uninterrupted one. Each file is replaced whole (a kill mid-save leaves
            the previous one, never a torn file)."""
            tmp = agent_path.with_name("agent.tmp.zip")
            agent.save(tmp)
            os.replace(tmp, agent_path)
            agent.save_buffer(buffer_path)
            save_rng_state(rng_path)

        agent.episode_end_hook = on_episode
        agent.checkpoint_hook = checkpoint
        if remaining > 0:
            agent.learn(total_timesteps=remaining * n_layers, reset_num_timesteps=False)
    return setup.result(log, time.perf_counter() - started)
