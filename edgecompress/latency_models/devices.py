"""Device profiles: the names ``--device`` accepts, how they are fitted, and how well they predict.

Each shipped profile is a JSON :class:`DeviceModel` under ``profiles/``, fitted
by :func:`calibrate` on the calibration rows of the public measurements and
carrying its validation on the holdout rows (never used to fit or choose
anything). ``raspberry-pi-5`` has no licensed data to fit on: it is the
Raspberry Pi 4 model divided by Raspberry Pi Ltd's published 2-3x CPU
speed-up (midpoint 2.5), validated against the Pi 5 measurements.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.errors import EdgeCompressError, did_you_mean
from edgecompress.latency_models.device_model import (
    DEVICE_COLUMNS,
    ENERGY_COLUMNS,
    EXTRA_GROUPS,
    FBNET_DEVICES,
    FOLDING_NOTES,
    FUSIONS,
    MERGES,
    PI5_COLUMNS,
    PI5_SPEEDUP_OVER_PI4,
    DeviceModel,
    _design,
    cross_validate_folding,
    fit_device_model,
    fit_energy_model,
    is_constant_network,
    load_nb201_rows,
    metrics,
    select_fbnet_terms,
    select_fusions,
    select_merges,
    validate_fbnet,
)
from edgecompress.latency_models.fbnet import load_fbnet_rows
from edgecompress.latency_models.table import LatencyTable

__all__ = [
    "DEVICE_ALIASES",
    "PROFILE_DIR",
    "calibrate",
    "calibrate_energy",
    "list_devices",
    "load_device",
    "validate",
    "validate_energy",
]

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
PI5 = "raspberry-pi-5"
DEVICE_ALIASES = {"host-1thread": "host"}
"""Former profile names still accepted: ``host`` is the 1-thread table since it is the one that holds its
validation on a 2-core machine (the 2-thread table is ``host-2thread``)."""


def list_devices(profile_dir: Path = PROFILE_DIR) -> list[str]:
    """Profile names: device models (``NAME.json``) and measured tables (``NAME.table.json``)."""
    return sorted(p.name.removesuffix(".json").removesuffix(".table") for p in profile_dir.glob("*.json"))


def load_device(name: str, profile_dir: Path = PROFILE_DIR) -> DeviceModel | LatencyTable:
    name = DEVICE_ALIASES.get(name, name)
    table = profile_dir / f"{name}.table.json"
    if table.is_file():
        return LatencyTable.load(table)
    path = profile_dir / f"{name}.json"
    if not path.is_file():
        known = list_devices(profile_dir)
        raise EdgeCompressError(
            f"unknown device {name!r}.{did_you_mean(name, known)} Known devices: {', '.join(known) or 'none'}"
        )
    return DeviceModel.load(path)


def _holdout(rows: list[dict[str, str]], column: str) -> list[dict[str, str]]:
    return [r for r in rows if r["split"] == "holdout" and r.get(column)]


def validate(model: DeviceModel, rows: list[dict[str, str]], column: str) -> dict[str, Any]:
    """Holdout-only metrics of ``model`` against ``column``, with the FLOPs ranking as the baseline.

    Rank metrics use every holdout row with a measurement; ``mape_*`` also
    excludes the constant (fully folded) networks, whose ~0.01 ms no
    per-operator model is meant to predict.
    """
    from scipy.stats import spearmanr

    hold = _holdout(rows, column)
    if not hold:
        raise EdgeCompressError(f"no holdout rows with a {column} measurement")
    x, keys = _design(hold, model.folding, model.merges, model.fusions)
    y = np.array([float(r[column]) for r in hold])
    pred = np.array([model.predict_features(dict(zip(keys, xi[1:], strict=True))) for xi in x])
    live = np.array([not is_constant_network(r["arch_str"], model.folding) for r in hold])
    # rounded so that equal MAC counts tie whatever groups their operators are summed in
    flops = np.round(sum(x[:, 1 + keys.index(k)] for k in keys if k.endswith(".mmacs")), 6)
    ranks = metrics(np.maximum(pred, 1e-9), y)
    errors = metrics(pred[live], y[live])
    return {
        "column": column,
        "rows": "holdout (arch_index % 5 == 0)",
        "n": len(y),
        "spearman": ranks["spearman"],
        "kendall": ranks["kendall"],
        "flops_spearman": float(spearmanr(flops, y).statistic),
        "n_mape": int(live.sum()),
        "mape_raw": errors["mape_raw"],
        "mape_scaled": errors["mape_scaled"],
        "best_scale": errors["best_scale"],
        "predicted": pred.tolist(),
        "measured": y.tolist(),
    }


def validate_energy(model: DeviceModel, rows: list[dict[str, str]]) -> dict[str, Any]:
    """Holdout-only metrics of ``model``'s energy model, with the FLOPs ranking as the baseline."""
    from scipy.stats import spearmanr

    column = model.energy["column"]
    fold = str(model.energy["folding"])
    hold = _holdout(rows, column)
    if not hold:
        raise EdgeCompressError(f"no holdout rows with a {column} measurement")
    x, keys = _design(hold, fold, *model.energy_groups())
    y = np.array([float(r[column]) for r in hold])
    pred = np.array([model.predict_energy_features(dict(zip(keys, xi[1:], strict=True))) for xi in x])
    live = np.array([not is_constant_network(r["arch_str"], fold) for r in hold])
    flops = sum(x[:, 1 + keys.index(k)] for k in keys if k.endswith(".mmacs"))
    ranks, errors = metrics(np.maximum(pred, 1e-9), y), metrics(pred[live], y[live])
    return {
        "column": column, "rows": "holdout (arch_index % 5 == 0)", "n": len(y), "spearman": ranks["spearman"],
        "kendall": ranks["kendall"], "flops_spearman": float(spearmanr(flops, y).statistic),
        "n_mape": int(live.sum()), "mape_raw": errors["mape_raw"], "mape_scaled": errors["mape_scaled"],
    }  # fmt: skip


