from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from edgecompress.errors import EdgeCompressError
from edgecompress.latency_models import estimate_latency, list_devices, load_device
from edgecompress.latency_models.device_model import (
    DeviceModel,
    _design,
    cross_validate_folding,
    fit_device_model,
    metrics,
    nb201_features,
    select_fusions,
    select_merges,
)
from edgecompress.latency_models.devices import validate
from edgecompress.latency_models.host import passes_since_fit
from edgecompress.models import create_model

ARCHS = [
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
    "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|",
    "|nor_conv_1x1~0|+|skip_connect~0|nor_conv_1x1~1|+|nor_conv_3x3~0|none~1|avg_pool_3x3~2|",
    "|nor_conv_3x3~0|+|nor_conv_1x1~0|nor_conv_3x3~1|+|avg_pool_3x3~0|nor_conv_3x3~1|nor_conv_1x1~2|",
    "|skip_connect~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|nor_conv_3x3~0|skip_connect~1|avg_pool_3x3~2|",
    "|nor_conv_1x1~0|+|nor_conv_1x1~0|nor_conv_1x1~1|+|nor_conv_1x1~0|nor_conv_1x1~1|nor_conv_1x1~2|",
    "|avg_pool_3x3~0|+|avg_pool_3x3~0|avg_pool_3x3~1|+|avg_pool_3x3~0|avg_pool_3x3~1|avg_pool_3x3~2|",
    "|nor_conv_3x3~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|nor_conv_3x3~2|",
]


def _synthetic_rows(truth: DeviceModel, split: str = "calibration") -> list[dict[str, str]]:
    return [
        {"arch_str": a, "split": split, "hwnb_raspi4_cifar10_ms": str(truth.predict_features(nb201_features(a)))}
        for a in ARCHS
    ]


def test_fit_reproduces_known_latencies() -> None:
    truth = DeviceModel(
        "t", "t", "fp32", intercept_ms=1.5,
        coefficients={"conv_k3.mbytes": 2.0, "conv_k1.count": 0.3, "pool.mbytes": 1.0, "add.count": 0.05},
        source="synthetic",
    )  # fmt: skip
    rows = _synthetic_rows(truth)
    fitted = fit_device_model("raspberry-pi-4", rows)
    for a in ARCHS:
        assert fitted.predict_features(nb201_features(a)) == pytest.approx(
            truth.predict_features(nb201_features(a)), rel=1e-6
        )
    assert fitted.fitted_on.startswith("8 calibration rows")


@pytest.mark.parametrize("folding", ["all", "output", "none"])
def test_cross_validation_recovers_how_the_networks_were_deployed(folding: str) -> None:
    """Latencies made by a known model under one deployment assumption: the CV picks that assumption."""
    import random

    from edgecompress.latency_models.nb201 import OPS

    rng = random.Random(0)
    truth = DeviceModel(
        "t", "t", "fp32", 0.5, {"conv_k3.mmacs": 0.05, "conv_k1.count": 0.3, "pool.count": 0.2, "add.count": 0.1},
        "synthetic",
    )  # fmt: skip
    rows = []
    for i in range(120):
        ops = [rng.choice(OPS) for _ in range(6)]
        if i % 6 == 0:  # a network whose output is disconnected: what tells ``output`` from ``none``
            ops[3:] = ["none"] * 3
        arch = f"|{ops[0]}~0|+|{ops[1]}~0|{ops[2]}~1|+|{ops[3]}~0|{ops[4]}~1|{ops[5]}~2|"
        ms = truth.predict_features(nb201_features(arch, folding))
        rows.append({"arch_index": str(i), "arch_str": arch, "split": "calibration", "hwnb_raspi4_cifar10_ms": str(ms)})
    chosen = cross_validate_folding("raspberry-pi-4", rows)
    assert chosen["folding"] == folding
    assert chosen["cv_spearman"][folding] == pytest.approx(1.0, abs=5e-3)
    assert all(
        score < chosen["cv_spearman"][folding] for other, score in chosen["cv_spearman"].items() if other != folding
    )


