"""The ``edgecompress`` command line (also ``python -m edgecompress``).

Every number printed says where it came from. Errors the user can fix
(bad flags, config keys, missing data) print one line and exit with status 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from edgecompress._progress import make_console
from edgecompress.errors import ConfigError, EdgeCompressError

app = typer.Typer(
    name="edgecompress",
    help="Hardware-aware model compression: analyse, train, search, replay and export.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Find or download datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
latency_app = typer.Typer(
    help="Predicted latency on a device; `latency calibrate` / `latency validate` for the device models."
)
app.add_typer(latency_app, name="latency")
console = make_console()
err_console = make_console(stderr=True)

# The built-in config's defaults that --help states for the flags whose None means "the config's value". Literals,
# so that `edgecompress --help` imports no pydantic; tests/test_cli_help.py checks each against edgecompress.config.
CONFIG_DEFAULTS: dict[str, Any] = {
    "out": "runs/demo", "device": "raspberry-pi-4", "model.name": "lenet5", "model.train_if_missing": False,
    "data.dataset": "fashion-mnist", "data.val_samples": 2000, "data.workers": 0, "train.epochs": 3,
    "train.batch_size": 64, "train.lr": 0.05, "train.augment": False, "train.seed": 0, "search.agent": "ddpg",
    "search.episodes": 30, "search.budget_ms": None, "search.budget_ratio": 0.5, "search.techniques": ["keep"],
    "search.sampler": "tpe", "search.workers": 1, "search.seed": 0, "search.gpus_per_trial": 0.0,
    "search.finetune_batches": 40, "search.bn_batches": 4, "search.finetune_lr": 0.01, "search.budget_energy_mj": None,
    "search.energy_objective": False,
}  # fmt: skip


def _default(key: str) -> str:
    """``(default: KEY from --config, else VALUE)``: the help of a flag that overrides config key ``KEY``."""
    value = CONFIG_DEFAULTS[key]
    if isinstance(value, list):
        shown = ",".join(value)
    elif isinstance(value, bool) or value is None:
        shown = {True: "on", False: "off", None: "none"}[value]
    else:
        shown = str(value)
    return f"(default: {key} from --config, else {shown})"


ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c",
        help="YAML config; flags override its values (default: none, the built-in defaults `edgecompress config` "
        "prints).",
    ),
]  # fmt: skip
DATA_DIR_HELP = (
    "Folder holding the dataset (default: $EDGECOMPRESS_DATA when set, else the Debian package's folder, then "
    "torchvision's root)."
)
TRAIN_IF_MISSING_HELP = (
    "Train the base model at the checkpoint path when that file does not exist "
    f"{_default('model.train_if_missing')[:-1]}; off when --checkpoint is given on the command line)."
)
WeightsOpt = Annotated[
    str | None,
    typer.Option(
        help="Weights trained elsewhere for --model (torchvision:NAME, a built-in or pkg.module:factory): a "
        "state_dict, a dict holding one (Lightning), or TorchScript; read with weights_only=True (default: none, "
        "the checkpoint's weights)."
    ),
]
TrustPickleOpt = Annotated[
    bool | None,
    typer.Option(
        "--trust-pickle/--no-trust-pickle",
        help="Let --weights be a whole pickled nn.Module (unpickling runs code from the file; default off).",
    ),
]
NumClassesOpt = Annotated[
    int | None, typer.Option(min=1, help="Model outputs, when neither the weights nor the data say (default: read).")
]
InputSizeOpt = Annotated[
    int | None,
    typer.Option(
        min=8,
        help="Input side length served: imagefolder resizes and crops (default 224); fashion-mnist and cifar10 "
        "are upsampled (default 28 / 32).",
    ),
]
ChannelsOpt = Annotated[int | None, typer.Option(min=1, help="3 serves grayscale data as RGB (default: the data's).")]
MeanOpt = Annotated[
    str | None, typer.Option(help="Per-channel normalisation mean, comma list (default: ImageNet's / the data's).")
]
StdOpt = Annotated[str | None, typer.Option(help="Per-channel normalisation std, comma list (default: as --mean's).")]
WorkersOpt = Annotated[
    int | None, typer.Option(min=0, help=f"DataLoader workers for image folders {_default('data.workers')}.")
]
AcceleratorOpt = Annotated[
    str | None,
    typer.Option(
        help="auto, cpu, cuda or mps: where training, fine-tuning and accuracy scoring run (default: cpu, or a "
        "config's train.accelerator)."
    ),
]
PrecisionOpt = Annotated[
    str | None,
    typer.Option(
        help="Training/scoring precision: fp32, bf16, fp16 (CUDA autocast only) (default: fp32, or a config's "
        "train.precision)."
    ),
]


def _floats(flag: str, text: str | None, example: str = "0.485,0.456,0.406") -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: give comma-separated numbers, e.g. {example}") from None


def _names(flag: str, text: str | None) -> list[str] | None:
    """A comma list of names; None when the flag was not given, and an error when it was given empty."""
    if text is None:
        return None
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ConfigError(f"{flag} {text!r} names nothing; give a comma list, or leave {flag} out for the default")
    return names


def _byo_overrides(
    weights: str | None = None,
    trust_pickle: bool | None = None,
    num_classes: int | None = None,
    input_size: int | None = None,
    channels: int | None = None,
    mean: str | None = None,
    std: str | None = None,
    workers: int | None = None,
    accelerator: str | None = None,
    precision: str | None = None,
) -> dict[str, Any]:
    """Config overrides of the bring-your-own-model, data and accelerator flags."""
    return {
        "model.weights": weights, "model.trust_pickle": trust_pickle, "model.num_classes": num_classes,
        "data.input_size": input_size, "data.channels": channels, "data.mean": _floats("--mean", mean),
        "data.std": _floats("--std", std), "data.workers": workers, "train.accelerator": accelerator,
        "train.precision": precision,
    }  # fmt: skip


def _fmt_int(n: int) -> str:
    return f"{n:,}"


@app.command("models")
def models_cmd() -> None:
    """List the built-in models (torchvision:NAME and package.module:factory also work)."""
    from edgecompress.models import model_descriptions

    table = Table(title="built-in models")
    table.add_column("name")
    table.add_column("description")
    for name, desc in model_descriptions().items():
        table.add_row(name, desc)
    console.print(table)
    console.print("Also: torchvision:NAME (e.g. torchvision:resnet18, random init) and package.module:factory.")


@app.command("config")
def config_cmd(config: ConfigOpt = None) -> None:
    """Print the resolved config (the defaults when no file is given) as YAML."""
    import yaml

    from edgecompress.workflows.config import load_run_config

    print(yaml.safe_dump(load_run_config(config).model_dump(mode="json"), sort_keys=False), end="")


@app.command("train")
def train_cmd(
    out: Annotated[Path, typer.Option(help="Checkpoint file to write.")],
    model: Annotated[
        str | None, typer.Option(help=f"Model name (see `edgecompress models`) {_default('model.name')}.")
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help=f"fashion-mnist, cifar10 or imagefolder {_default('data.dataset')}.")
    ] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help=f"Training epochs {_default('train.epochs')}.")] = None,
    seed: Annotated[
        int | None, typer.Option(help=f"Seed of initialisation and batch order {_default('train.seed')}.")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help=f"Batch size {_default('train.batch_size')}.")] = None,
    lr: Annotated[
        float | None,
        typer.Option(help=f"Peak learning rate, cosine-annealed after a short warm-up {_default('train.lr')}."),
    ] = None,
    augment: Annotated[
        bool | None,
        typer.Option(
            "--augment/--no-augment",
            help=f"Random crop (pad 2) and horizontal flip of each batch {_default('train.augment')}.",
        ),
    ] = None,
    data_dir: Annotated[str | None, typer.Option(help=DATA_DIR_HELP)] = None,
    config: ConfigOpt = None,
    force: Annotated[bool, typer.Option(help="Replace an existing checkpoint at --out.")] = False,
    max_batches: Annotated[
        int | None,
        typer.Option(min=1, help="Cap batches per epoch (smoke runs); recorded in the checkpoint (default: no cap)."),
    ] = None,
    input_size: InputSizeOpt = None,
    channels: ChannelsOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    workers: WorkersOpt = None,
    accelerator: AcceleratorOpt = None,
    precision: PrecisionOpt = None,
) -> None:
    """Train a base model and save a checkpoint (state_dict + JSON model spec)."""
    from edgecompress._io import check_output
    from edgecompress.workflows.config import load_run_config
    from edgecompress.workflows.train import train_base_model

    check_output(out, folder=False, error=ConfigError)  # a folder there, or nowhere to write: before training
    if out.exists() and not force:
        raise ConfigError(f"{out} already exists; pass --force to replace it, or choose another --out")
    cfg = load_run_config(
        config,
        {"model.name": model, "data.dataset": dataset, "data.data_dir": data_dir, "train.epochs": epochs,
         "train.seed": seed, "train.batch_size": batch_size, "train.lr": lr, "train.augment": augment,
         **_byo_overrides(input_size=input_size, channels=channels, mean=mean, std=std, workers=workers,
                          accelerator=accelerator, precision=precision)},
    )  # fmt: skip
    _, spec = train_base_model(cfg, out, max_batches=max_batches)
    console.print(
        f"[bold]{spec.model}[/] on {spec.dataset}: test accuracy {spec.metrics['test_acc']:.4f} "
        f"(measured after training on the test split), val accuracy {spec.metrics['val_acc']:.4f}; "
        f"{spec.train['epochs']} epochs in {spec.train['seconds']:.1f}s wall time on this machine "
        f"({spec.train['torch_threads']} torch threads)"
    )
    console.print(f"checkpoint: {out}")


MODEL_HELP = "Model name (default: the checkpoint's)."
CHECKPOINT_HELP = "Checkpoint written by `edgecompress train` (default: none, --model with random weights)."
IN_CHANNELS_HELP = "Input channels of --model without a checkpoint."
INPUT_SIZE_HELP = "Input side length of --model without a checkpoint."
NUM_CLASSES_HELP = "Outputs of --model without a checkpoint."


WEIGHTS_ANALYSIS_HELP = (
    "A model's weights trained elsewhere (a state_dict file, as `search --weights` takes), loaded into --model "
    "at --input-size; classes and input channels read from the file (default: none)."
)


def _load_for_analysis(
    model: str | None,
    checkpoint: Path | None,
    in_channels: int,
    input_size: int,
    num_classes: int,
    weights: Path | None = None,
) -> tuple[Any, tuple[int, ...], str]:
    from edgecompress.artifacts.checkpoint import load_checkpoint
    from edgecompress.models import create_model

    if weights is not None:
        from edgecompress.artifacts.weights import model_from_weights

        if checkpoint is not None or model is None:
            raise ConfigError("--weights needs --model NAME (the architecture the weights are for) and no --checkpoint")
        net, _, _, channels = model_from_weights(model, weights, input_size=input_size)
        return net, (1, channels, input_size, input_size), f"{model} with weights {weights}"
    if checkpoint is not None:
        net, spec = load_checkpoint(checkpoint, trust_factory=model)
        if model is not None and model != spec.model:
            raise ConfigError(f"--model {model!r} does not match checkpoint {checkpoint}, which holds {spec.model!r}")
        return net, spec.input_shape, f"{spec.model} from {checkpoint}"
    if model is None:
        raise ConfigError("give --model NAME or --checkpoint PATH")
    net = create_model(model, num_classes, in_channels, input_size=input_size)
    return net, (1, in_channels, input_size, input_size), f"{model} (random init; shapes only)"


@app.command("analyze")
def analyze_cmd(
    model: Annotated[str | None, typer.Option(help=MODEL_HELP)] = None,
    checkpoint: Annotated[Path | None, typer.Option(help=CHECKPOINT_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON document instead of tables.")] = False,
    in_channels: Annotated[int, typer.Option("--in-channels", "--channels", min=1, help=IN_CHANNELS_HELP)] = 1,
    weights: Annotated[Path | None, typer.Option(help=WEIGHTS_ANALYSIS_HELP)] = None,
    input_size: Annotated[int, typer.Option(min=1, help=INPUT_SIZE_HELP)] = 28,
    num_classes: Annotated[int, typer.Option(min=1, help=NUM_CLASSES_HELP)] = 10,
    policy: Annotated[
        Path | None, typer.Option(help="Policy JSON: show before and after side by side (default: none).")
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help="Calibration data for 8-bit activations (default: the checkpoint's).")
    ] = None,
) -> None:
    """Per-layer shapes, params, MACs, bytes and coupled channel groups (batch-1 forward pass)."""
    from edgecompress.analysis import analyze_model

    net, shape, what = _load_for_analysis(model, checkpoint, in_channels, input_size, num_classes, weights)
    analysis = analyze_model(net, shape)
    if policy is not None:
        _analyze_policy(net, analysis, policy, dataset, checkpoint, what, as_json, model)
        return
    if as_json:
        doc = analysis.to_dict()
        doc["model"] = what
        print(json.dumps(doc, indent=2))
        return
    print_analysis(analysis, f"{what}, input {tuple(shape)}")


def _analyze_policy(
    net: Any,
    analysis: Any,
    policy_path: Path,
    dataset: str | None,
    checkpoint: Path | None,
    what: str,
    as_json: bool,
    model: str | None,
) -> None:
    from edgecompress.compressors import Policy, compress

    pol = Policy.load(policy_path, net)
    calibration = None
    if any(lp.abits == 8 for lp in pol.layers.values()):
        from edgecompress.artifacts.checkpoint import load_checkpoint
        from edgecompress.data import first_batches, load_dataset

        name = dataset or (load_checkpoint(checkpoint, trust_factory=model)[1].dataset if checkpoint else None)
        if name is None:
            raise ConfigError(
                "the policy quantizes activations to 8 bits: give --dataset (or --checkpoint) to calibrate"
            )
        bundle = load_dataset(name)
        calibration = first_batches(bundle.train, 4)
    _, report = compress(net, pol, calibration, analysis=analysis)
    if as_json:
        doc = report.to_dict()
        doc["model"] = what
        doc["policy"] = str(policy_path)
        print(json.dumps(doc, indent=2))
        return
    print_report(report, f"{what} under {policy_path}")


_SHOWN = ("kept", "rank", "achieved", "clusters", "wbits", "abits", "block")


def _brief(info: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items() if k in _SHOWN)


def print_report(report: Any, title: str) -> None:
    table = Table(title=title, caption="before -> after; sizes in bytes; computed from the compressed model")
    for col in ("layer", "out ch", "params", "non-zero", "MACs", "dense fp32", "stored", "Huffman", "encoding",
                "applied"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("layer", "encoding", "applied") else "right")
    for r in report.layers:
        applied = ", ".join(f"{k}({_brief(v)})" for k, v in r.applied.items())
        table.add_row(
            r.name, f"{r.out_channels_before}→{r.out_channels_after}", f"{r.params_before:,}→{r.params_after:,}",
            f"{r.nonzero_after:,}", f"{r.macs_before:,}→{r.macs_after:,}", f"{r.dense_bytes_before:,}",
            f"{r.stored_bytes_after:,}", f"{r.huffman_bytes_after:,}", r.encoding, applied,
        )  # fmt: skip
    t = report.totals
    table.add_section()
    table.add_row(
        "total", "", f"{t['params_before']:,}→{t['params_after']:,}", f"{t['nonzero_after']:,}",
        f"{t['macs_before']:,}→{t['macs_after']:,}", f"{t['dense_bytes_before']:,}", f"{t['stored_bytes_after']:,}",
        f"{t['huffman_bytes_after']:,}", "", "",
    )  # fmt: skip
    console.print(table)
    ratios = report.ratios()
    console.print(
        f"ratios: params {ratios['params']:.2f}x, MACs {ratios['macs']:.2f}x, stored size {ratios['stored']:.2f}x, "
        f"with Huffman {ratios['huffman']:.2f}x (vs dense fp32 weights); peak activation memory "
        f"{t['peak_activation_bytes_before']:,} -> {t['peak_activation_bytes_after']:,} bytes"
    )
    for s in report.skipped:
        console.print(f"[yellow]skipped[/] {s.layer} ({s.technique}): {s.reason}")
    for w in report.warnings:
        console.print(f"[yellow]warning:[/] {w}")


def print_analysis(analysis: Any, title: str) -> None:
    table = Table(title=title, caption="computed from a batch-1 forward pass; bytes at fp32")
    for col in ("#", "layer", "kind", "in→out", "k", "s", "g", "in hw", "out hw", "params", "MACs",
                "weight B", "act B", "group"):  # fmt: skip
        table.add_column(col, justify="right" if col not in ("layer", "kind") else "left")
    for s in analysis.layers:
        group = f"{s.group}" + ("" if s.prunable else " (output)") + (f", block {s.block}" if s.block else "")
        table.add_row(
            str(s.index), s.name, s.kind, f"{s.in_channels}→{s.out_channels}", f"{s.kernel[0]}x{s.kernel[1]}",
            str(s.stride[0]), str(s.groups), f"{s.in_hw[0]}x{s.in_hw[1]}", f"{s.out_hw[0]}x{s.out_hw[1]}",
            _fmt_int(s.params), _fmt_int(s.macs), _fmt_int(s.weight_bytes), _fmt_int(s.activation_bytes), group,
        )  # fmt: skip
    t = analysis.totals
    table.add_section()
    table.add_row(
        "", "total", "", "", "", "", "", "", "", _fmt_int(t["params"]), _fmt_int(t["macs"]),
        _fmt_int(t["weight_bytes"]), _fmt_int(t["activation_bytes"]), str(t["groups"]),
    )  # fmt: skip
    console.print(table)
    coupled = {g: names for g, names in analysis.groups().items() if len(names) > 1}
    if coupled:
        console.print("[bold]coupled channel groups[/] (torch-pruning dependency graph; prune together):")
        for g, names in coupled.items():
            console.print(f"  group {g}: {', '.join(names)}")
    console.print(f"model parameters including BatchNorm: {_fmt_int(t['model_params'])}")
    for note in analysis.notes:
        console.print(f"[yellow]note:[/] {note}")


@app.command("run")
def run_cmd(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML config; flags override its values.")
    ] = Path("configs/default.yaml"),
    out: Annotated[str | None, typer.Option(help="Run folder (default: the config's `out`).")] = None,
    data_dir: Annotated[str | None, typer.Option(help=DATA_DIR_HELP)] = None,
    train_if_missing: Annotated[
        bool | None, typer.Option("--train-if-missing/--no-train-if-missing", help=TRAIN_IF_MISSING_HELP)
    ] = None,
    weights: WeightsOpt = None,
    trust_pickle: TrustPickleOpt = None,
    accelerator: AcceleratorOpt = None,
    precision: PrecisionOpt = None,
) -> None:
    """The main job on a config: base model (trained if missing and asked to), analysis, summary."""
    from edgecompress.workflows.run import run_pipeline

    overrides = {
        "out": out, "data.data_dir": data_dir, "model.train_if_missing": train_if_missing,
        **_byo_overrides(weights=weights, trust_pickle=trust_pickle, accelerator=accelerator, precision=precision),
    }  # fmt: skip
    run_pipeline(config, overrides, console=console)


def _passes_text(passes: dict[str, list[dict[str, Any]]]) -> str:
    """A table's validation passes since its fit, worst figures per kind (``devices``)."""
    if not passes:
        return ""
    every = sorted(r["at"] for records in passes.values() for r in records)
    worst = "; ".join(
        f"{kind} {max(r['median_abs_error'] for r in records):.1%} / {min(r['spearman'] for r in records):.3f}"
        f" ({len(records)} pass{'' if len(records) == 1 else 'es'})"
        for kind, records in passes.items()
    )
    span = every[0] if every[0] == every[-1] else f"{every[0]} to {every[-1]}"
    return f". Worst median |error| / lowest Spearman over the passes since its fit ({span}): {worst}"


