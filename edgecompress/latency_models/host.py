"""End-to-end latency measured on this machine, and validation of a lookup table against it.

Whole compressed models exported by the one ONNX path
(:func:`edgecompress.latency_models.onnx.to_onnx`) and timed in ONNX Runtime
are the ground truth a table's sum is checked against (``validate_table``),
and the probes in-graph profiling measures (``export_probes``).
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from edgecompress.analysis import analyze_model
from edgecompress.compressors import LayerPolicy, Policy, compress
from edgecompress.latency_models.estimate import dispatched_ops, estimate_latency, layer_precision, precision_changes
from edgecompress.latency_models.onnx import to_int8, to_onnx
from edgecompress.latency_models.ops import trace_ops
from edgecompress.latency_models.profiler import time_onnx_interleaved
from edgecompress.latency_models.table import CONTEXT_GROUP, LatencyTable, op_key
from edgecompress.models import create_model

__all__ = [
    "export_probes", "fit_context", "pass_kind", "passes_since_fit", "probe_policies", "random_policy",
    "record_pass", "validate_table",
]  # fmt: skip

PROBE_KEEPS = (0.25, 0.5, 0.75, 1.0)
PROBE_RANKS = (0.25, 0.5)

CALIBRATION_MODELS = ("lenet5", "resnet20", "mobilenetv2")
CALIBRATION_POLICIES: tuple[dict[str, Any], ...] = (
    {}, {"keep": 0.25}, {"keep": 0.5}, {"keep": 0.75}, {"rank": 0.5}, {"keep": 0.5, "rank": 0.5},
)  # fmt: skip


def probe_policies(model: nn.Module, analysis: Any) -> list[tuple[str, Any]]:
    """Policies whose compressed models cover the channel pairs and factorisations a search reaches.

    Each coupled-channel group keeps ``a`` or ``b`` according to one bit of its
    index; for every bit, a and b run over ``PROBE_KEEPS``. Any two groups
    differ in some bit, so every layer is measured at every (input keep,
    output keep) pair of the grid. Low-rank probes factorise every layer at
    each of ``PROBE_RANKS``.
    """

    base = {"input_shape": list(analysis.input_shape)}
    groups = list(analysis.groups().values())
    bits = max(1, (len(groups) - 1).bit_length())
    out = []
    for bit in range(bits):
        for a in PROBE_KEEPS:
            for b in PROBE_KEEPS:
                if bit > 0 and a == b:
                    continue  # the same model as at bit 0
                layers = {}
                for index, members in enumerate(groups):
                    keep = b if (index >> bit) & 1 else a
                    for name in members:
                        layers[name] = LayerPolicy(keep=keep if analysis.layer(name).prunable else 1.0)
                out.append((f"bit{bit}-keep{a}-{b}", Policy(layers, base=base)))
    for keep in (0.5, 1.0):
        for rank in PROBE_RANKS:
            out.append((f"keep{keep}-rank{rank}", Policy.uniform(model, keep=keep, rank=rank, base=base)))
    return out


def export_probes(names: tuple[str, ...], folder: Any, *, round_to: int = 8, input_size: int = 28) -> list[Any]:
    """Write the probe models of each named model as ONNX files into ``folder``; returns their paths."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        torch.manual_seed(0)
        base = create_model(name).eval()
        shape = (1, 1, input_size, input_size)
        analysis = analyze_model(base, shape)
        for label, policy in probe_policies(base, analysis):
            model = compress(base, replace(policy, round_to=round_to), analysis=analysis)[0]
            path = folder / f"{name.replace(':', '_')}-{label}.onnx"
            path.write_bytes(to_onnx(model, shape))
            paths.append(path)
    return paths