def _random_rows(
    truth: DeviceModel,
    n: int = 150,
    folding: str = "all",
    merges: tuple[str, ...] = (),
    fusions: tuple[str, ...] = (),
) -> list[dict[str, str]]:
    import random

    from edgecompress.latency_models.nb201 import OPS

    rng = random.Random(1)
    rows = []
    for i in range(n):
        ops = [rng.choice(OPS[1:]) for _ in range(6)]
        arch = f"|{ops[0]}~0|+|{ops[1]}~0|{ops[2]}~1|+|{ops[3]}~0|{ops[4]}~1|{ops[5]}~2|"
        ms = truth.predict_features(nb201_features(arch, folding, merges, fusions))
        rows.append({"arch_index": str(i), "arch_str": arch, "split": "calibration",
                     "brpnas_jetson_nano_fp16_ms": str(ms)})  # fmt: skip
    return rows


def test_merge_groups_are_recovered_and_chosen_by_cross_validation() -> None:
    """Latencies made with merged operators priced apart (cheaper than their kind): the cross-validation picks
    the merge groups and the fit reproduces the latencies with non-negative costs; latencies made without them
    pick none; holdout rows change nothing."""
    base = {"conv_k3.mmacs": 0.05, "conv_k1.count": 0.3, "pool.count": 0.2, "add.count": 0.1}
    merges = ("merge_conv", "merge_pool")
    truth = DeviceModel("t", "t", "fp16", 0.5, {**base, "merge_conv.count": 0.02, "merge_pool.count": 0.01}, "s")
    rows = _random_rows(truth, merges=merges)
    chosen = select_merges("jetson-nano-fp16", rows, "all")
    assert chosen["merges"] == ["merge_conv", "merge_pool"]
    fitted = fit_device_model("jetson-nano-fp16", rows, "all", merges=chosen["merges"])
    assert fitted.merges == merges and min(fitted.coefficients.values()) >= 0
    for r in rows[:10]:
        measured = float(r["brpnas_jetson_nano_fp16_ms"])
        assert fitted.predict_features(nb201_features(r["arch_str"], "all", merges)) == pytest.approx(measured)
    poisoned = rows + [{**r, "split": "holdout", "brpnas_jetson_nano_fp16_ms": "9999"} for r in rows]
    assert select_merges("jetson-nano-fp16", poisoned, "all")["scores"] == chosen["scores"]
    assert fit_device_model("jetson-nano-fp16", poisoned, "all", merges=merges).coefficients == fitted.coefficients
    plain = _random_rows(DeviceModel("t", "t", "fp16", 0.5, base, "synthetic"))
    assert select_merges("jetson-nano-fp16", plain, "all")["merges"] == []
    with pytest.raises(EdgeCompressError, match="unknown merge group.* merge_rows; valid: merge_conv, merge_pool"):
        fit_device_model("jetson-nano-fp16", rows, "all", merges=["merge_rows"])


def test_fusions_are_recovered_and_chosen_by_cross_validation() -> None:
    """Latencies made with standalone activations priced as adds and fused adds cheaper than adds: the
    cross-validation picks both fusions and the fit reproduces the latencies; latencies made without them pick
    none; holdout rows change nothing."""
    base = {"conv_k3.mmacs": 0.05, "conv_k1.count": 0.3, "pool.count": 0.2, "add.count": 0.1, "add.mbytes": 0.4}
    fusions = ("act", "fuse_add")
    truth = DeviceModel("t", "t", "fp16", 0.5, {**base, "fuse_add.count": 0.01}, "s", fusions=list(fusions))
    rows = _random_rows(truth, folding="output", fusions=fusions)
    chosen = select_fusions("jetson-nano-fp16", rows, "output", ())
    assert chosen["fusions"] == ["act", "fuse_add"]
    fitted = fit_device_model("jetson-nano-fp16", rows, "output", fusions=chosen["fusions"])
    assert fitted.fusions == ["act", "fuse_add"] and min(fitted.coefficients.values()) >= 0
    for r in rows[:10]:
        measured = float(r["brpnas_jetson_nano_fp16_ms"])
        assert fitted.predict_features(nb201_features(r["arch_str"], "output", (), fusions)) == pytest.approx(measured)
    poisoned = rows + [{**r, "split": "holdout", "brpnas_jetson_nano_fp16_ms": "9999"} for r in rows]
    assert select_fusions("jetson-nano-fp16", poisoned, "output", ())["scores"] == chosen["scores"]
    assert fit_device_model("jetson-nano-fp16", poisoned, "output", fusions=fusions).coefficients == (
        fitted.coefficients
    )
    plain = _random_rows(DeviceModel("t", "t", "fp16", 0.5, base, "synthetic"), folding="output")
    assert select_fusions("jetson-nano-fp16", plain, "output", ())["fusions"] == []
    with pytest.raises(EdgeCompressError, match="unknown fusion.* relu; valid: act, fuse_add"):
        fit_device_model("jetson-nano-fp16", rows, "output", fusions=["relu"])


