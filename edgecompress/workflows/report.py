"""``edgecompress report RUN [RUN ...]``: best policies, Pareto fronts and ``pareto.png`` across search runs.

Reads what every driver writes (``config.yaml``, ``episodes.jsonl``,
``reference.json``), so runs of ddpg, optuna and ray compare directly. The
Pareto front is over (accuracy up, predicted latency down, stored size down)
among all scored policies; the hypervolume is the 2-D area dominated by the
(latency / base latency, accuracy) front, from the reference point (1, 0):
1.0 would be a policy with full accuracy at zero latency.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from edgecompress._io import is_png, read_json, write_json_atomic
from edgecompress.errors import ConfigError
from edgecompress.search.runlog import read_records

__all__ = ["check_comparable", "hypervolume_2d", "load_run", "pareto_front", "write_report"]


def load_run(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    log = folder / "episodes.jsonl"
    if not log.is_file():
        raise ConfigError(f"{folder} is not a search run folder (no episodes.jsonl); give runs/NAME of a search")
    records, _ = read_records(log)  # a line a kill tore at the end is left out
    cfg = yaml.safe_load((folder / "config.yaml").read_text()) if (folder / "config.yaml").is_file() else {}
    search = cfg.get("search", {}) if isinstance(cfg, dict) else {}
    agent = search.get("agent", "?")
    if agent in ("optuna", "ray"):
        agent = f"{agent}-{search.get('sampler', 'tpe')}"
    ref = (
        read_json(folder / "reference.json", "reference file", ConfigError)
        if (folder / "reference.json").is_file()
        else None
    )
    model = cfg.get("model", {}) if isinstance(cfg, dict) else {}
    data = cfg.get("data", {}) if isinstance(cfg, dict) else {}
    return {
        "folder": str(folder),
        "name": folder.name,
        "agent": agent,
        "records": records,
        "reference": ref,
        "device": cfg.get("device") if isinstance(cfg, dict) else None,
        # What the scores are of: one front compares one base model, on one input, for one device.
        "subject": {
            "device": cfg.get("device") if isinstance(cfg, dict) else None,
            "model": model.get("name") if isinstance(model, dict) else None,
            "weights": (model.get("weights") or model.get("checkpoint")) if isinstance(model, dict) else None,
            "dataset": data.get("dataset") if isinstance(data, dict) else None,
            "input_size": data.get("input_size") if isinstance(data, dict) else None,
        },
    }


def check_comparable(runs: list[dict[str, Any]]) -> None:
    """Refuse runs that searched different devices, base models or inputs: their latencies and accuracies are
    not on one scale, so one table and one Pareto front would rank them against each other falsely."""
    first = runs[0]["subject"]
    for run in runs[1:]:
        differ = [k for k, v in run["subject"].items() if v != first[k]]
        if differ:
            shown = "; ".join(
                f"{k}: {first[k]!r} in {runs[0]['folder']}, {run['subject'][k]!r} in {run['folder']}" for k in differ
            )
            raise ConfigError(
                f"these runs did not search the same thing ({shown}); a report compares runs of one base model, "
                "input and device (their latencies and accuracies are on one scale only then): report them apart"
            )


def _dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
    ge = (
        a["accuracy"] >= b["accuracy"] and a["latency_ms"] <= b["latency_ms"] and a["stored_bytes"] <= b["stored_bytes"]
    )
    gt = a["accuracy"] > b["accuracy"] or a["latency_ms"] < b["latency_ms"] or a["stored_bytes"] < b["stored_bytes"]
    return ge and gt


def pareto_front(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Non-dominated records (accuracy up, latency down, stored bytes down), sorted by latency."""
    front = [r for r in records if not any(_dominates(o, r) for o in records)]
    unique: dict[tuple[float, float, int], dict[str, Any]] = {}
    for r in front:
        unique.setdefault((r["accuracy"], r["latency_ms"], r["stored_bytes"]), r)
    return sorted(unique.values(), key=lambda r: (r["latency_ms"], -r["accuracy"]))


def hypervolume_2d(points: list[tuple[float, float]], ref: tuple[float, float] = (1.0, 0.0)) -> float:
    """Area dominated by (x down, y up) points, bounded by ``ref`` = (x_max, y_min)."""
    pts = sorted((x, y) for x, y in points if x < ref[0] and y > ref[1])
    area, best_y = 0.0, ref[1]
    # Sweep from the smallest x: a point raising the best y so far owns that slab of y from x to ref_x.
    for x, y in pts:
        if y > best_y:
            area += (ref[0] - x) * (y - best_y)
            best_y = y
    return area


BEST_KEYS = ("accuracy", "latency_ms", "stored_bytes", "episode")
FRONT_KEYS = ("run", "agent", "episode", "accuracy", "latency_ms", "stored_bytes", "within_budget")


