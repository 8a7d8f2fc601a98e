from __future__ import annotations

import torch

from edgecompress.config import load_config
from edgecompress.models import create_model
from edgecompress.training import augment_batch, evaluate, train
from edgecompress.workflows.train import train_base_model


def test_one_epoch_lenet5_beats_chance_by_far(fmnist, tmp_path) -> None:
    """150 batches of 64 (a sixth of an epoch) on real Fashion-MNIST: chance is 10%."""
    cfg = load_config(None, {"train.epochs": 1})
    _model, spec = train_base_model(cfg, tmp_path / "lenet.pt", bundle=fmnist, max_batches=150, progress=False)
    assert spec.metrics["test_acc"] >= 0.70
    assert spec.metrics["val_acc"] >= 0.70
    assert spec.train["max_batches"] == 150 and len(spec.train["history"]) == 1


def test_training_is_deterministic_for_a_seed(tiny_fmnist) -> None:
    from edgecompress.data import load_dataset

    b = load_dataset("fashion-mnist", tiny_fmnist, val_size=40)
    cfg = load_config(None, {"train.epochs": 2, "train.batch_size": 32, "train.augment": True}).train
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        model = create_model("lenet5")
        train(model, b.train, cfg, progress=False)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_tiny_data_learns(tiny_fmnist) -> None:
    from edgecompress.data import load_dataset

    b = load_dataset("fashion-mnist", tiny_fmnist, val_size=40)
    cfg = load_config(None, {"train.epochs": 8, "train.batch_size": 32}).train
    torch.manual_seed(0)
    model = create_model("lenet5")
    before = evaluate(model, b.test)["top1"]
    train(model, b.train, cfg, progress=False)
    after = evaluate(model, b.test)["top1"]
    assert after >= 0.9 > before


def test_augment_batch_keeps_shape_and_content() -> None:
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4) + 1
    out = augment_batch(x, torch.Generator().manual_seed(0), pad=1)
    assert out.shape == x.shape
    # Every output pixel is either padding (0) or a pixel of the same image.
    for i in range(2):
        vals = set(out[i].flatten().tolist()) - {0.0}
        assert vals <= set(x[i].flatten().tolist())


def test_evaluate_topk() -> None:
    from torch.utils.data import TensorDataset

    class Fixed(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tensor([[0.0, 1.0, 2.0]]).repeat(len(x), 1)

    ds = TensorDataset(torch.zeros(4, 1), torch.tensor([2, 1, 0, 2]))
    acc = evaluate(Fixed(), ds, topk=(1, 2))
    assert acc == {"top1": 0.5, "top2": 0.75}
