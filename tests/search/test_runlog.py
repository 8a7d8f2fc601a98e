"""The run folder's log: one line per scored policy, the best policy file, plots drawn without pyplot."""

from __future__ import annotations

import json

import matplotlib

from edgecompress.compressors import Policy
from edgecompress.search.runlog import RunLog


def _record(acc: float, ms: float, within: bool) -> dict:  # type: ignore[type-arg]
    policy = Policy({}, base={"input_shape": [1, 1, 28, 28]}, round_to=8)
    return {"policy": policy.to_dict(), "accuracy": acc, "latency_ms": ms, "stored_bytes": 10, "reward": acc,
            "within_budget": within}  # fmt: skip


def test_best_within_budget_plot_and_the_callers_backend(tmp_path) -> None:  # type: ignore[no-untyped-def]
    backend = matplotlib.get_backend()
    log = RunLog(tmp_path, base={"model": "lenet5"}, provenance={"agent": "test"})
    log.record(_record(0.9, 2.0, False))
    log.record(_record(0.8, 1.0, True))
    best = Policy.load(tmp_path / "best_policy.json")
    assert best.meta["scores"]["accuracy"] == 0.8 and best.base == {"input_shape": [1, 1, 28, 28], "model": "lenet5"}
    assert best.round_to == 8 and best.meta["agent"] == "test"
    assert [json.loads(x)["episode"] for x in (tmp_path / "episodes.jsonl").read_text().splitlines()] == [1, 2]
    assert log.plot().stat().st_size > 5_000
    assert matplotlib.get_backend() == backend  # no global backend switch
    assert len(RunLog(tmp_path, base={}, provenance={}).records) == 2  # a re-opened log resumes


def test_records_an_older_version_wrote_keep_the_searchs_rounding(tmp_path) -> None:  # type: ignore[no-untyped-def]
    old = {"format": "edgecompress.policy", "version": 1, "base": {"input_shape": [1, 1, 28, 28]},
           "layers": {"conv1": {"keep": 0.5}}, "meta": {}}  # fmt: skip
    (tmp_path / "episodes.jsonl").write_text(json.dumps({"episode": 1, "policy": old, "accuracy": 0.7,
        "latency_ms": 1.0, "stored_bytes": 1, "reward": 0.7, "within_budget": True}) + "\n")  # fmt: skip
    log = RunLog(tmp_path, base={"model": "lenet5"}, provenance={}, round_to=8)
    log.record(_record(0.6, 0.9, True))  # rewrites best_policy.json: the old record is still the best
    assert Policy.load(tmp_path / "best_policy.json").round_to == 8
