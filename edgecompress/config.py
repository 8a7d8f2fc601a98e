"""Run configuration: YAML files validated into pydantic models.

A config file has the sections below; every key is optional and defaults to the
built-in demo (LeNet-5 on Fashion-MNIST). Command-line flags override file
values through :func:`load_config`'s ``overrides`` (dotted keys). Unknown keys
and bad values raise :class:`~edgecompress.errors.ConfigError` naming the key,
the value and the valid choices. The resolved config is written into every run
folder (:func:`write_resolved_config`) so a run folder describes itself.
"""

from __future__ import annotations

import os
import re
import reprlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgecompress._io import check_output, write_text_atomic
from edgecompress.errors import ConfigError, did_you_mean

__all__ = [
    "CONFIG_VERSION",
    "DataConfig",
    "ModelConfig",
    "RunConfig",
    "SearchConfig",
    "TrainConfig",
    "is_host",
    "load_config",
    "write_resolved_config",
]

CONFIG_VERSION = 1


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)  # a number, not nan or inf


class ModelConfig(_Section):
    name: str = "lenet5"
    """Model registry name, ``torchvision:NAME`` or ``package.module:factory``."""
    checkpoint: str | None = None
    """Trained base model (default ``checkpoints/NAME-DATASET.pt``)."""
    train_if_missing: bool = False
    """Train the base model at ``checkpoint`` when that file does not exist. Off by default: a mistyped path
    must be an error, not minutes of training and a search on a model nobody asked for."""
    weights: str | None = None
    """Weights trained anywhere, for the model ``name`` builds: a plain state_dict, a dict holding one under
    ``state_dict`` / ``model`` / ``model_state_dict`` (a Lightning checkpoint), or a TorchScript file; read with
    ``weights_only=True``. Replaces ``checkpoint``: the run folder gets an edgecompress checkpoint made from it."""
    trust_pickle: bool = False
    """Let ``weights`` be a whole pickled ``nn.Module`` (unpickling runs code from the file: only for files you
    made)."""
    num_classes: int | None = Field(None, ge=1)
    """Classes the model outputs, when neither the weights nor the data say (default: read from them)."""


class DataConfig(_Section):
    dataset: Literal["fashion-mnist", "cifar10", "imagefolder"] = "fashion-mnist"
    data_dir: str | None = None
    """The folder holding the data; used alone when given (default: $EDGECOMPRESS_DATA when set, else the
    Debian package's folder, then torchvision's root)."""
    val_size: int = Field(5000, ge=1)
    """Training samples held out, with a fixed seed, as the validation split."""
    val_samples: int = Field(2000, ge=1)
    """How many validation samples a search scores each policy on."""
    input_size: int | None = Field(None, ge=8)
    """Side length of the inputs served: imagefolder resizes and crops to it (default 224); fashion-mnist and
    cifar10 are upsampled to it (default: their own 28 / 32)."""
    channels: int | None = Field(None, ge=1)
    """Channels served: 3 serves grayscale data as RGB (the gray plane repeated); default the data's own."""
    mean: list[float] | None = None
    """Per-channel normalisation mean (imagefolder; default ImageNet's); other datasets use their training
    split's."""
    std: list[float] | None = None
    """Per-channel normalisation standard deviation (imagefolder; default ImageNet's)."""
    workers: int = Field(0, ge=0)
    """DataLoader worker processes for data decoded per sample (imagefolder); 0 decodes in the main process."""
    seed: int = 0
    """Seed of the validation split."""