def test_standalone_activations_and_fused_adds_are_priced_where_the_profile_has_them() -> None:
    from edgecompress.latency_models.ops import OpRecord

    c = {"conv_k3.count": 0.3, "add.count": 0.1, "add.mbytes": 0.5, "fuse_add.count": 0.02, "fuse_add.mbytes": 0.0}
    m = DeviceModel("t", "t", "fp32", 0.0, c, "synthetic", fusions=["act", "fuse_add"])
    conv = OpRecord("conv_k3", 1000, 100, (1, 8, 4, 4), kernel=3, acts=2, act_bytes=2_000_000)
    add = OpRecord("add", 0, 3_000_000, (1, 8, 4, 4), fused="conv")
    assert m.op_ms(conv) == pytest.approx(0.3 + 2 * (0.1 + 0.5 * 1.0))  # two activations of 1 MB each
    assert m.op_ms(add) == pytest.approx(0.02)
    plain = replace(m, fusions=[])
    assert plain.op_ms(conv) == pytest.approx(0.3) and plain.op_ms(add) == pytest.approx(0.1 + 0.5 * 3.0)


def test_a_merged_operator_is_priced_by_its_merge_group_where_the_profile_has_one() -> None:
    from edgecompress.latency_models.ops import OpRecord

    c = {"conv_k3.count": 0.3, "merge_conv.count": 0.05, "merge_conv.mmacs": 0.0, "merge_conv.mbytes": 0.0}
    m = DeviceModel("t", "t", "fp16", 0.0, c, "synthetic")
    conv = OpRecord("conv_k3", 1000, 100, (1, 8, 4, 4), kernel=3)
    assert m.merges == ("merge_conv",)
    assert m.op_ms(conv) == pytest.approx(0.3)
    assert m.op_ms(replace(conv, merged="conv")) == pytest.approx(0.05)
    plain = DeviceModel("t", "t", "fp16", 0.0, {"conv_k3.count": 0.3}, "s")
    assert plain.merges == () and plain.op_ms(replace(conv, merged="conv")) == pytest.approx(0.3)


def test_estimates_name_the_operators_a_merge_group_priced() -> None:
    import torch.nn as nn

    class Siblings(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):  # type: ignore[no-untyped-def]
            return self.a(x) + self.b(x)

    report = estimate_latency(Siblings(), (1, 8, 16, 16), "jetson-nano-fp16")
    sources = {r.layer: r.source for r in report.rows}
    assert "merged" not in sources["a"]
    assert sources["b"].endswith("(merged with an earlier operator on the same input: priced as merge_conv)")
    c = load_device("jetson-nano-fp16").coefficients
    mb = 4 * (8 * 16 * 16 * 2 + 8 * 8 * 9) / 1e6  # input + output + weights, fp32
    mmacs = 8 * 16 * 16 * 8 * 9 / 1e6
    expected = c["merge_conv.count"] + c["merge_conv.mmacs"] * mmacs + c["merge_conv.mbytes"] * mb
    assert {r.layer: r.ms for r in report.rows}["b"] == pytest.approx(expected)