@app.command("devices")
def devices_cmd() -> None:
    """List the device profiles with where their numbers come from and their validated error."""
    from edgecompress.latency_models import list_devices, load_device
    from edgecompress.latency_models.device_model import DEVICE_PEAKS
    from edgecompress.latency_models.host import passes_since_fit
    from edgecompress.latency_models.table import LatencyTable

    table = Table(title="device profiles (per-operator cost models)")
    for col in ("name", "device", "precision", "source", "holdout validation"):
        table.add_column(col)
    for name in list_devices():
        m = load_device(name)
        if isinstance(m, LatencyTable):
            v = m.meta.get("validation", {})
            when = v.get("date") or str(m.meta.get("updated", ""))[:10]  # a table validated when it was profiled
            val = (
                f"{v['n']} compressed models measured end to end ({when}): median |error| "
                f"{v['median_abs_error']:.1%}, Spearman {v['spearman']:.3f}"
                if v
                else "not validated"
            )
            for mode, r in m.meta.get("validation_int8", {}).items():
                what = "every layer" if mode == "all" else "half the layers"
                val += (
                    f"; int8 on {what} ({r['n']} models): median |error| {r['median_abs_error']:.1%}, "
                    f"Spearman {r['spearman']:.3f}"
                )
            val += _passes_text(passes_since_fit(m))
            source = (
                f"measured lookup table: {m.meta.get('runtime')} {m.meta.get('threads')} "
                f"thread{'' if m.meta.get('threads') == 1 else 's'} on "
                f"{m.meta.get('device')} ({len(m.entries)} operators)"
            )
            table.add_row(name, str(m.meta.get("device")), ",".join(sorted(m.precisions())), source, val)
            continue
        v = m.validation
        if "spearman" in v:
            val = (
                f"n={v['n']}: Spearman {v['spearman']:.3f} (FLOPs {v['flops_spearman']:.3f}), MAPE {v['mape_raw']:.1%}"
            )
        else:
            val = "; ".join(f"{rt}: Spearman {r['spearman']:.3f}, MAPE {r['mape_raw']:.1%}" for rt, r in v.items())
        fb = v.get("fbnet_holdout")
        if fb:
            val += (
                f"; FBNet blocks (odd rows, n={fb['n']}): Spearman {fb['spearman']:.3f} (MACs "
                f"{fb['macs_spearman']:.3f}), grouped sign right {fb['grouped_sign_right']:.0%}"
            )
        if m.energy:
            e = m.energy.get("validation", {})
            val += (
                f"; energy (mJ, {m.energy['column']}): n={e.get('n')}: Spearman {e.get('spearman', 0):.3f} "
                f"(FLOPs {e.get('flops_spearman', 0):.3f}), MAPE {e.get('mape_raw', 0):.1%}"
            )
        source = m.source
        if name in DEVICE_PEAKS:
            peak = DEVICE_PEAKS[name]
            source += (
                f"; extrapolated: operators larger than the calibration networks' largest, beyond that size at the "
                f"published roofline ({peak['gmacs']:g} GMAC/s, {peak['gbps']:g} GB/s)"
            )
        unfitted = [k for k in ("depthwise", "concat", "copy") if m.extrapolated(k)]
        source += f"; extrapolated: {', '.join(unfitted)} (none in the calibration networks)"
        if m.merges:
            c = m.coefficients
            terms = "; ".join(
                f"{g} {c[f'{g}.count']:.3f} ms + {c[f'{g}.mmacs']:.3f} ms/MMAC + {c[f'{g}.mbytes']:.3f} ms/MB"
                for g in m.merges
            )
            source += f"; operators a compiler can merge (sibling convolutions, repeated poolings) apart: {terms}"
        if m.fusions:
            c = m.coefficients
            parts = []
            if "act" in m.fusions:
                parts.append("standalone activations (their input has other readers) priced as adds")
            if "fuse_add" in m.fusions:
                parts.append(
                    f"adds fused into a convolution {c['fuse_add.count']:.3f} ms + {c['fuse_add.mbytes']:.3f} ms/MB"
                )
            source += f"; TensorRT layer fusions: {'; '.join(parts)}"
        table.add_row(name, m.device, m.precision, source, val)
    console.print(table)


