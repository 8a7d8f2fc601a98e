"""How well can *any* latency model rank the NAS-Bench-201 measurements? Replicates and a flexible fit, on the
calibration rows only.

    python benchmarks/nb201_noise_ceiling.py

Two figures per device column of ``shared/latency-data/nb201_latency.csv``, both from ``calibration`` rows (the
``holdout`` rows are not read):

* **Replicates.** Many NAS-Bench-201 architectures are the same network once the edges that cannot reach the
  cell's output and the ``none`` edges are removed (any graph converter drops them; constants are *not* folded
  here, so this holds for TensorRT as well as TFLite). Each was measured separately. For every measurement in a
  group of two or more: its relative difference from the mean of the others, and the Spearman correlation between
  measurements and those means: how well a perfect model of the network could rank one noisy measurement.
* **A flexible fit.** Ridge regression of log latency on the live op of each of the six edges (one-hot) and all
  pairwise products, 5-fold cross-validated: an operator-agnostic function of the architecture with far more
  freedom than a per-operator cost model (whose prediction is, on these networks, a linear function of the live
  edge counts; also reported).

Result: benchmarks/results/nb201_noise_ceiling.json.
"""

from __future__ import annotations

import itertools
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import result_path, write_result

EDGES = [(0, 0), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2)]  # (node - 1, input node) in arch_str order


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def live(arch: str) -> list[list[tuple[str, int]]]:
    from edgecompress.latency_models.nb201 import live_edges, parse_arch

    return live_edges(parse_arch(arch), fold_constants=False)


def features(arch: str) -> tuple[list[float], list[float]]:
    """(one-hot live op per edge, live edge counts per op + node-sum adds)."""
    from edgecompress.latency_models.nb201 import OPS

    nodes = live(arch)
    ops = {(j, src): op for j, edges in enumerate(nodes) for op, src in edges}
    onehot = [float(ops.get(edge, "none") == op) for edge in EDGES for op in OPS[1:]]
    counts = [float(sum(op == o for edges in nodes for op, _ in edges)) for o in OPS[1:]]
    adds = float(sum(max(len(edges) - 1, 0) for edges in nodes))
    return onehot, [*counts, adds]


def ridge_cv(x: np.ndarray, y: np.ndarray, lam: float, log: bool) -> float:
    """5-fold cross-validated Spearman of a ridge fit (of log y, or y)."""
    x = np.c_[np.ones(len(x)), x]
    target = np.log(y) if log else y
    order = np.random.default_rng(0).permutation(len(x))
    pred = np.zeros(len(x))
    for k in range(5):
        test = order[k::5]
        train = np.setdiff1d(order, test)
        a = x[train]
        w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ target[train])
        pred[test] = x[test] @ w
    return spearman(pred, y)


def column_report(rows: list[dict[str, str]], column: str) -> dict[str, object]:
    measured = [(r["arch_str"], float(r[column])) for r in rows if r[column]]
    measured = [(a, v) for a, v in measured if v > 0.5]  # networks compiled to nothing (constant output) aside
    groups: dict[tuple, list[float]] = defaultdict(list)
    for arch, v in measured:
        groups[tuple(tuple(sorted(edges)) for edges in live(arch))].append(v)
    one, rest = [], []
    for values in groups.values():
        for i, v in enumerate(values if len(values) > 1 else []):
            one.append(v)
            rest.append(statistics.fmean(values[:i] + values[i + 1 :]))
    one_a, rest_a = np.array(one), np.array(rest)
    feats = [features(a) for a, _ in measured]
    onehot = np.array([f[0] for f in feats])
    counts = np.array([f[1] for f in feats])
    pairs = np.array([[p * q for p, q in itertools.combinations(row, 2)] for row in onehot])
    y = np.array([v for _, v in measured])
    return {
        "calibration_networks": len(measured),
        "replicates": {
            "groups": sum(len(v) > 1 for v in groups.values()),
            "networks": len(one),
            "median_relative_difference": float(np.median(np.abs(one_a - rest_a) / rest_a)),
            "spearman_one_vs_mean_of_others": spearman(one_a, rest_a),
        },
        "cv_spearman": {
            "live_edge_counts_linear": ridge_cv(counts, y, 1e-3, log=False),
            "one_hot_edges_log": ridge_cv(onehot, y, 1e-3, log=True),
            "one_hot_edges_and_pairs_log": ridge_cv(np.c_[onehot, pairs], y, 1e-2, log=True),
        },
    }


def main() -> None:
    from edgecompress.latency_models.device_model import DEVICE_COLUMNS, ENERGY_COLUMNS, load_nb201_rows

    rows = [r for r in load_nb201_rows() if r["split"] == "calibration"]
    columns = {name: spec["column"] for name, spec in DEVICE_COLUMNS.items()}
    columns |= {f"{name} (energy)": spec["column"] for name, spec in ENERGY_COLUMNS.items()}
    report = {}
    for name, column in columns.items():
        report[name] = {"column": column, **column_report(rows, column)}
        r = report[name]
        print(f"{name}: replicate median difference {r['replicates']['median_relative_difference']:.1%}, "
              f"Spearman one vs others {r['replicates']['spearman_one_vs_mean_of_others']:.3f}; CV Spearman "
              f"counts {r['cv_spearman']['live_edge_counts_linear']:.3f}, one-hot+pairs "
              f"{r['cv_spearman']['one_hot_edges_and_pairs_log']:.3f}", flush=True)  # fmt: skip
    write_result(
        result_path("nb201_noise_ceiling"),
        {
            "what": "NAS-Bench-201 calibration rows only: spread between separately measured identical networks, "
            "and the 5-fold cross-validated Spearman of operator-agnostic ridge fits on the live edges",
            "devices": report,
        },
    )


if __name__ == "__main__":
    main()