def random_policy(model: nn.Module, analysis: Any, rng: random.Random, *, rank_prob: float = 0.3) -> Any:
    """A random structured policy: a keep ratio per coupled group, low-rank on some convolutions."""

    layers = {}
    for members in analysis.groups().values():
        keep = round(rng.uniform(0.25, 1.0), 3)
        for name in members:
            spec = analysis.layer(name)
            rank = 1.0
            if spec.kind != "depthwise" and spec.prunable and rng.random() < rank_prob:
                rank = round(rng.uniform(0.25, 0.9), 3)
            layers[name] = LayerPolicy(keep=keep if spec.prunable else 1.0, rank=rank)
    return Policy(layers, base={"input_shape": list(analysis.input_shape)})


def _kind_sums(
    model: nn.Module, shape: tuple[int, ...], table: LatencyTable, precision: dict[str, str] | None = None
) -> dict[str, float]:
    """Isolated table time per operator group (``conv``, ``depthwise``, ``eltwise``), the groups of layers
    ``precision`` puts at another precision than fp32 as ``GROUP@PRECISION``."""
    sums: dict[str, float] = {}
    for op in trace_ops(model, shape):
        p = layer_precision(op.layer, precision) if precision and op.layer else "fp32"
        key = op_key(op, p)
        hit = table.lookup(key) if key else None
        if hit is not None:
            group = CONTEXT_GROUP.get(op.kind, "conv") + ("" if p == "fp32" else f"@{p}")
            sums[group] = sums.get(group, 0.0) + max(0.0, hit.ms - table.overhead_ms)
    return sums


def int8_layers(analysis: Any, layers: Any = None) -> dict[str, str]:
    """The precision mapping of an int8 graph from :func:`to_int8`: ``layers`` (default every analysed layer)
    at int8."""
    return dict.fromkeys(layers if layers is not None else (sp.name for sp in analysis.layers), "int8")