@latency_app.callback(invoke_without_command=True)
def latency_cmd(
    ctx: typer.Context,
    device: Annotated[
        str | None, typer.Option(help="Device profile (see `edgecompress devices`); no default, required.")
    ] = None,
    model: Annotated[str | None, typer.Option(help=MODEL_HELP)] = None,
    checkpoint: Annotated[Path | None, typer.Option(help=CHECKPOINT_HELP)] = None,
    policy: Annotated[
        Path | None, typer.Option(help="Estimate the model compressed by this policy (default: none).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON document instead of a table.")] = False,
    table: Annotated[
        Path | None,
        typer.Option(help="A measured table for --device (profiled on it) (default: the device's own profile)."),
    ] = None,
    precision: Annotated[str, typer.Option(help="fp32, fp16 or int8 (tables).")] = "fp32",
    force: Annotated[bool, typer.Option(help="Use a table for another device or without --precision.")] = False,
    in_channels: Annotated[int, typer.Option("--in-channels", "--channels", min=1, help=IN_CHANNELS_HELP)] = 1,
    weights: Annotated[Path | None, typer.Option(help=WEIGHTS_ANALYSIS_HELP)] = None,
    input_size: Annotated[int, typer.Option(min=1, help=INPUT_SIZE_HELP)] = 28,
    num_classes: Annotated[int, typer.Option(min=1, help=NUM_CLASSES_HELP)] = 10,
) -> None:
    """Predicted batch-1 latency of a model (optionally compressed by --policy) on --device, per layer."""
    if ctx.invoked_subcommand is not None:
        return
    from edgecompress.latency_models import estimate_latency

    if device is None:
        raise ConfigError("give --device NAME (see `edgecompress devices`)")
    net, shape, what = _load_for_analysis(model, checkpoint, in_channels, input_size, num_classes, weights)
    if policy is not None:
        from edgecompress.compressors import Policy, compress

        pol = Policy.load(policy, net)
        # Latency does not depend on calibrated activation ranges: calibrate on zeros.
        net, _ = compress(net, pol, [__import__("torch").zeros(shape)], input_shape=shape)
        what += f" under {policy}"
    report = estimate_latency(net, shape, device, table=table, precision=precision, force=force)
    from edgecompress.latency_models.estimate import energy_devices, estimate_energy

    energy = estimate_energy(net, shape, device) if device in energy_devices() and table is None else None
    if as_json:
        extra = {"energy": energy.to_dict()} if energy is not None else {}
        print(json.dumps({"model": what, **report.to_dict(), **extra}, indent=2))
        return
    view = Table(title=f"{what} on {report.device}: {report.total_ms:.3f} ms predicted", caption=report.source)
    for col in ("layer", "ops", "kinds", "ms", "source"):
        view.add_column(col, justify="right" if col in ("ops", "ms") else "left")
    for r in report.rows:
        view.add_row(r.layer, str(r.ops), r.kinds, f"{r.ms:.4f}", r.source)
    overhead = (
        "the table's measured cost per call, plus its fitted cost per dispatched operator"
        if report.source.startswith("looked up")
        else f"device model {report.device} (its fitted intercept)"
    )
    view.add_row("(per-inference overhead)", "", "", f"{report.overhead_ms:.4f}", overhead)
    console.print(view)
    if energy is not None:
        console.print(f"energy per inference: {energy.mj:.3f} mJ ({energy.source})")
    for w in report.warnings:
        console.print(f"[yellow]warning:[/] {w}")


