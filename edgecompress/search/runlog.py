"""The run folder every search driver writes: episode log, best and top-k policies, plots.

``episodes.jsonl`` gets one line per scored policy (episode, policy, accuracy,
latency, size, reward, feasibility) the moment it is scored, so a crash loses
at most the policy being scored. ``best_policy.json`` (a Policy file carrying
its scores and provenance) and ``topk.json`` are rewritten atomically whenever
they change. Drivers only call :meth:`RunLog.record`.

A kill can tear the file being written: a torn last line of the log (the
record being appended) is dropped when the log is opened, and
``best_policy.json`` and ``topk.json`` are rewritten from the log then, so
they always agree with it; each repair is said (``warn``). A damaged line
before the last one is not a kill's doing and is refused.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgecompress._io import write_json_atomic, write_text_atomic
from edgecompress.compressors import Policy
from edgecompress.errors import ConfigError, PolicyError

__all__ = ["RunLog", "read_records"]


def read_records(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    """The records of an episode log, and what was wrong with its last line when a kill tore it (``None`` when
    nothing was). A line that does not parse before the last one raises :class:`ConfigError`."""
    text = path.read_text(errors="replace")
    lines = text.split("\n")
    records: list[dict[str, Any]] = []
    torn = None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError(f"a JSON {type(record).__name__}, not a record")
        except ValueError as exc:
            if any(rest.strip() for rest in lines[i:]):
                raise ConfigError(
                    f"{path}, line {i}, is not a JSON record ({exc}); the episode log can only be torn at its end "
                    "by a kill. Restore the file, or search into another --out"
                ) from None
            torn = f"line {i} of {path} was torn ({len(line)} characters, not a whole record) and is dropped"
            continue
        records.append(record)
    return records, torn


class RunLog:
    def __init__(
        self,
        folder: str | Path,
        *,
        base: dict[str, Any],
        provenance: dict[str, Any],
        top_k: int = 5,
        round_to: int | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / "episodes.jsonl"
        self.base = base
        self.provenance = provenance
        self.top_k = top_k
        self.round_to = round_to
        """The search's rounding, for records an older edgecompress wrote without it (policy schema 1)."""
        self.records: list[dict[str, Any]] = []
        warn = warn or (lambda message: None)
        if self.path.exists():
            self.records, torn = read_records(self.path)
            unterminated = bool(self.records) and not self.path.read_bytes().endswith(b"\n")
            if torn is not None or unterminated:
                self._rewrite()  # the next record must start on a line of its own
            if torn is not None:
                warn(f"{torn}; the search scores that episode again")
        damaged, stale = self._check_best()
        if damaged or stale:  # whatever a kill left, best_policy.json and topk.json agree with the log
            self._write_best()
        if damaged:
            done = "rewritten from the episode log" if self.best() else "removed (none logged within budget)"
            warn(f"{damaged}; {done}")
        self.resumed_from = len(self.records)
        """How many records an earlier run had logged when this one opened the log."""

    def truncate(self, n: int) -> None:
        """Keep the first ``n`` records (resume: the agent's checkpoint is the truth)."""
        if len(self.records) > n:
            self.records = self.records[:n]
            self.resumed_from = min(self.resumed_from, n)
            self._rewrite()
            self._write_best()

    def _rewrite(self) -> None:
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in self.records))

    def _check_best(self) -> tuple[str | None, bool]:
        """What is wrong with ``best_policy.json`` when it does not load, and whether it disagrees with the log
        (missing, another episode, or present with no policy within budget logged)."""
        path, best = self.folder / "best_policy.json", self.best()
        if not path.exists():
            return None, best is not None
        try:
            scores = Policy.load(path).meta.get("scores") or {}
        except PolicyError as exc:
            return f"{path.name} did not load ({exc})", True
        if best is None:
            return None, True
        return None, (scores.get("episode"), scores.get("accuracy")) != (best["episode"], best["accuracy"])

    def record(self, record: dict[str, Any]) -> None:
        record = {"episode": len(self.records) + 1, **record}
        self.records.append(record)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        self._write_best()

    def feasible(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("within_budget")]

    def best(self) -> dict[str, Any] | None:
        ok = self.feasible()
        return max(ok, key=lambda r: (r["accuracy"], -r["latency_ms"])) if ok else None

    def _write_best(self) -> None:
        ranked = sorted(self.feasible(), key=lambda r: (-r["accuracy"], r["latency_ms"]))[: self.top_k]
        write_json_atomic(self.folder / "topk.json", ranked)
        best = self.best()
        if best is None:
            (self.folder / "best_policy.json").unlink(missing_ok=True)  # none in the log (cut back, or damaged)
        else:
            policy = Policy.from_dict(best["policy"])
            legacy = best["policy"].get("version") == 1 and "round_to" not in (best["policy"].get("base") or {})
            if legacy and self.round_to is not None:  # scored with the search's rounding, recorded without it
                policy = dataclasses.replace(policy, round_to=self.round_to)
            policy.base = {**policy.base, **self.base}
            policy.meta = {
                "scores": {k: best[k] for k in ("accuracy", "latency_ms", "stored_bytes", "reward", "episode")},
                "latency_source": best.get("latency_source", ""),
                "accuracy_source": best.get("accuracy_source", ""),
                **{k: best[k] for k in ("energy_mj", "energy_source") if k in best},
                **self.provenance,
            }
            policy.save(self.folder / "best_policy.json")

    def plot(self) -> Path | None:
        if not self.records:
            return None
        from matplotlib.figure import Figure  # a Figure of its own: no pyplot state, no backend switch

        episodes = [r["episode"] for r in self.records]
        acc = [r["accuracy"] for r in self.records]
        best_so_far, top = [], float("-inf")
        for r in self.records:
            if r.get("within_budget"):
                top = max(top, r["accuracy"])
            best_so_far.append(top if top > float("-inf") else None)
        fig = Figure(figsize=(11, 4))
        axes = fig.subplots(1, 2)
        axes[0].scatter(episodes, acc, s=8, label="episode accuracy")
        axes[0].plot(episodes, best_so_far, color="C1", label="best within budget")
        axes[0].set_xlabel("episode")
        axes[0].set_ylabel("validation top-1")
        axes[0].legend()
        best = self.best()
        if best is not None:
            names = list(best["policy"]["layers"])
            keeps = [best["policy"]["layers"][n].get("keep", 1.0) for n in names]
            axes[1].bar(range(len(names)), keeps)
            axes[1].set_xticks(range(len(names)), names, rotation=90, fontsize=6)
            axes[1].set_ylabel("keep ratio")
            axes[1].set_title(f"best policy: acc {best['accuracy']:.4f}, {best['latency_ms']:.3f} ms", fontsize=9)
        fig.tight_layout()
        out = self.folder / "search.png"
        fig.savefig(out, dpi=100)
        return out
