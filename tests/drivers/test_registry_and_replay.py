"""Every driver, one search core: the registry, and a found policy replays to the model the search scored.

For ddpg, optuna, ray and random: ``best_policy.json`` -> ``compress(base, policy)`` with no other argument
-> exactly the latency and stored size the search recorded, and exactly the state_dict of replay's model
before fine-tuning.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgecompress._progress import make_console
from edgecompress.artifacts.checkpoint import load_checkpoint
from edgecompress.artifacts.compressed import load_compressed
from edgecompress.compressors import Policy, compress
from edgecompress.config import load_config
from edgecompress.drivers import DRIVERS, get_driver
from edgecompress.errors import ConfigError
from edgecompress.search.objective import policy_latency
from edgecompress.workflows.replay import replay
from edgecompress.workflows.search import run_search


def test_registry_knows_four_drivers_and_suggests() -> None:
    assert list(DRIVERS) == ["ddpg", "optuna", "ray", "random"]
    with pytest.raises(ConfigError, match="unknown search driver 'optna'. Did you mean 'optuna'\\? Known: ddpg"):
        get_driver("optna")
    assert callable(get_driver("random"))


@pytest.mark.parametrize("agent", ["ddpg", "optuna", "ray", "random"])
def test_best_policy_replays_exactly(
    agent: str, tmp_path: Path, lenet_checkpoint: Path, tiny_fmnist_shared: Path
) -> None:
    if agent == "ray":
        ray = pytest.importorskip("ray")
    cfg = load_config(None, {
        "out": str(tmp_path / agent), "name": agent, "model.checkpoint": str(lenet_checkpoint),
        "data.data_dir": str(tiny_fmnist_shared), "data.val_size": 60, "data.val_samples": 60,
        "search.agent": agent, "search.episodes": 4, "search.warmup_episodes": 2, "search.workers": 2,
        "search.budget_ratio": 0.9, "search.techniques": ["keep", "abits"],
        "search.finetune_batches": 0,  # scored unfine-tuned: the replay is what is tested
    })  # fmt: skip
    try:
        run_search(cfg, make_console(), progress=False)
    finally:
        if agent == "ray":
            ray.shutdown()
    best = Path(cfg.out) / "best_policy.json"
    policy = Policy.load(best)
    assert policy.round_to == cfg.search.round_to == 8 and policy.applied
    base, spec = load_checkpoint(lenet_checkpoint)
    model, report = compress(base, policy)  # nothing but the policy
    latency, _ = policy_latency(model, policy, spec.input_shape, cfg.device)
    assert latency.total_ms == policy.meta["scores"]["latency_ms"]
    assert report.totals["stored_bytes_after"] == policy.meta["scores"]["stored_bytes"]
    replay(best, tmp_path / "replay", finetune_epochs=0, bn_batches=0, measure=False, devices=[cfg.device],
           data_dir=str(tiny_fmnist_shared), val_size=60, progress=False)  # fmt: skip
    replayed, *_ = load_compressed(tmp_path / "replay")
    ours, theirs = model.state_dict(), replayed.state_dict()
    assert list(ours) == list(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
