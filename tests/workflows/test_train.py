"""The issue's accuracy targets, on fixed seeds and the real Fashion-MNIST."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecompress.config import load_config
from edgecompress.workflows.train import train_base_model

REPO = Path(__file__).resolve().parents[2]


def test_lenet5_config_reaches_89_percent_in_3_epochs(fmnist, tmp_path) -> None:
    cfg = load_config(REPO / "configs/lenet5-fmnist.yaml")
    assert cfg.train.epochs == 3
    _, spec = train_base_model(cfg, tmp_path / "lenet5.pt", bundle=fmnist, progress=False)
    assert spec.metrics["test_acc"] >= 0.89


@pytest.mark.slow
def test_resnet20_config_reaches_92_percent(fmnist, tmp_path) -> None:
    cfg = load_config(REPO / "configs/resnet20-fmnist.yaml")
    _, spec = train_base_model(cfg, tmp_path / "resnet20.pt", bundle=fmnist, progress=False)
    assert spec.metrics["test_acc"] >= 0.92
