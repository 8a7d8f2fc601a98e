"""What every driver is handed: the objective, the space, the budget, and the run folder's log.

:func:`create_setup` builds them once from a config, a loaded base model and
its data; the search workflow (:mod:`edgecompress.workflows.search`) calls it
and passes the result to the driver the config names. Drivers only propose
policies: :meth:`SearchSetup.fill` widens them (when ``search.fill_budget``),
``setup.objective`` scores them, :meth:`SearchSetup.record` makes the log's record.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from torch.utils.data import Dataset

from edgecompress._inputs import InputSpec
from edgecompress._io import read_json, write_json_atomic
from edgecompress.compressors import Policy
from edgecompress.config import RunConfig
from edgecompress.errors import ConfigError
from edgecompress.latency_models import estimate_latency
from edgecompress.search.budget import Budget, Limiter, fill
from edgecompress.search.objective import Evaluation, Evaluator, Objective
from edgecompress.search.runlog import RunLog
from edgecompress.search.space import PolicySpace
from edgecompress.training.finetune import DistillLoss
from edgecompress.version import software_versions

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "REFERENCE_KEEPS", "SearchSetup", "budget_for", "create_setup", "energy_fields", "evaluation_record",
    "reference_scorings", "uniform_within_budget", "write_reference",
]  # fmt: skip


@dataclass
class SearchSetup:
    """One search's objective, policy space, budget and run-folder provenance."""

    objective: Objective
    space: PolicySpace
    budget: Budget
    base: dict[str, Any]
    """The ``base`` section of every policy the search writes (model, checkpoint, input shape, ...)."""
    accuracy_source: str
    fill_budget: bool = False
    setup_seconds: float = 0.0
    """Wall time to build the objective, score the floor policy and set the budget."""
    latency_warnings: list[str] = field(default_factory=list)
    """What the device's estimate of the base model warns about (operators not counted, extrapolated)."""
    _limiter: Limiter | None = None

    def __post_init__(self) -> None:
        if self.fill_budget and self.objective.latency_mode != "table":
            raise ConfigError(
                "fill_budget widens policies by their predicted latency, but the objective's latency is "
                f"{self.objective.latency_mode!r}; use latency 'table' (search.latency) or fill_budget false"
            )

    @property
    def limiter(self) -> Limiter:
        """AMC's per-step keep limiter (built on first use: only step-by-step drivers need it)."""
        if self._limiter is None:
            self._limiter = Limiter(self.objective, self.space, self.budget)
        return self._limiter

    def fill(self, policy: Policy) -> tuple[Policy, int]:
        """``policy`` widened into the budget it leaves unused (when ``fill_budget``), and the steps taken."""
        if not self.fill_budget:
            return policy, 0
        return fill(self.objective, policy, self.budget.limit_ms, self.budget.energy_limit_mj)

    def within(self, ev: Evaluation) -> bool:
        """Whether an evaluation meets the budget (latency, and energy under an energy budget)."""
        return self.budget.within(ev.latency_ms, ev.energy_mj)

    def repair(self, policy: Policy) -> tuple[Policy, float, bool]:
        """``policy`` brought within budget by predicted latency (and energy): see :meth:`Budget.repair`."""
        return self.budget.repair(policy, self.space, self.objective.predict_ms, energy_of=self.objective.predict_mj)

    def record(self, ev: Evaluation, **extra: Any) -> dict[str, Any]:
        """The run log's record of an evaluation (every driver writes the same keys)."""
        return {**evaluation_record(ev, self.budget, self.accuracy_source), **extra}

    def open_log(self, cfg: RunConfig, agent: str, *, console: Console | None = None, **provenance: Any) -> RunLog:
        """The run folder's :class:`RunLog`, with the provenance every driver records (plus ``provenance``);
        what it repaired after a kill is said on ``console``."""

        def warn(message: str) -> None:
            if console is not None:
                console.print(f"[yellow]warning:[/] {escape(message)}")

        return RunLog(
            cfg.out,
            base=self.base,
            provenance={
                "agent": agent,
                "device": cfg.device,
                "budget_ms": self.budget.limit_ms,
                "base_latency_ms": self.budget.base_ms,
                "budget_energy_mj": self.budget.energy_limit_mj,
                "base_energy_mj": self.objective.base_energy_mj(),
                "energy_source": self.objective.energy_note,
                "seed": cfg.search.seed,
                "setup_seconds": self.setup_seconds,
                "setup_costs": dict(self.objective.setup),
                "accelerator": self.objective.accelerator,
                "precision": self.objective.precision,
                **provenance,
                "versions": software_versions(),
            },
            top_k=cfg.search.top_k,
            round_to=self.space.round_to,
            warn=warn,
        )

    def status(self, log: RunLog, unit: str) -> str:
        """The progress bar's status: the best policy within budget so far."""
        best = log.best()
        if best is None:
            return f"no {unit} within budget yet"
        text = f"best acc {best['accuracy']:.4f} at {best['latency_ms']:.3f} ms / budget {self.budget.limit_ms:.3f} ms"
        if self.budget.energy_limit_mj is not None and best.get("energy_mj") is not None:
            text += f", {best['energy_mj']:.3f} / {self.budget.energy_limit_mj:.3f} mJ"
        return text

    def result(self, log: RunLog, seconds: float, *, scored_here: bool = True, **extra: Any) -> dict[str, Any]:
        """Plot the run and return what every driver returns; ``scored_here=False`` when workers scored the
        policies (this process's objective timings and cache hits would then describe only the set-up)."""
        plot = log.plot()
        out: dict[str, Any] = {
            "episodes": len(log.records),
            "new_episodes": len(log.records) - log.resumed_from,  # scored by this run (a resumed one continues)
            "seconds": seconds,
            "budget_ms": self.budget.limit_ms,
            "base_latency_ms": self.budget.base_ms,
            "budget_energy_mj": self.budget.energy_limit_mj,
            "best": log.best(),
            "plot": str(plot) if plot else None,
        }
        if scored_here:
            out["scoring_seconds"] = dict(self.objective.timings)
            out["seconds_per_policy"] = seconds / max(1, len(log.records) - log.resumed_from)
            out["cache_hits"] = self.objective.hits
        out["base_accuracy"] = self.objective(self.space.identity()).accuracy
        return {**out, **extra}