def test_fit_never_reads_holdout_rows() -> None:
    truth = DeviceModel("t", "t", "fp32", 1.0, {"conv_k3.count": 0.2, "pool.count": 0.1}, "synthetic")
    rows = _synthetic_rows(truth)
    poisoned = rows + [{**r, "split": "holdout", "hwnb_raspi4_cifar10_ms": "9999"} for r in rows]
    assert (
        fit_device_model("raspberry-pi-4", poisoned).coefficients
        == fit_device_model("raspberry-pi-4", rows).coefficients
    )
    with pytest.raises(EdgeCompressError, match="no calibration rows"):
        fit_device_model("raspberry-pi-4", [{**r, "split": "holdout"} for r in rows])


def test_validate_reads_only_holdout_rows() -> None:
    truth = DeviceModel("t", "t", "fp32", 1.0, {"conv_k3.count": 0.2, "pool.count": 0.1}, "synthetic")
    hold = _synthetic_rows(truth, "holdout")
    report = validate(truth, hold + [{**r, "split": "calibration", "hwnb_raspi4_cifar10_ms": "9999"} for r in hold],
                      "hwnb_raspi4_cifar10_ms")  # fmt: skip
    assert report["n"] == len(ARCHS) and report["mape_raw"] == pytest.approx(0.0, abs=1e-9)


def test_metrics_known_answer() -> None:
    meas = np.array([1.0, 2.0, 3.0, 4.0])
    m = metrics(2 * meas, meas)
    assert m["spearman"] == pytest.approx(1.0) and m["kendall"] == pytest.approx(1.0)
    assert m["mape_raw"] == pytest.approx(1.0) and m["mape_scaled"] == pytest.approx(0.0)
    assert m["best_scale"] == pytest.approx(0.5)
    rev = metrics(meas[::-1].copy(), meas)
    assert rev["spearman"] == pytest.approx(-1.0)


def test_shipped_profiles() -> None:
    assert list_devices() == [
        "host",
        "host-2thread",
        "jetson-nano",
        "jetson-nano-fp16",
        "jetson-tx2",
        "raspberry-pi-4",
        "raspberry-pi-5",
    ]
    host = load_device("host")  # the table that holds its validation here: 1 thread
    assert host.meta["threads"] == 1 and load_device("host-2thread").meta["threads"] == 2
    v = host.meta["validation"]
    assert v["n"] >= 32 and v["median_abs_error"] <= 0.10 and v["spearman"] >= 0.95
    passes = passes_since_fit(host)  # every validation pass since its fit is on record, not only the saved one
    assert {"fp32, rounded to 8", "int8, every layer", "int8, half the layers"} <= set(passes)
    assert all(len(records) >= 2 for records in passes.values())
    assert load_device("host-1thread").path == host.path  # the former name still loads it
    pi4 = load_device("raspberry-pi-4")
    assert pi4.validation["rows"] == "holdout (arch_index % 5 == 0)" and pi4.licence == "MIT"
    pi5 = load_device("raspberry-pi-5")
    assert pi5.coefficients == pi4.coefficients and pi5.scale == pytest.approx(0.4)
    assert "nothing fitted on Pi 5 data" in pi5.source
    with pytest.raises(EdgeCompressError, match="unknown device 'raspberry-pi4'. Did you mean 'raspberry-pi-4'?"):
        load_device("raspberry-pi4")


def test_shipped_profiles_match_a_refit(nb201_rows, tmp_path) -> None:
    """`latency calibrate` on the data reproduces the shipped coefficients exactly (deterministic NNLS)."""
    from edgecompress.latency_models import calibrate

    models = calibrate(None, tmp_path)
    for name, model in models.items():
        shipped = load_device(name)
        assert model.coefficients == pytest.approx(shipped.coefficients, rel=1e-6, abs=1e-9)
        assert model.validation.get("spearman") == pytest.approx(shipped.validation.get("spearman"))
    assert models["jetson-nano"].validation["spearman"] > models["jetson-nano"].validation["flops_spearman"]
    energy, shipped = models["jetson-tx2"].energy, load_device("jetson-tx2").energy
    assert energy["coefficients"] == pytest.approx(shipped["coefficients"], rel=1e-6, abs=1e-9)
    assert energy["validation"]["spearman"] == pytest.approx(shipped["validation"]["spearman"])
    assert energy["validation"]["spearman"] > energy["validation"]["flops_spearman"]


