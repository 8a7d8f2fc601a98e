"""Re-run the command recorded in each benchmarks/results/*.json (what `make benchmarks` does).

    python benchmarks/reproduce.py                      # every results file (hours)
    python benchmarks/reproduce.py --list               # what would run, in order; runs nothing
    python benchmarks/reproduce.py --only replay_export__resnet20-ep4 [NAME ...]

Every file holds one run of one command (``command``, preceded by its
``prerequisite_commands`` where it has any, e.g. the fresh run a ``--measure-only``
re-timing needs). Each runs from the repository root, with the recorded interpreter
name (``python``) replaced by this Python. Where a command names ``--out``, its value
is replaced by the listed file (several results were renamed when they were split one
file per variant); otherwise the script's default output name is the listed file. A
command shared by several files runs once. Order: base models first (the other
benchmarks need their checkpoints), then by recorded date. Afterwards every selected
file must have been rewritten, else the exit status is 1. Stdlib only.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
INTERPRETER = re.compile(r"python(\d+(\.\d+)*)?$")
FIRST = ("train_base_models",)  # benchmarks whose outputs (checkpoints) the others read


def load(results: Path) -> list[tuple[Path, dict[str, Any]]]:
    docs = [(f, json.loads(f.read_text())) for f in results.glob("*.json")]

    def order(item: tuple[Path, dict[str, Any]]) -> tuple[int, str, str]:
        f, d = item
        when = d.get("date") or d.get("date_not_after") or d.get("date_not_before") or ""
        return (0 if f.stem.partition("__")[0] in FIRST else 1, str(when), f.stem)

    return sorted(docs, key=order)


def argv(command: str, target: str) -> list[str]:
    """The recorded command as it is run: this Python for ``python``, ``--out`` set to ``target``."""
    parts = shlex.split(command)
    if parts and INTERPRETER.match(Path(parts[0]).name):
        parts[0] = sys.executable
    for i, part in enumerate(parts):
        if part == "--out" and i + 1 < len(parts):
            parts[i + 1] = target
        elif part.startswith("--out="):
            parts[i] = f"--out={target}"
    return parts


def plan(path: Path, record: dict[str, Any]) -> list[list[str]]:
    path = path.resolve()
    target = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)
    commands = [*(record.get("prerequisite_commands") or []), record["command"]]
    return [argv(c, target) for c in commands]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--list", action="store_true", help="print the commands in order; run nothing")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="results file names (stem, name or path)")
    parser.add_argument("--keep-going", action="store_true", help="run the other files after a failed command")
    args = parser.parse_args()
    docs = load(Path(args.results).resolve())
    if args.only:
        wanted = {Path(n).name.removesuffix(".json") for n in args.only}
        unknown = wanted - {f.stem for f, _ in docs}
        if unknown:
            parser.error(f"no results file named {', '.join(sorted(unknown))} in {args.results}")
        docs = [(f, d) for f, d in docs if f.stem in wanted]
    if args.list:
        for f, d in docs:
            when = d.get("date") or f"date not recorded: {d.get('date_not_before')} - {d.get('date_not_after')}"
            print(f"{f.stem}  ({when})")
            for cmd in plan(f, d):
                print(f"  $ {shlex.join(cmd)}")
        return
    before = {f: f.stat().st_mtime_ns for f, _ in docs}
    done: set[tuple[str, ...]] = set()
    failed: list[str] = []
    for f, d in docs:
        for cmd in plan(f, d):
            if tuple(cmd) in done:
                continue
            print(f"[reproduce {f.stem}] $ {shlex.join(cmd)}", flush=True)
            try:
                rc = subprocess.call(cmd, cwd=ROOT)
            except OSError as exc:  # the program itself is missing
                print(exc, file=sys.stderr)
                rc = 127
            done.add(tuple(cmd))
            if rc != 0:
                failed.append(f"{f.stem}: exit status {rc} from {shlex.join(cmd)}")
                if not args.keep_going:
                    sys.exit("\n".join(failed))
                break
    stale = [f.stem for f, _ in docs if f.exists() and f.stat().st_mtime_ns == before[f]]
    failed += [f"{name}: not rewritten" for name in stale if not any(x.startswith(f"{name}:") for x in failed)]
    if failed:
        sys.exit("\n".join(failed))
    print(f"reproduced {len(docs)} results files")


if __name__ == "__main__":
    main()
