from __future__ import annotations

import pytest
import torch

from edgecompress import Policy
from edgecompress.compressors import compress
from edgecompress.latency_models import LatencyTable, estimate_latency, load_device
from edgecompress.latency_models.estimate import layer_precision
from edgecompress.objective import Objective, recalibrate_batchnorm
from edgecompress.training import evaluate


@pytest.fixture(scope="module")
def setup(tiny_fmnist_shared, train_tiny):
    return train_tiny(tiny_fmnist_shared, "resnet20", epochs=2)


def test_identity_policy_scores_the_base_model(setup) -> None:
    model, data = setup
    obj = Objective(model, data.val, "jetson-nano", input_shape=(1, 1, 28, 28), budget_ms=100.0)
    ev = obj(Policy.uniform(model))
    assert ev.accuracy == evaluate(model, data.val)["top1"]
    assert ev.latency_ms == pytest.approx(estimate_latency(model, (1, 1, 28, 28), "jetson-nano").total_ms)
    assert ev.latency_ms == pytest.approx(obj.base_latency_ms())
    assert ev.feasible and ev.params == 270_618
    assert "predicted by device model jetson-nano" in ev.latency_source


def test_cache_and_feasibility(setup) -> None:
    model, data = setup
    obj = Objective(model, data.val, "jetson-nano", input_shape=(1, 1, 28, 28), budget_ms=1.0)
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
    assert not first.feasible  # no ResNet-20 runs in 1 ms on a Jetson Nano by this model
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
    compressed, _ = compress(model, mixed, obj.calibration, input_shape=(1, 1, 28, 28), round_to=obj.round_to)
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

    monkeypatch.setattr("edgecompress.latency_models.profiler.time_onnx_interleaved", fake)
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


def test_fill_widens_into_the_unused_budget_and_no_further(setup) -> None:
    from edgecompress.compressors.structured import kept_channels

    model, data = setup
    shape = (1, 1, 28, 28)
    lean = Policy.uniform(model, keep=0.25)
    obj = Objective(model, data.val, "raspberry-pi-4", input_shape=shape, round_to=8)
    base_ms, lean_ms = obj.base_latency_ms(), obj.predict_ms(lean)
    budget = lean_ms + 0.5 * (base_ms - lean_ms)
    wide, steps = obj.fill(lean, budget)
    assert steps > 0 and obj.predict_ms(wide) <= budget
    assert obj.predict_ms(wide) > lean_ms + 0.25 * (base_ms - lean_ms)  # it used the budget
    compressed, _ = compress(model, wide, input_shape=shape, round_to=8)
    assert estimate_latency(compressed, shape, "raspberry-pi-4").total_ms == pytest.approx(obj.predict_ms(wide))
    groups = {s.group: s for s in obj.analysis.layers if s.prunable}
    grown = 0
    for g, spec in groups.items():
        keep = wide.get(spec.name).keep
        assert keep >= lean.get(spec.name).keep
        assert all(wide.get(s.name).keep == keep for s in obj.analysis.layers if s.group == g)  # coupled alike
        n = kept_channels(spec.out_channels, keep, 8)
        grown += n > kept_channels(spec.out_channels, 0.25, 8)
        if n < spec.out_channels:  # maximal: one more step on any group breaks the budget
            more = {s.name: s.group for s in obj.analysis.layers}
            layers = {
                name: (lp if more.get(name) != g else type(lp)(keep=min(1.0, (n + 8) / spec.out_channels)))
                for name, lp in wide.layers.items()
            }
            assert obj.predict_ms(Policy(layers, base=wide.base)) > budget
    assert grown >= 2
    # Over budget already, or nothing pruned: unchanged, no steps.
    assert obj.fill(lean, lean_ms * 0.9) == (lean, 0)
    assert obj.fill(Policy.uniform(model), base_ms) == (Policy.uniform(model), 0)
    with pytest.raises(ValueError, match="fill needs a latency budget"):
        obj.fill(lean)
    with pytest.raises(ValueError, match="fill_budget widens policies by their predicted latency"):
        Objective(model, data.val, "host", input_shape=shape, latency="measured", fill_budget=True)
    filling = Objective(model, data.val, "raspberry-pi-4", input_shape=shape, budget_ms=budget, fill_budget=True)
    ev = filling.score(lean)
    assert ev.policy == wide.to_dict()["layers"] and ev.latency_ms == pytest.approx(obj.predict_ms(wide))