def test_energy_fit_never_reads_holdout_rows() -> None:
    from edgecompress.latency_models.device_model import fit_energy_model

    truth = {"conv_k3.mmacs": 0.1, "pool.mbytes": 1.5, "add.count": 0.3}
    rows = []
    for i, a in enumerate(ARCHS * 3):  # arch_index spreads the rows over the cross-validation folds
        feats = nb201_features(a, "none")
        mj = 0.7 + sum(truth.get(k, 0.0) * v for k, v in feats.items())
        rows.append({"arch_str": a, "arch_index": str(5 * i + 1), "split": "calibration",
                     "hwnb_edgegpu_tx2_cifar10_mJ": str(mj)})  # fmt: skip
    fitted = fit_energy_model("jetson-tx2", rows)
    poisoned = rows + [{**r, "split": "holdout", "hwnb_edgegpu_tx2_cifar10_mJ": "9999"} for r in rows]
    assert fit_energy_model("jetson-tx2", poisoned)["coefficients"] == fitted["coefficients"]
    assert fitted["intercept_mj"] == pytest.approx(0.7, rel=1e-3)
    for k, v in truth.items():
        assert fitted["coefficients"][k] == pytest.approx(v, rel=1e-3)


def test_energy_estimates_say_where_they_come_from() -> None:
    from edgecompress.latency_models.estimate import energy_devices, estimate_energy

    assert energy_devices() == ["jetson-tx2"]
    base = estimate_energy(create_model("resnet20"), (1, 1, 28, 28), "jetson-tx2")
    small = estimate_energy(create_model("resnet8"), (1, 1, 28, 28), "jetson-tx2")
    assert 0 < small.mj < base.mj
    assert base.source.startswith("predicted by the jetson-tx2 energy model (HW-NAS-Bench (ICLR 2021) Jetson TX2")
    assert "holdout networks: Spearman" in base.source and "extrapolated" in base.source
    assert base.validation["n"] > 2000
    with pytest.raises(EdgeCompressError, match="device 'raspberry-pi-4' has no energy model; .* for: jetson-tx2"):
        estimate_energy(create_model("lenet5"), (1, 1, 28, 28), "raspberry-pi-4")


def test_real_calibration_subset_is_stable(nb201_rows) -> None:
    subset = [r for r in nb201_rows if r["split"] == "calibration"][:500]
    model = fit_device_model("jetson-nano", subset)
    x, keys = _design([r for r in subset if r["brpnas_jetson_nano_fp32_ms"]])
    y = np.array([float(r["brpnas_jetson_nano_fp32_ms"]) for r in subset if r["brpnas_jetson_nano_fp32_ms"]])
    pred = np.array([model.predict_features(dict(zip(keys, xi[1:], strict=True))) for xi in x])
    assert float(np.mean(np.abs(pred - y) / y)) < 0.08


def test_estimate_latency_rows_and_sources() -> None:
    report = estimate_latency(create_model("resnet20"), (1, 1, 28, 28), "jetson-nano")
    assert report.total_ms == pytest.approx(report.overhead_ms + sum(r.ms for r in report.rows))
    assert {r.layer for r in report.rows} >= {"conv1", "fc", "(other)"}
    assert all(r.source.startswith("device model jetson-nano") for r in report.rows)
    assert "validated on" in report.source and report.validated["n"] > 1000
    mb = estimate_latency(create_model("mobilenetv2"), (1, 1, 28, 28), "jetson-nano")
    assert (
        mb.warnings[0] == "depthwise operators are extrapolated: no depthwise convolution in the calibration networks"
    )
    assert any("extrapolated" in r.source for r in mb.rows)
    # The Pi 4 prices depthwise convolutions on their own terms, fitted on FBNet's Pi 4 blocks: not extrapolated.
    pi = estimate_latency(create_model("mobilenetv2"), (1, 1, 28, 28), "raspberry-pi-4")
    assert pi.warnings == [] and not any("extrapolated" in r.source for r in pi.rows)


