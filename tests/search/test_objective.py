from __future__ import annotations

import pytest
import torch

from edgecompress import Policy
from edgecompress.compressors import compress
from edgecompress.latency_models import LatencyTable, estimate_latency, load_device
from edgecompress.latency_models.estimate import layer_precision
from edgecompress.search.objective import Objective
from edgecompress.training import evaluate, recalibrate_batchnorm


@pytest.fixture(scope="module")
def setup(tiny_fmnist_shared, train_tiny):
    return train_tiny(tiny_fmnist_shared, "resnet20", epochs=2)


def test_identity_policy_scores_the_base_model(setup) -> None:
    model, data = setup
    obj = Objective(model, data.val, "jetson-nano", input_shape=(1, 1, 28, 28))
    ev = obj(Policy.uniform(model))
    assert ev.accuracy == evaluate(model, data.val)["top1"]
    assert ev.latency_ms == pytest.approx(estimate_latency(model, (1, 1, 28, 28), "jetson-nano").total_ms)
    assert ev.latency_ms == pytest.approx(obj.base_latency_ms())
    assert ev.params == 270_618
    assert "predicted by device model jetson-nano" in ev.latency_source


def test_cache_and_timings(setup) -> None:
    model, data = setup
    obj = Objective(model, data.val, "jetson-nano", input_shape=(1, 1, 28, 28))
    policy = Policy.uniform(model, keep=0.5)
    first = obj(policy)
    again = obj(Policy.uniform(model, keep=0.5))
    assert again is first and obj.hits == 1
    # Where the time went: each phase timed once (the cache hit is not re-timed).
    assert set(obj.timings) == {"compress", "bn_recalibration", "finetune", "evaluate", "latency"}
    assert obj.timings["compress"] > 0 and obj.timings["evaluate"] > 0 and obj.timings["latency"] > 0
    assert obj.timings["bn_recalibration"] < 1e-3  # bn_batches=0: only the check itself is timed
    assert obj.timings["finetune"] < 1e-3  # finetune_batches=0
    assert sum(obj.timings.values()) <= first.seconds + 1e-6
    assert first.latency_ms > 1.0  # no ResNet-20 runs in 1 ms on a Jetson Nano by this model
    assert first.latency_ms < obj.base_latency_ms() and first.params < 270_618 / 3


def test_bn_recalibration_changes_statistics_and_helps_pruned_models(setup) -> None:
    model, data = setup
    plain = Objective(model, data.val, "raspberry-pi-4", input_shape=(1, 1, 28, 28), train_data=data.train)
    recal = Objective(
        model, data.val, "raspberry-pi-4", input_shape=(1, 1, 28, 28), train_data=data.train, bn_batches=4
    )
    policy = Policy.uniform(model, keep=0.5)
    assert recal(policy).accuracy >= plain(policy).accuracy
    bn = torch.nn.BatchNorm2d(3)
    recalibrate_batchnorm(torch.nn.Sequential(bn), [torch.full((4, 3, 2, 2), 2.0)])
    assert torch.allclose(bn.running_mean, torch.full((3,), 2.0)) and bn.momentum == 0.1 and not bn.training


def test_activation_quantization_is_calibrated(setup) -> None:
    model, data = setup
    obj = Objective(model, data.val, "raspberry-pi-4", input_shape=(1, 1, 28, 28))
    ev = obj(Policy.uniform(model, wbits=8, abits=8))
    assert 0.0 <= ev.accuracy <= 1.0 and ev.stored_bytes < 270_618 * 4 / 3


def test_layer_precision_covers_the_factors_of_a_layer() -> None:
    mapping = {"layers.0.conv1": "int8", "fc": "fp16"}
    assert layer_precision("layers.0.conv1", mapping) == "int8"
    assert layer_precision("layers.0.conv1.1", mapping) == "int8"  # second factor of a low-rank layer
    assert layer_precision("layers.0.conv10", mapping) == "fp32"  # a prefix of the name is not its parent
    assert layer_precision("fc", mapping) == "fp16" and layer_precision("", mapping) == "fp32"


