"""The seed comparison: every technique alone at each budget, and the searched mix, via `edgecompress compare`.

    python benchmarks/compare_techniques.py --model resnet20 --checkpoint assets/resnet20-fashion-mnist.pt \
        [--budget-ratio 0.7,0.5,0.35] [--size-ratio 0.1,0.025] [--max-batches 100] [--test-samples 2000]

Runs one `edgecompress compare` (resumable: its folder is benchmarks/runs/compare-MODEL) and records its
compare.json, trimmed to the figures, in benchmarks/results/compare_techniques__MODEL.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import result_path, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--device", default="raspberry-pi-4")
    parser.add_argument("--budget-ratio", default="0.7,0.5,0.35")
    parser.add_argument("--size-ratio", default="0.1,0.025")
    parser.add_argument("--techniques", default="all")
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--finetune-lr", type=float, default=None, help="compare's --finetune-lr (default its own)")
    parser.add_argument("--distill-alpha", type=float, default=None, help="compare's --distill-alpha (default its own)")
    parser.add_argument("--deep-stages", type=int, default=1)
    parser.add_argument("--deep-bias-bits", type=int, default=32)
    parser.add_argument("--deep-clusters", type=int, default=16)
    parser.add_argument("--variant", default=None, help="result and run-folder name (default: the model)")
    parser.add_argument("--max-batches", type=int, default=None)
    parser.add_argument("--test-samples", type=int, default=None)
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--agent", default="optuna")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    variant = args.variant or args.model
    run = Path(f"benchmarks/runs/compare-{variant}")
    cmd = [
        sys.executable, "-m", "edgecompress", "compare", "--model", args.model, "--checkpoint", args.checkpoint,
        "--device", args.device, "--budget-ratio", args.budget_ratio, "--size-ratio", args.size_ratio,
        "--techniques", args.techniques, "--finetune-epochs", str(args.finetune_epochs), "--episodes",
        str(args.episodes), "--agent", args.agent, "--out", str(run),
    ]  # fmt: skip
    if args.finetune_lr is not None:
        cmd += ["--finetune-lr", str(args.finetune_lr)]
    if args.distill_alpha is not None:
        cmd += ["--distill-alpha", str(args.distill_alpha)]
    if args.deep_stages != 1 or args.deep_bias_bits != 32:
        cmd += ["--deep-stages", str(args.deep_stages), "--deep-bias-bits", str(args.deep_bias_bits)]
    if args.deep_clusters != 16:
        cmd += ["--deep-clusters", str(args.deep_clusters)]
    if args.max_batches:
        cmd += ["--max-batches", str(args.max_batches)]
    if args.test_samples:
        cmd += ["--test-samples", str(args.test_samples)]
    started = time.time()
    subprocess.run(cmd, check=True)
    r = json.loads((run / "compare.json").read_text())

    def brief(row: dict) -> dict:
        out = {k: row.get(k) for k in ("technique", "met", "reason", "setting", "params", "macs", "stored_bytes",
                                       "huffman_bytes", "peak_activation_bytes", "accuracy", "latency_ms",
                                       "top1_before_finetune", "seconds", "policy_note")}  # fmt: skip
        out["budget"] = row.get("budget", {}).get("label")
        if row.get("measured"):
            out["measured_speedup"] = {k: v["speedup"] for k, v in row["measured"].items() if k.startswith("batch")}
            out["predicted_ms"] = {d: p["ms"] for d, p in row["predicted"].items()}
        out.get("setting", {}) and out["setting"].pop("candidates", None)  # type: ignore[func-returns-value]
        return out

    payload = {
        "model": r["model"], "checkpoint": r["checkpoint"], "device": r["device"], "settings": r["settings"],
        "accuracy_source": r["accuracy_source"], "latency_source": r["base"]["latency_source"],
        "measured_source": r["base"]["measured"]["source"], "size_note": r["size_note"],
        "base": brief(r["base"]), "rows": [brief(x) for x in r["rows"] if x.get("met") is not None],
        "wall_seconds_this_invocation": round(time.time() - started, 1), "run_folder": str(run),
    }  # fmt: skip
    path = write_result(args.out or result_path("compare_techniques", variant), payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