def test_compressed_model_is_predicted_faster() -> None:
    from edgecompress import Policy, compress

    model = create_model("resnet20")
    small, _ = compress(model, Policy.uniform(model, keep=0.5), input_shape=(1, 1, 28, 28))
    for device in list_devices():
        assert (
            estimate_latency(small, (1, 1, 28, 28), device).total_ms
            < estimate_latency(model, (1, 1, 28, 28), device).total_ms
        )


def test_a_cpu_table_is_refused_for_a_gpu_profile_unless_forced(tmp_path) -> None:
    from edgecompress.latency_models.ops import trace_ops
    from edgecompress.latency_models.table import LatencyTable, op_key

    model = create_model("lenet5")
    entries = {op_key(op): {"ms": 0.01} for op in trace_ops(model, (1, 1, 28, 28)) if op_key(op)}
    for runtime, refused in (("onnxruntime", True), ("onnxruntime-tensorrt", False)):
        meta = {"device": "jetson-nano", "runtime": runtime, "threads": 4, "overhead_ms": 0.0, "repeats": 5}
        path = tmp_path / f"{runtime}.json"
        LatencyTable(meta, entries).save(path)
        if refused:
            with pytest.raises(EdgeCompressError, match="measured with onnxruntime on the CPU, but jetson-nano prices"):
                estimate_latency(model, (1, 1, 28, 28), "jetson-nano", table=path)
            forced = estimate_latency(model, (1, 1, 28, 28), "jetson-nano", table=path, force=True)
            assert forced.total_ms > 0
        else:
            assert estimate_latency(model, (1, 1, 28, 28), "jetson-nano", table=path).total_ms > 0


def test_a_profile_written_before_the_output_folding_loads() -> None:
    """Profiles from before ``folding`` had ``fold_constants`` booleans (the model's and its energy model's)."""
    old = {
        "format": "edgecompress.device_model", "version": 1, "name": "t", "device": "t", "precision": "fp32",
        "intercept_ms": 1.0, "coefficients": {"conv_k3.count": 0.1}, "source": "synthetic", "fold_constants": False,
        "energy": {"intercept_mj": 1.0, "coefficients": {}, "fold_constants": True},
    }  # fmt: skip
    model = DeviceModel.from_dict(old)
    assert model.folding == "none" and model.energy["folding"] == "all" and "fold_constants" not in model.energy
    with pytest.raises(EdgeCompressError, match="folding 'some' is not one of: all, output, none"):
        DeviceModel.from_dict({**old, "folding": "some"})


def test_estimates_price_standalone_activations_or_say_they_did_not() -> None:
    import torch
    import torch.nn as nn

    class PreActivation(nn.Module):  # a ReLU and a pooling read one convolution's output
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
            self.p = nn.AvgPool2d(3, 1, 1)

        def forward(self, x):  # type: ignore[no-untyped-def]
            h = self.a(x)
            return self.b(torch.relu(h)) + self.p(h)

    tx2 = load_device("jetson-tx2")
    assert "act" in tx2.fusions
    report = estimate_latency(PreActivation(), (1, 8, 16, 16), "jetson-tx2")
    assert {r.layer: r.source for r in report.rows}["b"].endswith(
        "(includes 1 standalone activation(s) on its input, priced as adds)"
    )
    assert not any("activations cannot be fused" in w for w in report.warnings)
    nano = estimate_latency(PreActivation(), (1, 8, 16, 16), "jetson-nano")
    assert "jetson-nano's cross-validation on its calibration rows chose to price none" in " ".join(nano.warnings)
    assert "1 activations cannot be fused" in " ".join(nano.warnings)
    pi4 = estimate_latency(PreActivation(), (1, 8, 16, 16), "raspberry-pi-4")
    assert "not counted: raspberry-pi-4 was fitted without them" in " ".join(pi4.warnings)