@app.command("profile")
def profile_cmd(
    out: Annotated[Path, typer.Option(help="Table JSON to write (extended when it exists).")],
    model: Annotated[
        list[str] | None,
        typer.Option(help="Model(s) whose reachable operators to measure (default: resnet20, unless --checkpoint)."),
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="A checkpoint whose reachable operators to measure (default: none).")
    ] = None,
    runtime: Annotated[
        str,
        typer.Option(
            help="onnxruntime (default, CPU), onnxruntime-cuda / onnxruntime-tensorrt (a Jetson's GPU, needs "
            "onnxruntime-gpu), litert (the LiteRT interpreter; with --plan-only, --out is a folder of converted "
            "operators for profiler.py on the device) or torch."
        ),
    ] = "onnxruntime",
    provider: Annotated[
        str | None,
        typer.Option(
            help="ONNX Runtime's execution provider: cpu, cuda or tensorrt (the same as --runtime onnxruntime, "
            "onnxruntime-cuda, onnxruntime-tensorrt; default: none, --runtime decides)."
        ),
    ] = None,
    precision: Annotated[
        list[str] | None, typer.Option(help="fp32, fp16, int8 (repeat for several; default: fp32).")
    ] = None,
    threads: Annotated[int, typer.Option(min=1, help="Threads the runtime runs each operator with.")] = 2,
    repeats: Annotated[int, typer.Option(min=1, help="Timed runs per operator (the median is kept).")] = 50,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed runs per operator before timing.")] = 20,
    passes: Annotated[
        int, typer.Option(min=1, help="Measure every operator in N passes over the list; median per operator.")
    ] = 1,
    device: Annotated[str, typer.Option(help="Device name recorded in the table (default: host name).")] = "",
    plan_only: Annotated[
        bool, typer.Option(help="Write the plan (signatures, or with --in-graph probe models) to --out and stop.")
    ] = False,
    in_graph: Annotated[
        bool,
        typer.Option(help="Profile operators inside whole probe models (ONNX Runtime's profiler) instead of alone."),
    ] = False,
    fit_context: Annotated[
        bool, typer.Option(help="Fit in-graph context factors on calibration models (needs this machine).")
    ] = True,
    in_channels: Annotated[int, typer.Option(min=1, help=IN_CHANNELS_HELP)] = 1,
    input_size: Annotated[int, typer.Option(min=1, help=INPUT_SIZE_HELP)] = 28,
    num_classes: Annotated[int, typer.Option(min=1, help=NUM_CLASSES_HELP)] = 10,
) -> None:
    """Measure every operator signature a search over the model(s) can reach, on this machine."""
    from edgecompress.latency_models import profiler
    from edgecompress.latency_models.ops import trace_ops
    from edgecompress.latency_models.table import LatencyTable, reachable_keys, write_plan

    precisions = precision or ["fp32"]
    try:
        runtime = profiler.runtime_for(None if runtime == "onnxruntime" else runtime, provider)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    valid = profiler.PRECISIONS.get(runtime)
    if valid is None:
        raise ConfigError(f"--runtime {runtime!r} is not one of: {', '.join(profiler.PRECISIONS)}")
    for p in precisions:
        if p not in valid:
            raise ConfigError(f"--precision {p!r} is not measurable with {runtime}; valid: {', '.join(valid)}")
    missing = profiler.runtime_missing(runtime) if runtime != "torch" and not plan_only else None
    if missing is not None:
        raise ConfigError(
            f"--runtime {runtime} cannot run on this machine: {missing}. Profile on the device itself, or write "
            "the plan here with --plan-only and run profiler.py there"
        )
    names = model or ([] if checkpoint else ["resnet20"])
    if in_graph:
        import tempfile

        from edgecompress.latency_models.host import export_probes

        if checkpoint is not None or runtime != "onnxruntime" or precisions != ["fp32"]:
            raise ConfigError("--in-graph profiles zoo models (--model) in onnxruntime at fp32 only")
        with tempfile.TemporaryDirectory() as tmp:
            folder = out if plan_only else Path(tmp)
            files = export_probes(tuple(names), folder, input_size=input_size)
            if plan_only:
                console.print(
                    f"{len(files)} probe models in {out}; on the device: python3 profiler.py {out} --out T.json"
                )
                return
            profiler.run_in_graph(files, out, threads=threads, warmup=warmup, repeats=repeats, device=device)
        console.print(f"in-graph table from {len(files)} probe models: {out}")
        return
    keys: list[str] = []
    targets = [(n, None) for n in names] + ([(None, checkpoint)] if checkpoint else [])
    for name, ckpt in targets:
        net, shape, _ = _load_for_analysis(name, ckpt, in_channels, input_size, num_classes)
        keys += reachable_keys(trace_ops(net, shape), precisions)
    keys = list(dict.fromkeys(keys))
    convert = None
    if runtime == "litert":
        from edgecompress.latency_models import litert

        if plan_only:
            from edgecompress._io import check_output
            from edgecompress._progress import progress_bar

            check_output(out, folder=True, error=ConfigError)
            with progress_bar() as bar:
                task = bar.add_task("convert", total=len(keys) + 1, status="")
                litert.write_litert_plan(
                    keys, out, ", ".join(names) or str(checkpoint),
                    progress=lambda done, _total, key, _ms: bar.update(task, completed=done, status=key),
                )  # fmt: skip
            console.print(f"LiteRT plan with {len(keys)} operator signatures, each converted: {out}")
            console.print(f"on the device: python3 profiler.py {out.name} --out TABLE.json --threads N")
            console.print(f"(profiler.py is {profiler.__file__}; it needs torch and ai-edge-litert)")
            return
        convert = litert.convert_operator
    if plan_only:
        write_plan(keys, out, ", ".join(names) or str(checkpoint))
        console.print(f"plan with {len(keys)} operator signatures: {out}")
        console.print(f"on the device: python3 profiler.py {out.name} --out TABLE.json --threads N")
        needs = "torch, onnxruntime and onnx" if set(precisions) - {"fp32"} else "torch and onnxruntime"
        console.print(
            f"(profiler.py is {profiler.__file__}; it needs {needs}; on a Jetson, --provider tensorrt, which "
            "needs onnx too)"
        )
        return
    from edgecompress._progress import progress_bar

    with progress_bar() as bar:
        task = bar.add_task("profile", total=len(keys), status="")

        def show(done: int, total: int, key: str, ms: float) -> None:
            bar.update(task, total=total, completed=done, status=f"{key} {ms:.4f} ms")

        try:
            profiler.run(keys, out, runtime=runtime, threads=threads, warmup=warmup, repeats=repeats,
                         device=device, progress=show, passes=passes, convert=convert)  # fmt: skip
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    table = LatencyTable.load(out)
    console.print(f"{len(table.entries)} operators in {out} (overhead per call {table.overhead_ms:.4f} ms)")
    if fit_context and runtime == "onnxruntime":
        from edgecompress.latency_models.host import fit_context as fit

        with progress_bar() as bar:
            task = bar.add_task("context fit", total=None, status="")

            def show_fit(done: int, total: int, label: str, ms: float) -> None:
                bar.update(task, total=total, completed=done, status=f"{label} {ms:.3f} ms")

            ctx = fit(table, progress=show_fit)
            table.save(out)
            ctx8 = None
            if "int8" in table.precisions():  # int8 factors and the cost of precision changes, fp32 part held
                task = bar.add_task("int8 context fit", total=None, status="")
                # 7 rounds: an int8 session runs at one of two speeds for its lifetime (docs/latency.md)
                ctx8 = fit(table, progress=show_fit, precision="int8", rounds=7)
                table.save(out)
        console.print(f"in-graph context factors {ctx['factors']} ({ctx['fitted_on']})")
        if ctx8 is not None:
            console.print(
                f"int8 in-graph factors {ctx8['factors']}, {ctx8['change_ms_per_mb']:.3f} ms per MB crossing a "
                f"change of precision ({ctx8['fitted_on']})"
            )


