"""``edgecompress search``: config -> data and base model -> the search core -> the driver the config names.

Every driver gets the same :class:`~edgecompress.search.SearchSetup` (one
objective, policy space and budget) and writes the same run folder:
``config.yaml``, ``reference.json``, ``episodes.jsonl``,
``best_policy.json``, ``topk.json``, ``search.png``, plus the driver's own
state (``agent_state.npz``, ``study.db``, ``ray/``).
Re-running the same command on the same folder resumes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from edgecompress._io import check_foreign_files, check_output
from edgecompress._lock import run_folder_lock
from edgecompress._progress import progress_bar
from edgecompress.config import RunConfig, write_resolved_config
from edgecompress.data import DataBundle
from edgecompress.drivers import get_driver
from edgecompress.drivers.optuna import check_storage
from edgecompress.errors import ConfigError
from edgecompress.search.setup import SearchSetup, create_setup, reference_scorings, write_reference
from edgecompress.workflows.train import check_base_model, ensure_base_model, load_bundle

__all__ = ["SEARCH_FILES", "prepare_search", "run_search", "unused_settings"]

SEARCH_FILES = ("base.pt", "reference.json", "episodes.jsonl", "best_policy.json", "topk.json", "search.png",
                "study.db", "agent_state.npz")  # fmt: skip
"""What a search writes into its run folder besides config.yaml (which marks the folder as a run's)."""


def unused_settings(cfg: RunConfig) -> list[str]:
    """Settings (from flags or the config) the chosen agent does not read, each said once: not silently ignored."""
    s, defaults = cfg.search, type(cfg.search)()
    readers = {
        "sampler": ("optuna", "ray"), "storage": ("optuna",), "energy_objective": ("optuna",),
        "workers": ("ray",), "gpus_per_trial": ("ray",), "ray_address": ("ray",),
        "warmup_episodes": ("ddpg",), "reward": ("ddpg",),
    }  # fmt: skip
    return [
        f"search.{key} = {getattr(s, key)!r} is read by --agent {' / '.join(agents)} only; --agent {s.agent} ignores it"
        for key, agents in readers.items()
        if s.agent not in agents and getattr(s, key) != getattr(defaults, key)
    ]


def prepare_search(cfg: RunConfig, console: Console, bundle: DataBundle, *, progress: bool = True) -> SearchSetup:
    """Record the config in the run folder, load the base model, build the search core (``bundle``: the
    config's data, loaded and ``check_base_model`` passed before the folder is touched: :func:`run_search`)."""
    s = cfg.search
    made_here = [Path(cfg.out) / n for n in ("config.yaml", "base.pt") if not (Path(cfg.out) / n).exists()]
    # The run folder describes itself (a different config is refused), written once the base model loads.
    model, spec, ckpt, _ = ensure_base_model(cfg, bundle, console, lambda: write_resolved_config(cfg, cfg.out))
    base = {
        "model": spec.model,
        "checkpoint": str(ckpt),
        "input_shape": list(spec.input_shape),
        "num_classes": spec.num_classes,
        "dataset": spec.dataset,
    }
    try:
        setup = create_setup(
            cfg,
            model,
            val_data=bundle.val_subset(cfg.data.val_samples),
            train_data=bundle.train,
            input_shape=spec.input_shape,
            base=base,
        )
    except ConfigError:
        # Refused (a budget the space cannot meet, operators the device cannot price): what this call wrote
        # goes (the config, an imported base.pt), so the command the error suggests runs on the same folder.
        base_pt = Path(cfg.out) / "base.pt"
        trained_here = cfg.model.weights is None and base_pt in made_here and base_pt.exists()  # kept, and its config
        if not (Path(cfg.out) / "episodes.jsonl").exists() and not trained_here:
            for path in made_here:
                path.unlink(missing_ok=True)
        raise
    started = time.perf_counter()
    if not (Path(cfg.out) / "reference.json").exists():  # 6-15 policies scored, each like a search episode
        with progress_bar(progress) as bar:
            task = bar.add_task("reference policies (base, uniform keeps)", total=reference_scorings(setup), status="")
            write_reference(Path(cfg.out), setup, progress=lambda n: bar.advance(task, n))
            bar.update(task, completed=reference_scorings(setup))
    reference_seconds = time.perf_counter() - started
    for warning in setup.latency_warnings:
        console.print(f"[yellow]latency on {cfg.device}:[/] {escape(warning)}")
    console.print(
        f"search: {len(setup.space.parameters())} parameters over {', '.join(s.techniques)}; budget "
        f"{setup.budget.limit_ms:.4f} ms (base {setup.budget.base_ms:.4f} ms, floor {setup.budget.floor_ms:.4f} ms, "
        f"predicted on {cfg.device})"
        + (
            f"; energy budget {setup.budget.energy_limit_mj:.4f} mJ (base {setup.budget.energy_base_mj:.4f} mJ, "
            f"floor {setup.budget.energy_floor_mj:.4f} mJ, {cfg.device} energy model)"
            if setup.budget.energy_limit_mj is not None
            else ""
        )
        + f"; set-up {setup.setup_seconds:.1f} s, reference policies {reference_seconds:.1f} s"
    )
    return setup


def run_search(cfg: RunConfig, console: Console, *, progress: bool = True) -> dict[str, Any]:
    """Run the driver ``cfg.search.agent`` over the search core; returns the driver's result."""
    driver = get_driver(cfg.search.agent)
    check_output(cfg.out, folder=True, error=ConfigError)  # an --out that cannot be written fails before any work
    check_foreign_files(cfg.out, SEARCH_FILES, "config.yaml", error=ConfigError)
    check_base_model(cfg)  # bad paths fail before the run folder is touched
    if cfg.search.agent == "optuna":
        check_storage(cfg)
    for setting in unused_settings(cfg):
        console.print(f"[yellow]warning:[/] {escape(setting)}")
    bundle = load_bundle(cfg)
    with run_folder_lock(cfg.out):  # one process per run folder
        setup = prepare_search(cfg, console, bundle, progress=progress)
        return driver(setup, cfg, console, progress=progress)
