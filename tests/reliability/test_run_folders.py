"""A run folder belongs to one process at a time, and a finished search can be extended (issue 23, faults)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgecompress._lock import run_folder_lock
from edgecompress._progress import make_console
from edgecompress.config import load_config, write_resolved_config
from edgecompress.errors import ConfigError
from edgecompress.workflows.search import run_search


def _cfg(out: Path, lenet_checkpoint: Path, data: Path, agent: str, episodes: int):  # type: ignore[no-untyped-def]
    return load_config(None, {
        "out": str(out), "name": out.name, "model.checkpoint": str(lenet_checkpoint), "data.data_dir": str(data),
        "data.val_size": 60, "data.val_samples": 60, "search.agent": agent, "search.episodes": episodes,
        "search.warmup_episodes": 1, "search.budget_ratio": 0.9,
        "search.finetune_batches": 0,  # scored unfine-tuned: run-folder mechanics only
    })  # fmt: skip


def test_a_second_process_on_a_run_folder_is_refused(
    tmp_path: Path, lenet_checkpoint: Path, tiny_fmnist_shared: Path
) -> None:
    cfg = _cfg(tmp_path / "run", lenet_checkpoint, tiny_fmnist_shared, "random", 2)
    with run_folder_lock(cfg.out):  # another search holds the folder
        with pytest.raises(ConfigError, match=r"run folder .* is in use by another edgecompress process \(pid \d+\)"):
            run_search(cfg, make_console(), progress=False)
    assert not (tmp_path / "run" / "episodes.jsonl").exists()
    assert run_search(cfg, make_console(), progress=False)["episodes"] == 2  # released: the next run goes ahead


@pytest.mark.parametrize("agent", ["ddpg", "optuna", "random"])
def test_a_finished_search_is_extended_by_a_larger_count(
    agent: str, tmp_path: Path, lenet_checkpoint: Path, tiny_fmnist_shared: Path
) -> None:
    def search(episodes: int):  # type: ignore[no-untyped-def]
        cfg = _cfg(tmp_path / agent, lenet_checkpoint, tiny_fmnist_shared, agent, episodes)
        return run_search(cfg, make_console(), progress=False)

    search(2)
    first = (tmp_path / agent / "episodes.jsonl").read_text().splitlines()
    result = search(3)
    lines = (tmp_path / agent / "episodes.jsonl").read_text().splitlines()
    assert result["episodes"] == 3 and lines[:2] == first and [json.loads(x)["episode"] for x in lines] == [1, 2, 3]
    # A smaller count reports what is there and changes nothing.
    again = search(1)
    assert again["episodes"] == 3 and (tmp_path / agent / "episodes.jsonl").read_text().splitlines() == lines


def test_other_keys_still_make_another_experiment(tmp_path: Path) -> None:
    write_resolved_config(load_config(None, {"search.episodes": 5}), tmp_path)
    write_resolved_config(load_config(None, {"search.episodes": 9}), tmp_path)  # extends: accepted
    with pytest.raises(ConfigError, match=r"different config \(changed: search.budget_ratio\)"):
        write_resolved_config(load_config(None, {"search.episodes": 9, "search.budget_ratio": 0.3}), tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is a file, not a folder; choose another --out"):
        write_resolved_config(load_config(None), tmp_path / "file")


def test_an_optuna_trial_left_running_by_a_killed_process_is_failed_on_resume(
    tmp_path: Path, lenet_checkpoint: Path, tiny_fmnist_shared: Path
) -> None:
    import optuna

    cfg = _cfg(tmp_path / "opt", lenet_checkpoint, tiny_fmnist_shared, "optuna", 2)
    run_search(cfg, make_console(), progress=False)
    url = f"sqlite:///{(tmp_path / 'opt' / 'study.db').resolve()}"
    optuna.load_study(study_name="opt", storage=url).ask()  # a process asked for a trial, then was killed
    cfg = _cfg(tmp_path / "opt", lenet_checkpoint, tiny_fmnist_shared, "optuna", 3)
    assert run_search(cfg, make_console(), progress=False)["episodes"] == 3
    states = [t.state.name for t in optuna.load_study(study_name="opt", storage=url).trials]
    assert states.count("RUNNING") == 0 and states.count("FAIL") == 1 and states.count("COMPLETE") == 3


@pytest.mark.parametrize("damage", ["torn", "deleted"])
def test_a_damaged_ddpg_agent_state_never_costs_the_log(
    damage: str, tmp_path: Path, lenet_checkpoint: Path, tiny_fmnist_shared: Path
) -> None:
    run = tmp_path / "ddpg"
    run_search(_cfg(run, lenet_checkpoint, tiny_fmnist_shared, "ddpg", 2), make_console(), progress=False)
    first = (run / "episodes.jsonl").read_text().splitlines()
    if damage == "torn":
        (run / "agent_state.npz").write_bytes(b"")  # what a kill during a non-atomic save would leave
    else:
        (run / "agent_state.npz").unlink()
    result = run_search(_cfg(run, lenet_checkpoint, tiny_fmnist_shared, "ddpg", 3), make_console(), progress=False)
    lines = (run / "episodes.jsonl").read_text().splitlines()
    assert result["episodes"] == 3 and lines[:2] == first and [json.loads(x)["episode"] for x in lines] == [1, 2, 3]


def _ddpg(tmp_path: Path, out: str, ckpt: Path, data: Path, episodes: int):  # type: ignore[no-untyped-def]
    cfg = _cfg(tmp_path / out, ckpt, data, "ddpg", episodes)
    cfg.search.warmup_episodes = 2
    return cfg


def _records(run: Path) -> list[tuple]:  # type: ignore[type-arg]
    lines = (run / "episodes.jsonl").read_text().splitlines()
    return [(r["episode"], r["policy"]["layers"], r["accuracy"], r["latency_ms"]) for r in map(json.loads, lines)]


def _state(run: Path) -> dict[str, np.ndarray]:
    with np.load(run / "agent_state.npz", allow_pickle=False) as saved:  # one file, no pickle
        return {k: saved[k] for k in saved.files}


def _assert_same_state(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    """The whole learning state: networks, optimizers, replay buffer, counters, noise and random states."""
    differ = [k for k, v in a.items() if not np.array_equal(v, b[k], equal_nan=v.dtype.kind == "f")]
    assert a.keys() == b.keys() and differ == []


def test_a_resumed_ddpg_search_equals_an_uninterrupted_one(
    tmp_path: Path, lenet_checkpoint: Path, tiny_fmnist_shared: Path
) -> None:
    """Agent, replay buffer and random states are saved together after each episode's training, so stopping
    after the warm-up and resuming gives the uninterrupted run (it diverged at the first episode after)."""
    for out, episodes in (("whole", 6), ("split", 3), ("split", 6)):
        run_search(_ddpg(tmp_path, out, lenet_checkpoint, tiny_fmnist_shared, episodes), make_console(), progress=False)
    assert _records(tmp_path / "split") == _records(tmp_path / "whole") and len(_records(tmp_path / "whole")) == 6
    # The policies are discretised (channels, bits): the agent's whole final state must match too.
    split = _state(tmp_path / "split")
    _assert_same_state(_state(tmp_path / "whole"), split)
    assert {"state", "rng.np_keys", "rng.torch", "rng.py_state", "buffer.observations"} <= set(split)


class _Killed(BaseException):
    """A kill -9 at that moment: the process stops there, nothing after it runs (not even except Exception)."""


@pytest.mark.parametrize("moment", ["while the state is written", "between the log and the state"])
def test_a_kill_around_the_ddpg_checkpoint_resumes_to_the_uninterrupted_run(
    moment: str, tmp_path: Path, lenet_checkpoint: Path, tiny_fmnist_shared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent, its replay buffer and the random states are one file, replaced atomically and recording the
    log's length: a kill half-way through writing it leaves the previous state whole, a kill after the log line
    and before the state leaves the log one episode ahead; either way the resumed search is the uninterrupted
    one (three files replaced one after another could be left from different episodes, and diverged)."""
    from edgecompress.agents import amc

    run_search(_ddpg(tmp_path, "whole", lenet_checkpoint, tiny_fmnist_shared, 6), make_console(), progress=False)
    real_save, real_savez = amc.AMCDDPG.save_state, np.savez

    def torn_savez(f, *args, **kwargs):  # type: ignore[no-untyped-def]
        f.write(b"PK\x03\x04 half an archive")
        raise _Killed

    def save_state(self, path, *, meta=None):  # type: ignore[no-untyped-def]
        if self.episodes_done == 4:  # after the warm-up: the networks have trained
            if moment == "between the log and the state":
                raise _Killed
            monkeypatch.setattr(np, "savez", torn_savez)
        return real_save(self, path, meta=meta)

    monkeypatch.setattr(amc.AMCDDPG, "save_state", save_state)
    cut = tmp_path / "cut"
    with pytest.raises(_Killed):
        run_search(_ddpg(tmp_path, "cut", lenet_checkpoint, tiny_fmnist_shared, 6), make_console(), progress=False)
    monkeypatch.setattr(amc.AMCDDPG, "save_state", real_save)
    monkeypatch.setattr(np, "savez", real_savez)
    assert len(_records(cut)) == 4 and json.loads(str(_state(cut)["state"][()]))["meta"] == {"logged": 3}
    run_search(_ddpg(tmp_path, "cut", lenet_checkpoint, tiny_fmnist_shared, 6), make_console(), progress=False)
    assert _records(cut) == _records(tmp_path / "whole")
    _assert_same_state(_state(tmp_path / "whole"), _state(cut))