def test_activation_bits_are_priced_where_the_device_measured_them(setup, tmp_path) -> None:
    model, data = setup
    host = load_device("host")
    assert isinstance(host, LatencyTable)
    int8 = {key.rsplit("|", 1)[0] + "|int8": {**e, "ms": e["ms"] / 2} for key, e in host.entries.items()}
    path = LatencyTable(host.meta, {**host.entries, **int8}).save(tmp_path / "with-int8.table.json")
    obj = Objective(model, data.val, str(path), input_shape=(1, 1, 28, 28), calibration_batches=1)
    assert obj.priced == {"fp32", "int8"}
    plain = Policy.uniform(model, keep=0.5)
    mixed = plain.with_layer("layers.0.conv1", abits=8, rank=0.5)
    ev_plain, ev_mixed = obj(plain.with_layer("layers.0.conv1", rank=0.5)), obj(mixed)
    compressed, _ = compress(
        model,
        mixed,
        obj.calibration,
        input_shape=(1, 1, 28, 28),
    )
    both_factors = estimate_latency(compressed, (1, 1, 28, 28), str(path), precision={"layers.0.conv1": "int8"})
    assert ev_mixed.latency_ms == pytest.approx(both_factors.total_ms)
    assert ev_mixed.latency_ms < ev_plain.latency_ms
    assert "priced at fp32" not in ev_mixed.latency_source
    # A device model prices one precision: the int8 layers are priced at fp32, and the source says so.
    pi = Objective(model, data.val, "raspberry-pi-4", input_shape=(1, 1, 28, 28), calibration_batches=1)
    ev = pi(mixed)
    assert ev.latency_ms == pytest.approx(pi(plain.with_layer("layers.0.conv1", rank=0.5)).latency_ms)
    assert "1 layers asking int8 activations priced at fp32: device 'raspberry-pi-4' prices only fp32" in (
        ev.latency_source
    )


def test_finetuning_before_scoring_recovers_accuracy_and_leaves_the_base_model_alone(setup) -> None:
    model, data = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kw = dict(input_shape=(1, 1, 28, 28), train_data=data.train, bn_batches=4)
    plain = Objective(model, data.val, "raspberry-pi-4", **kw)
    tuned = Objective(model, data.val, "raspberry-pi-4", finetune_batches=30, **kw)
    policy = Policy.uniform(model, keep=0.3)
    ev_plain, ev_tuned = plain(policy), tuned(policy)
    assert ev_tuned.accuracy > ev_plain.accuracy + 0.05
    assert ev_tuned.latency_ms == ev_plain.latency_ms and tuned.timings["finetune"] > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the teacher is not trained
    again = Objective(model, data.val, "raspberry-pi-4", finetune_batches=30, **kw)(policy)
    assert again.accuracy == ev_tuned.accuracy  # same seeded batches: the score is a function of the policy
    with pytest.raises(ValueError, match="finetune_batches needs train_data"):
        Objective(model, data.val, "raspberry-pi-4", input_shape=(1, 1, 28, 28), finetune_batches=1)


def test_measured_latency_is_the_base_prediction_times_the_ratio_timed_in_the_same_rounds(setup, monkeypatch) -> None:
    model, data = setup
    obj = Objective(model, data.val, "host", input_shape=(1, 1, 28, 28), latency="measured", latency_rounds=3)
    seen = []

    def fake(models, feeds, threads, rounds, warmup, repeats, progress=None):
        seen.append((sorted(models), rounds, threads))
        return {"base": [1.0, 2.0, 1.0], "policy": [0.5, 0.8, 0.3]}  # per-round ratios 0.5, 0.4, 0.3

    monkeypatch.setattr("edgecompress.search.objective.time_onnx_interleaved", fake)
    policy = Policy.uniform(model, keep=0.5)
    ev = obj(policy)
    assert seen == [(["base", "policy"], 3, load_device("host").meta["threads"])]
    assert ev.latency_ms == pytest.approx(obj.base_latency_ms() * 0.4)
    assert ev.latency_source.startswith("measured on this machine: ONNX Runtime") and "(0.400)" in ev.latency_source
    base_onnx = obj._base_onnx
    obj(Policy.uniform(model, keep=0.75))
    assert obj._base_onnx is base_onnx and len(seen) == 2  # the base model is exported once
    with pytest.raises(ValueError, match="the device must be 'host' or 'host-Nthread' \\(got 'raspberry-pi-4'\\)"):
        Objective(model, data.val, "raspberry-pi-4", input_shape=(1, 1, 28, 28), latency="measured")
    with pytest.raises(ValueError, match="latency 'guess' is not one of: table, measured"):
        Objective(model, data.val, "host", input_shape=(1, 1, 28, 28), latency="guess")


def test_measured_latency_times_real_models(setup) -> None:
    model, data = setup
    obj = Objective(model, data.val, "host", input_shape=(1, 1, 28, 28), latency="measured", latency_rounds=1)
    ev = obj(Policy.uniform(model, keep=0.25))
    assert 0 < ev.latency_ms and "rounds of the ratio to the base model" in ev.latency_source
