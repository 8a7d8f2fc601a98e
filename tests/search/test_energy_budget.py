"""Energy per inference in searches: the energy budget (a second limit), energy in every record, and energy as
a fourth NSGA-II objective, on the one profile with an energy model (jetson-tx2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edgecompress._progress import make_console
from edgecompress.artifacts.checkpoint import load_checkpoint
from edgecompress.compressors import Policy, compress
from edgecompress.config import RunConfig, load_config
from edgecompress.errors import ConfigError
from edgecompress.latency_models import estimate_latency
from edgecompress.latency_models.estimate import estimate_energy
from edgecompress.search.budget import Budget
from edgecompress.workflows.search import run_search

SHAPE = (1, 1, 28, 28)


def make_cfg(out: Path, checkpoint: Path, data: Path, **search: Any) -> RunConfig:
    overrides = {
        "out": str(out), "name": out.name, "device": "jetson-tx2", "model.checkpoint": str(checkpoint),
        "data.data_dir": str(data), "data.val_size": 60, "data.val_samples": 60,
        "search.agent": "optuna", "search.episodes": 5, "search.budget_ratio": 1.0, "search.round_to": 1,
        "search.finetune_batches": 0,
    }  # fmt: skip
    overrides.update({f"search.{k}": v for k, v in search.items()})
    return load_config(None, overrides)


def records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "episodes.jsonl").read_text().splitlines()]


def energy_budget(checkpoint: Path, fraction: float = 0.5) -> float:
    """``fraction`` of the way from the floor (the space's strongest policy) to the base model's energy: LeNet-5
    is so small that the TX2 model's per-inference intercept is most of its energy, so a budget as a fraction of
    the base alone could fall below the floor."""
    from edgecompress.analysis import analyze_model
    from edgecompress.search.space import PolicySpace

    base, _ = load_checkpoint(checkpoint)
    techniques = tuple(load_config(None, {}).search.techniques)
    space = PolicySpace(list(analyze_model(base, SHAPE).layers), techniques, SHAPE, round_to=1)
    floor, _ = compress(base, space.strongest())
    base_mj, floor_mj = (estimate_energy(m, SHAPE, "jetson-tx2").mj for m in (base, floor))
    assert floor_mj < base_mj
    return round(floor_mj + fraction * (base_mj - floor_mj), 4)


def test_budget_energy_limit_checks_and_errors() -> None:
    b = Budget.create(2.0, 0.5, device="jetson-tx2", budget_ratio=1.0).with_energy(
        1.0, 3.0, 0.4, device="jetson-tx2"
    )  # fmt: skip
    assert b.within(2.0, 1.0) and not b.within(2.0, 1.01) and not b.within(2.01, 0.5) and not b.within(1.0, None)
    assert b.excess(1.0, 1.5) == pytest.approx(0.5) and b.excess(1.0, 0.5) == pytest.approx(-0.5)
    plain = Budget.create(2.0, 0.5, device="pi", budget_ratio=1.0)
    assert plain.with_energy(None, None, None, device="pi") is plain and plain.within(2.0)
    with pytest.raises(ConfigError, match=r"an energy budget \(1.0 mJ\) needs a device with an energy model, and "
                                          r"'raspberry-pi-4' has none; energy per inference is modelled for "
                                          r"jetson-tx2"):  # fmt: skip
        plain.with_energy(1.0, None, None, device="raspberry-pi-4")
    with pytest.raises(ConfigError, match=r"energy budget 0.3000 mJ cannot be met: the strongest compression "
                                          r"allowed reaches 0.4000 mJ on jetson-tx2 \(base 3.0000 mJ\); raise "
                                          r"the energy budget to at least 0.4000 mJ"):  # fmt: skip
        plain.with_energy(0.3, 3.0, 0.4, device="jetson-tx2")


@pytest.mark.parametrize("agent", ["optuna", "random", "ddpg"])
def test_an_energy_budgeted_search_ends_within_its_budget(
    agent, tmp_path, lenet_checkpoint, tiny_fmnist_shared
) -> None:  # type: ignore[no-untyped-def]
    # Optuna is not repaired (the budget is a constraint TPE learns): a looser limit, so 5 trials find a policy.
    limit = energy_budget(lenet_checkpoint, 0.8 if agent == "optuna" else 0.4)
    extra = {"warmup_episodes": 2} if agent == "ddpg" else {}
    cfg = make_cfg(tmp_path / agent, lenet_checkpoint, tiny_fmnist_shared, agent=agent, budget_energy_mj=limit,
                   **extra)  # fmt: skip
    result = run_search(cfg, make_console(), progress=False)
    assert result["budget_energy_mj"] == limit and result["best"] is not None
    recs = records(Path(cfg.out))
    assert len(recs) == 5
    for r in recs:  # every record: predicted energy, its source, the budget; within_budget counts energy
        assert (
            r["energy_source"].startswith("predicted by the jetson-tx2 energy model") and r["budget_energy_mj"] == limit
        )
        assert r["within_budget"] == (r["latency_ms"] <= r["budget_ms"] and r["energy_mj"] <= limit)
    if agent != "optuna":  # the repair brings every policy these drivers score within both limits
        assert all(r["within_budget"] for r in recs)
    policy = Policy.load(Path(cfg.out) / "best_policy.json")
    base, _ = load_checkpoint(lenet_checkpoint)
    model, _ = compress(base, policy)
    assert estimate_energy(model, SHAPE, "jetson-tx2").mj <= limit
    assert estimate_latency(model, SHAPE, "jetson-tx2").total_ms <= result["budget_ms"] + 1e-9
    assert policy.meta["budget_energy_mj"] == limit and policy.meta["energy_mj"] == result["best"]["energy_mj"]
    assert policy.meta["energy_source"].startswith("predicted by the jetson-tx2 energy model")


def test_energy_budget_refused_where_no_energy_model_or_below_the_floor(
    tmp_path, lenet_checkpoint, tiny_fmnist_shared
) -> None:  # type: ignore[no-untyped-def]
    cfg = make_cfg(tmp_path / "pi", lenet_checkpoint, tiny_fmnist_shared, budget_energy_mj=0.5)
    cfg.device = "raspberry-pi-4"
    with pytest.raises(ConfigError, match=r"needs a device with an energy model, and 'raspberry-pi-4' has none"):
        run_search(cfg, make_console(), progress=False)
    cfg = make_cfg(tmp_path / "low", lenet_checkpoint, tiny_fmnist_shared, budget_energy_mj=0.01)
    floor = energy_budget(lenet_checkpoint, 0.0)
    with pytest.raises(ConfigError, match=r"energy budget 0.0100 mJ cannot be met: the strongest compression allowed "
                                          rf"reaches {floor:.4f} mJ on jetson-tx2"):  # fmt: skip
        run_search(cfg, make_console(), progress=False)


def test_energy_objective_only_with_nsga2() -> None:
    with pytest.raises(ConfigError, match=r"search.energy_objective = true adds energy to NSGA-II's objectives, but "
                                          r"search.agent = 'optuna', search.sampler = 'tpe'"):  # fmt: skip
        load_config(None, {"search.agent": "optuna", "search.energy_objective": True})


def test_nsga2_with_energy_as_a_fourth_objective(tmp_path, lenet_checkpoint, tiny_fmnist_shared) -> None:  # type: ignore[no-untyped-def]
    import optuna

    cfg = make_cfg(tmp_path / "nsga", lenet_checkpoint, tiny_fmnist_shared, sampler="nsga2", energy_objective=True,
                   episodes=6)  # fmt: skip
    run_search(cfg, make_console(), progress=False)
    study = optuna.load_study(study_name=cfg.name, storage=f"sqlite:///{Path(cfg.out).resolve() / 'study.db'}")
    assert study.metric_names == ["accuracy", "latency_ms", "stored_bytes", "energy_mj"]
    trial = study.best_trials[0]
    assert trial.values[3] == trial.user_attrs["record"]["energy_mj"]
    front = json.loads((Path(cfg.out) / "pareto.json").read_text())
    assert front and all(r["energy_mj"] > 0 for r in front)
    cfg = make_cfg(tmp_path / "nsga-pi", lenet_checkpoint, tiny_fmnist_shared, sampler="nsga2", energy_objective=True)
    cfg.device = "raspberry-pi-4"
    with pytest.raises(ConfigError, match=r"search.energy_objective needs a device with an energy model, and "
                                          r"'raspberry-pi-4' has none"):  # fmt: skip
        run_search(cfg, make_console(), progress=False)
