"""``edgecompress compress``: one resumable command from a trained model to deployable files.

Steps, in the run folder ``cfg.out``: (1) search a policy for the device under
the budget (``speedup``: base latency / speedup, or ``budget_ms``) with the
config's agent; (2) replay the best policy with distillation into
``OUT/replay``; (3) export it in each asked format (default: fp32 ONNX plus the
device's natural format), each verified against PyTorch on the test split;
(4) time the base and the compressed model here, round-robin, at 1 thread;
(5) write ``compress.json`` and print one summary. Every step is skipped when a
previous run of the same command finished it (the search resumes where it
stopped), so a killed ``compress`` re-run continues. A budget below the floor
the space allows is refused before anything is searched, stating that floor.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn
from rich.console import Console
from rich.table import Table
from torch.utils.data import Subset

from edgecompress._io import check_foreign_files, read_json, write_json_atomic
from edgecompress.artifacts.checkpoint import load_checkpoint
from edgecompress.artifacts.compressed import load_compressed
from edgecompress.artifacts.export import FORMATS, export_model
from edgecompress.artifacts.weights import file_sha256
from edgecompress.compressors import Policy, compress
from edgecompress.compressors.quantization import CALIBRATION_BATCHES
from edgecompress.config import RunConfig
from edgecompress.data import DataBundle, first_batches
from edgecompress.errors import ConfigError
from edgecompress.latency_models import estimate_latency
from edgecompress.latency_models.onnx import speedup_against
from edgecompress.search.objective import policy_latency
from edgecompress.training import distill as run_distill
from edgecompress.training import evaluate, recalibrate_batchnorm
from edgecompress.version import cpu_name, software_versions
from edgecompress.workflows.api import search_policy
from edgecompress.workflows.replay import replay
from edgecompress.workflows.search import SEARCH_FILES, run_search

__all__ = ["FILE_NAMES", "CompressResult", "compress_for", "natural_format", "run_compress"]

FILE_NAMES = {
    "onnx": "model.onnx",
    "onnx-fp16": "model-fp16.onnx",
    "onnx-int8": "model-int8.onnx",
    "tflite": "model.tflite",
    "tflite-int8": "model-int8.tflite",
    "torchscript": "model.torchscript.pt",
    "archive": "model.ecar",
}


def natural_format(device: str) -> str:
    """The format a device's usual runtime takes: fp16 ONNX for a Jetson (TensorRT builds fp16 engines from it),
    mixed int8 ONNX for a Raspberry Pi (ONNX Runtime's Arm int8 kernels), fp32 ONNX for this machine."""
    if device.startswith("jetson"):
        return "onnx-fp16"
    if device.startswith("raspberry-pi"):
        return "onnx-int8"
    return "onnx"


def run_compress(
    cfg: RunConfig,
    console: Console,
    *,
    speedup: float | None = None,
    formats: list[str] | None = None,
    finetune_epochs: int = 1,
    finetune_lr: float = 0.01,
    max_batches: int | None = None,
    test_samples: int | None = None,
    threads: int = 1,
    rounds: int = 7,
    progress: bool = True,
) -> dict[str, Any]:
    """Search, replay, export and time (see the module docstring); returns what ``compress.json`` holds."""
    if speedup is not None:
        if not math.isfinite(speedup) or speedup <= 1:
            raise ConfigError(f"--speedup {speedup} is invalid; valid: a number > 1 (2 asks for half the latency)")
        if cfg.search.budget_ms is not None:
            raise ConfigError("give --speedup or --budget-ms, not both")
        cfg.search.budget_ratio = 1 / speedup
    formats = list(formats) if formats else ["onnx", natural_format(cfg.device)]
    formats = list(dict.fromkeys(formats))
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ConfigError(f"unknown format(s) {', '.join(bad)}; valid: {', '.join(FORMATS)}")
    if finetune_epochs < 0:
        raise ConfigError(f"finetune_epochs must be >= 0, got {finetune_epochs}")
    started = time.perf_counter()
    out = Path(cfg.out)
    check_foreign_files(out, [*SEARCH_FILES, "replay", "exports.json", "compress.json", *FILE_NAMES.values()],
                        "config.yaml", error=ConfigError)  # fmt: skip

    console.print(f"[bold]1/4 search[/] ({cfg.search.agent}, {cfg.search.episodes} policies) into {out}")
    search = run_search(cfg, console, progress=progress)
    if search.get("best") is None:
        raise ConfigError(
            f"no policy the search scored met the budget ({search['budget_ms']:.4f} ms on {cfg.device}); "
            f"run more episodes (--episodes) or relax the budget; the search log is in {out}"
        )
    policy_path = out / "best_policy.json"

    replay_dir = out / "replay"
    report_path = replay_dir / "report.json"
    recipe = {"finetune_epochs": finetune_epochs, "lr": finetune_lr, "max_batches": max_batches,
              "test_samples": test_samples}  # fmt: skip
    done = read_json(report_path, "replay report", ConfigError) if report_path.exists() else None
    if done is not None and done.get("compress_recipe") == recipe and _same_policy(done, policy_path):
        console.print(f"[bold]2/4 replay[/]: done in an earlier run ({report_path})")
        report = done
    else:
        console.print(f"[bold]2/4 replay[/] with distillation, {finetune_epochs} epoch(s), into {replay_dir}")
        report = replay(
            policy_path, replay_dir, finetune_epochs=finetune_epochs, lr=finetune_lr, max_batches=max_batches,
            devices=[cfg.device], measure=False, progress=progress, force=True, val_size=cfg.data.val_size,
            data_dir=cfg.data.data_dir, trust_factory=cfg.model.name, accelerator=cfg.train.accelerator,
            precision=cfg.train.precision, test_samples=test_samples, batch_size=cfg.train.batch_size,
        )  # fmt: skip
        report["compress_recipe"] = recipe
        report["policy_sha"] = file_sha256(policy_path)
        write_json_atomic(report_path, report)

    exports_path = out / "exports.json"
    exports: dict[str, Any] = read_json(exports_path, "export log", ConfigError) if exports_path.exists() else {}
    console.print(f"[bold]3/4 export[/]: {', '.join(formats)}")
    for fmt in formats:
        path = out / FILE_NAMES[fmt]
        key = fmt
        if key in exports and path.exists() and exports[key].get("replay_seconds") == report.get("seconds"):
            continue
        # A policy asking no 8-bit activations leaves onnx-int8 nothing to quantize: the device's int8 file then
        # quantizes every layer (calibrated on training batches, verified like the others), and says so.
        everything = fmt == "onnx-int8" and not _asks_int8(policy_path)
        r = export_model(
            replay_dir, fmt, path, force=True, measure=False, val_size=cfg.data.val_size, data_dir=cfg.data.data_dir,
            verify_samples=test_samples, trust_factory=cfg.model.name, all_layers=everything,
        )  # fmt: skip
        if everything:
            r["note"] = "the policy asks 8-bit activations on no layer: every layer quantized (--all-layers)"
        r["replay_seconds"] = report.get("seconds")
        exports[key] = r
        write_json_atomic(exports_path, exports)

    console.print(f"[bold]4/4 timing[/] base vs compressed here: ONNX Runtime, {threads} thread(s), {rounds} rounds")
    measured = _time_here(replay_dir, threads, rounds, trust_factory=cfg.model.name)
    pred = report["predicted_latency"][cfg.device]
    acc = report["accuracy"]
    size = report["size"]
    summary = {
        "model": report["model"],
        "device": cfg.device,
        "run_folder": str(out),
        "budget_ms": search["budget_ms"],
        "base_latency_ms": search["base_latency_ms"],
        "accuracy": {
            "base_top1": acc["base"]["top1"],
            "compressed_top1": acc["after_finetune"]["top1"],
            "source": acc["source"],
        },
        "size": {
            "dense_bytes_before": size["dense_bytes_before"],
            "stored_bytes_after": size["stored_bytes_after"],
            "params_before": size["params_before"],
            "params_after": size["params_after"],
            "source": size["source"],
        },
        "predicted": {
            "base_ms": pred["base_ms"],
            "compressed_ms": pred["compressed_ms"],
            "speedup": pred["speedup"],
            "source": pred["source"],
        },
        "measured": measured,
        "files": {
            "policy": str(policy_path),
            "compressed_model": str(replay_dir / "model.pt"),
            "replay_report": str(replay_dir / "report.md"),
            **{fmt: exports[fmt]["out"] for fmt in formats},
        },
        "exports": {
            fmt: {"bytes": exports[fmt]["bytes"], "parity": exports[fmt]["parity"], "note": exports[fmt].get("note")}
            for fmt in formats
        },
        "seconds_this_run": round(time.perf_counter() - started, 1),
        "versions": software_versions(),
    }
    write_json_atomic(out / "compress.json", summary)
    print_summary(console, summary)
    return summary


def _asks_int8(policy_path: Path) -> bool:
    return any(lp.abits <= 8 for lp in Policy.load(policy_path).layers.values())


def _same_policy(report: dict[str, Any], policy_path: Path) -> bool:
    return bool(report.get("policy_sha") == file_sha256(policy_path))


def _time_here(replay_dir: Path, threads: int, rounds: int, *, trust_factory: str) -> dict[str, Any]:
    model, spec, policy, _ = load_compressed(replay_dir, trust_factory=trust_factory)
    base, _ = load_checkpoint(policy.base["checkpoint"], trust_factory=trust_factory)
    m = speedup_against(base, model, spec.input_shape, threads=threads, rounds=rounds, warmup=10, repeats=100)
    return {
        "base_ms": m["base_ms"],
        "compressed_ms": m["ms"],
        "speedup": m["speedup"],
        "source": (
            f"measured on this machine ({cpu_name()}, {os.cpu_count()} cores): ONNX Runtime CPU provider, "
            f"{threads} thread(s), batch 1, fp32 ONNX, {rounds} rounds of 100 runs with the two models in turn; "
            "speed-up = median per-round ratio"
        ),
    }


def print_summary(console: Console, s: dict[str, Any]) -> None:
    a, z, p, m = s["accuracy"], s["size"], s["predicted"], s["measured"]
    t = Table(title=f"{s['model']} compressed for {s['device']}")
    t.add_column("")
    t.add_column("base", justify="right")
    t.add_column("compressed", justify="right")
    t.add_column("", justify="right")
    t.add_column("where it comes from")
    t.add_row("test top-1", f"{a['base_top1']:.4f}", f"{a['compressed_top1']:.4f}",
              f"{100 * (a['compressed_top1'] - a['base_top1']):+.2f} pt", a["source"])  # fmt: skip
    before, after = z["dense_bytes_before"], z["stored_bytes_after"]
    t.add_row("stored weights", f"{before / 1024:,.1f} KiB", f"{after / 1024:,.1f} KiB",
              f"{before / max(after, 1):.2f}x smaller", z["source"])  # fmt: skip
    t.add_row(f"latency on {s['device']}", f"{p['base_ms']:.4f} ms", f"{p['compressed_ms']:.4f} ms",
              f"{p['speedup']:.2f}x faster", f"predicted: {p['source']}")  # fmt: skip
    t.add_row("latency here", f"{m['base_ms']:.4f} ms", f"{m['compressed_ms']:.4f} ms", f"{m['speedup']:.2f}x faster",
              m["source"])  # fmt: skip
    console.print(t)
    console.print("files:")
    for what, path in s["files"].items():
        e = s["exports"].get(what)
        if e is None:
            console.print(f"  {what}: {path}")
            continue
        par = e["parity"]
        console.print(
            f"  {what}: {path} ({e['bytes'] / 1024:,.1f} KiB; ONNX Runtime here: top-1 {par['top1']:.4f} on "
            f"{par['samples']} test images, {par['top1_agreement']:.2%} agreement with PyTorch)"
            + (f"; {e['note']}" if e.get("note") else "")
        )


@dataclass
class CompressResult:
    """What :func:`compress_for` returns: the compressed module and its report."""

    model: nn.Module
    """The compressed, fine-tuned model (eval mode, on the CPU): drops into the caller's code as a module."""
    policy: Policy
    report: dict[str, Any]
    """Accuracy before / after (test split), size, predicted latency on the device (with its source), the
    search's summary and run folder."""


def compress_for(
    model: nn.Module,
    data: DataBundle,
    *,
    device: str = "raspberry-pi-4",
    budget_ms: float | None = None,
    speedup: float | None = None,
    finetune_epochs: int = 1,
    finetune_lr: float = 0.01,
    max_batches: int | None = None,
    test_samples: int | None = None,
    out: str | Path = "runs/compress-python",
    progress: bool = False,
    **search_options: Any,
) -> CompressResult:
    """Python: ``edgecompress.compress_for(model, data, device="raspberry-pi-4", speedup=2)``.

    Searches a policy for ``model`` under the budget (``budget_ms``, or the base's predicted latency divided by
    ``speedup``; default speed-up 2) with :func:`edgecompress.search_policy` (``search_options``: its keyword
    arguments, e.g. ``agent``, ``episodes``, ``techniques``), applies it, re-estimates BatchNorm, distils from
    ``model`` for ``finetune_epochs`` on ``data.train`` and scores on ``data.test``. ``model`` is not modified.
    """
    if budget_ms is not None and speedup is not None:
        raise ConfigError("compress_for() takes budget_ms or speedup, not both")
    if speedup is not None and (not math.isfinite(speedup) or speedup <= 1):
        raise ConfigError(f"speedup {speedup} is invalid; valid: a number > 1 (2 asks for half the latency)")
    ratio = None if budget_ms is not None else 1 / (speedup or 2.0)
    found = search_policy(
        model, data, device=device, budget_ms=budget_ms, budget_ratio=ratio, out=out, progress=progress,
        **search_options,
    )  # fmt: skip
    if found.policy is None:
        raise ConfigError(
            f"no policy the search scored met the budget ({found.result['budget_ms']:.4f} ms on {device}); score "
            f"more policies (episodes=) or relax the budget; the search log is in {found.run_dir}"
        )
    model.eval()
    shape = (1, data.in_channels, data.input_size, data.input_size)
    drawn = first_batches(data.train, max(8, CALIBRATION_BATCHES))
    recorded = bool(found.policy.applied)
    compressed, compression = compress(model, found.policy, None if recorded else drawn[:CALIBRATION_BATCHES],
                                       input_shape=shape)  # fmt: skip
    recalibrate_batchnorm(compressed, drawn[:8])
    test = data.test if test_samples is None else Subset(data.test, range(min(test_samples, len(data.test))))  # type: ignore[arg-type]
    base_acc = evaluate(model, test, topk=(1, 5))
    if finetune_epochs:
        run_distill(compressed, model, data.train, epochs=finetune_epochs, lr=finetune_lr, max_batches=max_batches,
                    progress=progress, workers=data.workers)  # fmt: skip
    compressed.eval()
    after = evaluate(compressed, test, topk=(1, 5))
    base_ms = estimate_latency(model, shape, device)
    ms, source = policy_latency(compressed, found.policy, shape, device)
    totals = compression.totals
    report = {
        "accuracy": {"base": base_acc, "compressed": after,
                     "source": f"measured on the {data.name} test split ({len(test)} images)"},  # type: ignore[arg-type]
        "predicted_latency": {"device": device, "base_ms": base_ms.total_ms, "compressed_ms": ms.total_ms,
                              "speedup": base_ms.total_ms / max(ms.total_ms, 1e-12), "source": source},
        "size": {"dense_bytes_before": totals["dense_bytes_before"], "stored_bytes_after": totals["stored_bytes_after"],
                 "huffman_bytes_after": totals["huffman_bytes_after"], "params_after": compression.model_params_after},
        "search": {"run_folder": str(found.run_dir), "best": found.best},
    }  # fmt: skip
    return CompressResult(compressed, found.policy, report)
