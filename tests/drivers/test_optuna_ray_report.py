"""Optuna (TPE, NSGA-II, random) and Ray Tune drivers over the shared policy space; the cross-agent report."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from edgecompress._progress import make_console
from edgecompress.artifacts.checkpoint import load_checkpoint
from edgecompress.compressors import Policy, compress
from edgecompress.config import RunConfig, load_config
from edgecompress.errors import ConfigError
from edgecompress.latency_models import estimate_latency
from edgecompress.workflows.report import hypervolume_2d, pareto_front, write_report
from edgecompress.workflows.search import run_search


def make_cfg(out: Path, lenet_checkpoint: Path, data: Path, **search: Any) -> RunConfig:
    overrides = {
        "out": str(out),
        "model.checkpoint": str(lenet_checkpoint),
        "data.data_dir": str(data),
        "data.val_size": 60,
        "data.val_samples": 60,
        "search.agent": "optuna",
        "search.episodes": 6,
        "search.budget_ratio": 0.8,
        "search.round_to": 1,
        "search.finetune_batches": 0,  # scored unfine-tuned: driver mechanics only
        "name": out.name,
    }
    overrides.update({f"search.{k}": v for k, v in search.items()})
    return load_config(None, overrides)


def records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "episodes.jsonl").read_text().splitlines()]


def assert_best_within_budget(run: Path, cfg: RunConfig, result: dict[str, Any]) -> Policy:
    policy = Policy.load(run / "best_policy.json")
    assert policy.base["model"] == "lenet5" and policy.round_to == 1
    base, _ = load_checkpoint(policy.base["checkpoint"])
    model, _ = compress(base, policy)
    assert estimate_latency(model, (1, 1, 28, 28), cfg.device).total_ms <= result["budget_ms"] + 1e-9
    assert policy.meta["scores"]["accuracy"] == result["best"]["accuracy"]
    return policy


def test_optuna_tpe_writes_a_valid_best_policy_within_budget(tmp_path, lenet_checkpoint, tiny_fmnist_shared) -> None:  # type: ignore[no-untyped-def]
    cfg = make_cfg(tmp_path / "tpe", lenet_checkpoint, tiny_fmnist_shared)
    result = run_search(cfg, make_console(), progress=False)
    run = Path(cfg.out)
    assert (run / "study.db").is_file() and (run / "reference.json").is_file() and (run / "search.png").is_file()
    recs = records(run)
    assert [r["trial"] for r in recs] == list(range(6)) and [r["episode"] for r in recs] == list(range(1, 7))
    policy = assert_best_within_budget(run, cfg, result)
    assert policy.meta["agent"] == "optuna (tpe)"
    # Every parameter stays inside the env's ranges; coupled layers share one keep.
    for r in recs:
        for lp in r["policy"]["layers"].values():
            assert 0.2 <= lp.get("keep", 1.0) <= 1.0


def test_same_seed_gives_the_same_trials(tmp_path, lenet_checkpoint, tiny_fmnist_shared) -> None:  # type: ignore[no-untyped-def]
    a = make_cfg(tmp_path / "a", lenet_checkpoint, tiny_fmnist_shared, episodes=5, techniques=["keep", "wbits"])
    b = make_cfg(tmp_path / "b", lenet_checkpoint, tiny_fmnist_shared, episodes=5, techniques=["keep", "wbits"])
    run_search(a, make_console(), progress=False)
    run_search(b, make_console(), progress=False)
    assert [r["policy"] for r in records(Path(a.out))] == [r["policy"] for r in records(Path(b.out))]
    c = make_cfg(tmp_path / "c", lenet_checkpoint, tiny_fmnist_shared, episodes=5, techniques=["keep", "wbits"], seed=1)
    run_search(c, make_console(), progress=False)
    assert [r["policy"] for r in records(Path(a.out))] != [r["policy"] for r in records(Path(c.out))]


def test_resume_keeps_the_trial_count_and_never_reruns(
    tmp_path, lenet_checkpoint, tiny_fmnist_shared, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    import optuna

    from edgecompress.search.space import PolicySpace

    cfg = make_cfg(tmp_path / "resume", lenet_checkpoint, tiny_fmnist_shared)
    real = PolicySpace.suggest
    calls = {"n": 0}

    def crashing(self, trial):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("simulated crash")
        return real(self, trial)

    monkeypatch.setattr(PolicySpace, "suggest", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_search(cfg, make_console(), progress=False)
    monkeypatch.setattr(PolicySpace, "suggest", real)
    first = records(Path(cfg.out))
    assert len(first) == 3
    result = run_search(cfg, make_console(), progress=False)
    recs = records(Path(cfg.out))
    assert result["episodes"] == 6 and len(recs) == 6
    assert recs[:3] == first  # finished trials kept, not re-run
    study = optuna.load_study(study_name=cfg.name, storage=f"sqlite:///{Path(cfg.out).resolve() / 'study.db'}")
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 6 and states.count("FAIL") == 1
    # Running again does nothing more.
    assert run_search(cfg, make_console(), progress=False)["episodes"] == 6
    assert len(optuna.load_study(study_name=cfg.name, storage=study._storage).trials) == 7


def test_nsga2_pareto_front_is_non_dominated(tmp_path, lenet_checkpoint, tiny_fmnist_shared) -> None:  # type: ignore[no-untyped-def]
    cfg = make_cfg(
        tmp_path / "nsga",
        lenet_checkpoint,
        tiny_fmnist_shared,
        sampler="nsga2",
        episodes=10,
        techniques=["keep", "wbits"],
    )
    run_search(cfg, make_console(), progress=False)
    front = json.loads((Path(cfg.out) / "pareto.json").read_text())
    recs = records(Path(cfg.out))
    assert front

    def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
        keys = (
            a["accuracy"] >= b["accuracy"],
            a["latency_ms"] <= b["latency_ms"],
            a["stored_bytes"] <= b["stored_bytes"],
        )
        strict = (
            a["accuracy"] > b["accuracy"],
            a["latency_ms"] < b["latency_ms"],
            a["stored_bytes"] < b["stored_bytes"],
        )
        return all(keys) and any(strict)

    feasible = [r for r in recs if r["within_budget"]]
    for p in front:
        assert p["within_budget"]
        assert not any(dominates(r, p) for r in feasible)


def test_pareto_front_and_hypervolume_known_answers() -> None:
    pts = [
        {"accuracy": 0.9, "latency_ms": 2.0, "stored_bytes": 10},
        {"accuracy": 0.8, "latency_ms": 1.0, "stored_bytes": 10},
        {"accuracy": 0.7, "latency_ms": 1.5, "stored_bytes": 10},  # dominated by the second
        {"accuracy": 0.7, "latency_ms": 1.5, "stored_bytes": 5},  # smaller: on the front
    ]
    front = pareto_front(pts)
    assert [(p["accuracy"], p["latency_ms"], p["stored_bytes"]) for p in front] == [
        (0.8, 1.0, 10),
        (0.7, 1.5, 5),
        (0.9, 2.0, 10),
    ]
    # Union of [0.2, 1] x [0, 0.5] and [0.5, 1] x [0, 0.8]: 0.4 + 0.4 - 0.25.
    assert hypervolume_2d([(0.5, 0.8), (0.2, 0.5)]) == pytest.approx(0.55)
    assert hypervolume_2d([(1.2, 0.9)]) == 0.0  # slower than the base: outside the reference box


def test_ray_tune_runs_parallel_trials_and_restores(  # type: ignore[no-untyped-def]
    tmp_path, lenet_checkpoint, tiny_fmnist_shared, monkeypatch
) -> None:
    ray = pytest.importorskip("ray")
    import signal
    import threading

    import psutil

    from edgecompress.drivers import ray as driver

    listening: set[tuple[str, str]] = set()
    real_shut_down = driver._shut_down

    def shut_down(*args: Any) -> None:  # what the private Ray listens on, just before the search stops it
        for proc in psutil.Process().children(recursive=True):
            try:
                conns = proc.net_connections(kind="inet")
                listening.update((c.laddr.ip, proc.name()) for c in conns if c.status == psutil.CONN_LISTEN)
            except psutil.NoSuchProcess:  # a worker that finished while we looked
                continue
        real_shut_down(*args)

    monkeypatch.setattr(driver, "_shut_down", shut_down)
    cfg = make_cfg(tmp_path / "ray", lenet_checkpoint, tiny_fmnist_shared, agent="ray", episodes=4, workers=2)
    environment, handler = dict(os.environ), signal.getsignal(signal.SIGINT)
    try:
        result = run_search(cfg, make_console(), progress=False)
        assert result["errors"] == [] and result["episodes"] == 4
        # The private Ray listened on loopback only (it was reachable on every interface).
        assert listening and all(ip in ("127.0.0.1", "::1", "::ffff:127.0.0.1") for ip, _ in listening), listening
        # Polite to its host: Ray is stopped when the search returns, nothing of it left running, and the
        # environment and signal handlers are as they were.
        assert not ray.is_initialized() and dict(os.environ) == environment
        assert signal.getsignal(signal.SIGINT) == handler
        assert not [p for p in psutil.Process().children(recursive=True) if p.is_running() and p.status() != "zombie"]
        assert not [t.name for t in threading.enumerate() if "ray" in t.name.lower()]
        run = Path(cfg.out)
        recs = records(run)
        assert len({r["trial"] for r in recs}) == 4
        policy = assert_best_within_budget(run, cfg, result)
        assert policy.meta["agent"].startswith("ray tune")
        again = run_search(cfg, make_console(), progress=False)  # the count is reached: nothing re-run
        assert again["episodes"] == 4 and records(run) == recs
    finally:
        ray.shutdown()


def test_report_renders_from_each_agents_run_folder(tmp_path, lenet_checkpoint, tiny_fmnist_shared, capsys) -> None:  # type: ignore[no-untyped-def]
    from edgecompress.cli import main

    tpe = make_cfg(tmp_path / "tpe", lenet_checkpoint, tiny_fmnist_shared, episodes=4)
    rnd = make_cfg(tmp_path / "random", lenet_checkpoint, tiny_fmnist_shared, episodes=4, sampler="random")
    ddpg = make_cfg(
        tmp_path / "ddpg", lenet_checkpoint, tiny_fmnist_shared, agent="ddpg", episodes=4, warmup_episodes=2
    )
    run_search(tpe, make_console(), progress=False)
    run_search(rnd, make_console(), progress=False)
    run_search(ddpg, make_console(), progress=False)
    report = write_report([tpe.out, rnd.out, ddpg.out], tmp_path / "cmp")
    assert [r["agent"] for r in report["runs"]] == ["optuna-tpe", "optuna-random", "ddpg"]
    assert all(r["evaluations"] == 4 for r in report["runs"])
    assert (tmp_path / "cmp" / "pareto.png").stat().st_size > 10_000
    with pytest.raises(SystemExit) as done:
        main(["report", tpe.out])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "Pareto front" in out and "optuna-tpe" in out and (Path(tpe.out) / "pareto.png").is_file()
    with pytest.raises(ConfigError, match="is not a search run folder"):
        write_report([tmp_path])
    # A run for another device is not on the same scale: one front would rank the two against each other.
    import shutil

    nano = tmp_path / "nano"
    shutil.copytree(rnd.out, nano)
    config = nano / "config.yaml"
    config.write_text(config.read_text().replace("device: raspberry-pi-4", "device: jetson-nano"))
    with pytest.raises(ConfigError, match=r"these runs did not search the same thing \(device: 'raspberry-pi-4' in "
                                          r".*tpe, 'jetson-nano' in .*nano\); a report compares runs of one base "
                                          r"model, input and device"):  # fmt: skip
        write_report([tpe.out, nano], tmp_path / "mixed")
    assert not (tmp_path / "mixed").exists()
    # An --out holding the user's own report.json is not written over; an earlier report there is.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "report.json").write_text('{"my": "notes"}')
    with pytest.raises(ConfigError, match=r"report.json exists and is not an edgecompress report"):
        write_report([tpe.out], tmp_path / "mine")
    assert (tmp_path / "mine" / "report.json").read_text() == '{"my": "notes"}'
    write_report([tpe.out, rnd.out], tmp_path / "cmp")  # replaces the report written above


def test_bad_sampler_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"search.sampler = 'bohb'"):
        load_config(None, {"search.sampler": "bohb"})


def test_policy_space_decides_drop_once_per_block() -> None:
    import optuna

    from edgecompress.analysis import analyze_model
    from edgecompress.models import create_model
    from edgecompress.search.space import PolicySpace

    analysis = analyze_model(create_model("resnet20").eval(), (1, 1, 28, 28))
    space = PolicySpace(analysis.layers, ("keep", "drop"), (1, 1, 28, 28))
    trial = optuna.trial.FixedTrial({**{f"g{s.group}.keep": 0.5 for s in analysis.layers},
                                     **{f"{b}.drop": b == "layers.5" for b in analysis.blocks()}})  # fmt: skip
    policy = space.suggest(trial)
    assert sorted(n for n, lp in policy.layers.items() if lp.drop) == ["layers.5.conv1", "layers.5.conv2"]
    assert policy.get("layers.5.conv1").keep == 1.0 and policy.get("layers.4.conv1").keep == 0.5
    assert sorted(k for k in trial.params if k.endswith(".drop")) == sorted(f"{b}.drop" for b in analysis.blocks())
    with pytest.raises(ConfigError, match=r"parameter 'layers.0.drop' missing"):
        space.from_params({f"g{s.group}.keep": 0.5 for s in analysis.layers})


def test_ctrl_c_in_a_trial_stops_the_study_quietly_and_resumes(  # type: ignore[no-untyped-def]
    tmp_path, lenet_checkpoint, tiny_fmnist_shared, monkeypatch
) -> None:
    """Ctrl-C inside a trial: the study stops, the interrupt reaches the caller (the CLI says 'interrupted'),
    Optuna logs no failed trial with a traceback, and the same command completes the count."""
    from edgecompress.search.space import PolicySpace

    cfg = make_cfg(tmp_path / "tpe", lenet_checkpoint, tiny_fmnist_shared, episodes=4)
    real = PolicySpace.suggest
    calls = {"n": 0}

    def interrupted(self, trial):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, trial)

    monkeypatch.setattr(PolicySpace, "suggest", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_search(cfg, make_console(), progress=False)
    assert len(records(Path(cfg.out))) == 2 and calls["n"] == 3
    import optuna

    study = optuna.load_study(study_name=cfg.name, storage=f"sqlite:///{Path(cfg.out).resolve() / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "PRUNED"]  # not FAIL, with its traceback
    monkeypatch.setattr(PolicySpace, "suggest", real)
    result = run_search(cfg, make_console(), progress=False)
    assert result["episodes"] == 4 and len(records(Path(cfg.out))) == 4
