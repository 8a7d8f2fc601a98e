"""kill -9 anywhere, resume, nothing lost; torn files recovered from, never a traceback (issue 23, faults).

Real ``edgecompress search`` processes (DDPG, Optuna, Ray Tune on the tiny LeNet-5 set-up) are SIGKILLed at
seeded random moments (once the episode log holds a random number of lines, after a random delay), then
re-run to completion: the final count is the asked count, no episode or trial is lost or logged twice, and
``best_policy.json`` is the best logged record. The DDPG search resumed after the kill equals the
uninterrupted one. A private Ray dies with the tool, however it ends. The default suite kills each driver
once; the ``slow`` variants kill more often, at more seeds, and interrupt Ray with a Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgecompress.compressors import Policy
from edgecompress.search.runlog import read_records

SEED = 23


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory, lenet_checkpoint: Path, tiny_fmnist_shared: Path) -> Path:
    path = tmp_path_factory.mktemp("faults") / "search.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"checkpoint": str(lenet_checkpoint)},
        "data": {"data_dir": str(tiny_fmnist_shared), "val_size": 60, "val_samples": 60},
        "search": {"budget_ratio": 0.9, "warmup_episodes": 2, "finetune_batches": 0},  # run mechanics only
    }))  # fmt: skip
    return path


def _command(config: Path, run: Path, agent: str, count: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "edgecompress", "search", "--config", str(config), "--agent", agent,
            "--episodes", str(count), "--out", str(run), *extra]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}


def _lines(run: Path) -> int:
    try:
        return (run / "episodes.jsonl").read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _kill_after(
    cmd: list[str], run: Path, lines: int, delay: float, before: Callable[[int], Any] | None = None,
    sig: signal.Signals = signal.SIGKILL,
) -> Any:  # fmt: skip
    """Run ``cmd`` until the episode log holds ``lines`` lines, wait ``delay`` seconds, send ``sig`` (SIGKILL)
    and wait for the end. Returns ``before(pid)``'s answer, taken just before the signal; ``False`` when the
    search ended first."""
    lines = max(lines, _lines(run) + 1)  # each process gets somewhere before it is killed
    with (run.parent / f"{run.name}.stderr").open("ab") as err:
        proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 240
            while _lines(run) < lines:
                if proc.poll() is not None:
                    return False
                assert time.monotonic() < deadline, f"no {lines} lines in {run}/episodes.jsonl"
                time.sleep(0.01)
            time.sleep(delay)
            seen = before(proc.pid) if before is not None else True
            proc.send_signal(sig)
            code = proc.wait(timeout=120)  # Ctrl-C: Tune stops and the tool exits 0, or 130 outside Tune
            assert code == -signal.SIGKILL if sig == signal.SIGKILL else code in (0, 130), code
            return seen
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _finish(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    return done


def _check_run(run: Path, count: int, key: str | None) -> list[dict[str, Any]]:
    """The asked count, episodes 1..count once each, trials once each, best_policy.json the best record."""
    records, torn = read_records(run / "episodes.jsonl")
    assert torn is None and [r["episode"] for r in records] == list(range(1, count + 1))
    if key is not None:
        assert len({r[key] for r in records}) == count, [r[key] for r in records]
    best = max((r for r in records if r["within_budget"]), key=lambda r: (r["accuracy"], -r["latency_ms"]))
    saved = Policy.load(run / "best_policy.json")
    assert saved.meta["scores"]["episode"] == best["episode"] and saved.meta["scores"]["accuracy"] == best["accuracy"]
    assert saved.layers == Policy.from_dict(best["policy"]).layers
    return records


def _kill_points(seed: int, count: int, kills: int, window: float) -> list[tuple[int, float]]:
    """``kills`` moments: after a random number of logged lines (rising), plus a random delay in ``window``."""
    rng = random.Random(seed)
    lines = sorted(rng.sample(range(1, count - 1), kills))
    return [(n, rng.uniform(0.0, window)) for n in lines]


def _ddpg_drill(config: Path, tmp_path: Path, seed: int, kills: int) -> None:
    from edgecompress._progress import make_console
    from edgecompress.workflows.config import load_run_config
    from edgecompress.workflows.search import run_search

    count, run = 8, tmp_path / "ddpg"
    cmd = _command(config, run, "ddpg", count)
    for lines, delay in _kill_points(seed, count, kills, 0.3):
        _kill_after(cmd, run, lines, delay)
    _finish(cmd)
    records = _check_run(run, count, None)
    whole = tmp_path / "whole"  # the same search, uninterrupted (in this process: the numbers do not depend on it)
    cfg = load_run_config(config, {"out": str(whole), "name": run.name, "search.agent": "ddpg",
                                   "search.episodes": count})  # fmt: skip
    run_search(cfg, make_console(), progress=False)
    uninterrupted, _ = read_records(whole / "episodes.jsonl")

    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        return r["episode"], r["policy"]["layers"], r["accuracy"], r["latency_ms"]

    assert [key(r) for r in records] == [key(r) for r in uninterrupted]


def _optuna_drill(config: Path, tmp_path: Path, seed: int, kills: int) -> None:
    import optuna

    count, run = 8, tmp_path / "optuna"
    cmd = _command(config, run, "optuna", count)
    for lines, delay in _kill_points(seed, count, kills, 0.3):
        _kill_after(cmd, run, lines, delay)
    _finish(cmd)
    _check_run(run, count, "trial")
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{run / 'study.db'}")  # the only one
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == count and "RUNNING" not in states


def test_a_ddpg_search_killed_at_a_random_moment_resumes_to_the_uninterrupted_one(config: Path, tmp_path: Path) -> None:
    _ddpg_drill(config, tmp_path, SEED, kills=1)


def test_an_optuna_search_killed_at_a_random_moment_resumes_to_the_full_count(config: Path, tmp_path: Path) -> None:
    _optuna_drill(config, tmp_path, SEED, kills=1)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_ddpg_and_optuna_killed_twice_at_random_moments(seed: int, config: Path, tmp_path: Path) -> None:
    _ddpg_drill(config, tmp_path, seed, kills=2)
    _optuna_drill(config, tmp_path, seed, kills=2)


# ---- Ray: the private instance dies with the tool ----

SESSION = re.compile(r"session_\d{4}-\d\d-\d\d_[\d_-]+")


def _stat(pid: int | str) -> tuple[str, int, int] | None:
    """State, parent pid and start time (clock ticks since boot) of a process; ``None`` once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1]), int(fields[19])