class TrainConfig(_Section):
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.05, gt=0)
    """Peak learning rate; cosine-annealed to zero over all steps after a one-epoch-fraction warm-up."""
    optimizer: Literal["sgd", "adamw"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    augment: bool = False
    """Random crop (pad 2) and horizontal flip, applied per batch."""
    threads: int = Field(0, ge=0)
    """torch intra-op threads; 0 keeps torch's default (all cores)."""
    accelerator: Literal["auto", "cpu", "cuda", "mps"] = "cpu"
    """Where training, distillation, BatchNorm re-estimation and accuracy scoring run: ``auto`` picks CUDA,
    then MPS, then the CPU. Latency is never measured here unless the device profile is this machine."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Automatic mixed precision for training and scoring on CUDA (bf16 also on the CPU)."""
    channels_last: bool | None = None
    """NHWC memory layout for convolution nets; default: on for CUDA, off elsewhere."""
    seed: int = 0


Technique = Literal["keep", "rank", "sparsity", "wbits", "clusters", "abits", "drop"]


def _default_techniques() -> list[Technique]:
    return ["keep"]


class SearchConfig(_Section):
    agent: Literal["ddpg", "optuna", "ray", "random"] = "ddpg"
    """Search driver (``edgecompress.drivers``): AMC's DDPG, Optuna, Ray Tune, or uniform random policies."""
    episodes: int = Field(30, ge=1)
    """Policies scored (episodes for ddpg, trials for optuna and ray; ``--trials`` sets it too)."""
    sampler: Literal["tpe", "nsga2", "random"] = "tpe"
    """optuna / ray: TPE (accuracy under the budget constraint), NSGA-II (accuracy, latency, size), random."""
    energy_objective: bool = False
    """optuna nsga2: minimise predicted energy per inference as a fourth objective (a device with an energy
    model: jetson-tx2)."""
    storage: str | None = None
    """optuna: study storage URL; default sqlite:///RUN_FOLDER/study.db."""
    workers: int = Field(1, ge=1)
    """ray: trials run in parallel, one CPU each."""
    gpus_per_trial: float = Field(0.0, ge=0)
    """ray: the GPU share each trial asks for (e.g. 0.25 runs four trials per GPU); 0 on machines without one."""
    ray_address: str | None = None
    """ray: join this cluster (e.g. ``ray://head:10001`` or ``auto``); default: start a local Ray."""
    warmup_episodes: int | None = Field(None, ge=0)
    """Random-action episodes before the actor acts; default: a third of the episodes, at most 100 (AMC)."""
    budget_ratio: float | None = Field(0.5, gt=0, le=1)
    """Latency budget as a fraction of the base model's predicted latency on the device."""
    budget_ms: float | None = Field(None, gt=0)
    """Absolute latency budget; overrides budget_ratio."""
    budget_energy_mj: float | None = Field(None, gt=0)
    """Energy budget in mJ per batch-1 inference, predicted by the device's energy model (jetson-tx2); a policy
    must meet it and the latency budget. None: no energy budget."""
    techniques: list[Technique] = Field(default_factory=_default_techniques)
    reward: Literal["acc", "acc_log_latency"] = "acc"
    bn_batches: int = Field(4, ge=0)
    """Training batches (of 64) to re-estimate BatchNorm statistics on before scoring each policy. Pruning
    leaves the running statistics of the wider model; 4 is what every benchmark search used, and a model
    without BatchNorm skips it at no cost. 0 turns it off."""
    finetune_batches: int = Field(40, ge=0)
    """Distillation steps (batches of 64, teacher: the base model) each policy gets before it is scored.
    AMC scores without fine-tuning; at 2x on small networks that scores every policy near chance (ResNet-20,
    40 episodes at budget 0.6: best 0.18 without, 0.77 with 40; benchmarks/results/replay_export__resnet20-*).
    40 steps cost about 0.3 s per LeNet-5 policy and 8 s per ResNet-20 one on 2 CPU cores; 0 scores as AMC did
    (docs/search.md, "Scoring defaults")."""
    finetune_lr: float = Field(0.01, gt=0)
    """Peak learning rate of those distillation steps. 0.01 suits the small zoo; a real-size network (ResNet-18
    at 224 px) fell from 0.38 to 0.03 top-1 in two steps at 0.01 and rose to 0.43 at 0.001."""
    latency: Literal["table", "measured"] = "table"
    """How a policy's latency is scored: ``table`` predicts it (the device's table or model);
    ``measured`` times each policy on this machine against the base model (device ``host`` only)."""
    round_to: int = Field(8, ge=1)
    """Round kept channels and ranks up to this multiple (SIMD-friendly widths)."""
    fill_budget: bool = False
    """Before scoring, widen each policy's pruned channel groups into the budget it leaves unused
    (cheapest predicted latency per channel first; ddpg, optuna tpe and ray; needs ``latency: table``)."""
    top_k: int = Field(5, ge=1)
    seed: int = 0


class RunConfig(_Section):
    """The whole run: what ``edgecompress run`` and, later, searches read."""

    version: Literal[1] = 1
    name: str = "demo"
    out: str = "runs/demo"
    """Run folder: resolved config, analysis, summaries and (later) search results go here."""
    device: str = "raspberry-pi-4"
    """Target device profile (``edgecompress devices``): a device model or a measured table."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)


def _set_dotted(target: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = target
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {dotted!r}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """Valid keys of the section an error location points into."""
    model: type[BaseModel] = RunConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


MAX_CONFIG_VALUES = 100_000
"""A config document expanding to more values than this is refused (a YAML alias bomb expands exponentially)."""

_REPR = reprlib.Repr()  # keyword arguments only from Python 3.12
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxstring, _REPR.maxother = 3, 6, 6, 120, 120


def _shown(value: Any) -> str:
    """A bad value as an error message shows it: a bounded repr (never the whole of a huge input)."""
    return _REPR.repr(value)


def _count_values(node: Any, limit: int) -> int:
    """Values in a parsed document counting every alias expansion, stopping once past ``limit``."""
    count, stack = 0, [node]
    while stack and count <= limit:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return count


def explain_validation_error(exc: ValidationError, source: str) -> ConfigError:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            valid = _fields_at(err["loc"])
            lines.append(
                f"unknown key {key!r}.{did_you_mean(str(err['loc'][-1]), valid)} Valid keys here: {', '.join(valid)}"
            )
        elif err["type"] == "literal_error":
            expected = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
            hint = did_you_mean(str(err.get("input")), expected)
            lines.append(f"{key} = {_shown(err.get('input'))}: {err['msg']}.{hint}")
        else:
            lines.append(f"{key} = {_shown(err.get('input'))}: {err['msg']}")
    return ConfigError(f"invalid config ({source}):\n  " + "\n  ".join(lines))


def is_host(device: str) -> bool:
    """A table profiled on this machine: ``host`` (1 thread) or ``host-Nthread``."""
    return device == "host" or (device.startswith("host-") and device.endswith("thread"))


class _StrictLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader that refuses a mapping naming a key twice (YAML keeps the last one silently:
    ``episodes: 30`` then ``episodes: 300`` further down would be a 300-episode run)."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen and key != "<<":
            raise yaml.constructor.ConstructorError(
                "while reading a mapping", node.start_mark, f"key {key!r} is given twice", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    known_devices: Iterable[str] | None = None,
    device_aliases: Iterable[str] = (),
) -> RunConfig:
    """Read ``path`` (YAML; None for the defaults), apply dotted ``overrides`` whose value is not None.

    ``known_devices``: the device profile names ``device`` must be one of
    (``edgecompress.workflows.load_run_config`` passes the installed ones); ``device_aliases``: former names,
    accepted but not offered in the error.
    """
    device_aliases = set(device_aliases)
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        p = Path(path)
        if not p.is_file():
            raise ConfigError(
                f"config file {p} is a folder; give a YAML file" if p.is_dir() else f"config file {p} does not exist"
            )
        try:
            loaded = yaml.load(p.read_text(), Loader=_StrictLoader)  # safe_load's loader, duplicate keys refused
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"config file {p} is not text (byte {exc.start} is not UTF-8): give a YAML run config such as "
                "configs/default.yaml"
            ) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections, got {type(loaded).__name__}")
        if _count_values(loaded, MAX_CONFIG_VALUES) > MAX_CONFIG_VALUES:
            raise ConfigError(
                f"config file {p} expands to more than {MAX_CONFIG_VALUES:,} values (YAML aliases repeating "
                "each other?); a run config has a few dozen keys"
            )
        raw = loaded
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(raw, dotted, value)
            source = f"{source} + command line" if "command line" not in source else source
    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise explain_validation_error(exc, source) from None
    if known_devices is not None:
        known = list(known_devices)
        if config.device not in known and config.device not in device_aliases:
            raise ConfigError(
                f"invalid config ({source}):\n  device = {config.device!r}: unknown device."
                f"{did_you_mean(config.device, known)} Valid devices: {', '.join(known)}"
            )
    if config.search.latency == "measured" and not is_host(config.device):
        raise ConfigError(
            f"invalid config ({source}):\n  search.latency = 'measured' times policies on this machine, but "
            f"device = {config.device!r}; use device 'host' (or 'host-Nthread'), or search.latency 'table' for "
            "another device"
        )
    if config.search.energy_objective and (config.search.agent, config.search.sampler) != ("optuna", "nsga2"):
        raise ConfigError(
            f"invalid config ({source}):\n  search.energy_objective = true adds energy to NSGA-II's objectives, "
            f"but search.agent = {config.search.agent!r}, search.sampler = {config.search.sampler!r}; use agent "
            "'optuna' with sampler 'nsga2', or an energy budget (search.budget_energy_mj) with any agent"
        )
    if config.search.fill_budget and config.search.latency != "table":
        raise ConfigError(
            f"invalid config ({source}):\n  search.fill_budget = true widens policies by their predicted "
            f"latency, but search.latency = {config.search.latency!r}; use search.latency 'table' or "
            "search.fill_budget false"
        )
    return config


NOT_IDENTITY = ("search.episodes",)
"""Config keys that do not make a run another experiment: a larger target count extends the run."""


def write_resolved_config(config: RunConfig, run_dir: str | os.PathLike[str]) -> Path:
    """Write ``config.yaml`` into the run folder, refusing to replace a different one.

    Keys in :data:`NOT_IDENTITY` may change (``search.episodes``: a re-run with a larger count extends the
    search, a smaller one reports what is there); the file then records the latest value.
    """
    run_dir = Path(run_dir)
    check_output(run_dir, folder=True, error=ConfigError)
    run_dir.mkdir(parents=True, exist_ok=True)
    target = run_dir / "config.yaml"
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    if target.exists() and target.read_text() != text:
        existing = yaml.safe_load(target.read_text()) or {}
        changed = [k for k in _diff_keys(existing, config.model_dump(mode="json")) if k not in NOT_IDENTITY]
        if changed or not isinstance(existing, dict):
            raise ConfigError(
                f"{run_dir} already holds a run with a different config (changed: {', '.join(changed) or 'format'})."
                " Use another --out, or delete the folder to start over."
            )
    return write_text_atomic(target, text)


def _diff_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            out += _diff_keys(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [prefix.rstrip(".")]
