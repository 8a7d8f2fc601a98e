"""Search a two-input model scored by macro-F1, from Python (docs/python-api.md walks through it).

The model takes an image and a small side vector (``model(image, extra)``),
so it is described to edgecompress by example inputs (a tuple), and it is
scored by the caller's own ``evaluate(model) -> float``: macro-F1 on held-out
data, not top-1. Its training batches yield ``((image, extra), label)``, so
the search's fine-tuning distils it in the same form.

    python docs/examples/any_task.py [--out runs/any-task] [--trials 6]
"""

from __future__ import annotations

import argparse
import tempfile

import torch
import torch.nn as nn
import torch.nn.functional as F

import edgecompress
from edgecompress.data import load_dataset


class TwoInputNet(nn.Module):
    """A small CNN on the image, joined with an MLP on a 4-number side vector."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.side = nn.Linear(4, 32)
        self.head = nn.Linear(64 + 32, num_classes)

    def forward(self, image: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(image)), 2)
        x = F.adaptive_avg_pool2d(F.relu(self.conv2(x)), 1).flatten(1)
        return self.head(torch.cat([x, F.relu(self.side(extra))], dim=1))


def side_vector(images: torch.Tensor) -> torch.Tensor:
    """Four numbers per image (mean, std, and the top and bottom halves' means): the second input."""
    h = images.shape[-1] // 2
    top, bottom = images[..., :h, :], images[..., h:, :]
    return torch.stack([images.mean((1, 2, 3)), images.std((1, 2, 3)), top.mean((1, 2, 3)), bottom.mean((1, 2, 3))], 1)


def macro_f1(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    """Unweighted mean over classes of 2PR / (P + R) (a class never predicted nor present is skipped)."""
    scores = []
    for c in range(num_classes):
        tp = int(((pred == c) & (target == c)).sum())
        fp = int(((pred == c) & (target != c)).sum())
        fn = int(((pred != c) & (target == c)).sum())
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="run folder (default: a temporary folder)")
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--train-samples", type=int, default=4000)
    args = ap.parse_args()
    torch.manual_seed(0)

    data = load_dataset("fashion-mnist", val_size=1000)
    x, y = data.train.tensors[0][: args.train_samples], data.train.tensors[1][: args.train_samples]
    val_x, val_y = data.val.tensors[0][:500], data.val.tensors[1][:500]
    train_batches = [((x[i : i + 64], side_vector(x[i : i + 64])), y[i : i + 64]) for i in range(0, len(x), 64)]

    model = TwoInputNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for (image, extra), label in train_batches * 2:  # two quick epochs: enough to have something to compress
        loss = F.cross_entropy(model(image, extra), label)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()

    @torch.no_grad()
    def evaluate(m: nn.Module) -> float:
        return macro_f1(m(val_x, side_vector(val_x)).argmax(1), val_y, 10)

    example = (torch.zeros(1, 1, 28, 28), torch.zeros(1, 4))  # batch 1: what the model is traced and priced on
    out = args.out or tempfile.mkdtemp(prefix="edgecompress-any-task-")
    result = edgecompress.search_policy(
        model,
        evaluate=evaluate,
        example_inputs=example,
        train_data=train_batches,  # ((image, extra), label) batches: fine-tuning distils on them
        finetune_batches=4,
        device="raspberry-pi-4",
        budget_ratio=0.6,
        agent="optuna",
        episodes=args.trials,
        out=out,
    )
    print(f"base macro-F1 {evaluate(model):.4f}; base latency {result.result['base_latency_ms']:.4f} ms (predicted)")
    if result.policy is None:
        print("no policy met the budget")
        return
    best = result.best
    assert best is not None
    print(f"best within budget: macro-F1 {best['accuracy']:.4f} ({best['accuracy_source']})")
    budget = result.result["budget_ms"]
    print(f"latency {best['latency_ms']:.4f} ms vs budget {budget:.4f} ms ({best['latency_source']})")
    compressed, report = edgecompress.compress(model, result.policy, example_inputs=example)
    print(f"rebuilt from the policy: macro-F1 {evaluate(compressed):.4f} before fine-tuning, "
          f"params {report.totals['params_before']:,} -> {report.totals['params_after']:,}")  # fmt: skip
    print(f"run folder: {result.run_dir}")


if __name__ == "__main__":
    main()