PLOT_HELP = "Write a predicted-vs-measured scatter plot (PNG) here (default: none)."
LATENCY_DATA_HELP = (
    "Folder with nb201_latency.csv (default: $EDGECOMPRESS_LATENCY_DATA, else shared/latency-data beside the "
    "repository)."
)


@latency_app.command("validate-table")
def latency_validate_table(
    device: Annotated[str, typer.Option(help="A table profile name (host) or a table path.")] = "host",
    per_model: Annotated[int, typer.Option(min=1, help="Random compressed models per base model.")] = 16,
    round_to: Annotated[int, typer.Option(min=1, help="Channel multiple of the random models.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the random compressed models.")] = 0,
    save: Annotated[
        bool,
        typer.Option(
            help="Store the result in the table's metadata (the figure `devices` shows) and add it to the "
            "table's record of validation passes."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON document instead of a summary.")] = False,
    plot: Annotated[Path | None, typer.Option(help=PLOT_HELP)] = None,
    int8: Annotated[
        str | None,
        typer.Option(
            help="Validate the int8 entries instead: 'all' quantizes every layer of each model, 'mixed' a random "
            "half (default: fp32 models)."
        ),
    ] = None,
) -> None:
    """Table sum vs measured end-to-end ONNX Runtime latency of random compressed resnet20 / mobilenetv2."""
    from edgecompress.latency_models import load_device
    from edgecompress.latency_models.host import record_pass, validate_table
    from edgecompress.latency_models.table import LatencyTable

    plot = _plot_path(plot)
    table = LatencyTable.load(device) if device.endswith(".json") else load_device(device)
    if not isinstance(table, LatencyTable):
        raise ConfigError(f"{device!r} is a device model, not a measured table: use `edgecompress latency validate`")
    if int8 not in (None, "all", "mixed"):
        raise ConfigError(f"--int8 {int8!r} is invalid; valid: all (every layer), mixed (a random half)")
    if int8 is not None and "int8" not in table.precisions():
        raise ConfigError(f"table {table.path} has no int8 entries; profile them with `profile --precision int8`")
    result = validate_table(table, per_model=per_model, seed=seed, round_to=round_to, int8=int8)
    summary = {k: v for k, v in result.items() if k != "rows"}
    if plot is not None:
        points = {
            "measured": [r["measured_ms"] for r in result["rows"]],
            "predicted": [r["estimated_ms"] for r in result["rows"]],
            "spearman": result["spearman"],
            "mape_raw": result["median_abs_error"],
        }
        _scatter({"table": points}, device, plot)
    if save:
        if int8 is not None:
            table.meta.setdefault("validation_int8", {})[int8] = summary
        else:
            table.meta["validation"] = summary
        record_pass(table, result, "edgecompress latency validate-table")
        table.save(table.path)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    console.print(
        f"{result['n']} compressed models (channels rounded to {round_to}"
        + ("" if int8 is None else f"; int8 on {'every layer' if int8 == 'all' else 'a random half of the layers'}")
        + "), measured in ONNX Runtime with "
        f"{result['threads']} threads, median of {result['repeats']}: table sum median |error| "
        f"{result['median_abs_error']:.1%}, mean {result['mean_abs_error']:.1%}, Spearman {result['spearman']:.3f}; "
        f"speed-up over the unchanged model (timed in the same rounds) median |error| "
        f"{result['speedup_median_abs_error']:.1%}"
    )


@latency_app.command("calibrate")
def latency_calibrate(
    data_dir: Annotated[Path | None, typer.Option(help=LATENCY_DATA_HELP)] = None,
    out: Annotated[Path | None, typer.Option(help="Where to write the profiles (default: the package's).")] = None,
) -> None:
    """Refit every public device model on the calibration rows; validate on the holdout rows."""
    from edgecompress.latency_models import calibrate
    from edgecompress.latency_models.devices import PROFILE_DIR

    models = calibrate(data_dir, out or PROFILE_DIR)
    for name, m in models.items():
        console.print(f"{name}: {m.fitted_on or m.source}")
        if m.energy:
            v = m.energy["validation"]
            console.print(f"{name} energy: {m.energy['fitted_on']}; holdout Spearman {v['spearman']:.3f}, "
                          f"MAPE {v['mape_raw']:.1%}")  # fmt: skip
    console.print(f"wrote {len(models)} profiles to {out or PROFILE_DIR}")


@latency_app.command("validate")
def latency_validate(
    device: Annotated[str, typer.Option(help="Device profile to check against the holdout rows.")],
    data_dir: Annotated[Path | None, typer.Option(help=LATENCY_DATA_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON document instead of a table.")] = False,
    plot: Annotated[Path | None, typer.Option(help=PLOT_HELP)] = None,
) -> None:
    """Spearman, Kendall and MAPE (raw and after the best single scale) on the holdout rows only."""
    from edgecompress.latency_models import load_device, validate
    from edgecompress.latency_models.device_model import DEVICE_COLUMNS, PI5_COLUMNS, DeviceModel, load_nb201_rows

    plot = _plot_path(plot)
    model = load_device(device)
    if not isinstance(model, DeviceModel):
        raise ConfigError(
            f"{device!r} is a measured table: validate it with `edgecompress latency validate-table --device {device}`"
        )
    rows = load_nb201_rows(data_dir)
    if device in DEVICE_COLUMNS:
        columns = {DEVICE_COLUMNS[device]["precision"]: DEVICE_COLUMNS[device]["column"]}
    elif device == "raspberry-pi-5":
        columns = dict(PI5_COLUMNS)
    else:
        raise ConfigError(f"{device!r} has no public measurements to validate against")
    results = {label: validate(model, rows, col) for label, col in columns.items()}
    if plot is not None:
        _scatter(results, device, plot)
    if as_json:
        print(json.dumps({k: {a: b for a, b in v.items() if a not in ("predicted", "measured")}
                          for k, v in results.items()}, indent=2))  # fmt: skip
        return
    table = Table(title=f"{device}: predicted vs measured, holdout rows only")
    for col in ("runtime / precision", "n", "Spearman", "Kendall", "FLOPs Spearman", "MAPE raw", "MAPE 1 scale"):
        table.add_column(col, justify="left" if col.startswith("runtime") else "right")
    for label, r in results.items():
        table.add_row(
            label, str(r["n"]), f"{r['spearman']:.3f}", f"{r['kendall']:.3f}", f"{r['flops_spearman']:.3f}",
            f"{r['mape_raw']:.1%}", f"{r['mape_scaled']:.1%}",
        )  # fmt: skip
    console.print(table)
    if plot is not None:
        console.print(f"plot: {plot}")


def _plot_path(plot: Path | None) -> Path | None:
    """Where --plot writes (a PNG: ``.png`` added to a name without a suffix, as matplotlib would), checked before
    any work: an existing file that is not a PNG (an earlier plot) is the user's, and is not replaced."""
    if plot is None:
        return None
    from edgecompress._io import check_output, is_png

    path = plot if plot.suffix else plot.with_suffix(".png")
    check_output(path, folder=False, error=ConfigError, flag="--plot")
    if path.is_file() and not is_png(path):
        raise ConfigError(f"--plot {path} exists and is not a PNG plot; choose another --plot")
    return path


def _scatter(results: dict[str, Any], device: str, path: Path) -> None:
    from matplotlib.figure import Figure  # a Figure of its own: no pyplot state, no backend switch

    fig = Figure(figsize=(5 * len(results), 4.5))
    axes = fig.subplots(1, len(results), squeeze=False)
    for ax, (label, r) in zip(axes[0], results.items(), strict=True):
        ax.scatter(r["measured"], r["predicted"], s=3, alpha=0.4)
        hi = max(max(r["measured"]), max(r["predicted"]))
        ax.plot([0, hi], [0, hi], color="grey", lw=1)
        ax.set_xlabel("measured ms")
        ax.set_ylabel("predicted ms")
        ax.set_title(f"{device} {label}: Spearman {r['spearman']:.3f}, error {r['mape_raw']:.1%}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


@app.command("search")
def search_cmd(
    out: Annotated[str | None, typer.Option(help=f"Run folder (re-running on it resumes) {_default('out')}.")] = None,
    agent: Annotated[
        str | None, typer.Option(help=f"Search driver: ddpg, optuna, ray or random {_default('search.agent')}.")
    ] = None,
    config: ConfigOpt = None,
    model: Annotated[
        str | None,
        typer.Option(help=f"Model name, torchvision:NAME or package.module:factory {_default('model.name')}."),
    ] = None,
    checkpoint: Annotated[
        str | None,
        typer.Option(
            help="Trained base model (default: model.checkpoint from --config, or checkpoints/MODEL-DATASET.pt)."
        ),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help=f"Target device profile (`edgecompress devices`) {_default('device')}.")
    ] = None,
    budget_ms: Annotated[
        float | None,
        typer.Option(help=f"Absolute latency budget in ms; wins over --budget-ratio {_default('search.budget_ms')}."),
    ] = None,
    budget_ratio: Annotated[
        float | None,
        typer.Option(
            help="Latency budget as a fraction of the base model's predicted latency on --device "
            f"{_default('search.budget_ratio')}."
        ),
    ] = None,
    energy_budget_mj: Annotated[
        float | None,
        typer.Option(
            help="Energy budget in mJ per inference on --device's energy model (jetson-tx2); a policy must meet it "
            f"and the latency budget {_default('search.budget_energy_mj')}."
        ),
    ] = None,
    energy_objective: Annotated[
        bool | None,
        typer.Option(
            "--energy-objective/--no-energy-objective",
            help="optuna nsga2: minimise predicted energy as a fourth objective (jetson-tx2) "
            f"{_default('search.energy_objective')}.",
        ),
    ] = None,
    episodes: Annotated[
        int | None, typer.Option(min=1, help=f"Policies to score (ddpg episodes) {_default('search.episodes')}.")
    ] = None,
    trials: Annotated[
        int | None,
        typer.Option(min=1, help=f"Policies to score (optuna/ray trials) {_default('search.episodes')}."),
    ] = None,
    techniques: Annotated[
        str | None,
        typer.Option(
            help=f"Comma list of keep,rank,sparsity,wbits,clusters,abits,drop {_default('search.techniques')}."
        ),
    ] = None,
    sampler: Annotated[
        str | None, typer.Option(help=f"optuna/ray: tpe, nsga2 or random {_default('search.sampler')}.")
    ] = None,
    storage: Annotated[
        str | None, typer.Option(help="optuna: study storage URL (default: sqlite:///RUN/study.db).")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help=f"ray: parallel trials, one CPU each {_default('search.workers')}.")
    ] = None,
    ray_address: Annotated[
        str | None, typer.Option(help="ray: join this cluster (default: start a local Ray).")
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(help=f"Seed of the agent and of the scoring batches {_default('search.seed')}."),
    ] = None,
    data_dir: Annotated[str | None, typer.Option(help=DATA_DIR_HELP)] = None,
    train_if_missing: Annotated[
        bool | None, typer.Option("--train-if-missing/--no-train-if-missing", help=TRAIN_IF_MISSING_HELP)
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help=f"fashion-mnist, cifar10 or imagefolder {_default('data.dataset')}.")
    ] = None,
    weights: WeightsOpt = None,
    trust_pickle: TrustPickleOpt = None,
    num_classes: NumClassesOpt = None,
    input_size: InputSizeOpt = None,
    channels: ChannelsOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    data_workers: Annotated[
        int | None, typer.Option(min=0, help=f"DataLoader workers for image folders {_default('data.workers')}.")
    ] = None,
    accelerator: AcceleratorOpt = None,
    precision: PrecisionOpt = None,
    gpus_per_trial: Annotated[
        float | None,
        typer.Option(min=0.0, help=f"ray: GPU share per trial, when GPUs exist {_default('search.gpus_per_trial')}."),
    ] = None,
    val_samples: Annotated[
        int | None,
        typer.Option(min=1, help=f"Validation samples each policy is scored on {_default('data.val_samples')}."),
    ] = None,
    finetune_batches: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Distillation steps (batches of 64) each policy gets before it is scored; 0 scores as AMC did, "
            f"near chance at a 2x cut {_default('search.finetune_batches')}.",
        ),
    ] = None,
    bn_batches: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Batches (of 64) BatchNorm statistics are re-estimated on per policy; 0 turns it off "
            f"{_default('search.bn_batches')}.",
        ),
    ] = None,
    finetune_lr: Annotated[
        float | None,
        typer.Option(min=0.0, help=f"Peak learning rate of those distillation steps {_default('search.finetune_lr')}."),
    ] = None,
) -> None:
    """Search per-layer compression policies under a latency budget (AMC's DDPG, Optuna or Ray Tune)."""
    from edgecompress.workflows.config import load_run_config
    from edgecompress.workflows.search import run_search

    if episodes is not None and trials is not None and episodes != trials:
        raise ConfigError(f"--episodes {episodes} and --trials {trials} disagree; give one")
    overrides: dict[str, Any] = {
        "out": out, "model.name": model, "model.checkpoint": checkpoint, "device": device,
        "search.agent": agent, "search.budget_ms": budget_ms, "search.budget_ratio": budget_ratio,
        "search.episodes": episodes if episodes is not None else trials, "search.seed": seed,
        "data.data_dir": data_dir, "search.techniques": _names("--techniques", techniques),
        "search.sampler": sampler, "search.storage": storage, "search.workers": workers,
        "search.ray_address": ray_address, "model.train_if_missing": train_if_missing, "data.dataset": dataset,
        "search.gpus_per_trial": gpus_per_trial, "data.val_samples": val_samples,
        "search.finetune_batches": finetune_batches, "search.bn_batches": bn_batches,
        "search.finetune_lr": finetune_lr, "search.budget_energy_mj": energy_budget_mj,
        "search.energy_objective": energy_objective,
        **_byo_overrides(weights, trust_pickle, num_classes, input_size, channels, mean, std, data_workers, accelerator,
                         precision),
    }  # fmt: skip
    if checkpoint is not None and train_if_missing is None:
        overrides["model.train_if_missing"] = False  # a path typed on the command line must exist
    cfg = load_run_config(config, overrides)
    result = run_search(cfg, console)
    unit = (
        "episodes" if cfg.search.agent == "ddpg" else "trials" if cfg.search.agent in ("optuna", "ray") else "policies"
    )
    best = result["best"]
    console.print(
        f"{result['episodes']} {unit}"
        + (f" ({result['new_episodes']} this run)" if result["new_episodes"] != result["episodes"] else "")
        + f" in {result['seconds']:.0f} s; budget {result['budget_ms']:.4f} ms "
        f"(base {result['base_latency_ms']:.4f} ms, predicted on {cfg.device})"
        + (f", energy budget {result['budget_energy_mj']:.4f} mJ" if result.get("budget_energy_mj") else "")
        + f"; base accuracy {result['base_accuracy']:.4f}, scored as every policy is ({_scored_as(cfg)})"
    )
    if best is None:
        console.print(
            f"[yellow]no policy within budget[/] in {result['episodes']} {unit}: re-run the same command with more "
            f"{unit} (it resumes), or search a looser budget (--budget-ratio) into another --out"
        )
    else:
        energy = ""
        if best.get("energy_mj") is not None:
            energy = f", {best['energy_mj']:.4f} mJ predicted ({best['energy_source'].split(';')[0]})"
        one = "policy" if unit == "policies" else unit[:-1]
        console.print(
            f"best: accuracy {best['accuracy']:.4f} ({best['accuracy_source']}), {best['latency_ms']:.4f} ms "
            f"predicted{energy}, {one} {best['episode']} -> {cfg.out}/best_policy.json"
        )
    names = ("config.yaml", "episodes.jsonl", "best_policy.json", "topk.json", "search.png", "reference.json",
             "study.db")  # fmt: skip
    console.print(f"run folder: {cfg.out} ({', '.join(n for n in names if (Path(cfg.out) / n).exists())})")


