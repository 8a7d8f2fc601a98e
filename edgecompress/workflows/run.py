"""The main job (``edgecompress run``): one config in, one self-describing run folder out.

Steps: resolve and record the config; load the data; load the base model
from its checkpoint, or train it there when the file is missing; analyse it;
measure its accuracy; write ``summary.json`` and print a summary. Search,
replay and export steps join here as they land. Re-running the same command
on the same folder reuses what is there; a different config for an existing
folder is refused so nothing a user made is overwritten.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from edgecompress._progress import make_console
from edgecompress.analysis import analyze_model
from edgecompress.config import write_resolved_config
from edgecompress.latency_models import estimate_latency
from edgecompress.training import evaluate
from edgecompress.version import software_versions
from edgecompress.workflows.config import load_run_config
from edgecompress.workflows.train import check_base_model, ensure_base_model, load_bundle

__all__ = ["run_pipeline"]


def run_pipeline(
    config_path: str | Path | None, overrides: dict[str, Any] | None = None, *, console: Console | None = None
) -> dict[str, Any]:
    console = console or make_console()
    started = time.perf_counter()
    cfg = load_run_config(config_path, overrides)
    run_dir = Path(cfg.out)
    check_base_model(cfg)  # bad paths fail before the run folder is touched
    bundle = load_bundle(cfg)
    console.print(f"data: {bundle.name} from {bundle.source}, split {bundle.sizes()} (validation seed {cfg.data.seed})")
    model, spec, ckpt, trained_now = ensure_base_model(
        cfg, bundle, console, lambda: write_resolved_config(cfg, run_dir)
    )

    analysis = analyze_model(model, spec.input_shape)
    (run_dir / "analysis.json").write_text(json.dumps(analysis.to_dict(), indent=2) + "\n")
    t0 = time.perf_counter()
    test = evaluate(model, bundle.test, topk=(1, 5))
    val = evaluate(model, bundle.val_subset(cfg.data.val_samples))
    eval_seconds = time.perf_counter() - t0
    latency = estimate_latency(model, spec.input_shape, cfg.device)
    totals = analysis.totals
    summary = {
        "run": cfg.name,
        "model": spec.model,
        "dataset": bundle.name,
        "checkpoint": str(ckpt),
        "trained_now": trained_now,
        "train_seconds": spec.train.get("seconds"),
        "params": totals["params"],
        "model_params": totals["model_params"],
        "macs": totals["macs"],
        "weight_bytes": totals["weight_bytes"],
        "compressible_layers": totals["layers"],
        "channel_groups": totals["groups"],
        "test_top1": test["top1"],
        "test_top5": test["top5"],
        "val_subset_top1": val["top1"],
        "val_subset_samples": min(cfg.data.val_samples, len(bundle.val)),  # type: ignore[arg-type]
        "device": cfg.device,
        "predicted_latency_ms": latency.total_ms,
        "latency_source": latency.source,
        "latency_warnings": latency.warnings,
        "sources": {
            "params/macs/bytes": "analysis: batch-1 forward pass with hooks (analysis.json)",
            "accuracy": f"measured in this run on the {bundle.name} test split ({len(bundle.test)} samples) "  # type: ignore[arg-type]
            "and the validation subset searches score on",
            "train_seconds": "wall time recorded in the checkpoint when it was trained",
        },
        "versions": software_versions(),
        "seconds": round(time.perf_counter() - started, 2),
        "eval_seconds": round(eval_seconds, 2),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _print_summary(console, summary, run_dir)
    return summary


def _print_summary(console: Console, s: dict[str, Any], run_dir: Path) -> None:
    table = Table(title=f"run {s['run']}: {s['model']} on {s['dataset']}", show_header=True)
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_column("where it comes from")
    table.add_row("checkpoint", s["checkpoint"], "trained in this run" if s["trained_now"] else "loaded")
    if s["train_seconds"] is not None:
        table.add_row("training wall time", f"{s['train_seconds']:.1f} s", "measured when the checkpoint was trained")
    table.add_row("compressible layers", str(s["compressible_layers"]), "analysis")
    table.add_row("coupled channel groups", str(s["channel_groups"]), "torch-pruning dependency graph")
    table.add_row("params (conv + linear)", f"{s['params']:,}", "analysis (forward pass)")
    table.add_row("params (all)", f"{s['model_params']:,}", "model.parameters()")
    table.add_row("MACs (batch 1)", f"{s['macs']:,}", "analysis (forward pass)")
    table.add_row("weights at fp32", f"{s['weight_bytes'] / 1024:,.1f} KiB", "analysis (forward pass)")
    table.add_row("test top-1", f"{s['test_top1']:.4f}", "measured now, full test split")
    table.add_row("test top-5", f"{s['test_top5']:.4f}", "measured now, full test split")
    table.add_row(
        "validation-subset top-1", f"{s['val_subset_top1']:.4f}",
        f"measured now, {s['val_subset_samples']} samples (what searches score on)",
    )  # fmt: skip
    table.add_row(f"latency on {s['device']} (batch 1)", f"{s['predicted_latency_ms']:.3f} ms", s["latency_source"])
    console.print(table)
    for w in s["latency_warnings"]:
        console.print(f"[yellow]warning:[/] {w}")
    console.print(f"run folder: {run_dir} (config.yaml, analysis.json, summary.json)")