def evaluation_record(ev: Evaluation, budget: Budget, accuracy_source: str) -> dict[str, Any]:
    """One RunLog record from an :class:`Evaluation` (energy keys where the device has an energy model)."""
    record = {
        "policy": ev.policy,
        "accuracy": ev.accuracy,
        "latency_ms": ev.latency_ms,
        "budget_ms": budget.limit_ms,
        "stored_bytes": ev.stored_bytes,
        "reward": ev.accuracy,
        "within_budget": budget.within(ev.latency_ms, ev.energy_mj),
        "repaired": False,
        "latency_source": ev.latency_source,
        "accuracy_source": accuracy_source,
        "seconds": round(ev.seconds, 4),
        "phases": ev.phases,
    }
    return {**record, **energy_fields(ev, budget)}


def energy_fields(ev: Evaluation, budget: Budget) -> dict[str, Any]:
    """A record's energy keys: predicted mJ and its source where the device has an energy model, the budget
    where the search has one."""
    out: dict[str, Any] = {}
    if ev.energy_mj is not None:
        out = {"energy_mj": ev.energy_mj, "energy_source": ev.energy_source}
    if budget.energy_limit_mj is not None:
        out["budget_energy_mj"] = budget.energy_limit_mj
    return out


def create_setup(
    cfg: RunConfig,
    model: Any,
    *,
    val_data: Dataset | None,
    train_data: Dataset | Iterable[Any] | None,
    input_shape: InputSpec,
    base: dict[str, Any],
    evaluate: Evaluator | None = None,
    distill_loss: DistillLoss | None = None,
) -> SearchSetup:
    """The objective, space and budget of ``cfg.search`` for a loaded base model; refuses an infeasible budget.

    ``evaluate(model) -> float`` (higher is better) replaces top-1 on ``val_data``; ``distill_loss`` replaces
    Hinton's loss in the search's fine-tuning; ``input_shape`` may be example inputs
    (:mod:`edgecompress._inputs`)."""
    s = cfg.search
    started = time.perf_counter()
    objective = Objective(
        model,
        val_data,
        cfg.device,
        input_shape=input_shape,
        train_data=train_data,
        bn_batches=s.bn_batches,
        finetune_batches=s.finetune_batches,
        finetune_lr=s.finetune_lr,
        latency=s.latency,
        seed=s.seed,
        evaluate=evaluate,
        distill_loss=distill_loss,
        accelerator=cfg.train.accelerator,
        precision=cfg.train.precision,
    )
    space = PolicySpace(list(objective.analysis.layers), tuple(s.techniques), input_shape, round_to=s.round_to)
    base_report = estimate_latency(model, input_shape, cfg.device)
    unpriced = base_report.unpriced
    if unpriced:
        raise ConfigError(
            f"device {cfg.device!r} cannot price {len(unpriced)} of the base model's operator signatures (e.g. "
            f"{unpriced[0]}): those operators would count as 0 ms, and a budget on the rest "
            f"({base_report.total_ms:.4f} ms) means nothing. Measure them on the machine you deploy on "
            "(`edgecompress profile --model MODEL --input-size N --out my.table.json`, then --device with that "
            "table), or search for a device model (edgecompress devices)"
        )
    budget = budget_for(
        objective, space, budget_ms=s.budget_ms, budget_ratio=s.budget_ratio, budget_energy_mj=s.budget_energy_mj
    )
    setup = SearchSetup(objective, space, budget, dict(base), objective.accuracy_source, fill_budget=s.fill_budget)
    setup.latency_warnings = list(base_report.warnings)
    setup.setup_seconds = round(time.perf_counter() - started, 2)
    return setup


