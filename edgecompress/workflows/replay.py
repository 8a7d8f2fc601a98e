"""``edgecompress replay``: rebuild a found policy, fine-tune it (distillation by default), evaluate, report.

Steps, each deterministic for a seed: load the policy; load the base
checkpoint it names (or ``checkpoint=``) and refuse one made for another
model; compress with the policy (calibrating 8-bit activations on training
batches); recalibrate BatchNorm statistics on ``bn_batches`` training batches;
evaluate top-1/top-5 on the test split; fine-tune on the training split with
knowledge distillation from the base model (or plain cross-entropy); evaluate
again; write ``model.pt`` (a compressed checkpoint, see
:func:`edgecompress.checkpoint.save_compressed`), ``report.json`` and
``report.md``. The report gives params, MACs, stored size, peak activation
memory, accuracies, the predicted latency on every device profile (with its
source) and the measured ONNX Runtime latency on this machine.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from edgecompress._io import check_foreign_files, check_output, write_json_atomic
from edgecompress.analysis import analyze_model
from edgecompress.artifacts.checkpoint import check_data_matches, load_checkpoint
from edgecompress.artifacts.compressed import save_compressed
from edgecompress.compressors import Policy, compress, report_for
from edgecompress.compressors.quantization import CALIBRATION_BATCHES
from edgecompress.config import TrainConfig
from edgecompress.data import first_batches, load_dataset
from edgecompress.errors import ConfigError, ModelError, PolicyError
from edgecompress.latency_models import estimate_latency
from edgecompress.latency_models.devices import list_devices
from edgecompress.latency_models.estimate import energy_devices, estimate_energy
from edgecompress.latency_models.onnx import speedup_against
from edgecompress.models import create_model
from edgecompress.search.objective import policy_latency
from edgecompress.training import distill as run_distill
from edgecompress.training import evaluate, recalibrate_batchnorm, train
from edgecompress.training.accelerator import describe, resolve_accelerator
from edgecompress.version import cpu_name, software_versions

__all__ = ["replay", "report_markdown"]


def replay(
    policy_path: str | Path | None,
    out: str | Path,
    *,
    student: str | None = None,
    checkpoint: str | Path | None = None,
    finetune_epochs: int = 1,
    distill: bool = True,
    seed: int = 0,
    data_dir: str | None = None,
    lr: float = 0.01,
    augment: bool = False,
    batch_size: int = 128,
    bn_batches: int = 8,
    max_batches: int | None = None,
    devices: list[str] | None = None,
    measure: bool = True,
    threads: int = 1,
    rounds: int = 5,
    progress: bool = True,
    force: bool = False,
    val_size: int = 5000,
    trust_factory: str | None = None,
    accelerator: str = "cpu",
    precision: str = "fp32",
    test_samples: int | None = None,
) -> dict[str, Any]:
    """Rebuild ``policy_path``'s model, fine-tune it and report (see the module docstring); ``accelerator`` and
    ``precision``: where and how fine-tuning and accuracy scoring run (latency is measured on this CPU);
    ``test_samples``: score on the first N test images only (real input sizes on a CPU: minutes per pass).

    ``student`` (instead of a policy): a compact architecture (a registry name such as ``resnet8``, or
    ``torchvision:NAME``) trained from scratch by distillation from the ``checkpoint`` model for
    ``finetune_epochs`` epochs; the replay folder then holds the student, and ``export`` takes it as any other."""
    if (policy_path is None) == (student is None):
        raise ConfigError(
            "replay takes a policy file (--policy) or a compact student architecture to distil into (--student); "
            + ("both were given" if student is not None else "neither was given")
        )
    if student is not None and checkpoint is None:
        raise ConfigError(f"--student {student} is distilled from a base model: pass its --checkpoint (the teacher)")
    if test_samples is not None and test_samples < 1:
        raise ConfigError(f"test_samples must be >= 1, got {test_samples}")
    if finetune_epochs < 0:
        raise ConfigError(f"finetune_epochs must be >= 0, got {finetune_epochs}")
    out = Path(out)
    check_output(out, folder=True, error=ConfigError)  # before the work, not after it
    if (out / "model.pt").exists() and not force:
        raise ConfigError(f"{out} already holds a replayed model; use another --out or --force to replace it")
    if not force:
        check_foreign_files(out, ("report.json", "report.md"), "model.pt", error=ConfigError)
    if not math.isfinite(lr) or lr <= 0:
        raise ConfigError(f"lr {lr} is invalid; valid: a finite number > 0 (the peak fine-tuning learning rate)")
    started = time.perf_counter()
    if student is not None:
        base, spec = load_checkpoint(Path(str(checkpoint)), trust_factory=trust_factory)
        teacher = {"model": spec.model, "checkpoint": str(checkpoint)}
        policy = Policy({}, base={"model": student, "input_shape": list(spec.input_shape), "teacher": teacher})
        spec = replace(spec, model=student, metrics={}, train={"distilled_from": teacher}, source={})
        policy_path = f"student {student} distilled from {teacher['model']} ({checkpoint})"
    else:
        policy = Policy.load(policy_path)  # type: ignore[arg-type]
    base_info = policy.base
    ckpt = Path(checkpoint or base_info.get("checkpoint") or "")
    if not str(ckpt) or str(ckpt) == ".":
        raise PolicyError(f"policy {policy_path} names no base checkpoint; pass --checkpoint")
    if student is None:
        base, spec = load_checkpoint(ckpt, trust_factory=trust_factory)
    wanted = base_info.get("model")
    if student is None and wanted and wanted != spec.model:
        raise PolicyError(
            f"policy {policy_path} was made for model {wanted!r}, but checkpoint {ckpt} holds {spec.model!r}; "
            f"pass the {wanted} checkpoint with --checkpoint"
        )
    shape = tuple(base_info.get("input_shape") or spec.input_shape)
    if tuple(shape[1:]) != tuple(spec.input_shape[1:]):
        raise PolicyError(
            f"policy {policy_path} is for input shape {list(shape)}, checkpoint {ckpt} for {list(spec.input_shape)}"
        )
    # fine-tuning never sees the search's split; the data is served as the model was trained (size, channels)
    bundle = load_dataset(spec.dataset, data_dir, val_size=val_size, **spec.data_options())
    check_data_matches(spec, bundle, ckpt)  # e.g. a 5-class checkpoint for 10-class data
    analysis = analyze_model(base, spec.input_shape)
    policy.check_layers([s.name for s in analysis.layers])

    torch.manual_seed(seed)
    drawn = first_batches(bundle.train, max(bn_batches, CALIBRATION_BATCHES), seed=seed)
    if student is not None:  # a fresh student, counted as an unchanged model of its own architecture
        try:
            fresh = create_model(student, spec.num_classes, spec.in_channels, input_size=spec.input_size)
        except ModelError as exc:
            raise ConfigError(f"--student: {exc}") from None
        model, compression = compress(fresh, policy, input_shape=spec.input_shape)
    else:
        # A searched policy records its calibrated 8-bit ranges: the searched model is rebuilt with them.
        recorded = all("act_range" in policy.applied.get(n, {}) for n, lp in policy.layers.items() if lp.abits == 8)
        calibration = None if recorded else drawn[:CALIBRATION_BATCHES]
        model, compression = compress(base, policy, calibration, analysis=analysis)
        policy = policy.with_applied(compression.applied())
    resolve_accelerator(accelerator)  # a GPU asked for and missing fails here, before the fine-tuning
    where: dict[str, Any] = {"accelerator": accelerator, "precision": precision}
    if student is None:
        recalibrate_batchnorm(model, drawn[:bn_batches], accelerator=accelerator)
    topk = (1, 5)
    test = bundle.test if test_samples is None else Subset(bundle.test, range(min(test_samples, len(bundle.test))))  # type: ignore[arg-type]
    bar = (lambda what: f"test: {what}") if progress else (lambda what: None)
    base_acc = evaluate(base, test, topk=topk, progress=bar("base model"), **where)
    before = evaluate(model, test, topk=topk, progress=bar("compressed, before fine-tuning"), **where)
    history: list[Any] = []
    if finetune_epochs > 0:
        if distill:
            history = run_distill(
                model,
                base,
                bundle.train,
                epochs=finetune_epochs,
                lr=lr,
                batch_size=batch_size,
                augment=augment,
                seed=seed,
                max_batches=max_batches,
                progress=progress,
                workers=bundle.workers,
                **where,
            )
        else:
            cfg = TrainConfig(
                epochs=finetune_epochs, lr=lr, batch_size=batch_size, augment=augment, seed=seed,
                accelerator=accelerator, precision=precision,  # type: ignore[arg-type]
            )  # fmt: skip
            history = train(
                model,
                bundle.train,
                cfg,
                max_batches=max_batches,
                progress=progress,
                description="fine-tune",
                workers=bundle.workers,
            ).history
    model.eval()
    after = evaluate(model, test, topk=topk, progress=bar("compressed, after fine-tuning"), **where)
    if student is not None:  # sizes: the teacher as it is before, the student after
        _, before_report = compress(base, Policy({}), analysis=analysis)
        report, totals = compression, dict(compression.totals)
        for key in ("macs_before", "dense_bytes_before", "peak_activation_bytes_before"):
            totals[key] = before_report.totals[key]
        params_before = before_report.model_params_after
    else:
        report = report_for(model, base, policy, analysis)
        totals = report.totals
        params_before = report.model_params_before

    latency: dict[str, Any] = {}
    for device in devices if devices is not None else list_devices():
        b = estimate_latency(base, spec.input_shape, device)
        c, source = policy_latency(model, policy, spec.input_shape, device)
        unpriced = max(len(b.unpriced), len(c.unpriced))
        latency[device] = {
            "base_ms": b.total_ms,
            "compressed_ms": c.total_ms,
            "speedup": b.total_ms / max(c.total_ms, 1e-12),
            "source": source,
            "unpriced_operators": unpriced,
            "warnings": c.warnings,
        }
    energy: dict[str, Any] = {}
    for device in energy_devices():
        b_e, c_e = estimate_energy(base, spec.input_shape, device), estimate_energy(model, spec.input_shape, device)
        energy[device] = {"base_mj": b_e.mj, "compressed_mj": c_e.mj, "source": c_e.source}
    measured: dict[str, Any] = {}
    if measure:  # in turn, round by round: only models timed side by side compare (docs/deploy.md)
        m = speedup_against(base, model, spec.input_shape, threads=threads, rounds=rounds, warmup=10, repeats=100)
        measured["batch1"] = {"base_ms": m["base_ms"], "compressed_ms": m["ms"], "speedup": m["speedup"]}
        measured["source"] = (
            f"measured on this machine ({cpu_name()}, {os.cpu_count()} cores, ONNX Runtime CPU provider, "
            f"{threads} thread{'' if threads == 1 else 's'}): fp32 ONNX export, batch 1, {rounds} rounds of 100 runs "
            "with the two models in turn; ms = median of the per-round medians, speed-up = median per-round ratio"
        )

    metrics = {"test_top1": after["top1"], "test_top5": after["top5"]}
    out.mkdir(parents=True, exist_ok=True)
    path = save_compressed(out / "model.pt", model, spec, policy, metrics=metrics)
    result: dict[str, Any] = {
        "policy": str(policy_path),
        **({"student": {"architecture": student, "teacher": spec_teacher(policy)}} if student is not None else {}),
        "checkpoint": str(ckpt),
        "model": spec.model,
        "dataset": spec.dataset,
        "compressed_model": str(path),
        "finetune": {
            "epochs": finetune_epochs,
            "distill": distill,
            "lr": lr,
            "augment": augment,
            "batch_size": batch_size,
            "max_batches": max_batches,
            "seed": seed,
            "bn_batches": bn_batches,
            "accelerator": describe(resolve_accelerator(accelerator)),
            "precision": precision,
            "history": [asdict(h) for h in history],
        },
        "accuracy": {
            "source": f"measured on the {spec.dataset} test split ({_first(test, bundle.test)} images)",
            "base": base_acc,
            "before_finetune": before,
            "after_finetune": after,
        },
        "size": {
            "params_before": params_before,
            "params_after": report.model_params_after,
            "macs_before": totals["macs_before"],
            "macs_after": totals["macs_after"],
            "dense_bytes_before": totals["dense_bytes_before"],
            "stored_bytes_after": totals["stored_bytes_after"],
            "huffman_bytes_after": totals["huffman_bytes_after"],
            "peak_activation_bytes_before": totals["peak_activation_bytes_before"],
            "peak_activation_bytes_after": totals["peak_activation_bytes_after"],
            "source": "counted from the compressed weights (compressible layers; see CompressionReport)",
        },
        "predicted_latency": latency,
        "predicted_energy": energy,
        "measured_latency": measured,
        "policy_summary": policy.summary(),
        "seconds": time.perf_counter() - started,
        "versions": software_versions(),
    }
    result["warnings"] = finetune_warnings(before["top1"], after["top1"], spec.num_classes, lr) + [
        f"{device}: {d['unpriced_operators']} operator signatures are not in its table and are not counted, so no "
        "predicted latency is given for it (profile them with `edgecompress profile`)"
        for device, d in latency.items()
        if d["unpriced_operators"]
    ]
    write_json_atomic(out / "report.json", result)
    (out / "report.md").write_text(report_markdown(result))
    return result


def finetune_warnings(before: float, after: float, num_classes: int, lr: float) -> list[str]:
    """What the report should say when fine-tuning hurt: the model ended worse than it started, or at chance."""
    chance = 1.0 / max(1, num_classes)
    if after <= 1.5 * chance:
        return [
            f"fine-tuning left the model at chance (test top-1 {before:.4f} -> {after:.4f}; chance {chance:.4f}): "
            f"training diverged at peak lr {lr:g}; replay again with a lower --lr (e.g. {lr / 5:g})"
        ]
    if after < before - 0.01:
        return [
            f"fine-tuning made the model worse (test top-1 {before:.4f} -> {after:.4f}) at peak lr {lr:g}; "
            f"try a lower --lr (e.g. {lr / 5:g}) or more epochs"
        ]
    return []


def spec_teacher(policy: Policy) -> dict[str, Any]:
    return dict(policy.base.get("teacher") or {})


def _first(test: Any, full: Any) -> str:
    return f"the first {len(test)} of {len(full)}" if len(test) < len(full) else str(len(full))


def report_markdown(r: dict[str, Any]) -> str:
    acc, size = r["accuracy"], r["size"]
    lines = [
        f"# Replay of {r['policy']}",
        "",
        *[f"**Warning:** {w}\n" for w in r.get("warnings") or []],
        f"Base model `{r['model']}` from `{r['checkpoint']}`; fine-tuning: {r['finetune']['epochs']} epoch(s), "
        f"{'distillation from the base model' if r['finetune']['distill'] else 'cross-entropy'}, "
        f"peak lr {r['finetune']['lr']}, {'augmented batches' if r['finetune'].get('augment') else 'no augmentation'}, "
        f"seed {r['finetune']['seed']}.",
        "",
        "| | base | compressed | ratio |",
        "|---|---:|---:|---:|",
        f"| parameters | {size['params_before']:,} | {size['params_after']:,} | "
        f"{size['params_before'] / max(size['params_after'], 1):.2f}x |",
        f"| MACs | {size['macs_before']:,} | {size['macs_after']:,} | "
        f"{size['macs_before'] / max(size['macs_after'], 1):.2f}x |",
        f"| stored bytes (fp32 dense -> stored) | {size['dense_bytes_before']:,} | {size['stored_bytes_after']:,} | "
        f"{size['dense_bytes_before'] / max(size['stored_bytes_after'], 1):.2f}x |",
        f"| Huffman-coded bytes | | {size['huffman_bytes_after']:,} | "
        f"{size['dense_bytes_before'] / max(size['huffman_bytes_after'], 1):.2f}x |",
        f"| peak activation bytes | {size['peak_activation_bytes_before']:,} | "
        f"{size['peak_activation_bytes_after']:,} | |",
        "",
        f"Accuracy ({acc['source']}):",
        "",
        "| | top-1 | top-5 |",
        "|---|---:|---:|",
        f"| base | {acc['base']['top1']:.4f} | {acc['base']['top5']:.4f} |",
        f"| compressed, before fine-tuning | {acc['before_finetune']['top1']:.4f} | "
        f"{acc['before_finetune']['top5']:.4f} |",
        f"| compressed, after fine-tuning | {acc['after_finetune']['top1']:.4f} | "
        f"{acc['after_finetune']['top5']:.4f} |",
        "",
        "Predicted latency (batch 1):",
        "",
        "| device | base ms | compressed ms | speed-up | source |",
        "|---|---:|---:|---:|---|",
    ]
    for device, d in r["predicted_latency"].items():
        if d.get("unpriced_operators"):  # a sum that leaves operators out is no latency: not shown as one
            lines.append(
                f"| {device} | n/a | n/a | n/a | {d['unpriced_operators']} operator signatures are not in {device}'s "
                "table (profile them: `edgecompress profile`) |"
            )
            continue
        lines.append(
            f"| {device} | {d['base_ms']:.4f} | {d['compressed_ms']:.4f} | {d['speedup']:.2f}x | {d['source']} |"
        )
    for device, e in (r.get("predicted_energy") or {}).items():
        lines += [
            "",
            f"Predicted energy per inference on {device}: {e['base_mj']:.3f} -> {e['compressed_mj']:.3f} mJ "
            f"({e['source']}).",
        ]
    m = r.get("measured_latency") or {}
    if m:
        lines += [
            "",
            f"Measured latency: {m['source']}.",
            "",
            "| batch | base ms | compressed ms | speed-up |",
            "|---|---:|---:|---:|",
        ]
        for key, d in m.items():
            if key.startswith("batch"):
                lines.append(f"| {key[5:]} | {d['base_ms']:.4f} | {d['compressed_ms']:.4f} | {d['speedup']:.2f}x |")
    return "\n".join(lines) + "\n"
