"""The policy space every driver searches, and the set-up they share.

``PolicySpace`` names one parameter per (coupled channel group, ``keep``) and
per (layer, other technique), over the ranges :class:`CompressionEnv` uses:
``keep`` in [keep_min, 1] (one ratio per group of layers whose channels are
coupled through residual adds; output layers are never pruned), ``rank`` in
[rank_min, 1], ``sparsity`` in [0, sparsity_max], ``wbits``, ``clusters`` and
``abits`` over the env's bins, ``drop`` one yes/no per removable block. Optuna suggests them directly; Ray Tune gets
them through Optuna's define-by-run search space; ``from_params`` turns a flat
parameter dict back into a :class:`Policy`.

``prepare_search`` loads data and the base model, builds the one
:class:`Objective` and the env (which fixes the budget and refuses an
infeasible one), and writes ``reference.json``: the base model and uniform
policies scored by the same objective, for reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from edgecompress._io import read_json, write_json_atomic
from edgecompress.compressors import LayerPolicy, Policy
from edgecompress.config import RunConfig
from edgecompress.envs.compression_env import ABITS_BINS, CLUSTER_BINS, WBITS_BINS
from edgecompress.errors import ConfigError

__all__ = [
    "PolicySpace",
    "SearchSetup",
    "evaluation_record",
    "identity_policy",
    "prepare_search",
    "uniform_policy",
    "uniform_within_budget",
]


@dataclass
class PolicySpace:
    layers: list[Any]
    """LayerSpec of every compressible layer (name, group, prunable)."""
    techniques: tuple[str, ...]
    input_shape: tuple[int, ...]
    keep_min: float = 0.2
    rank_min: float = 0.2
    sparsity_max: float = 0.9

    @classmethod
    def from_env(cls, env: Any) -> PolicySpace:
        return cls(
            list(env.layers),
            tuple(env.techniques),
            tuple(env.objective.input_shape),
            env.keep_min,
            env.rank_min,
            env.sparsity_max,
        )

    def __call__(self, trial: Any) -> None:
        """Define-by-run search space (what Ray Tune's OptunaSearch calls; picklable, unlike a closure)."""
        self.suggest(trial)

    def suggest(self, trial: Any) -> Policy:
        """Ask an Optuna trial for every parameter; return the policy."""
        params: dict[str, Any] = {}
        seen_groups: set[int] = set()
        for spec in self.layers:
            for t in self.techniques:
                if t == "drop":
                    if spec.block and f"{spec.block}.drop" not in params:
                        params[f"{spec.block}.drop"] = trial.suggest_categorical(f"{spec.block}.drop", [False, True])
                    continue
                if t == "keep":
                    if spec.prunable and spec.group not in seen_groups:
                        seen_groups.add(spec.group)
                        params[f"g{spec.group}.keep"] = trial.suggest_float(f"g{spec.group}.keep", self.keep_min, 1.0)
                    continue
                name = f"{spec.name}.{t}"
                if t == "rank":
                    params[name] = trial.suggest_float(name, self.rank_min, 1.0)
                elif t == "sparsity":
                    params[name] = trial.suggest_float(name, 0.0, self.sparsity_max)
                elif t == "wbits":
                    params[name] = trial.suggest_categorical(name, list(WBITS_BINS))
                elif t == "clusters":
                    params[name] = trial.suggest_categorical(name, list(CLUSTER_BINS))
                else:
                    params[name] = trial.suggest_categorical(name, list(ABITS_BINS))
        return self.from_params(params)

    def from_params(self, params: dict[str, Any]) -> Policy:
        layers: dict[str, LayerPolicy] = {}
        for spec in self.layers:
            if "drop" in self.techniques and spec.block and bool(_param(params, f"{spec.block}.drop")):
                layers[spec.name] = LayerPolicy(drop=True)  # the layer leaves the model: nothing else applies
                continue
            fields: dict[str, Any] = {}
            for t in self.techniques:
                key = f"g{spec.group}.keep" if t == "keep" else f"{spec.name}.{t}"
                if t == "drop" or (t == "keep" and not spec.prunable):
                    continue
                value = _param(params, key)
                fields[t] = round(float(value), 4) if t in ("keep", "rank", "sparsity") else int(value)
            layers[spec.name] = LayerPolicy(**fields)
        return Policy(layers, base={"input_shape": list(self.input_shape)})


def _param(params: dict[str, Any], key: str) -> Any:
    if key not in params:
        raise ConfigError(f"parameter {key!r} missing; this space has {', '.join(sorted(params)[:5])}...")
    return params[key]


def identity_policy(objective: Any) -> Policy:
    return Policy({}, base={"input_shape": list(objective.input_shape)})


def evaluation_record(ev: Any, accuracy_source: str) -> dict[str, Any]:
    """One RunLog record from an :class:`Evaluation` (the same keys the ddpg driver writes)."""
    return {
        "policy": {"format": "edgecompress.policy", "version": 1, "base": {}, "layers": ev.policy, "meta": {}},
        "accuracy": ev.accuracy,
        "latency_ms": ev.latency_ms,
        "budget_ms": ev.budget_ms,
        "stored_bytes": ev.stored_bytes,
        "reward": ev.accuracy,
        "within_budget": ev.feasible,
        "repaired": False,
        "latency_source": ev.latency_source,
        "accuracy_source": accuracy_source,
    }


def uniform_policy(env: Any, keep: float) -> Policy:
    """One keep ratio on every prunable layer of the env's model."""
    layers = {s.name: LayerPolicy(keep=keep) for s in env.layers if s.prunable}
    return Policy(layers, base={"input_shape": list(env.objective.input_shape)})


def uniform_within_budget(env: Any, steps: int = 10) -> dict[str, Any] | None:
    """The largest single keep ratio whose policy meets the budget (bisection), scored."""
    lo, hi, best = env.keep_min, 1.0, None
    for _ in range(steps):
        mid = round((lo + hi) / 2, 4)
        ev = env.objective(uniform_policy(env, mid))
        if ev.latency_ms <= env.budget_ms:
            best, lo = (
                {"keep": mid, "accuracy": ev.accuracy, "latency_ms": ev.latency_ms, "stored_bytes": ev.stored_bytes},
                mid,
            )
        else:
            hi = mid
    return best


@dataclass
class SearchSetup:
    env: Any
    objective: Any
    space: PolicySpace
    spec: Any
    checkpoint: Path
    base: dict[str, Any]
    """The ``base`` section of every policy the search writes."""
    accuracy_source: str

    def open_log(self, cfg: RunConfig, agent: str, **provenance: Any) -> Any:
        """The run folder's :class:`RunLog`, with the provenance every driver records (plus ``provenance``)."""
        from edgecompress.checkpoint import software_versions
        from edgecompress.search.runlog import RunLog

        return RunLog(
            cfg.out,
            base=self.base,
            provenance={
                "agent": agent,
                "device": cfg.device,
                "budget_ms": self.env.budget_ms,
                "base_latency_ms": self.env.base_ms,
                "seed": cfg.search.seed,
                **provenance,
                "versions": software_versions(),
            },
            top_k=cfg.search.top_k,
        )

    def status(self, log: Any, unit: str) -> str:
        """The progress bar's status: the best policy within budget so far."""
        best = log.best()
        if best is None:
            return f"no {unit} within budget yet"
        return f"best acc {best['accuracy']:.4f} at {best['latency_ms']:.3f} ms / budget {self.env.budget_ms:.3f} ms"

    def result(self, log: Any, seconds: float, *, scored_here: bool = True, **extra: Any) -> dict[str, Any]:
        """Plot the run and return what every driver returns; ``scored_here=False`` when workers scored the
        policies (this process's objective timings and cache hits would then describe only the set-up)."""
        plot = log.plot()
        out: dict[str, Any] = {
            "episodes": len(log.records),
            "seconds": seconds,
            "budget_ms": self.env.budget_ms,
            "base_latency_ms": self.env.base_ms,
            "best": log.best(),
            "plot": str(plot) if plot else None,
        }
        if scored_here:
            out["scoring_seconds"] = dict(self.objective.timings)
            out["cache_hits"] = self.objective.hits
        out["base_accuracy"] = self.objective(identity_policy(self.objective)).accuracy
        return {**out, **extra}


def prepare_search(cfg: RunConfig, console: Console) -> SearchSetup:
    from edgecompress.config import write_resolved_config
    from edgecompress.data import load_dataset
    from edgecompress.envs import CompressionEnv
    from edgecompress.objective import Objective
    from edgecompress.pipeline import ensure_base_model

    s = cfg.search
    write_resolved_config(cfg, cfg.out)  # the run folder describes itself; a different config is refused
    bundle = load_dataset(
        cfg.data.dataset,
        cfg.data.data_dir,
        val_size=cfg.data.val_size,
        seed=cfg.data.seed,
        image_size=cfg.data.image_size,
    )
    model, spec, ckpt, _ = ensure_base_model(cfg, bundle, console)
    objective = Objective(
        model,
        bundle.val_subset(cfg.data.val_samples),
        cfg.device,
        input_shape=spec.input_shape,
        train_data=bundle.train,
        bn_batches=s.bn_batches,
        finetune_batches=s.finetune_batches,
        latency=s.latency,
        fill_budget=s.fill_budget,
        round_to=s.round_to,
        seed=s.seed,
    )
    env = CompressionEnv(
        objective=objective,
        budget_ms=s.budget_ms,
        budget_ratio=s.budget_ratio,
        techniques=tuple(s.techniques),
        reward=s.reward,
    )
    base = {
        "model": spec.model,
        "checkpoint": str(ckpt),
        "input_shape": list(spec.input_shape),
        "num_classes": spec.num_classes,
        "dataset": spec.dataset,
        "round_to": s.round_to,
    }
    source = f"measured on the first {cfg.data.val_samples} validation samples"
    write_reference(Path(cfg.out), env)
    return SearchSetup(env, objective, PolicySpace.from_env(env), spec, ckpt, base, source)


def write_reference(run_dir: Path, env: Any) -> dict[str, Any]:
    """``reference.json``: the base model and uniform-keep policies, scored by the search's objective."""
    path = run_dir / "reference.json"
    if path.exists():
        return read_json(path, "reference file", ConfigError)  # type: ignore[no-any-return]
    obj = env.objective
    base = obj(Policy({}, base={"input_shape": list(obj.input_shape)}))
    uniform = []
    for keep in (0.3, 0.5, 0.7, 0.9):
        ev = obj(uniform_policy(env, keep))
        uniform.append(
            {
                "keep": keep,
                "accuracy": ev.accuracy,
                "latency_ms": ev.latency_ms,
                "stored_bytes": ev.stored_bytes,
                "within_budget": ev.feasible,
            }
        )
    ref = {
        "device": obj.device,
        "budget_ms": env.budget_ms,
        "base": {"accuracy": base.accuracy, "latency_ms": base.latency_ms, "stored_bytes": base.stored_bytes},
        "uniform": uniform,
        "uniform_within_budget": uniform_within_budget(env),
        "latency_source": base.latency_source,
        "note": "scored by the search's objective (validation subset, predicted latency, counted size)",
    }
    write_json_atomic(path, ref)
    return ref