def summarize(run: dict[str, Any]) -> dict[str, Any]:
    recs = run["records"]
    feasible = [r for r in recs if r.get("within_budget")]
    best = max(feasible, key=lambda r: (r["accuracy"], -r["latency_ms"])) if feasible else None
    ref = run["reference"] or {}
    base_ms = (ref.get("base") or {}).get("latency_ms")
    hv = None
    if base_ms:
        hv = hypervolume_2d([(r["latency_ms"] / base_ms, r["accuracy"]) for r in recs])
    return {
        "run": run["folder"],
        "agent": run["agent"],
        "device": run["device"],
        "evaluations": len(recs),
        "feasible": len(feasible),
        "budget_ms": (best or (recs[0] if recs else {})).get("budget_ms"),
        "best": None if best is None else {k: best.get(k) for k in BEST_KEYS},
        "hypervolume": hv,
        "pareto_size": len(pareto_front(recs)),
        "base": ref.get("base"),
        "uniform_within_budget": ref.get("uniform_within_budget"),
    }


def write_report(folders: list[str | Path], out: str | Path | None = None) -> dict[str, Any]:
    if not folders:
        raise ConfigError("give at least one run folder")
    runs = [load_run(f) for f in folders]
    check_comparable(runs)
    out_dir = Path(out) if out is not None else Path(runs[0]["folder"])
    _check_replaceable(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries = [summarize(r) for r in runs]
    everything = [{**rec, "agent": r["agent"], "run": r["name"]} for r in runs for rec in r["records"]]
    front = pareto_front(everything)
    report = {
        "runs": summaries,
        "pareto_front": [
            {
                k: r.get(k)
                for k in ("run", "agent", "episode", "accuracy", "latency_ms", "stored_bytes", "within_budget")
            }
            for r in front
        ],
        "note": "accuracy: validation subset as each run measured it; latency: predicted (see each record's "
        "latency_source); size: counted stored bytes",
    }
    write_json_atomic(out_dir / "report.json", report)
    report["plot"] = str(_plot(runs, front, out_dir / "pareto.png"))
    return report


def _check_replaceable(out_dir: Path) -> None:
    """Refuse to replace a ``report.json`` that is not a report, or a ``pareto.png`` that is not a PNG: those are
    the user's files, not an earlier report's."""
    report, plot = out_dir / "report.json", out_dir / "pareto.png"
    if report.is_file():
        try:
            ours = "pareto_front" in json.loads(report.read_text())
        except (ValueError, UnicodeDecodeError, TypeError):
            ours = False
        if not ours:
            raise ConfigError(f"{report} exists and is not an edgecompress report; choose another --out")
    if plot.is_file() and not is_png(plot):
        raise ConfigError(f"{plot} exists and is not a PNG plot; choose another --out")


def _plot(runs: list[dict[str, Any]], front: list[dict[str, Any]], path: Path) -> Path:
    from matplotlib.figure import Figure  # a Figure of its own: no pyplot state, no backend switch

    fig = Figure(figsize=(8, 5.5))
    ax = fig.subplots()
    markers = "osD^vP*X"
    all_sizes = [r["stored_bytes"] for run in runs for r in run["records"]] or [1]
    vmin, vmax = min(all_sizes), max(all_sizes)
    sc = None
    for i, run in enumerate(runs):
        recs = run["records"]
        if recs:
            sc = ax.scatter(
                [r["latency_ms"] for r in recs],
                [r["accuracy"] for r in recs],
                c=[r["stored_bytes"] for r in recs],
                cmap="viridis",
                vmin=vmin,
                vmax=vmax,
                s=18,
                marker=markers[i % len(markers)],
                alpha=0.7,
                label=f"{run['name']} ({run['agent']})",
            )
    line, top = [], float("-inf")  # the 2-D (latency, accuracy) front of the 3-D one, for the line
    for r in front:
        if r["accuracy"] > top:
            line.append(r)
            top = r["accuracy"]
    if line:
        ax.step(
            [r["latency_ms"] for r in line],
            [r["accuracy"] for r in line],
            where="post",
            color="C3",
            lw=1,
            label="accuracy-latency front (all runs)",
        )
    ref = runs[0]["reference"]
    if ref:
        base = ref["base"]
        ax.scatter([base["latency_ms"]], [base["accuracy"]], marker="*", s=220, color="k", label="base model")
        uni = ref.get("uniform") or []
        ax.scatter(
            [u["latency_ms"] for u in uni],
            [u["accuracy"] for u in uni],
            marker="x",
            s=60,
            color="C1",
            label="uniform keep " + ", ".join(str(u["keep"]) for u in uni),
        )
        ax.axvline(ref["budget_ms"], color="grey", ls="--", lw=1, label=f"budget {ref['budget_ms']:.3f} ms")
    if sc is not None:
        fig.colorbar(sc, ax=ax, label="stored bytes")
    ax.set_xlabel(f"predicted latency (ms) on {runs[0]['device']}")
    ax.set_ylabel("validation top-1")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
