"""Device models on their holdout rows, against issue 20's targets.

    python benchmarks/device_models.py

Refits every public device profile on the calibration rows (what `edgecompress latency calibrate` does: it
rewrites the shipped profiles) and reports what each profile's validation read from the holdout rows only:
NAS-Bench-201 holdout networks (Spearman, and the MACs ranking of the same networks as deployed), the Jetson TX2
energy model, and the Pi 4's FBNet odd (holdout) layer rows. Targets are issue 20's; nothing here chooses
anything.

Result: benchmarks/results/device_models.json.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import result_path, write_result

NB201_TARGETS = {"raspberry-pi-4": 0.95, "jetson-tx2": 0.95, "jetson-nano-fp16": 0.96, "jetson-nano": 0.98}
MACS_MARGIN = 0.03
ENERGY_TARGETS = {"spearman": 0.9, "mape_scaled": 0.15}
FBNET_TARGETS = {"spearman": 0.95, "grouped_sign_right": 0.8}


def main() -> None:
    from edgecompress.latency_models import calibrate

    models = calibrate()
    devices: dict[str, Any] = {}
    for name, model in models.items():
        v = model.validation
        if "spearman" not in v:  # the Pi 5 profile: validated per runtime on data nothing is fitted on
            devices[name] = {"folding": model.folding, "per_runtime": v}
            continue
        entry: dict[str, Any] = {
            "folding": model.folding,
            "selection_cv_spearman": model.selection.get("cv_spearman"),
            "merges": list(model.merges),
            "fusions": list(model.fusions),
            "merge_and_fusion_cv": {
                k: model.selection[k]["scores"] for k in ("merges", "fusions") if k in model.selection
            },
            **{k: v[k] for k in ("n", "spearman", "kendall", "flops_spearman", "mape_raw", "mape_scaled")},
        }
        if name in NB201_TARGETS:
            target = NB201_TARGETS[name]
            entry["target"] = {
                "spearman": target, "above_macs_by": MACS_MARGIN,
                "met": v["spearman"] >= target and v["spearman"] - v["flops_spearman"] >= MACS_MARGIN,
            }  # fmt: skip
        if "fbnet_holdout" in v:
            fb = v["fbnet_holdout"]
            entry["fbnet_holdout"] = {
                **fb, "target": FBNET_TARGETS,
                "met": fb["spearman"] >= FBNET_TARGETS["spearman"] and fb["spearman"] > fb["macs_spearman"]
                and fb["grouped_sign_right"] >= FBNET_TARGETS["grouped_sign_right"],
            }  # fmt: skip
        if model.energy:
            e = model.energy["validation"]
            entry["energy"] = {
                "folding": model.energy["folding"],
                **{k: e[k] for k in ("n", "spearman", "kendall", "flops_spearman", "mape_raw", "mape_scaled")},
                "target": ENERGY_TARGETS,
                "met": e["spearman"] >= ENERGY_TARGETS["spearman"]
                and e["mape_scaled"] <= ENERGY_TARGETS["mape_scaled"],
            }  # fmt: skip
        devices[name] = entry
        met = f", target met: {entry['target']['met']}" if "target" in entry else ""
        print(f"{name}: holdout Spearman {v['spearman']:.3f} (MACs {v['flops_spearman']:.3f}), {model.folding}{met}")
    write_result(
        result_path("device_models"),
        {
            "what": "device models refitted on the calibration rows; holdout figures (NAS-Bench-201 holdout, TX2 "
            "energy holdout, FBNet odd layer rows) against issue 20's targets",
            "devices": devices,
        },
    )


if __name__ == "__main__":
    main()
