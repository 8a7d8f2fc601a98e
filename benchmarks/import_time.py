"""Start-up cost: ``import edgecompress`` and ``edgecompress --help``, this tree against an earlier commit.

    python benchmarks/import_time.py --before cf61c45 --runs 5

Each command runs ``--runs`` times in a fresh interpreter, alternating between
the two trees (so both see the same machine load); the median wall time is
reported, with the heaviest modules of one ``python -X importtime`` run and
whether torch was imported. The earlier commit is checked out into a
temporary git worktree and imported from there with the same interpreter.
Writes benchmarks/results/import_time.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import result_path, write_result

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {
    "import edgecompress": "import edgecompress",
    "edgecompress --help": "import sys; sys.argv = ['edgecompress', '--help']\nfrom edgecompress.cli import main\n"
    "try:\n    main()\nexcept SystemExit:\n    pass",
}


def _run(code: str, tree: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, check=True, capture_output=True)
    return time.perf_counter() - t


def _profile(code: str, tree: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    probe = code + "\nimport sys\nprint('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)"
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", probe], cwd=tree, env=env, check=True, capture_output=True,
        text=True,
    ).stderr  # fmt: skip
    rows = []
    for line in err.splitlines():
        if line.startswith("import time:") and "|" in line and "cumulative" not in line:
            _, cum, name = (part.strip() for part in line[len("import time:") :].split("|"))
            rows.append((int(cum), name))
    top = [{"module": n, "cumulative_ms": c / 1000} for c, n in sorted(rows, reverse=True) if "." not in n][:6]
    lines = err.splitlines()
    return {"imports_torch": "TORCH" in lines and "NO-TORCH" not in lines, "heaviest_top_level_imports": top}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="cf61c45", help="the commit to compare with")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(old), args.before], cwd=REPO, check=True,
                       capture_output=True)  # fmt: skip
        try:
            trees = {"before": old, "after": REPO}
            results: dict[str, Any] = {}
            for label, code in COMMANDS.items():
                times: dict[str, list[float]] = {"before": [], "after": []}
                for _ in range(args.runs):
                    for which, tree in trees.items():
                        times[which].append(_run(code, tree))
                results[label] = {
                    which: {
                        "median_s": statistics.median(ts),
                        "runs_s": [round(t, 3) for t in ts],
                        **_profile(code, trees[which]),
                    }
                    for which, ts in times.items()
                }
                print(f"{label}: before {results[label]['before']['median_s']:.2f} s, "
                      f"after {results[label]['after']['median_s']:.2f} s (median of {args.runs})")  # fmt: skip
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=REPO, check=False)
    write_result(args.out or result_path("import_time"), {
        "before_commit": args.before,
        "runs": args.runs,
        "method": "fresh interpreter per run, the two trees alternating; wall time of the whole process",
        "results": results,
    })  # fmt: skip


if __name__ == "__main__":
    main()