def _descendants(pid: int) -> set[tuple[int, int]]:
    """(pid, start time) of every process under ``pid``."""
    parents = {int(e.name): st[1] for e in Path("/proc").iterdir() if e.name.isdigit() and (st := _stat(e.name))}
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found |= {(child, st[2]) for child in frontier if (st := _stat(child))}
    return found


def _ray_processes(pid: int) -> tuple[str, set[tuple[int, int]], list[str]]:
    """The tool's Ray session name, every process under the tool (raylet, GCS, agents, workers, watchdog), and
    those naming the session (taken before the kill: the watchdog is quick)."""
    procs = _descendants(pid)
    for child, _ in procs:
        with contextlib.suppress(OSError):
            match = SESSION.search(Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace"))
            if match:
                return match.group(0), procs, _referencing(match.group(0))
    raise AssertionError(f"no Ray session among the processes under {pid}: {procs}")


def _referencing(session: str) -> list[str]:
    """Live processes whose command line, open files or working folder name the Ray session."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue  # a zombie: dead, waiting for its new parent to reap it
            names = [(entry / "cmdline").read_bytes().decode(errors="replace"), os.readlink(entry / "cwd")]
            names += [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except OSError:  # exited while we looked
            continue
        if any(session in n for n in names):
            found.append(f"{entry.name}: {names[0].replace(chr(0), ' ')[:100]}")
    return found


def _alive(procs: set[tuple[int, int]]) -> list[int]:
    """Those of ``procs`` still running (the same start time: not a reused pid; zombies are dead)."""
    return [pid for pid, started in procs if (st := _stat(pid)) is not None and st[2] == started and st[0] != "Z"]


def _ray_drill(config: Path, tmp_path: Path, seed: int, kills: int, *, interrupt: bool = False) -> None:
    """``kills`` SIGKILLs, a Ctrl-C (SIGINT) if ``interrupt``, then a run to the end: none leaves a Ray process
    behind (a Ctrl-C ends the way a normal exit does, through the same exit hook, once Tune has stopped)."""
    count, run = 12, tmp_path / "ray"
    cmd = _command(config, run, "ray", count, "--workers", "2")
    moments = [(lines, delay, signal.SIGKILL) for lines, delay in _kill_points(seed, count // 2, kills, 0.5)]
    for lines, delay, sig in [*moments, *([(0, 0.0, signal.SIGINT)] if interrupt else [])]:
        seen = _kill_after(cmd, run, lines, delay, before=_ray_processes, sig=sig)
        if seen is False:
            continue
        session, procs, before = seen
        assert procs and before  # mid-run: GCS, raylet, agents, workers, the watchdog (fewer while Ray stops)
        deadline = time.monotonic() + 30
        while (_alive(procs) or _referencing(session)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _alive(procs) == [] and _referencing(session) == [], (sig, _alive(procs), _referencing(session))
    assert "Traceback" not in (tmp_path / "ray.stderr").read_text()  # a Ctrl-C ends in a message, not a trace
    with (tmp_path / "finish.stderr").open("w") as err:
        proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=err)
        assert proc.wait(timeout=600) == 0, (tmp_path / "finish.stderr").read_text()[-3000:]
    assert "Traceback" not in (tmp_path / "finish.stderr").read_text()
    _check_run(run, count, "trial")
    sessions = {m.group(0) for m in SESSION.finditer(" ".join(p.name for p in Path("/tmp/ray").glob("session_*")))}
    finished = [s for s in sessions if s.endswith(f"_{proc.pid}")]
    deadline = time.monotonic() + 30  # a normal exit leaves nothing either
    while any(_referencing(s) for s in finished) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [r for s in finished for r in _referencing(s)] == []


def test_a_ray_search_killed_leaves_no_ray_process_and_resumes_to_the_full_count(config: Path, tmp_path: Path) -> None:
    pytest.importorskip("ray")
    _ray_drill(config, tmp_path, SEED, kills=1)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_a_ray_search_killed_twice_and_interrupted(seed: int, config: Path, tmp_path: Path) -> None:
    pytest.importorskip("ray")
    _ray_drill(config, tmp_path, seed, kills=2, interrupt=True)


# ---- torn files ----


def _cli(config: Path, run: Path, agent: str, count: int, capsys: pytest.CaptureFixture[str]) -> str:
    from edgecompress.cli import main

    with pytest.raises(SystemExit) as done:
        main(_command(config, run, agent, count)[3:])
    captured = capsys.readouterr()
    said = " ".join((captured.out + captured.err).split())
    assert done.value.code == 0 and "Traceback" not in said, said
    return said


@pytest.mark.parametrize("agent", ["ddpg", "optuna"])
def test_torn_files_are_recovered_from_with_a_warning(
    agent: str, config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a kill (or a full disk) can leave: the log's last line cut short, best_policy.json half written,
    and for DDPG a 0-byte agent state. The re-run says what it repaired and finishes the count."""
    run = tmp_path / agent
    _cli(config, run, agent, 3, capsys)
    log = run / "episodes.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    if agent == "ddpg":  # a kill while the 4th record was appended (the agent state holds 3 episodes)
        log.write_text("".join(lines) + lines[-1][:40])
    else:  # a kill while the 3rd trial's record was appended (the study holds it)
        log.write_text("".join(lines[:-1]) + lines[-1][:40])
    best = run / "best_policy.json"
    best.write_text(best.read_text()[:100])
    if agent == "ddpg":
        (run / "agent_state.npz").write_bytes(b"")
    said = _cli(config, run, agent, 5, capsys)
    torn_line = 4 if agent == "ddpg" else 3
    assert f"warning: line {torn_line} of {log} was torn (40 characters, not a whole record) and is dropped" in said
    assert f"warning: best_policy.json did not load (policy file {best} is corrupt (not JSON)" in said
    assert "rewritten from the episode log" in said or "removed (none logged within budget)" in said
    if agent == "ddpg":
        assert f"cannot resume the agent from {run / 'agent_state.npz'}: not a saved agent state" in said
        assert "3 episodes logged without an agent state to resume; a fresh agent" in said
    records = _check_run(run, 5, None if agent == "ddpg" else "trial")
    assert [json.dumps(r) + "\n" for r in records[: torn_line - 1]] == lines[: torn_line - 1]  # nothing else lost