def _scored_as(cfg: Any) -> str:
    """How the search scores a policy's accuracy, the base model included (the identity policy)."""
    s = cfg.search
    steps = [
        *([f"BatchNorm re-estimated on {s.bn_batches} batches"] if s.bn_batches else []),
        *([f"{s.finetune_batches} distillation steps"] if s.finetune_batches else []),
    ]
    return ", ".join([*steps, f"top-1 on {cfg.data.val_samples} validation samples"])


@app.command("report")
def report_cmd(
    runs: Annotated[list[Path], typer.Argument(help="Search run folders (any agents).")],
    out: Annotated[Path | None, typer.Option(help="Where report.json and pareto.png go (default: first run).")] = None,
) -> None:
    """Best policies under the budget, the Pareto front and pareto.png, across search runs."""
    from edgecompress.workflows.report import write_report

    r = write_report(list(runs), out)
    table = Table(title="best policy within budget per run (validation accuracy; predicted latency)")
    for col in (
        "run",
        "agent",
        "evals",
        "feasible",
        "best acc",
        "latency ms",
        "budget ms",
        "stored bytes",
        "hypervol.",
    ):
        table.add_column(col)
    for s in r["runs"]:
        b = s["best"]
        table.add_row(
            s["run"],
            s["agent"],
            str(s["evaluations"]),
            str(s["feasible"]),
            f"{b['accuracy']:.4f}" if b else "-",
            f"{b['latency_ms']:.4f}" if b else "-",
            f"{s['budget_ms']:.4f}" if s["budget_ms"] else "-",
            _fmt_int(b["stored_bytes"]) if b else "-",
            f"{s['hypervolume']:.4f}" if s["hypervolume"] is not None else "-",
        )
    console.print(table)
    base = r["runs"][0]["base"]
    uni = r["runs"][0]["uniform_within_budget"]
    if base:
        console.print(
            f"base model: accuracy {base['accuracy']:.4f} (scored as every policy is), {base['latency_ms']:.4f} ms "
            f"predicted on {r['runs'][0]['device']}"
        )
    if uni:
        console.print(
            f"uniform keep {uni['keep']} (largest within budget): accuracy {uni['accuracy']:.4f}, "
            f"{uni['latency_ms']:.4f} ms"
        )
    front = Table(title=f"Pareto front ({len(r['pareto_front'])} policies: accuracy up, latency down, size down)")
    for col in ("run", "agent", "#", "accuracy", "latency ms", "stored bytes", "within budget"):
        front.add_column(col)
    for p in r["pareto_front"]:
        front.add_row(
            p["run"],
            p["agent"],
            str(p["episode"]),
            f"{p['accuracy']:.4f}",
            f"{p['latency_ms']:.4f}",
            _fmt_int(p["stored_bytes"]),
            "yes" if p["within_budget"] else "no",
        )
    console.print(front)
    console.print(f"wrote {r['plot']} and {Path(r['plot']).with_name('report.json')}")