def fit_context(
    table: LatencyTable,
    repeats: int = 200,
    progress: Any = None,
    round_to: int = 8,
    rounds: int = 3,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Fit the isolated-to-in-graph factor per operator group on fixed calibration models.

    Calibration models: lenet5, resnet20 and mobilenetv2, each as is, at
    uniform keep 0.25 / 0.5 / 0.75, at rank 0.5, and at keep 0.5 + rank 0.5,
    channels rounded up to ``round_to`` (the widths a CPU search should use).
    The 18 models are timed round-robin, ``rounds`` times over, and each
    model's median over rounds is its target: a slow drift of the machine hits
    them alike instead of bending the fit (one timing each moved the depthwise
    factor from 0.54 to 0.28 between two profiles an hour apart). Besides a
    factor per operator group the fit takes a fixed cost per dispatched
    operator (``overhead_per_op_ms``): the part of an in-graph operator's time
    that does not shrink with its channels, much of a pruned model's latency
    at 28x28. Non-negative least squares on relative error; stored in the
    table's metadata.
    ``validate_table`` then checks other (random) models.

    ``precision="int8"``: the same models with every weighted layer quantized (:func:`to_int8`, as the int8
    entries were measured); with the fp32 fit's per-operator overhead and element-wise factor held, a factor
    per group of int8 operators (each isolated int8 entry pays a Quantize and a Dequantize that a chain of int8
    layers shares), stored under the context's ``by_precision`` (needs the fp32 fit first).
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if precision != "fp32":
        return _fit_context_quantized(table, precision, repeats, progress, round_to, rounds)
    from scipy.optimize import nnls

    threads = int(table.meta.get("threads", 2))
    groups = ("conv", "depthwise", "eltwise")
    shape = (1, 1, 28, 28)
    onnx: dict[str, bytes | str] = {}
    rows = []
    for label, model in _calibration_models(round_to):
        onnx[label] = to_onnx(model, shape)
        sums = _kind_sums(model, shape, table)
        rows.append([sums.get(g, 0.0) for g in groups] + [float(dispatched_ops(trace_ops(model, shape)))])
    x = torch.randn(shape).numpy()
    times = time_onnx_interleaved(onnx, dict.fromkeys(onnx, x), threads, rounds, 20, repeats, progress=progress)
    measured = [statistics.median(times[label]) for label in onnx]
    a = np.array(rows)
    y = np.array(measured) - table.overhead_ms
    solution, _ = nnls(a / y[:, None], np.ones_like(y))
    factors, per_op = solution[: len(groups)], float(solution[len(groups)])
    fitted = a @ solution
    context = {
        "factors": dict(zip(groups, (float(f) for f in factors), strict=True)),
        "overhead_per_op_ms": per_op,
        "fit_median_abs_error": float(np.median(np.abs(fitted - y) / (y + table.overhead_ms))),
        "fitted_on": f"{len(y)} calibration models: {', '.join(CALIBRATION_MODELS)} x uniform policies "
        f"{[p or 'unchanged' for p in CALIBRATION_POLICIES]} (channels rounded to {round_to}), measured end to "
        f"end in ONNX Runtime (median of {repeats} per round, median of {rounds} round-robin rounds)",
        "measured_ms": dict(zip(onnx, measured, strict=True)),
        "date": time.strftime("%Y-%m-%d"),
    }
    if "by_precision" in table.meta.get("context", {}):  # fitted on the fp32 part: refit them after this one
        context["by_precision"] = table.meta["context"]["by_precision"]
    table.meta["context"] = context
    table.meta["overhead_per_op_ms"] = per_op
    return context


def _calibration_models(round_to: int) -> list[tuple[str, nn.Module]]:
    shape = (1, 1, 28, 28)
    out = []
    for name in CALIBRATION_MODELS:
        torch.manual_seed(0)
        base = create_model(name).eval()
        for fields in CALIBRATION_POLICIES:
            policy = Policy.uniform(base, **fields)
            model = compress(base, replace(policy, round_to=round_to), input_shape=shape)[0] if fields else base
            out.append((f"{name} {fields or 'unchanged'}", model))
    return out


def _fit_context_quantized(
    table: LatencyTable, precision: str, repeats: int, progress: Any, round_to: int, rounds: int
) -> dict[str, Any]:
    from scipy.optimize import nnls

    if precision != "int8":
        raise ValueError(f"context fits exist for fp32 and int8, not {precision!r}")
    context = table.meta.get("context")
    if not context or "factors" not in context:
        raise ValueError("fit the fp32 context first (fit_context(table)): the int8 fit holds its overheads")
    if precision not in table.precisions():
        raise ValueError(f"table {table.path} has no {precision} entries; profile them first")
    threads = int(table.meta.get("threads", 2))
    shape = (1, 1, 28, 28)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).numpy()
    groups = ("conv", "depthwise")
    onnx: dict[str, bytes | str] = {}
    rows, held = [], []
    per_op = float(table.meta.get("overhead_per_op_ms", 0.0))
    for label, model in _calibration_models(round_to):
        names = [sp.name for sp in analyze_model(model, shape).layers]
        half = sorted(random.Random(label).sample(names, len(names) // 2)) if len(names) > 1 else []
        fp32 = to_onnx(model, shape)
        ops = trace_ops(model, shape)
        for tag, chosen in (("", None), (" half int8", half)):
            if chosen == []:
                continue
            mapping = int8_layers(None, names if chosen is None else chosen)
            onnx[label + tag] = to_int8(fp32, x, chosen)
            sums = _kind_sums(model, shape, table, mapping)
            rows.append([sums.get(f"{g}@{precision}", 0.0) for g in groups] + [precision_changes(ops, mapping)[1]])
            fixed = sum(float(context["factors"].get(g, 1.0)) * v for g, v in sums.items() if "@" not in g)
            held.append(fixed + per_op * dispatched_ops(ops))
    times = time_onnx_interleaved(onnx, dict.fromkeys(onnx, x), threads, rounds, 20, repeats, progress=progress)
    measured = [statistics.median(times[label]) for label in onnx]
    a = np.array(rows)
    y = np.array(measured) - table.overhead_ms - np.array(held)
    total = np.array(measured)
    solution, _ = nnls(a / total[:, None], y / total)
    fitted = a @ solution + np.array(held) + table.overhead_ms
    fit = {
        "factors": {**context["factors"], **{g: float(f) for g, f in zip(groups, solution, strict=False)}},
        "change_ms_per_mb": float(solution[len(groups)]),
        "fit_median_abs_error": float(np.median(np.abs(fitted - total) / total)),
        "fitted_on": f"{len(y)} calibration models: those of the fp32 fit with every weighted layer at {precision} "
        f"and with a fixed random half of their layers at {precision} (QDQ, uint8 activations calibrated on one "
        "random input); a factor per group of int8 operators and a cost per MB crossing a change of precision; "
        f"fp32 factors and per-operator overhead held; median of {repeats} per round, median of {rounds} "
        "round-robin rounds",
        "measured_ms": dict(zip(onnx, measured, strict=True)),
        "date": time.strftime("%Y-%m-%d"),
    }
    context.setdefault("by_precision", {})[precision] = fit
    return fit


def validate_table(
    table: LatencyTable,
    models: tuple[str, ...] = ("resnet20", "mobilenetv2"),
    per_model: int = 16,
    seed: int = 0,
    repeats: int = 200,
    progress: Any = None,
    round_to: int = 1,
    rounds: int = 3,
    compare: dict[str, LatencyTable] | None = None,
    int8: str | None = None,
) -> dict[str, Any]:
    """Table sum vs measured end-to-end latency of randomly compressed models (none of them calibration models).

    ``compare`` names other tables (say, the same table without its channel block) that predict the same
    models; their errors against the very same measurements land under ``"compare"``: a paired A/B, immune
    to the machine's drift between runs. ``int8``: ``"all"`` quantizes every weighted layer of each random
    model, ``"mixed"`` a random half of its layers (:func:`to_int8`), priced at the table's int8 entries; the
    unchanged model, which speed-ups are measured against, stays fp32."""
    from scipy.stats import spearmanr

    if int8 not in (None, "all", "mixed"):
        raise ValueError(f"int8 must be None, 'all' or 'mixed', got {int8!r}")
    threads = int(table.meta.get("threads", 2))
    rng = random.Random(seed)
    compare = compare or {}
    others: dict[int, dict[str, float]] = {}
    candidates = []
    x = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(seed)).numpy()  # timed; int8's calibration
    for name in models:
        torch.manual_seed(seed)
        base = create_model(name).eval()
        shape = (1, 1, 28, 28)
        analysis = analyze_model(base, shape)
        names = [sp.name for sp in analysis.layers]
        # The unchanged model runs in every round too: speed-ups against it are immune to the machine's drift.
        candidates.append((name, -1, to_onnx(base, shape), estimate_latency(base, shape, table)))
        others[len(candidates) - 1] = {k: estimate_latency(base, shape, t).total_ms for k, t in compare.items()}
        for i in range(per_model):
            policy = random_policy(base, analysis, rng)
            model = compress(base, replace(policy, round_to=round_to), analysis=analysis)[0]
            graph = to_onnx(model, shape)
            precision: str | dict[str, str] = "fp32"
            if int8 is not None:
                chosen = None if int8 == "all" else sorted(rng.sample(names, len(names) // 2))
                graph, precision = to_int8(graph, x, chosen), int8_layers(analysis, chosen)
            candidates.append((name, i, graph, estimate_latency(model, shape, table, precision=precision)))
            others[len(candidates) - 1] = {
                k: estimate_latency(model, shape, t, precision=precision).total_ms for k, t in compare.items()
            }
    # Round-robin rounds, median per model: the machine's slow drift hits every model alike.

    times = time_onnx_interleaved(
        {str(j): c[2] for j, c in enumerate(candidates)}, dict.fromkeys(map(str, range(len(candidates))), x),
        threads, rounds, 20, repeats,
    )  # fmt: skip
    rows = []
    base_of: dict[str, int] = {name: j for j, (name, i, _, _) in enumerate(candidates) if i == -1}
    for j, (name, i, _, est) in enumerate(candidates):
        if i == -1:
            continue
        b = base_of[name]
        speedups = [tb / t for tb, t in zip(times[str(b)], times[str(j)], strict=True)]
        rows.append({"model": name, "variant": i, "measured_ms": statistics.median(times[str(j)]),
                     "estimated_ms": est.total_ms, "missing": len(est.missing),
                     "speedup_measured": statistics.median(speedups),
                     "speedup_predicted": candidates[b][3].total_ms / est.total_ms})  # fmt: skip
        for k, ms in others[j].items():
            rows[-1][f"estimated_ms[{k}]"] = ms
            rows[-1][f"speedup_predicted[{k}]"] = others[b][k] / ms
        if progress is not None:
            progress(len(rows), len(candidates) - len(models), rows[-1], 0.0)
    meas = np.array([r["measured_ms"] for r in rows])
    est_arr = np.array([r["estimated_ms"] for r in rows])
    rel = np.abs(est_arr - meas) / meas
    sp_meas = np.array([r["speedup_measured"] for r in rows])
    sp_rel = np.abs(np.array([r["speedup_predicted"] for r in rows]) - sp_meas) / sp_meas
    paired = {}
    for k in compare:
        e = np.array([r[f"estimated_ms[{k}]"] for r in rows])
        sp = np.abs(np.array([r[f"speedup_predicted[{k}]"] for r in rows]) - sp_meas) / sp_meas
        paired[k] = {"median_abs_error": float(np.median(np.abs(e - meas) / meas)),
                     "spearman": float(spearmanr(e, meas).statistic),
                     "speedup_median_abs_error": float(np.median(sp))}  # fmt: skip
    return {
        "n": len(rows),
        "models": list(models),
        "round_to": round_to,
        "int8": int8,
        "median_abs_error": float(np.median(rel)),
        "mean_abs_error": float(np.mean(rel)),
        "spearman": float(spearmanr(est_arr, meas).statistic),
        "speedup_median_abs_error": float(np.median(sp_rel)),
        "base_measured_ms": {name: statistics.median(times[str(j)]) for name, j in base_of.items()},
        "base_estimated_ms": {name: candidates[j][3].total_ms for name, j in base_of.items()},
        "threads": threads,
        "repeats": repeats,
        "rounds": rounds,
        "seed": seed,
        "rows": rows,
        "median_measured_ms": float(statistics.median(meas.tolist())),
        "date": time.strftime("%Y-%m-%d"),
        "at": _utc_minute(),
        **({"compare": paired} if compare else {}),
    }


def _utc_minute() -> str:
    """Now, as validation passes are stamped (``passes_since_fit`` compares them with the table's ``updated``)."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def pass_kind(result: dict[str, Any]) -> str:
    """What one validation of :func:`validate_table` checked, as its pass record names it."""
    if result.get("int8") == "all":
        return "int8, every layer"
    if result.get("int8") == "mixed":
        return "int8, half the layers"
    return f"fp32, rounded to {result.get('round_to', 1)}"


def record_pass(table: LatencyTable, result: dict[str, Any], source: str) -> dict[str, Any]:
    """Append one validation's figures to ``table.meta["validation_passes"]`` (the caller saves the table).

    Every pass is kept, good or bad: on a machine whose speed drifts over hours, the latest pass alone says
    little about how well the table holds (``edgecompress devices`` shows the worst since the fit)."""
    record = {
        "at": result.get("at") or _utc_minute(),
        "kind": pass_kind(result),
        "n": result["n"],
        "median_abs_error": result["median_abs_error"],
        "spearman": result["spearman"],
        "speedup_median_abs_error": result.get("speedup_median_abs_error"),
        "source": source,
    }
    table.meta.setdefault("validation_passes", []).append(record)
    return record


def passes_since_fit(table: LatencyTable) -> dict[str, list[dict[str, Any]]]:
    """The table's recorded validation passes since it was last measured or refitted (``meta["updated"]``),
    by kind (:func:`pass_kind`), oldest first."""
    fitted = str(table.meta.get("updated", ""))[:16]  # "YYYY-MM-DD HH:MM", UTC like the records
    out: dict[str, list[dict[str, Any]]] = {}
    for record in table.meta.get("validation_passes", []):
        if str(record.get("at", ""))[:16] >= fitted:
            out.setdefault(record["kind"], []).append(record)
    return out
