"""Device-model predictions for real-size networks (torchvision, 224x224, batch 1), with the roofline bound
beyond the calibration range (what the package ships) and without it (the fitted terms extrapolated linearly, as
before), and whether the hardware's invariants hold in each.

    python benchmarks/real_size_predictions.py

Predictions, not measurements: no device here. The invariants: fp16 not slower than fp32 on the Nano, the TX2 not
slower than the Nano, MobileNetV2 0.5 not slower than 1.0, a 50%-channel ResNet-18 not slower than the whole one,
ResNet-50 slower than ResNet-18. Result: benchmarks/results/real_size_predictions.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import result_path, write_result

DEVICES = ("raspberry-pi-4", "jetson-nano", "jetson-nano-fp16", "jetson-tx2")


def predictions(nets: dict[str, Any], shape: tuple[int, ...]) -> dict[str, dict[str, float]]:
    from edgecompress.latency_models import estimate_latency

    return {n: {d: round(estimate_latency(m, shape, d).total_ms, 3) for d in DEVICES} for n, m in nets.items()}


def invariants(p: dict[str, dict[str, float]]) -> dict[str, bool]:
    out = {}
    for n, ms in p.items():
        out[f"{n}: nano fp16 <= nano fp32"] = ms["jetson-nano-fp16"] <= ms["jetson-nano"]
        out[f"{n}: tx2 <= nano fp32"] = ms["jetson-tx2"] <= ms["jetson-nano"]
    for d in DEVICES:
        out[f"{d}: mobilenet_v2 0.5 < 1.0"] = p["mobilenet_v2-0.5"][d] < p["mobilenet_v2-1.0"][d]
        out[f"{d}: resnet18 pruned 50% < resnet18"] = p["resnet18-pruned-0.5"][d] < p["resnet18"][d]
        out[f"{d}: resnet18 < resnet50"] = p["resnet18"][d] < p["resnet50"][d]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=result_path("real_size_predictions"))
    args = parser.parse_args()
    import torchvision

    from edgecompress.compressors import Policy, compress
    from edgecompress.latency_models import device_model

    shape = (1, 3, 224, 224)
    r18 = torchvision.models.resnet18().eval()
    nets = {
        "resnet18": r18,
        "resnet18-pruned-0.5": compress(r18, Policy.uniform(r18, keep=0.5, round_to=8), input_shape=shape)[0],
        "resnet50": torchvision.models.resnet50().eval(),
        "mobilenet_v2-1.0": torchvision.models.mobilenet_v2(width_mult=1.0).eval(),
        "mobilenet_v2-0.5": torchvision.models.mobilenet_v2(width_mult=0.5).eval(),
    }
    shipped = predictions(nets, shape)
    peaks = dict(device_model.DEVICE_PEAKS)
    device_model.DEVICE_PEAKS.clear()  # the fitted terms alone, extrapolated linearly
    try:
        linear = predictions(nets, shape)
    finally:
        device_model.DEVICE_PEAKS.update(peaks)
    write_result(args.out, {
        "what": "predicted batch-1 ms at 224x224 (torchvision, random weights: latency does not depend on them)",
        "roofline": {k: {x: v[x] for x in ("gmacs", "gbps", "source")} for k, v in peaks.items()},
        "calibration_edges": {g: {"mmacs": m, "mbytes": b} for g, (m, b) in device_model.calibration_edges().items()},
        "with_roofline": {"ms": shipped, "invariants": invariants(shipped)},
        "fitted_terms_only": {"ms": linear, "invariants": invariants(linear)},
    })  # fmt: skip
    for label, p in (("with roofline", shipped), ("fitted terms only", linear)):
        held = invariants(p)
        print(f"{label}: {sum(held.values())}/{len(held)} invariants hold")
        for n, ms in p.items():
            print(f"  {n:22s} " + "  ".join(f"{d} {ms[d]:9.2f}" for d in DEVICES))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
