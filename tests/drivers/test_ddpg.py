from __future__ import annotations

import json

import pytest

from edgecompress._progress import make_console
from edgecompress.compressors import Policy, compress
from edgecompress.config import load_config
from edgecompress.latency_models import estimate_latency
from edgecompress.workflows.search import run_search
from edgecompress.workflows.train import train_base_model


@pytest.fixture
def cfg(tmp_path, tiny_fmnist_shared):
    config = load_config(None, {
        "out": str(tmp_path / "run"), "model.checkpoint": str(tmp_path / "lenet.pt"),
        "data.data_dir": str(tiny_fmnist_shared), "data.val_size": 60, "data.val_samples": 60,
        "train.epochs": 3, "train.batch_size": 32, "search.episodes": 20, "search.budget_ratio": 0.8,
        "search.warmup_episodes": 5, "search.finetune_batches": 0,  # scored unfine-tuned: driver mechanics only
    })  # fmt: skip
    from edgecompress.data import load_dataset

    bundle = load_dataset("fashion-mnist", tiny_fmnist_shared, val_size=60)
    train_base_model(config, config.model.checkpoint, bundle=bundle, progress=False)
    return config


def test_twenty_episode_search_writes_a_policy_within_budget(cfg) -> None:
    result = run_search(cfg, make_console(), progress=False)
    run = cfg.out
    records = [json.loads(line) for line in open(f"{run}/episodes.jsonl")]
    assert [r["episode"] for r in records] == list(range(1, 21)) and all(r["filled"] == 0 for r in records)
    policy = Policy.load(f"{run}/best_policy.json")
    assert policy.base["model"] == "lenet5" and policy.meta["agent"].startswith("ddpg")
    assert policy.meta["scores"]["accuracy"] == result["best"]["accuracy"]
    from edgecompress.artifacts.checkpoint import load_checkpoint

    base, _ = load_checkpoint(cfg.model.checkpoint)
    model, _ = compress(base, policy)
    assert estimate_latency(model, (1, 1, 28, 28), cfg.device).total_ms <= result["budget_ms"] + 1e-9
    assert len(json.load(open(f"{run}/topk.json"))) == 5


def test_resume_continues_the_episode_count(cfg) -> None:
    class Stop(Exception):
        pass

    original = run_search
    cfg.search.episodes = 8
    calls = {"n": 0}
    from edgecompress.agents import amc

    real_store = amc.AMCDDPG._store_transition

    def crashing_store(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        real_store(self, *args, **kwargs)
        if self.episodes_done == 3 and not calls["n"]:
            calls["n"] = 1
            raise Stop

    amc.AMCDDPG._store_transition = crashing_store  # type: ignore[method-assign]
    try:
        with pytest.raises(Stop):
            original(cfg, make_console(), progress=False)
    finally:
        amc.AMCDDPG._store_transition = real_store  # type: ignore[method-assign]
    assert len(open(f"{cfg.out}/episodes.jsonl").read().splitlines()) == 3
    result = original(cfg, make_console(), progress=False)
    records = [json.loads(line) for line in open(f"{cfg.out}/episodes.jsonl")]
    assert result["episodes"] == 8 and [r["episode"] for r in records] == list(range(1, 9))


def test_filled_search_logs_the_widened_policies(cfg) -> None:
    cfg.search.episodes, cfg.search.warmup_episodes, cfg.search.fill_budget = 4, 4, True
    result = run_search(cfg, make_console(), progress=False)
    records = [json.loads(line) for line in open(f"{cfg.out}/episodes.jsonl")]
    assert len(records) == 4 and any(r["filled"] > 0 for r in records)
    assert all(r["latency_ms"] <= r["budget_ms"] + 1e-9 for r in records)
    assert result["best"]["latency_ms"] <= result["budget_ms"] + 1e-9


def test_more_episodes_resume_the_agent_with_the_default_warmup(cfg, capsys) -> None:  # type: ignore[no-untyped-def]
    """The default warm-up follows --episodes; asking more episodes on the same folder resumes the saved agent
    (it was discarded as 'damaged' before), and no TensorBoard writer thread outlives a search."""
    import threading

    from edgecompress.agents.amc import AMCDDPG

    cfg.search.warmup_episodes = None
    cfg.search.episodes = 6  # warm-up 2
    run_search(cfg, make_console(), progress=False)
    assert AMCDDPG.saved_shape(f"{cfg.out}/agent_state.npz")["warmup_episodes"] == 2
    cfg.search.episodes = 9  # would be warm-up 3
    result = run_search(cfg, make_console(), progress=False)
    out = " ".join(capsys.readouterr().out.split())
    assert result["episodes"] == 9 and "resuming" in out and "cannot resume" not in out
    assert AMCDDPG.saved_shape(f"{cfg.out}/agent_state.npz")["warmup_episodes"] == 2
    assert not [t.name for t in threading.enumerate() if "AsyncWriter" in type(t).__name__ + t.name]
    assert AMCDDPG.saved_shape(f"{cfg.out}/episodes.jsonl") == {}  # not a state: nothing, load_state says why