@app.command("replay")
def replay_cmd(
    out: Annotated[Path, typer.Option(help="Folder for model.pt, report.json and report.md.")],
    policy: Annotated[
        Path | None, typer.Option(help="Policy file, e.g. runs/NAME/best_policy.json (default: none; or --student).")
    ] = None,
    student: Annotated[
        str | None,
        typer.Option(
            help="Instead of a policy: a compact architecture (e.g. resnet8, mobilenetv2-0.25, torchvision:NAME; "
            "`edgecompress models`) trained from scratch by distillation from --checkpoint (default: none)."
        ),
    ] = None,
    checkpoint: Annotated[str | None, typer.Option(help="Base checkpoint (default: the one the policy names).")] = None,
    finetune_epochs: Annotated[int, typer.Option(min=0, help="Fine-tuning epochs (0: none).")] = 1,
    distill: Annotated[bool, typer.Option("--distill/--no-distill", help="Teach with the base model.")] = True,
    lr: Annotated[float, typer.Option(min=0.0, help="Peak fine-tuning learning rate.")] = 0.01,
    augment: Annotated[
        bool, typer.Option(help="Random crop (pad 2) and horizontal flip of each fine-tuning batch.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the fine-tuning batch order.")] = 0,
    max_batches: Annotated[
        int | None, typer.Option(min=1, help="Cap fine-tuning batches per epoch (default: no cap).")
    ] = None,
    data_dir: Annotated[str | None, typer.Option(help=DATA_DIR_HELP)] = None,
    val_size: Annotated[int, typer.Option(min=1, help="Training images held out (as in the search).")] = 5000,
    force: Annotated[bool, typer.Option(help="Replace a replay already in --out.")] = False,
    trust_factory: Annotated[
        str | None,
        typer.Option(
            help="The package.module:function the checkpoint names, if any (it runs code) (default: none, such a "
            "checkpoint is refused)."
        ),
    ] = None,
    accelerator: AcceleratorOpt = None,
    precision: PrecisionOpt = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Fine-tuning batch size.")] = 128,
    test_samples: Annotated[
        int | None, typer.Option(min=1, help="Score on the first N test images only (default: all).")
    ] = None,
) -> None:
    """Rebuild a found policy, fine-tune it (distillation by default), evaluate and report."""
    from edgecompress.workflows.replay import replay

    r = replay(policy, out, student=student, checkpoint=checkpoint, finetune_epochs=finetune_epochs,
               distill=distill, lr=lr, augment=augment, seed=seed, max_batches=max_batches, data_dir=data_dir,
               force=force,
               val_size=val_size, trust_factory=trust_factory, accelerator=accelerator or "cpu",
               precision=precision or "fp32", batch_size=batch_size, test_samples=test_samples)  # fmt: skip
    console.print((out / "report.md").read_text(), markup=False, highlight=False)
    console.print(f"wrote {r['compressed_model']}, {out / 'report.json'}, {out / 'report.md'}")


