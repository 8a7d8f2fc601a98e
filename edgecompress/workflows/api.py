"""One call from Python: ``edgecompress.search_policy(model, data or evaluate, device=..., budget_ms=...)``.

(Not ``edgecompress.search``: that name is the search-core subpackage, which would shadow a function of the
same name as soon as it is imported.)

What ``edgecompress search`` does from a config, done on a model object already
in memory: no checkpoint file, no RunConfig to build by hand. The model can
take one tensor, a tuple or a dict of tensors (``example_inputs``), and be
scored by top-1 on ``data`` or by the caller's ``evaluate(model) -> float``
(macro-F1, mAP, anything where higher is better). The run folder is the same as
the CLI's (``config.yaml``, ``episodes.jsonl``, ``best_policy.json``, plots) and
re-running the same call on it resumes.

    result = edgecompress.search_policy(model, data=bundle, device="raspberry-pi-4", budget_ratio=0.5, agent="optuna")
    compressed, report = edgecompress.compress(model, result.policy, example_inputs=x)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn
from rich.console import Console
from torch.utils.data import Dataset

from edgecompress._inputs import InputSpec, normalise, shapes
from edgecompress._lock import run_folder_lock
from edgecompress.compressors import Policy
from edgecompress.config import DataConfig, RunConfig, SearchConfig, TrainConfig, write_resolved_config
from edgecompress.data import DataBundle
from edgecompress.drivers import get_driver
from edgecompress.errors import ConfigError
from edgecompress.search.objective import Evaluator
from edgecompress.search.setup import create_setup
from edgecompress.training.finetune import DistillLoss
from edgecompress.workflows.config import load_run_config

__all__ = ["SearchResult", "search_policy"]

# Defaults read from the config models, so a Python search scores policies as a YAML or command-line one does.
_SEARCH = SearchConfig.model_fields
_DATA = DataConfig.model_fields


@dataclass
class SearchResult:
    """What :func:`search_policy` returns."""

    policy: Policy | None
    """The best policy within the budget (None when no scored policy met it)."""
    best: dict[str, Any] | None
    """Its run-log record: accuracy (or the evaluator's score), latency and its source, stored bytes."""
    run_dir: Path
    result: dict[str, Any]
    """The driver's summary: policies scored, seconds, budget, base latency and score, time per phase."""


def search_policy(
    model: nn.Module,
    data: DataBundle | None = None,
    *,
    evaluate: Evaluator | None = None,
    example_inputs: Any = None,
    input_shape: Sequence[int] | None = None,
    device: str = RunConfig.model_fields["device"].default,
    budget_ms: float | None = None,
    budget_ratio: float | None = _SEARCH["budget_ratio"].default,
    agent: str = "optuna",
    episodes: int = 20,
    techniques: Sequence[str] = ("keep",),
    out: str | Path = "runs/python",
    train_data: Dataset | Iterable[Any] | None = None,
    val_data: Dataset | None = None,
    val_samples: int = _DATA["val_samples"].default,
    finetune_batches: int | None = None,
    finetune_lr: float = _SEARCH["finetune_lr"].default,
    bn_batches: int = _SEARCH["bn_batches"].default,
    distill_loss: DistillLoss | None = None,
    accelerator: str = TrainConfig.model_fields["accelerator"].default,
    precision: str = TrainConfig.model_fields["precision"].default,
    seed: int = _SEARCH["seed"].default,
    progress: bool = False,
    **search_options: Any,
) -> SearchResult:
    """Search per-layer compression policies for ``model`` under a latency budget on ``device``.

    * ``data``: a :class:`~edgecompress.data.DataBundle` (``edgecompress.data.load_dataset``): policies are
      scored by top-1 on the first ``val_samples`` of its validation split and fine-tuned / calibrated on its
      training split. Or pass ``val_data`` / ``train_data`` yourself (``train_data`` may be an iterable of
      ``(inputs, targets)`` batches, inputs a tensor, tuple or dict), or ``evaluate(model) -> float`` (higher is
      better) to score policies your way (then no validation data is needed).
    * ``example_inputs`` (a tensor, a tuple or a dict of tensors, batch 1) or ``input_shape``: what the model is
      traced and priced on; default ``(1, C, S, S)`` from ``data``.
    * ``agent``: ddpg, optuna (default), ray or random; ``episodes`` policies are scored; ``techniques`` among
      keep, rank, sparsity, wbits, clusters, abits, drop. Further ``search`` config keys (``sampler``,
      ``fill_budget``, ``round_to``, ``workers``, ...) go in ``search_options``.
    * ``finetune_batches`` distillation steps per policy at peak learning rate ``finetune_lr`` (teacher:
      ``model``; ``distill_loss(student_out, teacher_out, targets)`` replaces Hinton's loss), ``bn_batches``
      BatchNorm re-estimation batches; both run on ``accelerator`` (auto, cpu, cuda, mps) at ``precision``.
      Latency is predicted for ``device``.
    * Defaults are the config's (``edgecompress config`` prints them): ``device``, ``budget_ratio``,
      ``val_samples``, ``bn_batches``, ``finetune_lr``, ``accelerator``, ``precision``, ``seed``, and
      ``finetune_batches`` when there is training data to distil on (``data`` or ``train_data``; else 0).
      ``finetune_batches=0`` scores policies without fine-tuning, as AMC did: near chance for most networks at
      a 2x latency cut.

    Returns a :class:`SearchResult`; the run folder ``out`` holds everything the CLI's search writes, and the
    same call on the same folder resumes it.
    """
    if example_inputs is not None and input_shape is not None:
        raise ConfigError("search_policy() takes example_inputs or input_shape, not both")
    if data is not None:
        val_data = val_data if val_data is not None else data.val_subset(val_samples)
        train_data = train_data if train_data is not None else data.train
    elif val_data is not None and len(val_data) > val_samples:  # type: ignore[arg-type]
        from torch.utils.data import Subset

        val_data = Subset(val_data, range(val_samples))
    if finetune_batches is None:  # the config's, when there is anything to distil on
        finetune_batches = _SEARCH["finetune_batches"].default if train_data is not None else 0
    if evaluate is None and val_data is None:
        raise ConfigError(
            "search_policy() needs something to score policies with: data (a DataBundle), val_data (a Dataset of "
            "(input, label) pairs, scored by top-1) or evaluate(model) -> float"
        )
    spec: InputSpec
    if example_inputs is not None:
        spec = normalise(example_inputs, "example_inputs")
    elif input_shape is not None:
        spec = normalise(tuple(input_shape))
    elif data is not None:
        spec = (1, data.in_channels, data.input_size, data.input_size)
    else:
        raise ConfigError("search_policy() needs example_inputs or input_shape when no data bundle is given")
    options = {f"search.{k}": v for k, v in search_options.items()}
    cfg = load_run_config(
        None,
        {
            "name": "python", "out": str(out), "device": device, "search.agent": agent, "search.episodes": episodes,
            "search.techniques": list(techniques), "search.budget_ms": budget_ms,
            "search.budget_ratio": budget_ratio if budget_ms is None else None, "search.seed": seed,
            "search.finetune_batches": finetune_batches, "search.bn_batches": bn_batches,
            "search.finetune_lr": finetune_lr,
            "data.val_samples": val_samples, "train.accelerator": accelerator, "train.precision": precision,
            "model.name": f"python:{type(model).__name__}", **options,
        },
    )  # fmt: skip
    driver = get_driver(cfg.search.agent)
    console = Console(quiet=not progress, stderr=True)
    base = {"model": cfg.model.name, "input_shape": shapes(spec)}
    with run_folder_lock(cfg.out):
        write_resolved_config(cfg, cfg.out)
        setup = create_setup(
            cfg, model.eval(), val_data=val_data, train_data=train_data, input_shape=spec, base=base,
            evaluate=evaluate, distill_loss=distill_loss,
        )  # fmt: skip
        result = driver(setup, cfg, console, progress=progress)
    best = result.get("best")
    policy = Policy.from_dict(best["policy"]) if best else None
    return SearchResult(policy=policy, best=best, run_dir=Path(cfg.out), result=result)
