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
from rich.table import Table

from edgecompress._progress import make_console
from edgecompress.errors import ConfigError, EdgeCompressError

app = typer.Typer(
    name="edgecompress",
    help="Hardware-aware model compression: analyse, train, and (soon) search, replay and export.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Find or download datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = make_console()
err_console = make_console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config; flags override its values.")]


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

    from edgecompress.config import load_config

    print(yaml.safe_dump(load_config(config).model_dump(mode="json"), sort_keys=False), end="")


@app.command("train")
def train_cmd(
    out: Annotated[Path, typer.Option(help="Checkpoint file to write.")],
    model: Annotated[str | None, typer.Option(help="Model name (see `edgecompress models`).")] = None,
    dataset: Annotated[str | None, typer.Option(help="fashion-mnist, cifar10 or imagefolder.")] = None,
    epochs: Annotated[int | None, typer.Option(min=1)] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    batch_size: Annotated[int | None, typer.Option(min=1)] = None,
    lr: Annotated[float | None, typer.Option()] = None,
    augment: Annotated[bool | None, typer.Option("--augment/--no-augment")] = None,
    data_dir: Annotated[str | None, typer.Option(help="Folder to look for the dataset in first.")] = None,
    config: ConfigOpt = None,
    force: Annotated[bool, typer.Option(help="Replace an existing checkpoint at --out.")] = False,
    max_batches: Annotated[
        int | None,
        typer.Option(min=1, help="Cap batches per epoch (smoke runs); recorded in the checkpoint."),
    ] = None,
) -> None:
    """Train a base model and save a checkpoint (state_dict + JSON model spec)."""
    from edgecompress.config import load_config
    from edgecompress.training import train_base_model

    if out.exists() and not force:
        raise ConfigError(f"{out} already exists; pass --force to replace it, or choose another --out")
    cfg = load_config(
        config,
        {"model.name": model, "data.dataset": dataset, "data.data_dir": data_dir, "train.epochs": epochs,
         "train.seed": seed, "train.batch_size": batch_size, "train.lr": lr, "train.augment": augment},
    )  # fmt: skip
    _, spec = train_base_model(cfg, out, max_batches=max_batches)
    console.print(
        f"[bold]{spec.model}[/] on {spec.dataset}: test accuracy {spec.metrics['test_acc']:.4f} "
        f"(measured after training on the test split), val accuracy {spec.metrics['val_acc']:.4f}; "
        f"{spec.train['epochs']} epochs in {spec.train['seconds']:.1f}s wall time on this machine "
        f"({spec.train['torch_threads']} torch threads)"
    )
    console.print(f"checkpoint: {out}")


def _load_for_analysis(
    model: str | None, checkpoint: Path | None, in_channels: int, input_size: int, num_classes: int
) -> tuple[Any, tuple[int, ...], str]:
    from edgecompress.checkpoint import load_checkpoint
    from edgecompress.models import create_model

    if checkpoint is not None:
        net, spec = load_checkpoint(checkpoint)
        if model is not None and model != spec.model:
            raise ConfigError(f"--model {model!r} does not match checkpoint {checkpoint}, which holds {spec.model!r}")
        return net, spec.input_shape, f"{spec.model} from {checkpoint}"
    if model is None:
        raise ConfigError("give --model NAME or --checkpoint PATH")
    net = create_model(model, num_classes, in_channels, input_size=input_size)
    return net, (1, in_channels, input_size, input_size), f"{model} (random init; shapes only)"


@app.command("analyze")
def analyze_cmd(
    model: Annotated[str | None, typer.Option(help="Model name; taken from the checkpoint if omitted.")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Checkpoint written by `edgecompress train`.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON document instead of tables.")] = False,
    in_channels: Annotated[int, typer.Option(min=1)] = 1,
    input_size: Annotated[int, typer.Option(min=1)] = 28,
    num_classes: Annotated[int, typer.Option(min=1)] = 10,
    policy: Annotated[Path | None, typer.Option(help="Policy JSON: show before and after side by side.")] = None,
    dataset: Annotated[
        str | None, typer.Option(help="Calibration data for 8-bit activations (default: the checkpoint's).")
    ] = None,
) -> None:
    """Per-layer shapes, params, MACs, bytes and coupled channel groups (batch-1 forward pass)."""
    from edgecompress.analysis import analyze_model

    net, shape, what = _load_for_analysis(model, checkpoint, in_channels, input_size, num_classes)
    analysis = analyze_model(net, shape)
    if policy is not None:
        _analyze_policy(net, analysis, policy, dataset, checkpoint, what, as_json)
        return
    if as_json:
        doc = analysis.to_dict()
        doc["model"] = what
        print(json.dumps(doc, indent=2))
        return
    print_analysis(analysis, f"{what}, input {tuple(shape)}")


def _analyze_policy(
    net: Any, analysis: Any, policy_path: Path, dataset: str | None, checkpoint: Path | None, what: str, as_json: bool
) -> None:
    from edgecompress.compressors import Policy, compress

    pol = Policy.load(policy_path, net)
    calibration = None
    if any(lp.abits == 8 for lp in pol.layers.values()):
        from edgecompress.checkpoint import load_checkpoint
        from edgecompress.data import batches, load_dataset

        name = dataset or (load_checkpoint(checkpoint)[1].dataset if checkpoint else None)
        if name is None:
            raise ConfigError(
                "the policy quantizes activations to 8 bits: give --dataset (or --checkpoint) to calibrate"
            )
        bundle = load_dataset(name)
        calibration = [x for x, _ in batches(bundle.train, 64, shuffle=True, seed=0)][:4]
    _, report = compress(net, pol, calibration, analysis=analysis)
    if as_json:
        doc = report.to_dict()
        doc["model"] = what
        doc["policy"] = str(policy_path)
        print(json.dumps(doc, indent=2))
        return
    print_report(report, f"{what} under {policy_path}")


_SHOWN = ("kept", "rank", "achieved", "clusters", "wbits", "abits")


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
        group = f"{s.group}" + ("" if s.prunable else " (output)")
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
    config: ConfigOpt = Path("configs/default.yaml"),
    out: Annotated[str | None, typer.Option(help="Run folder (overrides the config's `out`).")] = None,
    data_dir: Annotated[str | None, typer.Option(help="Folder to look for the dataset in first.")] = None,
) -> None:
    """The main job on a config: base model (trained if its checkpoint is missing), analysis, summary."""
    from edgecompress.pipeline import run_pipeline

    run_pipeline(config, {"out": out, "data.data_dir": data_dir}, console=console)


@data_app.command("locate")
def data_locate(data_dir: Annotated[str | None, typer.Option()] = None) -> None:
    """Say where Fashion-MNIST is found (or where it was looked for)."""
    from edgecompress.data import _locate_fashion_mnist

    print(_locate_fashion_mnist(data_dir))


@data_app.command("download")
def data_download() -> None:
    """Download Fashion-MNIST with torchvision's downloader (needs internet)."""
    from edgecompress.data import download_fashion_mnist

    print(download_fashion_mnist())


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, prog_name="edgecompress")
    except EdgeCompressError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