@app.command("export")
def export_cmd(
    model: Annotated[Path, typer.Option(help="Replay folder (or its model.pt).")],
    format: Annotated[
        str,
        typer.Option(
            "--format",
            help="onnx, onnx-fp16, onnx-int8, tflite, tflite-int8 (LiteRT, pip install 'edgecompress\\[litert]'), "
            "torchscript or archive.",
        ),
    ],
    out: Annotated[Path, typer.Option(help="File to write (never overwritten without --force).")],
    all_layers: Annotated[bool, typer.Option(help="onnx-int8: quantize every layer, not only abits<=8 ones.")] = False,
    symmetric: Annotated[bool, typer.Option(help="onnx-int8: symmetric activations (as --target tensorrt).")] = False,
    scales: Annotated[
        str,
        typer.Option(
            help="onnx-int8: trained (the policy's fake-quantization scales, kept from fine-tuning), calibrated "
            "(ONNX Runtime's static quantizer on training batches) or auto (default: trained when the policy "
            "quantizes any layer to <= 8 bits, else calibrated)."
        ),
    ] = "auto",
    target: Annotated[
        str,
        typer.Option(
            help="onnx-int8: generic (default) or tensorrt (symmetric int8 activations with zero point 0, "
            "per-channel symmetric weights: TensorRT's explicit quantization)."
        ),
    ] = "generic",
    calibration_batches: Annotated[
        int,
        typer.Option(min=1, help="onnx-int8 / tflite-int8: training batches of 32 activations are calibrated on."),
    ] = 8,
    verify_samples: Annotated[int | None, typer.Option(min=1, help="Test images to verify on (default all).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the export report as JSON.")] = False,
    data_dir: Annotated[str | None, typer.Option(help=DATA_DIR_HELP)] = None,
    val_size: Annotated[int, typer.Option(min=1, help="Training images held out (as in the search).")] = 5000,
    force: Annotated[bool, typer.Option(help="Replace an existing --out.")] = False,
    exporter: Annotated[
        str, typer.Option(help="ONNX exporter: torchscript (default, what latency is measured with) or dynamo.")
    ] = "torchscript",
    trust_factory: Annotated[
        str | None,
        typer.Option(
            help="The package.module:function the model names, if any (it runs code) (default: none, such a model "
            "is refused)."
        ),
    ] = None,
) -> None:
    """Export a replayed model as ONNX (fp32, fp16, int8), LiteRT (fp32, int8), TorchScript or the packed archive;
    each file is run in its runtime and checked against PyTorch before it is kept."""
    from edgecompress.artifacts.export import export_model

    r = export_model(
        model,
        format,
        out,
        all_layers=all_layers,
        symmetric=symmetric,
        scales=scales,
        target=target,
        data_dir=data_dir,
        calibration_batches=calibration_batches,
        verify_samples=verify_samples,
        force=force,
        val_size=val_size,
        exporter=exporter,
        trust_factory=trust_factory,
    )
    if json_out:
        print(json.dumps(r, indent=2))
        return
    p = r["parity"]
    console.print(f"wrote {out} ({r['bytes']:,} bytes, {r['format']})")
    if "checker" in r:
        console.print(r["checker"])
    console.print(
        f"verified on {p['samples']} {r['verified_on']} images: top-1 {p['top1']:.4f} (the PyTorch compressed model "
        f"on the same images {r['accuracy_pytorch']:.4f}), top-1 agreement with PyTorch {p['top1_agreement']:.2%}, "
        f"max abs difference {p['max_abs_diff']:.3g}"
    )
    if "int8" in r and "quantized_nodes" in r["int8"]:
        i = r["int8"]
        console.print(
            f"int8 (calibrated scales): {len(i['quantized_nodes'])} int8 nodes, {len(i['float_nodes'])} float nodes "
            f"({'symmetric' if i['symmetric'] else 'asymmetric'} activations, {i['calibration']})"
        )
    elif "int8" in r:
        i = r["int8"]
        console.print(
            f"int8 ({i['scales']}): {len(i['weights'])} weights stored as integers with their trained per-channel "
            f"scales, {len(i['activations'])} layer inputs quantized with their trained ranges "
            f"({'symmetric, zero point 0' if i['symmetric'] else 'asymmetric uint8'})"
        )
    if "litert" in r:
        lt = r["litert"]
        console.print(f"LiteRT file by {lt['converter']}, batch {lt['batch']}, {lt['layout']}"
                      + (f"; {lt['int8']['scheme']}, {lt['int8']['calibration']}" if "int8" in lt else "")
                      + f"; verified on {lt.get('kernels', 'the default kernels')}")  # fmt: skip
    if "archive" in r:
        a = r["archive"]
        console.print(
            f"archive: {a['layer_bytes']:,} bytes of coded layers (= the report's Huffman size) + "
            f"{a['other_tensor_bytes']:,} bytes other tensors + {a['header_bytes']:,} bytes header"
        )
    m = r.get("measured")
    if m:
        ref = m.get("fp32_reference")
        if "batch64_ms" in m:
            line = f"measured ({m['source']}): batch 1 {m['batch1_ms']:.4f} ms, batch 64 {m['batch64_ms']:.3f} ms"
        else:
            line = f"measured ({m['source']}): batch 1 {m['batch1_ms']:.4f} ms, "
            line += f"1 thread {m['batch1_ms_1thread']:.4f} ms"
        if ref:
            line += f" (fp32 export: {ref['batch1_ms']:.4f} ms, {ref['batch64_ms']:.3f} ms)"
        console.print(line)


@data_app.command("locate")
def data_locate(data_dir: Annotated[str | None, typer.Option(help=DATA_DIR_HELP)] = None) -> None:
    """Say where Fashion-MNIST is found (or where it was looked for)."""
    from edgecompress.data import _locate_fashion_mnist

    print(_locate_fashion_mnist(data_dir))


@data_app.command("download")
def data_download() -> None:
    """Download Fashion-MNIST with torchvision's downloader (needs internet)."""
    from edgecompress.data import download_fashion_mnist

    print(download_fashion_mnist())


# Commands kept in their own modules register on `app` when imported (after `app` and the shared options exist).
from edgecompress.cli import compare as _compare  # noqa: E402,F401


def _input_error(exc: BaseException) -> str | None:
    """One paragraph for the errors bad input causes below the checks (None: not one of those)."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):  # a setting derived from a flag after the config was read
        from edgecompress.config import explain_validation_error

        return str(explain_validation_error(exc, "command line"))
    if isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and ("can't allocate memory" in str(exc) or "out of memory" in str(exc))
    ):
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
        return (
            f"out of memory: {first}. The model or data asked for is too large for this machine: check "
            "--input-size, --num-classes, --in-channels and the batch size"
        )
    if isinstance(exc, OSError) and exc.filename is not None:
        other = f" -> {exc.filename2}" if exc.filename2 else ""
        return f"cannot use {exc.filename}{other}: {exc.strerror or exc}; choose another path"
    return None


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, prog_name="edgecompress")
    except EdgeCompressError as exc:
        # User text (paths, YAML excerpts) is escaped: "[bold]" in a path is not markup, "[/x]" must not crash.
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except Exception as exc:  # what bad input can still raise deeper down, said in one paragraph
        message = _input_error(exc)
        if message is None:
            raise  # a defect: the traceback is what a report of it needs
        err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except SystemExit as done:
        if done.code == 130:  # typer turns Ctrl-C into a silent exit 130
            err_console.print("interrupted (what finished is kept: the same command resumes a search)")
        raise