def budget_for(
    objective: Objective,
    space: PolicySpace,
    *,
    budget_ms: float | None,
    budget_ratio: float | None,
    budget_energy_mj: float | None = None,
) -> Budget:
    """The budget on the objective's device, checked against the floor: the space's strongest policy, scored
    (not only priced: with measured latency, a prediction is not what the search compares); with
    ``budget_energy_mj``, an energy limit too, checked against the floor's predicted energy."""
    floor = objective(space.strongest())
    budget = Budget.create(
        objective.base_latency_ms(), floor.latency_ms, device=str(objective.device), budget_ms=budget_ms,
        budget_ratio=budget_ratio,
    )  # fmt: skip
    return budget.with_energy(
        budget_energy_mj, objective.base_energy_mj(), floor.energy_mj, device=str(objective.device)
    )


def uniform_within_budget(
    setup: SearchSetup, steps: int = 10, progress: Callable[[int], None] | None = None
) -> dict[str, Any] | None:
    """The largest single keep ratio whose policy meets the budget (bisection), scored.

    With predicted latency (``latency="table"``) the bisection prices each keep (what the objective's
    latency is then) and only the keep it ends at is scored; with measured latency every step is scored."""
    obj = setup.objective
    lo, hi, found = setup.space.keep_min, 1.0, None
    for _ in range(steps):
        mid = round((lo + hi) / 2, 4)
        policy = setup.space.uniform(mid)
        if obj.latency_mode == "table":
            ok = setup.budget.within(obj.predict_ms(policy), obj.predict_mj(policy))
        else:
            ok = setup.within(obj(policy))
            if progress is not None:
                progress(1)
        if ok:
            found, lo = mid, mid
        else:
            hi = mid
    if found is None:
        return None
    ev = obj(setup.space.uniform(found))  # cached when every step was scored
    if progress is not None and obj.latency_mode == "table":
        progress(1)
    return {"keep": found, "accuracy": ev.accuracy, "latency_ms": ev.latency_ms, "stored_bytes": ev.stored_bytes}


REFERENCE_KEEPS = (0.3, 0.5, 0.7, 0.9)


def reference_scorings(setup: SearchSetup, steps: int = 10) -> int:
    """How many policies :func:`write_reference` scores at most (for a progress bar)."""
    return 1 + len(REFERENCE_KEEPS) + (1 if setup.objective.latency_mode == "table" else steps)


def write_reference(run_dir: Path, setup: SearchSetup, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """``reference.json``: the base model and uniform-keep policies, scored by the search's objective.

    ``progress(n)``: called after each of the (at most :func:`reference_scorings`) policies is scored."""
    path = run_dir / "reference.json"
    if path.exists():
        return read_json(path, "reference file", ConfigError)  # type: ignore[no-any-return]
    obj, space = setup.objective, setup.space
    tick = progress or (lambda n: None)
    base = obj(space.identity())
    tick(1)
    uniform = []
    for keep in REFERENCE_KEEPS:
        ev = obj(space.uniform(keep))
        tick(1)
        uniform.append(
            {
                "keep": keep,
                "accuracy": ev.accuracy,
                "latency_ms": ev.latency_ms,
                "stored_bytes": ev.stored_bytes,
                "within_budget": setup.within(ev),
            }
        )
    ref = {
        "device": obj.device,
        "budget_ms": setup.budget.limit_ms,
        "base": {"accuracy": base.accuracy, "latency_ms": base.latency_ms, "stored_bytes": base.stored_bytes},
        "uniform": uniform,
        "uniform_within_budget": uniform_within_budget(setup, progress=tick),
        "latency_source": base.latency_source,
        "note": "scored by the search's objective (validation subset, predicted latency, counted size)",
    }
    write_json_atomic(path, ref)
    return ref