def calibrate_energy(
    data_dir: str | os.PathLike[str] | None = None,
    out_dir: Path = PROFILE_DIR,
    rows: list[dict[str, str]] | None = None,
) -> dict[str, DeviceModel]:
    """Fit the energy model of every profile the public data has energy for (calibration rows), validate it on
    the holdout rows, and store it in that profile."""
    import time

    rows = load_nb201_rows(data_dir) if rows is None else rows
    done = {}
    for name in ENERGY_COLUMNS:
        path = out_dir / f"{name}.json"
        model = DeviceModel.load(path)
        model.energy = fit_energy_model(name, rows, merges=model.merges, fusions=model.fusions)
        model.energy["validation"] = {**validate_energy(model, rows), "date": time.strftime("%Y-%m-%d")}
        model.save(path)
        done[name] = model
    return done


def calibrate(data_dir: str | os.PathLike[str] | None = None, out_dir: Path = PROFILE_DIR) -> dict[str, DeviceModel]:
    """Fit every public device's model on the calibration rows, validate on holdout, write the profiles."""
    import time

    rows = load_nb201_rows(data_dir)
    models: dict[str, DeviceModel] = {}
    for name, meta in DEVICE_COLUMNS.items():
        selection = cross_validate_folding(name, rows)
        if name in FBNET_DEVICES:  # MobileNet-style blocks measured on this device: the even rows are fitted too
            fb_rows = load_fbnet_rows(data_dir, "calibration")
            fb = select_fbnet_terms(name, rows, fb_rows, selection["folding"])
            model = fit_device_model(name, rows, selection["folding"], fbnet_rows=fb_rows, extra=fb["extra"],
                                     fbnet_weight=fb["weight"])  # fmt: skip
            selection = {**selection, "fbnet": fb}
        else:
            merges = select_merges(name, rows, selection["folding"])
            fusions = select_fusions(name, rows, selection["folding"], merges["merges"])
            model = fit_device_model(
                name, rows, selection["folding"], merges=merges["merges"], fusions=fusions["fusions"]
            )
            selection = {**selection, "merges": merges, "fusions": fusions}
            for what, key, chosen, meaning in (
                ("merged operators priced in groups of their own", "merges", merges, MERGES),
                ("TensorRT layer fusions priced", "fusions", fusions, FUSIONS),
            ):
                if chosen[key]:
                    model.notes.append(
                        f"{what} ({'; '.join(meaning[m] for m in chosen[key])}), chosen by cross-validation on "
                        "calibration rows (Spearman "
                        + ", ".join(f"{'+'.join(v[key]) or 'none'} {v['cv_spearman']:.3f}" for v in chosen["scores"])
                        + ")"
                    )
        model.selection = selection
        cv = selection["cv_spearman"]
        model.notes.append(
            f"calibration networks read as compiled with folding {selection['folding']!r} ("
            + FOLDING_NOTES[selection["folding"]]
            + "); chosen by cross-validation on calibration rows (Spearman "
            + ", ".join(f"{f} {cv[f]:.3f}" for f in cv)
            + ")"
        )
        report = validate(model, rows, meta["column"])
        model.validation = {k: v for k, v in report.items() if k not in ("predicted", "measured")}
        if name in FBNET_DEVICES:
            model.validation["fbnet_holdout"] = validate_fbnet(model, load_fbnet_rows(data_dir, "holdout"))
        model.validation["date"] = time.strftime("%Y-%m-%d")
        models[name] = model
    pi4 = models["raspberry-pi-4"]
    pi5 = replace(
        pi4, name=PI5, device="Raspberry Pi 5", scale=1.0 / PI5_SPEEDUP_OVER_PI4, licence="",
        source=f"raspberry-pi-4 model / {PI5_SPEEDUP_OVER_PI4} (Raspberry Pi Ltd: Pi 5 has 2-3x the Pi 4's CPU "
        "performance); nothing fitted on Pi 5 data (it has no licence)",
        validation={}, notes=list(pi4.notes),
    )  # fmt: skip
    pi5.validation = {
        runtime: {k: v for k, v in validate(pi5, rows, col).items() if k not in ("predicted", "measured")}
        for runtime, col in PI5_COLUMNS.items()
    }
    models[PI5] = pi5
    for name, model in models.items():
        if "depthwise" in model.extra_groups:
            note = (
                f"{', '.join(EXTRA_GROUPS[g] for g in model.extra_groups)} priced on their own, fitted on the even "
                "layer rows of fbnet_pi4_block_deltas.csv (MobileNet-style blocks measured on a Pi 4)"
            )
        else:
            note = "depthwise convolutions use the 3x3-convolution coefficients (none in the calibration data)"
        model.notes = sorted({*model.notes, note})
        model.save(out_dir / f"{name}.json")
    calibrate_energy(out_dir=out_dir, rows=rows)
    return load_all(models, out_dir)


def load_all(models: dict[str, DeviceModel], out_dir: Path) -> dict[str, DeviceModel]:
    return {name: DeviceModel.load(out_dir / f"{name}.json") for name in models}
