"""Write benchmarks/README.md from benchmarks/results/*.json (stdlib only; no edgecompress import).

    python benchmarks/render_readme.py [--results benchmarks/results] [--out benchmarks/README.md] [--check]

One section per results file, sorted by file name: the benchmark and variant (from the
file name ``<benchmark>__<variant>.json``), the run's date, machine and versions, its exact
command, any provenance note, and a compact table of its headline figures (a flattened table
of numeric values, cut to a few dozen rows, for payloads without a renderer here). The output
depends on the JSON files only, so rendering twice gives the same file. ``--check`` exits 1
when the README on disk differs from what the files give.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HEADER_KEYS = (
    "date",
    "command",
    "machine",
    "versions",
    "date_not_before",
    "date_not_after",
    "prerequisite_commands",
    "provenance_note",
)
GENERIC_ROWS = 40
Row = list[str]


# ---------------------------------------------------------------------------------------------- formatting


def num(v: Any, spec: str = ".4f") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return format(v, spec)


def pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def times(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}x"


def ms(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}"


def seq(values: Any, spec: str = ".3f") -> str:
    return " / ".join(num(v, spec) for v in values or [])


def table(header: Row, rows: list[Row]) -> list[str]:
    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return [*out, ""]


# ---------------------------------------------------------------------------------------------- renderers


def render_train_base_models(p: dict[str, Any]) -> list[str]:
    rows = [
        [r["model"], r.get("config", "-"), num(r.get("epochs"), "d"), num(r["test_acc"]), num(r.get("val_acc")),
         num(r.get("train_seconds"), ".0f"), num(r.get("torch_threads"), "d"), str(r.get("reused_checkpoint", "-"))]
        for r in p["results"]
    ]  # fmt: skip
    header = ["model", "config", "epochs", "test top-1", "val top-1", "train s", "torch threads", "reused ckpt"]
    return table(header, rows)


def render_compressors(p: dict[str, Any]) -> list[str]:
    out: list[str] = []
    dc = p["lenet5_deep_compression"]
    out += ["LeNet-5, Deep-Compression recipe (prune, distil, share, distil):", ""]
    out += table(
        ["test top-1 base", "final", "change (points)", "dense fp32 B", "stored B (Huffman)", "ratio Huffman",
         "ratio fixed width"],
        [[num(dc["test_acc_base"]), num(dc["test_acc_final"]), num(dc["test_acc_change_points"], "+.2f"),
          f"{dc['dense_fp32_bytes']:,}", f"{dc['stored_bytes_huffman']:,}", times(dc["ratio_huffman"]),
          times(dc["ratio_fixed_width"])]],
    )  # fmt: skip
    rn = p["resnet20_keep_0.5"]
    out += [f"ResNet-20, {rn.get('policy', 'uniform keep 0.5')} ({rn.get('timing', '')}):", ""]
    out += table(
        ["params ratio", "MACs ratio", "batch 1 ms: base -> pruned", "speed-up b1", "batch 64 ms: base -> pruned",
         "speed-up b64"],
        [[times(rn["params_ratio"]), times(rn["macs_ratio"]),
          f"{ms(rn['batch1']['base_ms'])} -> {ms(rn['batch1']['pruned_ms'])}", times(rn["batch1"]["speedup"]),
          f"{ms(rn['batch64']['base_ms'])} -> {ms(rn['batch64']['pruned_ms'])}", times(rn["batch64"]["speedup"])]],
    )  # fmt: skip
    out += ["One compress() call:", ""]
    out += table(
        ["model", "policy", "median ms", "min ms", "repeats"],
        [[r["model"], r["policy"], num(1000 * r["median_s"], ".1f"), num(1000 * r["min_s"], ".1f"),
          num(r.get("repeats"), "d")] for r in p["compress_seconds"]],
    )  # fmt: skip
    return out


def _device_rows(devices: dict[str, Any]) -> Iterator[Row]:
    for name, v in devices.items():
        subs = [(name, v)] if "spearman" in v else [(f"{name} ({rt})", r) for rt, r in v.items()]
        for label, r in subs:
            yield [label, num(r.get("n"), "d"), num(r.get("spearman"), ".3f"), num(r.get("kendall"), ".3f"),
                   num(r.get("flops_spearman"), ".3f"), pct(r.get("mape_raw")), pct(r.get("mape_scaled"))]  # fmt: skip


def render_latency_models(p: dict[str, Any]) -> list[str]:
    out = []
    if p["device_models"]:
        out += ["Device models on the holdout rows as refitted by this run (the current figures: device_models):", ""]
        out += table(
            ["device", "n", "Spearman", "Kendall", "FLOPs Spearman", "MAPE raw", "MAPE one scale"],
            list(_device_rows(p["device_models"])),
        )
    h = p["host"]
    ctx = h.get("context") or {}
    factors = ctx.get("factors", ctx if all(isinstance(v, (int, float)) for v in ctx.values()) else {})
    out += [
        f"Host table: {h.get('signatures')} signatures, profiled {h.get('table_profiled')}, "
        f"re-profiled by this run: {h.get('reprofiled')}; context "
        + ", ".join(f"{k} {num(v, '.2f')}" for k, v in sorted(factors.items()))
        + (f" (fit median error {pct(ctx['fit_median_abs_error'])})" if "fit_median_abs_error" in ctx else "")
        + ". Table sum vs measured end-to-end latency of random compressed models:",
        "",
    ]
    rows = []
    for key, label in (
        ("validation_round_to_8", "channels rounded to 8"),
        ("validation_round_to_16", "rounded to 16"),
        ("validation_unrounded", "unrounded"),
        ("int8_all", "int8 on every layer, rounded to 8"),
        ("int8_mixed", "int8 on a random half of the layers, rounded to 8"),
    ):
        r = h.get(key) if not key.startswith("int8_") else (h.get("validation_int8") or {}).get(key[5:])
        if not r:
            continue
        rows.append([label, num(r["n"], "d"), pct(r["median_abs_error"]), num(r["spearman"], ".3f"),
                     pct(r["speedup_median_abs_error"]), ms(r.get("median_measured_ms"))])  # fmt: skip
        for name, c in sorted((r.get("compare") or {}).items()):
            rows.append([f"{label}, {name}", num(r["n"], "d"), pct(c["median_abs_error"]), num(c["spearman"], ".3f"),
                         pct(c["speedup_median_abs_error"]), "same timings"])  # fmt: skip
    out += table(["random models", "n", "median abs error", "Spearman", "speed-up median abs error",
                  "median measured ms"], rows)  # fmt: skip
    int8_ctx = h.get("int8_context")
    if int8_ctx:
        out += [
            "int8 in-graph factors (fp32 part held): "
            + ", ".join(f"{k} {num(v, '.2f')}" for k, v in sorted(int8_ctx["factors"].items()))
            + f" (fit median error {pct(int8_ctx['fit_median_abs_error'])}).",
            "",
        ]
    drift = p.get("machine_drift_resnet20_ms")
    if drift:
        out += [f"Drift: ResNet-20 measured {len(drift)} times: {ms(min(drift))}-{ms(max(drift))} ms.", ""]
    return out


def render_replay_export(p: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for entry, r in p["results"].items():
        s = r["search"]
        threads = r.get("predicted_threads")
        settings = [
            f"model {r['model']}",
            f"budget {r['budget_ratio']:g} x base",
            f"table {r.get('device', 'host')}",
            f"techniques {','.join(r.get('techniques', ['keep']))}",
            f"fill {r.get('fill_budget', False)}",
            f"{r.get('search_finetune_batches', 0)} fine-tune steps per scored policy",
            f"round to {r.get('round_to')}",
            f"{r.get('finetune_epochs')} replay epochs",
        ]
        out += [
            f"Entry `{entry}`: " + ", ".join(settings) + ".",
            f"Search: {s.get('episodes')} episodes, best score {num(s.get('best'), '.3f')}, budget "
            f"{num(s.get('budget_ms'), '.4f')} of {num(s.get('base_latency_ms'), '.4f')} ms predicted, "
            + (f"{s['seconds']:.0f} s." if s.get("seconds") is not None else "search time not recorded."),
            "",
        ]
        t, pred = r["interleaved"], r["predicted_host_ms"]
        rows = []
        for variant in ("original", "searched", "uniform"):
            for fmt, label in (("onnx", "fp32"), ("onnx-int8", "int8")):
                key = f"{variant} {fmt}"
                predicted = pred["original"] / pred[variant] if fmt == "onnx" and variant != "original" else None
                rows.append([
                    f"{variant} {label}", num(r["measured"][variant][fmt]["top1"]),
                    ms(t["batch1"][key]["median_ms"]), times(t["batch1"][key]["speedup"]), times(predicted),
                    times(t["batch64"][key]["speedup"]), ms(t["batch1_1thread"][key]["median_ms"]),
                    times(t["batch1_1thread"][key]["speedup"]), f"{r['measured'][variant][fmt]['bytes']:,}",
                ])  # fmt: skip
        predicted_label = f"predicted b1 ({threads}-thread table)" if threads else "predicted b1 (host table)"
        out += table(
            ["variant", "test top-1", "b1 ms, 2 threads", "speed-up b1", predicted_label, "speed-up b64",
             "b1 ms, 1 thread", "speed-up b1, 1 thread", "ONNX bytes"],
            rows,
        )  # fmt: skip
    return out


def render_search_agents(p: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for model, row in p["results"].items():
        methods = [m for m in ("random", "tpe", "nsga2", "ddpg") if m in row]
        if methods:
            u = row.get("uniform_within_budget") or {}
            out += [
                f"{model}: {row.get('evals')} evaluations per method and seed, budget {row.get('budget_ratio')} x base "
                f"({num(row.get('budget_ms'), '.4f')} of {num(row.get('base_latency_ms'), '.4f')} ms, "
                f"{row.get('device')}), base accuracy {num(row.get('base_accuracy'), '.3f')}; uniform keep "
                f"{u.get('keep')} within budget: {num(u.get('accuracy'), '.3f')}.",
                "",
            ]
            out += table(
                ["method", "best within budget per seed", "mean", "hypervolume (mean)", "evaluations / min"],
                [[m, seq(row[m].get("best_accuracy_per_seed")), num(row[m].get("mean"), ".3f"),
                  num(row[m].get("hypervolume_mean"), ".3f"), num(row[m].get("evals_per_minute"), ".1f")]
                 for m in methods],
            )  # fmt: skip
        if "ray_throughput" in row:
            out += [f"{model}: Ray Tune throughput (wall time including Ray start-up):", ""]
            out += table(
                ["workers", "trials", "seconds", "trials / min", "best accuracy"],
                [[w.removeprefix("workers_"), num(v["trials"], "d"), num(v["seconds_total"], ".1f"),
                  num(v["trials_per_minute"], ".1f"), num(v.get("best_accuracy"), ".3f")]
                 for w, v in sorted(row["ray_throughput"].items())],
            )  # fmt: skip
    return out


def render_search_ddpg(p: dict[str, Any]) -> list[str]:
    rows = []
    for model, row in p["results"].items():
        budget = f"{row['budget_ratio']:g} ({num(row['budget_ms'], '.3f')} ms)"
        first = [model, budget, num(row["base_accuracy"], ".3f")]
        for m in ("ddpg", "random"):
            r = row[m]
            rows.append([*first, m, seq(r["best_accuracy_per_seed"]), num(r["mean"], ".3f"),
                         num(r["episodes_per_minute"], ".0f")])  # fmt: skip
        u = row["uniform"]
        rows.append([*first, f"uniform keep {u['keep']}", num(u["accuracy"], ".3f"), "", ""])
    header = ["model", "budget x base", "base", "method", "best within budget per seed", "mean", "episodes / min"]
    return table(header, rows)


def render_thread_states(p: dict[str, Any]) -> list[str]:
    rows = [
        [name, times(s["speedup_min"]), times(s["speedup_median"]), times(s["speedup_max"]),
         ms(s["original_ms_median"]), ms(s["pruned_ms_median"]), num(len(s.get("samples", [])), "d")]
        for name, s in p["settings"].items()
    ]  # fmt: skip
    return table(["setting", "pruned speed-up min", "median", "max", "original ms (median)", "pruned ms (median)",
                  "samples"], rows)  # fmt: skip


def render_import_time(p: dict[str, Any]) -> list[str]:
    rows = []
    for label, r in p["results"].items():
        b, a = r["before"], r["after"]
        speedup = times(b["median_s"] / a["median_s"])
        rows.append([f"`{label}`", f"{b['median_s']:.2f} s", f"{a['median_s']:.2f} s", speedup,
                     "yes" if b["imports_torch"] else "no", "yes" if a["imports_torch"] else "no"])  # fmt: skip
    return table([f"command (median of {p['runs']})", f"before ({p['before_commit']})", "after", "faster",
                  "torch imported before", "after"], rows)  # fmt: skip


def render_onnx_exporters(p: dict[str, Any]) -> list[str]:
    rows = [
        [name, f"{r['export_seconds_median']['torchscript']:.2f} s", f"{r['export_seconds_median']['dynamo']:.2f} s",
         times(r["dynamo_over_torchscript"]), f"{r['nodes']['torchscript']} / {r['nodes']['dynamo']}",
         f"{r['max_abs_output_difference']:.1e}"]
        for name, r in p["results"].items()
    ]  # fmt: skip
    return table(["model (28x28)", "TorchScript export", "dynamo export", "dynamo / TorchScript",
                  "ONNX nodes (TS / dynamo)", "max output difference"], rows)  # fmt: skip


def render_byo_model(p: dict[str, Any]) -> list[str]:
    w, s, r, pi, m = p["weights"], p["search"], p["replay"], p["predicted_raspberry_pi_4"], p["measured_here"]
    trained = f"{w['steps']} steps of {w['batch_size']} ({w['samples']} images), {w['seconds']:.0f} s on {w['device']}"
    rows = [
        ["base weights (trained without edgecompress)", trained],
        ["test top-1: base / compressed before / after fine-tuning",
         f"{r['test_top1_base']:.4f} / {r['test_top1_before_finetune']:.4f} / {r['test_top1_after_finetune']:.4f} "
         f"({r['accuracy_source']})"],
        ["fine-tuning in replay (distillation)", f"{r['finetune_batches']} batches"],
        ["params, MACs",
         f"{r['params_before']:,} -> {r['params_after']:,}; {r['macs_before']:,} -> {r['macs_after']:,}"],
        ["predicted Raspberry Pi 4", f"{ms(pi['base_ms'])} -> {ms(pi['compressed_ms'])} ms: {times(pi['speedup'])}"],
        ["measured here (ONNX Runtime, 1 thread, batch 1, interleaved)",
         f"{ms(m['base_ms_median'])} -> {ms(m['compressed_ms_median'])} ms: "
         f"{times(m['speedup_median_of_round_ratios'])} (median of round ratios {seq(m['round_ratios'], '.2f')})"],
        ["search", f"{s['trials']} trials in {s['seconds']:.0f} s; {s['evaluations_per_minute']:.2f} evaluations/min "
                   f"(median {s['median_seconds_per_evaluation']:.1f} s)"],
        ["search time per phase (s, all trials)", ", ".join(f"{k} {v:.1f}" for k, v in s["phase_seconds"].items())],
        ["peak RSS: search / replay / export", f"{s['peak_rss_mib']:,} / {r['peak_rss_mib']:,} / "
                                               f"{p['export']['peak_rss_mib']:,} MiB"],
    ]  # fmt: skip
    return table(["", f"{p['variant']}"], rows)


def render_compare_techniques(p: dict[str, Any]) -> list[str]:
    b = p["base"]
    dense = b["huffman_bytes"]
    rows = [["base", "", "", num(b["accuracy"]["top1"]), num(b["accuracy"]["f1"]), f"{b['params']:,}",
             f"{b['huffman_bytes']:,}", ms(b["latency_ms"]), "1.00x", ""]]  # fmt: skip
    for r in p["rows"]:
        if not r["met"]:
            rows.append([r["technique"], r["budget"], "not met: " + r["reason"][24:90], "", "", "", "", "", "", ""])
            continue
        hidden = ("priced", "summary", "run_folder", "candidates")
        setting = ", ".join(f"{k} {v}" for k, v in r["setting"].items() if k not in hidden)
        secs = r["seconds"]
        rows.append([
            r["technique"], r["budget"], setting[:60], num(r["accuracy"]["top1"]), num(r["accuracy"]["f1"]),
            f"{r['params']:,}", f"{r['huffman_bytes']:,} ({dense / max(r['huffman_bytes'], 1):.1f}x)",
            ms(r["latency_ms"]), times(r["measured_speedup"]["batch1"]),
            f"{secs['compression'] + secs['search']:.0f} + {secs['finetune']:.0f}",
        ])  # fmt: skip
    head = ["technique", "budget", "setting", "top-1", "macro F1", "params", "archive bytes",
            f"{p['device']} ms (pred.)", "here b1 (meas.)", "compress + ft s"]  # fmt: skip
    return [*table(head, rows), "", f"Accuracy: {p['accuracy_source']}. Measured: {p['measured_source']}."]


def render_deploy_formats(p: dict[str, Any]) -> list[str]:
    one, two = p["latency"]["1_thread"], p["latency"]["2_threads"]
    rows = []
    for name, e in p["exports"].items():
        if "error" in e:
            rows.append([name, "export failed", "", "", "", "", "", ""])
            continue
        rows.append([
            name, num(e["top1"]), f"{e['top1_agreement_with_pytorch']:.2%}", f"{e['bytes']:,}",
            ms(one[name]["ms"]), times(one[name]["speedup_vs_original_onnx_fp32"]),
            ms(two[name]["ms"]), times(two[name]["speedup_vs_original_onnx_fp32"]),
        ])  # fmt: skip
    r = p["replay"]
    head = ["model / format", "test top-1", "agreement", "bytes", "1 thread ms", "x", "2 threads ms", "x"]
    return [
        *table(head, rows),
        "",
        f"Base {num(r['base_top1'])}; replayed (8-bit weights and activations, distilled): "
        + ", ".join(f"{v} {num(t)}" for v, t in r["top1"].items())
        + f". Speed-ups: median over {p['latency']['rounds']} rounds of the per-round ratio to the original's "
        "ONNX fp32 file; agreement: top-1 agreement with the PyTorch model each file encodes.",
        *[f"{name}: export failed: {e['error']}" for name, e in p["exports"].items() if "error" in e],
    ]


def render_real_size_predictions(p: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key, label in (("with_roofline", "shipped (roofline beyond the calibration range)"),
                       ("fitted_terms_only", "fitted terms extrapolated linearly (before)")):  # fmt: skip
        part = p[key]
        devices = list(next(iter(part["ms"].values())))
        held = part["invariants"]
        out += [f"Predicted ms, {label}: {sum(held.values())}/{len(held)} invariants hold"
                + ("" if all(held.values()) else " (broken: " + "; ".join(k for k, v in held.items() if not v) + ")"),
                ""]  # fmt: skip
        out += table(["network", *devices], [[n, *(ms(v[d]) for d in devices)] for n, v in part["ms"].items()])
        out += [""]
    peaks = "; ".join(f"{d}: {v['gmacs']:g} GMAC/s, {v['gbps']:g} GB/s" for d, v in p["roofline"].items())
    return [*out, f"Roofline (published peaks): {peaks}. {p['what']}.", ""]


def render_device_models(p: dict[str, Any]) -> list[str]:
    rows = []
    for name, d in p["devices"].items():
        if "per_runtime" in d:
            for rt, r in d["per_runtime"].items():
                rows.append([f"{name} ({rt}, nothing fitted)", num(r["n"], "d"), num(r["spearman"], ".3f"),
                             num(r["flops_spearman"], ".3f"), pct(r["mape_scaled"]), "-", "-"])  # fmt: skip
            continue
        t = d.get("target")
        rows.append([name, num(d["n"], "d"), num(d["spearman"], ".3f"), num(d["flops_spearman"], ".3f"),
                     pct(d["mape_scaled"]), d["folding"],
                     "-" if t is None else f">= {t['spearman']:g}, +{t['above_macs_by']:g} over MACs: "
                     + ("met" if t["met"] else "not met")])  # fmt: skip
        if "energy" in d:
            e = d["energy"]
            rows.append([f"{name} energy (mJ)", num(e["n"], "d"), num(e["spearman"], ".3f"),
                         num(e["flops_spearman"], ".3f"), pct(e["mape_scaled"]), e["folding"],
                         f">= {e['target']['spearman']:g}, MAPE <= {pct(e['target']['mape_scaled'])}: "
                         + ("met" if e["met"] else "not met")])  # fmt: skip
    out = ["NAS-Bench-201 holdout rows (Spearman, the MACs ranking of the same networks, MAPE after one scale, the "
           "cross-validated reading of the calibration networks):", ""]  # fmt: skip
    out += table(["profile", "n", "Spearman", "MACs Spearman", "MAPE one scale", "folding", "target"], rows)
    for name, d in p["devices"].items():
        fb = d.get("fbnet_holdout")
        if fb:
            out += [f"{name} on FBNet's odd (holdout) layer rows, {fb['n']} block differences: Spearman "
                    f"{fb['spearman']:.3f} (MACs {fb['macs_spearman']:.3f}), grouped 1x1 sign right "
                    f"{pct(fb['grouped_sign_right'])}, expansion-6 deltas at {fb['e6_ratio_median']:.2f}x the measured "
                    f"median; target Spearman >= {fb['target']['spearman']:g} and grouped sign >= "
                    f"{pct(fb['target']['grouped_sign_right'])}: {'met' if fb['met'] else 'not met'}.", ""]  # fmt: skip
    return out


def render_nb201_noise_ceiling(p: dict[str, Any]) -> list[str]:
    rows = []
    for name, d in p["devices"].items():
        r, cv = d["replicates"], d["cv_spearman"]
        rows.append([name, num(d["calibration_networks"], "d"), num(r["networks"], "d"),
                     pct(r["median_relative_difference"]), num(r["spearman_one_vs_mean_of_others"], ".3f"),
                     num(cv["live_edge_counts_linear"], ".3f"),
                     num(cv["one_hot_edges_and_pairs_log"], ".3f")])  # fmt: skip
    header = ["device", "networks", "replicated", "replicate median difference", "Spearman one vs replicates",
              "CV: live edge counts", "CV: one-hot edges + pairs"]  # fmt: skip
    return [f"{p['what']}.", "", *table(header, rows)]


def render_gpu_profile(p: dict[str, Any]) -> list[str]:
    m = p["measured_on"]
    out = [f"{p['note']}", "",
           f"Measured on {m['gpu']} ({m['system']}" + (f", {m['cpu_cores']} CPU cores" if m.get("cpu_cores") else "")
           + f"), {m['date']}, onnxruntime-gpu "
           f"{m['onnxruntime_gpu']}, torch {m['torch']}: `{m['command']}`. Timing: {m['io']}. Table: "
           f"{p['table']['entries']} operators, call overhead {p['table']['overhead_ms']:.4f} ms.", ""]  # fmt: skip
    rows = [[r["net"], r["precision"], ms(r["measured_ms"]), ms(r["predicted_ms"]), f"{r['error']:+.1%}"]
            for r in p["rows"]]  # fmt: skip
    out += table(["network (224x224)", "precision", "measured ms", "table sum ms", "error"], rows)
    cpu = "; ".join(f"{k} {v:.2f} ms" for k, v in p["cpu_provider_1thread_ms"].items())
    return [*out, f"Spearman {p['spearman']:.3f}, median absolute error {pct(p['median_abs_error'])}. The same "
            f"machine's CPU provider, 1 thread: {cpu}.", ""]  # fmt: skip


def render_gpu_training(p: dict[str, Any]) -> list[str]:
    g, c = p["gpu"], p["cpu"]
    rows = [[r["net"], r["precision"], r["device"], num(r["images_per_second"], ".0f"), f"{r['vs_cpu_fp32']:g}x"]
            for r in p["rows"]]  # fmt: skip
    rows += [[r["net"], r["precision"], r["device"], num(r["images_per_second"], ".1f"), "1x"] for r in c["rows"]]
    return [f"{p['what']}. GPU run {g['date']} ({g['system']}, torch {g['torch']}): `{g['command']}`; CPU run "
            f"{c['date']}: `{c['command']}`.", "",
            *table(["network", "precision", "device", "images/s", "vs CPU fp32"], rows), ""]  # fmt: skip


def render_channel_steps(p: dict[str, Any]) -> list[str]:
    m = p["ms"]
    cells = [("cout", "fp32"), ("cout", "int8"), ("cin", "fp32"), ("cin", "int8")]
    rows = [[c, *(num(m[s][q][c], ".4f") for s, q in cells)] for c in m["cout"]["fp32"]]
    return [f"{p['what']}; channel_block {p['channel_block']}, {p['rounds']} rounds.", "",
            *table(["channels", "cout: fp32", "cout: int8", "cin: fp32", "cin: int8"], rows), ""]  # fmt: skip


RENDERERS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "channel_steps": render_channel_steps,
    "gpu_profile": render_gpu_profile,
    "gpu_training": render_gpu_training,
    "real_size_predictions": render_real_size_predictions,
    "device_models": render_device_models,
    "nb201_noise_ceiling": render_nb201_noise_ceiling,
    "deploy_formats": render_deploy_formats,
    "compare_techniques": render_compare_techniques,
    "byo_model": render_byo_model,
    "compressors": render_compressors,
    "import_time": render_import_time,
    "onnx_exporters": render_onnx_exporters,
    "latency_models": render_latency_models,
    "replay_export": render_replay_export,
    "search_agents": render_search_agents,
    "search_ddpg": render_search_ddpg,
    "thread_states": render_thread_states,
    "train_base_models": render_train_base_models,
}


def leaves(v: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(v, dict):
        for k, x in v.items():
            yield from leaves(x, f"{path}.{k}" if path else str(k))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield from leaves(x, f"{path}[{i}]")
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
        yield path, v


def render_generic(p: dict[str, Any]) -> list[str]:
    values = list(leaves(p))
    if not values:
        return ["No numeric values.", ""]
    out = table(["key", "value"], [[f"`{k}`", num(v, ".6g")] for k, v in values[:GENERIC_ROWS]])
    if len(values) > GENERIC_ROWS:
        out += [f"... and {len(values) - GENERIC_ROWS} more numeric values in the JSON file.", ""]
    return out


# ---------------------------------------------------------------------------------------------- page


def split_name(stem: str) -> tuple[str, str]:
    benchmark, _, variant = stem.partition("__")
    return benchmark, variant


def date_line(d: dict[str, Any]) -> str:
    if d.get("date"):
        return str(d["date"])
    lo, hi = d.get("date_not_before"), d.get("date_not_after")
    return f"not recorded (between {lo} and {hi})" if lo or hi else "not recorded"


def section(path: Path, d: dict[str, Any]) -> list[str]:
    benchmark, variant = split_name(path.stem)
    m = d.get("machine") or {}
    v = d.get("versions") or {}
    cores = f", {m['cores']} cores" if m.get("cores") else ""
    arch = ", ".join(str(m[k]) for k in ("machine", "system") if m.get(k))
    versions = ", ".join(f"{k} {v[k]}" for k in ("torch", "onnxruntime") if v.get(k) and v[k] != "not installed")
    out = [
        f"## {benchmark}" + (f" — {variant}" if variant else ""),
        "",
        f"- File: `{path.as_posix()}`",
        f"- Date: {date_line(d)}",
        f"- Machine: {m.get('cpu', 'unknown')}{cores}" + (f" ({arch})" if arch else ""),
        f"- Versions: {versions or 'not recorded'}" + (f"; platform {v['platform']}" if v.get("platform") else ""),
        "",
        "Command:",
        "",
        "```bash",
        *[f"{c}   # prerequisite" for c in d.get("prerequisite_commands") or []],
        str(d.get("command")),
        "```",
        "",
    ]
    if d.get("provenance_note"):
        out += [f"> Provenance: {d['provenance_note']}", ""]
    payload = {k: x for k, x in d.items() if k not in HEADER_KEYS}
    renderer = RENDERERS.get(benchmark, render_generic)
    try:
        body = renderer(payload)
    except (KeyError, TypeError, ValueError, AttributeError, ZeroDivisionError):
        body = render_generic(payload)
    out += body
    out += [f"Reproduce: `python benchmarks/reproduce.py --only {path.stem}`", ""]
    return out


def render(results: Path) -> str:
    files = sorted(results.glob("*.json"), key=lambda f: f.stem)
    docs = [(f, json.loads(f.read_text())) for f in files]
    lines = [
        "# Benchmark results",
        "",
        "Generated by benchmarks/render_readme.py from benchmarks/results/*.json; do not edit by hand.",
        "",
        "One JSON file per benchmark and variant (`<benchmark>__<variant>.json`), each holding one run of one "
        "command with its own date, machine, versions and exact command; earlier runs are in git history "
        "(`git log -p -- benchmarks/results/`). `make benchmarks` re-runs the command of every file listed "
        "here (`benchmarks/reproduce.py`, which sets `--out` to the listed file where a command names one) "
        "and regenerates this page; `make benchmarks-readme` only regenerates it.",
        "",
    ]
    lines += table(
        ["file", "date", "command"],
        [[f"[{f.stem}](#{anchor(f.stem)})", date_line(d), f"`{d.get('command')}`"] for f, d in docs],
    )
    for f, d in docs:
        lines += section(f, d)
    return "\n".join(lines).rstrip("\n") + "\n"


def anchor(stem: str) -> str:
    """GitHub's heading anchor for '## benchmark — variant'."""
    benchmark, variant = split_name(stem)
    title = f"{benchmark} — {variant}" if variant else benchmark
    keep = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return keep.replace(" ", "-")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="benchmarks/results")
    parser.add_argument("--out", default="benchmarks/README.md")
    parser.add_argument("--check", action="store_true", help="exit 1 if --out differs from what the files give")
    args = parser.parse_args()
    text = render(Path(args.results))
    out = Path(args.out)
    if args.check:
        if not out.exists() or out.read_text() != text:
            sys.exit(f"{out} is out of date: run python benchmarks/render_readme.py")
        return
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
