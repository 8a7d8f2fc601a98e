"""``edgecompress compare`` and ``edgecompress compress``: registered on the main app when imported."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from edgecompress.cli import (
    DATA_DIR_HELP,
    TRAIN_IF_MISSING_HELP,
    AcceleratorOpt,
    ChannelsOpt,
    ConfigOpt,
    InputSizeOpt,
    MeanOpt,
    NumClassesOpt,
    PrecisionOpt,
    StdOpt,
    TrustPickleOpt,
    WeightsOpt,
    _byo_overrides,
    _default,
    _floats,
    _names,
    app,
    console,
)
from edgecompress.errors import ConfigError

ModelOpt = Annotated[
    str | None,
    typer.Option(help=f"Model name (`edgecompress models`), torchvision:NAME or a factory {_default('model.name')}."),
]
CheckpointOpt = Annotated[
    str | None,
    typer.Option(
        help="Base checkpoint written by `edgecompress train`, or give --weights (default: model.checkpoint of "
        "--config, else checkpoints/MODEL-DATASET.pt)."
    ),
]
DeviceOpt = Annotated[
    str | None, typer.Option(help="Target device profile (`edgecompress devices`; default raspberry-pi-4).")
]
DatasetOpt = Annotated[str | None, typer.Option(help="fashion-mnist (default), cifar10 or imagefolder.")]
DataDirOpt = Annotated[str | None, typer.Option(help=DATA_DIR_HELP)]
TrainIfMissingOpt = Annotated[
    bool | None, typer.Option("--train-if-missing/--no-train-if-missing", help=TRAIN_IF_MISSING_HELP)
]


def _model_overrides(
    model: str | None, checkpoint: str | None, device: str | None, dataset: str | None, data_dir: str | None,
    train_if_missing: bool | None, out: str | None,
) -> dict[str, Any]:  # fmt: skip
    overrides: dict[str, Any] = {
        "out": out, "model.name": model, "model.checkpoint": checkpoint, "device": device, "data.dataset": dataset,
        "data.data_dir": data_dir, "model.train_if_missing": train_if_missing,
    }  # fmt: skip
    if checkpoint is not None and train_if_missing is None:
        overrides["model.train_if_missing"] = False  # a path typed on the command line must exist
    return overrides


@app.command("compare")
def compare_cmd(
    out: Annotated[
        str | None,
        typer.Option(
            help="Comparison folder; re-running on it resumes (default: runs/compare, or the out of --config)."
        ),
    ] = None,
    config: ConfigOpt = None,
    model: ModelOpt = None,
    checkpoint: CheckpointOpt = None,
    weights: WeightsOpt = None,
    trust_pickle: TrustPickleOpt = None,
    num_classes: NumClassesOpt = None,
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    input_size: InputSizeOpt = None,
    channels: ChannelsOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    device: DeviceOpt = None,
    train_if_missing: TrainIfMissingOpt = None,
    budget_ratio: Annotated[
        str, typer.Option(help="Latency budgets, comma list of fractions of the base's predicted latency.")
    ] = "0.7,0.5,0.35",
    budget_ms: Annotated[
        str | None, typer.Option(help="Latency budgets in ms, comma list (replaces --budget-ratio; default none).")
    ] = None,
    size_ratio: Annotated[
        str, typer.Option(help="Size budgets, comma list of fractions of the base's fp32 weight bytes ('' for none).")
    ] = "0.1,0.025",
    techniques: Annotated[
        str,
        typer.Option(
            help="Comma list: prune-l1, lowrank, drop, student, search, magnitude, lookahead, quant, "
            "sharing, deep-compression (default all)."
        ),
    ] = "all",
    student: Annotated[
        str | None,
        typer.Option(
            help="The compact student for the student rows (registry name, torchvision:NAME or factory); "
            "default: the registered students of the base model's family, the largest that fits."
        ),
    ] = None,
    finetune_epochs: Annotated[int, typer.Option(min=0, help="Distillation epochs every row gets.")] = 1,
    finetune_lr: Annotated[float, typer.Option(min=0.0, help="Peak learning rate of that distillation.")] = 0.01,
    distill_alpha: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Weight of the base model's soft targets in that distillation (the rest: the labels); lower it "
            "for a weak base.",
        ),
    ] = 0.9,
    max_batches: Annotated[
        int | None, typer.Option(min=1, help="Cap the batches of each distillation epoch (default: all).")
    ] = None,
    test_samples: Annotated[
        int | None, typer.Option(min=1, help="Score on the first N test images (default: the whole split).")
    ] = None,
    threads: Annotated[int, typer.Option(min=1, help="ONNX Runtime threads for the latency measured here.")] = 1,
    episodes: Annotated[
        int | None, typer.Option(min=1, help="Policies the searched row scores (default: config's search.episodes).")
    ] = None,
    agent: Annotated[
        str | None, typer.Option(help="Driver of the searched row: ddpg, optuna, ray, random (default: config's).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of students, calibration batches and fine-tuning.")] = 0,
    deep_stages: Annotated[
        int,
        typer.Option(
            min=1,
            help="Deep-compression rows: pruning stages, each removing the same fraction of the surviving weights "
            "and followed by the distillation recipe (1: one-shot).",
        ),
    ] = 1,
    deep_bias_bits: Annotated[
        int, typer.Option(help="Deep-compression rows: stored bias bits, 32 or 16 (rounded to fp16 and held).")
    ] = 32,
    deep_clusters: Annotated[
        int, typer.Option(help="Deep-compression rows: entries of each layer's k-means codebook (2-256, a power of 2).")
    ] = 16,
    accelerator: AcceleratorOpt = None,
    precision: PrecisionOpt = None,
) -> None:
    """Every technique alone at each budget, and the searched mix, with the same fine-tuning and metrics."""
    from edgecompress.workflows.compare import TECHNIQUES, CompareSettings, run_compare
    from edgecompress.workflows.config import load_run_config

    overrides = {
        **_model_overrides(model, checkpoint, device, dataset, data_dir, train_if_missing, out or "runs/compare"),
        "search.episodes": episodes, "search.agent": agent,
        **_byo_overrides(weights, trust_pickle, num_classes, input_size, channels, mean, std, None, accelerator,
                         precision),
    }  # fmt: skip
    if out is None and config is not None:
        overrides.pop("out")
    cfg = load_run_config(config, overrides)
    chosen = list(TECHNIQUES) if techniques == "all" else (_names("--techniques", techniques) or [])
    settings = CompareSettings(
        budget_ratios=_floats("--budget-ratio", budget_ratio, "0.7,0.5,0.35") or [],
        budget_ms=_floats("--budget-ms", budget_ms, "8,4,2") or [],
        size_ratios=_floats("--size-ratio", size_ratio, "0.1,0.025") if size_ratio else [],  # type: ignore[arg-type]
        techniques=chosen, finetune_epochs=finetune_epochs, finetune_lr=finetune_lr, max_batches=max_batches,
        student=student, test_samples=test_samples, threads=threads, seed=seed, deep_stages=deep_stages,
        deep_bias_bits=deep_bias_bits, deep_clusters=deep_clusters, distill_alpha=distill_alpha,
    )  # fmt: skip
    r = run_compare(cfg, settings, console)
    console.print(f"comparison: {cfg.out}/compare.md, compare.json, {', '.join(Path(p).name for p in r['plots'])}")


@app.command("compress")
def compress_cmd(
    out: Annotated[
        str | None, typer.Option(help="Run folder (re-running on it resumes; default runs/compress).")
    ] = None,
    config: ConfigOpt = None,
    model: ModelOpt = None,
    checkpoint: CheckpointOpt = None,
    weights: WeightsOpt = None,
    trust_pickle: TrustPickleOpt = None,
    num_classes: NumClassesOpt = None,
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    input_size: InputSizeOpt = None,
    channels: ChannelsOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    device: DeviceOpt = None,
    train_if_missing: TrainIfMissingOpt = None,
    speedup: Annotated[
        float | None,
        typer.Option(
            help="Wanted predicted speed-up on the device (2 = half the latency; default: 1 / the config's "
            "search.budget_ratio, so 2 with the default ratio 0.5)."
        ),
    ] = None,
    budget_ms: Annotated[
        float | None, typer.Option(help=f"Latency budget in ms, instead of --speedup {_default('search.budget_ms')}.")
    ] = None,
    formats: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="Comma list of export formats (onnx, onnx-fp16, onnx-int8, tflite, tflite-int8, torchscript, "
            "archive); default: onnx plus the device's natural format: onnx-fp16 for a Jetson, onnx-int8 for a "
            "Raspberry Pi (pass tflite-int8 for LiteRT).",
        ),
    ] = None,
    agent: Annotated[str | None, typer.Option(help="Search driver (default: config's search.agent, ddpg).")] = None,
    episodes: Annotated[int | None, typer.Option(min=1, help="Policies to score (default: config's).")] = None,
    techniques: Annotated[
        str | None, typer.Option(help="Comma list of searched techniques (default: config's search.techniques).")
    ] = None,
    finetune_epochs: Annotated[int, typer.Option(min=0, help="Distillation epochs of the replay.")] = 1,
    finetune_lr: Annotated[
        float, typer.Option(min=0.0, help="Peak learning rate of the replay's distillation.")
    ] = 0.01,
    max_batches: Annotated[
        int | None, typer.Option(min=1, help="Cap the batches of each replay epoch (default: all).")
    ] = None,
    test_samples: Annotated[
        int | None, typer.Option(min=1, help="Score and verify on the first N test images (default: all).")
    ] = None,
    threads: Annotated[int, typer.Option(min=1, help="ONNX Runtime threads for the speed-up measured here.")] = 1,
    seed: Annotated[int | None, typer.Option(help="Search seed (default: config's search.seed, 0).")] = None,
    accelerator: AcceleratorOpt = None,
    precision: PrecisionOpt = None,
) -> None:
    """From a trained model to deployable files: search, replay with distillation, export, time, summarise."""
    from edgecompress.workflows.compress import run_compress
    from edgecompress.workflows.config import load_run_config

    if speedup is not None and budget_ms is not None:
        raise ConfigError("give --speedup or --budget-ms, not both")
    overrides = {
        **_model_overrides(model, checkpoint, device, dataset, data_dir, train_if_missing, out),
        "search.agent": agent, "search.episodes": episodes, "search.budget_ms": budget_ms, "search.seed": seed,
        "search.techniques": _names("--techniques", techniques),
        **_byo_overrides(weights, trust_pickle, num_classes, input_size, channels, mean, std, None, accelerator,
                         precision),
    }  # fmt: skip
    if out is None and config is None:
        overrides["out"] = "runs/compress"
    cfg = load_run_config(config, overrides)
    run_compress(
        cfg, console, speedup=speedup, formats=_names("--format", formats),
        finetune_epochs=finetune_epochs, finetune_lr=finetune_lr, max_batches=max_batches,
        test_samples=test_samples, threads=threads,
    )  # fmt: skip