def test_fill_takes_whole_simd_blocks_on_a_blocked_table(setup) -> None:
    from edgecompress.compressors.structured import kept_channels

    model, data = setup
    shape = (1, 1, 28, 28)
    assert load_device("host-1thread").channel_block == 16
    obj = Objective(model, data.val, "host-1thread", input_shape=shape, round_to=8)
    lean = Policy.uniform(model, keep=0.2)
    budget = 0.5 * obj.base_latency_ms()
    wide, steps = obj.fill(lean, budget)
    assert steps > 0 and obj.predict_ms(lean) < obj.predict_ms(wide) <= budget
    # Maximal for both kinds of step: neither round_to more channels nor the rest of the block fits.
    for spec in obj.analysis.layers:
        if not spec.prunable or spec.name not in wide.layers:
            continue
        c = spec.out_channels
        n = kept_channels(c, wide.get(spec.name).keep, 8)
        for wider in {min(c, n + 8), min(c, -(-(n + 1) // 16) * 16)} - {n}:
            keep = 1.0 if wider >= c else wider / c
            layers = {
                name: (lp if s.group != spec.group else type(lp)(keep=keep))
                for s in obj.analysis.layers
                for name, lp in wide.layers.items()
                if name == s.name
            }
            assert obj.predict_ms(Policy(layers, base=wide.base)) > budget, (spec.name, n, wider)


def test_fill_widens_before_it_brings_back_a_removed_block(setup) -> None:
    from edgecompress.compressors import LayerPolicy

    model, data = setup
    shape = (1, 1, 28, 28)
    obj = Objective(model, data.val, "raspberry-pi-4", input_shape=shape, round_to=8)
    blocks = obj.analysis.blocks()
    gone = blocks["layers.4"]
    removed = {n: LayerPolicy(drop=True) for n in gone}
    # Pruned elsewhere and a tight budget: the widening takes the budget, the block stays removed.
    lean = Policy({**Policy.uniform(model, keep=0.25).layers, **removed}, base={"input_shape": list(shape)})
    budget = obj.predict_ms(lean) + 0.02 * obj.base_latency_ms()
    wide, steps = obj.fill(lean, budget)
    assert steps > 0 and obj.predict_ms(lean) < obj.predict_ms(wide) <= budget
    assert all(wide.get(n) == LayerPolicy(drop=True) for n in gone)
    assert sum(lp.keep for lp in wide.layers.values()) > sum(lp.keep for lp in lean.layers.values())
    # Nothing left to widen: the block comes back whole if the budget holds it, else stays out.
    full = Policy(removed, base={"input_shape": list(shape)})
    full_ms = obj.predict_ms(full)
    assert obj.fill(full, full_ms) == (full, 0)
    assert obj.fill(full, obj.base_latency_ms()) == (Policy({n: LayerPolicy() for n in gone}, base=full.base), 1)
    # Its layer coupled to a pruned kept group takes that group's keep; its own channels stay whole.
    half = Policy({**Policy.uniform(model, keep=0.5).layers, **removed}, base=full.base)
    back = obj._restore(half, obj.base_latency_ms())
    assert back is not None
    outside = {s.group for s in obj.analysis.layers if s.name not in gone}
    inner = [n for n in gone if obj.analysis.layer(n).group not in outside]
    assert inner and all(back.get(n).keep == 1.0 for n in inner)
    assert all(back.get(n).keep == 0.5 for n in gone if n not in inner)
    # Two blocks removed: the cheaper one comes back, the other stays removed.
    drop7 = {n: LayerPolicy(drop=True) for n in blocks["layers.7"]}
    two = Policy({**removed, **drop7}, base=full.base)
    one_back = obj._restore(two, obj.base_latency_ms())
    assert one_back is not None
    back_blocks = [b for b in ("layers.4", "layers.7") if not one_back.get(blocks[b][0]).drop]
    assert len(back_blocks) == 1
    other = "layers.7" if back_blocks == ["layers.4"] else "layers.4"
    only_other = Policy({n: LayerPolicy(drop=True) for n in blocks[other]}, base=full.base)
    alt = obj._restore(only_other, obj.base_latency_ms())
    assert alt is not None
    alt = Policy({**alt.layers, **{n: LayerPolicy(drop=True) for n in blocks[back_blocks[0]]}}, base=full.base)
    assert obj.predict_ms(one_back) <= obj.predict_ms(alt)
