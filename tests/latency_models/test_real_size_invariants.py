"""The device models on real-size networks (torchvision at 224x224) keep what the hardware obeys: fp16 not slower
than fp32 on the same GPU, the TX2 not slower than the Nano, a narrower or pruned network not slower than the
wider one, cost growing with work; operators beyond the calibration range are priced at the published roofline
and said so."""

from __future__ import annotations

import pytest
import torchvision

from edgecompress.compressors import Policy, compress
from edgecompress.latency_models import estimate_latency
from edgecompress.latency_models.device_model import DEVICE_PEAKS, DeviceModel, calibration_edges
from edgecompress.latency_models.devices import load_device
from edgecompress.latency_models.ops import OpRecord, trace_ops

DEVICES = ("raspberry-pi-4", "raspberry-pi-5", "jetson-nano", "jetson-nano-fp16", "jetson-tx2")
SHAPE = (1, 3, 224, 224)


def _total(ops: list[OpRecord], device: str) -> float:
    dm = load_device(device)
    assert isinstance(dm, DeviceModel)
    return dm.scale * dm.intercept_ms + sum(dm.op_ms(op) or 0.0 for op in ops)


@pytest.fixture(scope="module")
def predicted() -> dict[str, dict[str, float]]:
    """Predicted ms per (network, device); each network traced once, priced per device."""
    resnet18 = torchvision.models.resnet18().eval()
    pruned, _ = compress(resnet18, Policy.uniform(resnet18, keep=0.5, round_to=8), input_shape=SHAPE)
    nets = {
        "resnet18": (resnet18, SHAPE),
        "resnet18-pruned": (pruned, SHAPE),
        "resnet18-112": (resnet18, (1, 3, 112, 112)),
        "resnet50": (torchvision.models.resnet50().eval(), SHAPE),
        "mobilenet_v2-1.0": (torchvision.models.mobilenet_v2(width_mult=1.0).eval(), SHAPE),
        "mobilenet_v2-0.5": (torchvision.models.mobilenet_v2(width_mult=0.5).eval(), SHAPE),
    }
    out: dict[str, dict[str, float]] = {}
    for name, (net, shape) in nets.items():
        ops = trace_ops(net, shape)
        out[name] = {d: _total(ops, d) for d in DEVICES}
    # The shortcut above is what estimate_latency sums.
    assert out["resnet18"]["jetson-tx2"] == pytest.approx(estimate_latency(resnet18, SHAPE, "jetson-tx2").total_ms)
    return out


@pytest.mark.parametrize("device", DEVICES)
def test_narrower_or_pruned_not_slower_and_cost_grows_with_work(predicted, device) -> None:  # type: ignore[no-untyped-def]
    p = {name: ms[device] for name, ms in predicted.items()}
    assert p["mobilenet_v2-0.5"] < p["mobilenet_v2-1.0"]
    assert p["resnet18-pruned"] < p["resnet18"]
    assert p["resnet18-112"] < p["resnet18"] < p["resnet50"]


@pytest.mark.parametrize("net", ["resnet18", "resnet50", "mobilenet_v2-1.0", "mobilenet_v2-0.5", "resnet18-pruned"])
def test_fp16_not_slower_than_fp32_and_tx2_not_slower_than_nano(predicted, net) -> None:  # type: ignore[no-untyped-def]
    p = predicted[net]
    assert p["jetson-nano-fp16"] <= p["jetson-nano"]
    assert p["jetson-tx2"] <= p["jetson-nano"]
    assert p["raspberry-pi-5"] <= p["raspberry-pi-4"]


def test_beyond_the_calibration_range_priced_at_the_roofline() -> None:
    edge_mmacs, edge_mbytes = calibration_edges()["conv_k1"]
    assert edge_mmacs == pytest.approx(0.262144) and edge_mbytes == pytest.approx(0.132096)  # 16->16 1x1 at 32x32
    nano = load_device("jetson-nano")
    assert isinstance(nano, DeviceModel)
    at_edge = OpRecord("conv_k1", int(edge_mmacs * 1e6), int(edge_mbytes * 1e6), (1, 16, 32, 32))
    # 118 MMAC more at 118 GMAC/s: 1 ms more (bytes at the edge).
    bigger = OpRecord("conv_k1", int(edge_mmacs * 1e6) + 118_000_000, int(edge_mbytes * 1e6), (1, 16, 32, 32))
    assert nano.op_ms(bigger) - nano.op_ms(at_edge) == pytest.approx(1.0, rel=1e-6)  # type: ignore[operator]
    # 25.6 MB more moved at 25.6 GB/s: 1 ms more (a memory-bound pooling operator); fp16 moves half the bytes.
    pool = OpRecord("pool", 0, int(calibration_edges()["pool"][1] * 1e6) + 25_600_000, (1, 16, 32, 32))
    pool_edge = OpRecord("pool", 0, int(calibration_edges()["pool"][1] * 1e6), (1, 16, 32, 32))
    assert nano.op_ms(pool) - nano.op_ms(pool_edge) == pytest.approx(1.0, rel=1e-6)  # type: ignore[operator]
    fp16 = load_device("jetson-nano-fp16")
    assert fp16.op_ms(pool) - fp16.op_ms(pool_edge) == pytest.approx(0.5, rel=1e-6)  # type: ignore[union-attr]
    assert nano.beyond_calibration(bigger) and not nano.beyond_calibration(at_edge)
    pi = load_device("raspberry-pi-4")
    assert isinstance(pi, DeviceModel) and not pi.beyond_calibration(bigger)  # the CPU keeps its fitted slope
    assert set(DEVICE_PEAKS) == {"jetson-nano", "jetson-nano-fp16", "jetson-tx2"}


def test_the_estimate_says_which_operators_are_extrapolated_at_the_roofline() -> None:
    net = torchvision.models.resnet18().eval()
    report = estimate_latency(net, SHAPE, "jetson-nano-fp16")
    said = [w for w in report.warnings if "larger than any in the calibration networks" in w]
    assert (
        len(said) == 1 and "published roofline (236 GMAC/s, 25.6 GB/s; NVIDIA Jetson Nano module data sheet" in said[0]
    )
    assert any("(beyond the calibration range: roofline)" in r.source for r in report.rows)
    assert not any("calibration networks" in w for w in estimate_latency(net, SHAPE, "raspberry-pi-4").warnings)


def test_calibration_networks_are_priced_as_fitted() -> None:
    """NAS-Bench-201 operators lie within the range by construction: the roofline never touches the fit or the
    holdout validation."""
    from edgecompress.latency_models.nb201 import NB201Network

    arch = "|nor_conv_3x3~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"
    ops = trace_ops(NB201Network(arch), (1, 3, 32, 32))
    for device in DEVICE_PEAKS:
        dm = load_device(device)
        assert isinstance(dm, DeviceModel) and not any(dm.beyond_calibration(op) for op in ops)
