"""DDPG (AMC) vs uniform vs random search at the same budget and number of evaluations.

    python benchmarks/search_ddpg.py [--episodes 60 --seeds 0 1 2]

For LeNet-5 and ResNet-20 on Fashion-MNIST (checkpoints from
benchmarks/train_base_models.py), raspberry-pi-4 device model, budget 0.5 of the
base latency (0.7 for LeNet-5, whose keep-only floor is 0.65), keep-only
actions, no fine-tuning: best validation accuracy within budget of
- DDPG: ``episodes`` episodes (warm-up a third of them);
- random: the same number of episodes with uniform random actions through the same env;
- uniform: the largest single keep ratio whose policy meets the budget (bisection).
Also episodes per minute. Writes benchmarks/results/search_ddpg.json
(search_ddpg__<models>.json for other ``--models``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import result_path, write_result

from edgecompress._progress import make_console
from edgecompress.agents import AMCDDPG
from edgecompress.artifacts.checkpoint import load_checkpoint
from edgecompress.compressors import Policy
from edgecompress.data import load_dataset
from edgecompress.envs import CompressionEnv
from edgecompress.search.objective import Objective

console = make_console()
SETUPS = {
    "lenet5": ("checkpoints/lenet5-fashion-mnist.pt", 0.7),
    "resnet20": ("checkpoints/resnet20-fashion-mnist.pt", 0.5),
}


def best_of(records: list[dict[str, Any]]) -> float:
    ok = [r["accuracy"] for r in records if r["within_budget"]]
    return max(ok) if ok else float("nan")


def run_random(env: CompressionEnv, episodes: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(episodes):
        env.reset()
        done = False
        while not done:
            _, _, done, _, info = env.step(rng.uniform(-1, 1, env.action_space.shape).astype(np.float32))
        out.append(info)
    return out


def run_ddpg(env: CompressionEnv, episodes: int, seed: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    agent = AMCDDPG(env, n_layers=len(env.layers), warmup_episodes=max(1, episodes // 3), seed=seed)
    agent.episode_end_hook = lambda final, info: out.append(info)
    agent.learn(total_timesteps=episodes * len(env.layers))
    return out


def uniform(env: CompressionEnv) -> dict[str, Any]:
    obj, lo, hi = env.objective, env.space.keep_min, 1.0
    best = None
    for _ in range(12):
        mid = (lo + hi) / 2
        layers = {s.name: {"keep": round(mid, 4)} for s in env.layers if s.prunable}
        policy = Policy.from_dict({"format": "edgecompress.policy", "version": 2, "layers": layers, "round_to": 1})
        ev = obj(policy)
        if ev.latency_ms <= env.budget_ms:
            best, lo = {"keep": round(mid, 4), "accuracy": ev.accuracy, "latency_ms": ev.latency_ms}, mid
        else:
            hi = mid
    return best or {"keep": None, "accuracy": float("nan"), "latency_ms": float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=60)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--val-samples", type=int, default=1000)
    parser.add_argument("--models", nargs="+", default=list(SETUPS))
    parser.add_argument("--out", default=None, help="default: benchmarks/results/search_ddpg[__<models>].json")
    args = parser.parse_args()
    if args.out is None:
        args.out = result_path("search_ddpg", "" if args.models == list(SETUPS) else "+".join(args.models))
    data = load_dataset("fashion-mnist")
    results: dict[str, Any] = {}
    for name in args.models:
        ckpt, ratio = SETUPS[name]
        model, spec = load_checkpoint(ckpt)
        row: dict[str, Any] = {"budget_ratio": ratio, "episodes": args.episodes, "val_samples": args.val_samples}
        for method in ("ddpg", "random"):
            bests, rates = [], []
            for seed in args.seeds:
                obj = Objective(model, data.val_subset(args.val_samples), "raspberry-pi-4",
                                input_shape=spec.input_shape)  # fmt: skip
                env = CompressionEnv(objective=obj, budget_ratio=ratio, round_to=1)
                t = time.perf_counter()
                records = (
                    run_ddpg(env, args.episodes, seed) if method == "ddpg" else run_random(env, args.episodes, seed)
                )
                minutes = (time.perf_counter() - t) / 60
                bests.append(best_of(records))
                rates.append(len(records) / minutes)
                row["base_accuracy"] = obj(Policy({})).accuracy
                row["budget_ms"], row["base_ms"] = env.budget_ms, env.base_ms
            row[method] = {"best_accuracy_per_seed": bests, "mean": statistics.mean(bests),
                           "episodes_per_minute": statistics.mean(rates)}  # fmt: skip
            console.print(f"{name} {method}: best within budget per seed {[round(b, 4) for b in bests]}, "
                          f"{statistics.mean(rates):.0f} episodes/min")  # fmt: skip
        row["uniform"] = uniform(env)
        console.print(f"{name} uniform: keep {row['uniform']['keep']} -> accuracy {row['uniform']['accuracy']:.4f}")
        results[name] = row
    console.print(f"wrote {write_result(args.out, {'results': results})}")


if __name__ == "__main__":
    main()