def test_standalone_activations_beyond_the_largest_calibration_add_are_flagged_as_roofline() -> None:
    from edgecompress.latency_models.device_model import calibration_edges
    from edgecompress.latency_models.ops import OpRecord

    tx2 = load_device("jetson-tx2")
    edge_mb = calibration_edges()["add"][1]
    small = OpRecord("conv_k3", 1000, 100, (1, 8, 4, 4), kernel=3, acts=1, act_bytes=int(0.5 * edge_mb * 1e6))
    assert not tx2.beyond_calibration(small)
    big = replace(small, act_bytes=int(3 * edge_mb * 1e6))
    assert tx2.beyond_calibration(big)
    assert not replace(tx2, fusions=[]).beyond_calibration(big)


def test_energy_model_takes_the_latency_models_groups_where_cross_validation_says_so() -> None:
    import random

    from edgecompress.latency_models.device_model import fit_energy_model
    from edgecompress.latency_models.nb201 import OPS

    rng = random.Random(2)
    archs = []
    for _ in range(150):
        ops = [rng.choice(OPS[1:]) for _ in range(6)]
        archs.append(f"|{ops[0]}~0|+|{ops[1]}~0|{ops[2]}~1|+|{ops[3]}~0|{ops[4]}~1|{ops[5]}~2|")
    merges, fusions = ("merge_conv",), ("act", "fuse_add")
    truth = {"conv_k3.mmacs": 0.05, "conv_k1.count": 0.3, "pool.count": 0.2, "add.mbytes": 2.0,
             "merge_conv.count": 0.01, "fuse_add.count": 0.01}  # fmt: skip

    def rows(groups: bool) -> list[dict[str, str]]:
        out = []
        for i, a in enumerate(archs):
            feats = nb201_features(a, "none", merges if groups else (), fusions if groups else ())
            mj = 0.7 + sum(truth.get(k, 0.0) * v for k, v in feats.items())
            out.append({"arch_str": a, "arch_index": str(i), "split": "calibration",
                        "hwnb_edgegpu_tx2_cifar10_mJ": str(mj)})  # fmt: skip
        return out

    with_groups = fit_energy_model("jetson-tx2", rows(True), merges=merges, fusions=fusions)
    assert (with_groups["merges"], with_groups["fusions"]) == (["merge_conv"], ["act", "fuse_add"])
    model = DeviceModel("t", "t", "fp32", 0.0, {}, "s", energy=with_groups)
    for r in rows(True)[:10]:
        feats = nb201_features(r["arch_str"], "none", *model.energy_groups())
        assert model.predict_energy_features(feats) == pytest.approx(float(r["hwnb_edgegpu_tx2_cifar10_mJ"]), rel=1e-4)
    plain = fit_energy_model("jetson-tx2", rows(False), merges=merges, fusions=fusions)
    assert (plain["merges"], plain["fusions"]) == ([], [])
    tx2 = load_device("jetson-tx2")
    assert tx2.energy_groups() == (tx2.energy["merges"], tx2.energy["fusions"])


def test_a_precision_the_device_model_was_not_calibrated_at_is_said() -> None:
    """A device model prices its one precision; asked another, the number is the same and the report says why."""
    net = create_model("lenet5").eval()
    fp32 = estimate_latency(net, (1, 1, 28, 28), "jetson-nano")
    fp16 = estimate_latency(net, (1, 1, 28, 28), "jetson-nano", precision="fp16")
    assert fp16.total_ms == fp32.total_ms
    assert not any("calibrated at fp32 only" in w for w in fp32.warnings)
    assert any(w.startswith("jetson-nano is calibrated at fp32 only: what is asked at fp16 is priced at fp32")
               for w in fp16.warnings)  # fmt: skip
