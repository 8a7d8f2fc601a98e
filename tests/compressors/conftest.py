from __future__ import annotations

import pytest
import torch

from edgecompress.analysis import analyze_model
from edgecompress.models import create_model

SHAPE = (1, 1, 28, 28)


@pytest.fixture(scope="module")
def resnet20():
    torch.manual_seed(0)
    model = create_model("resnet20").eval()
    # Non-trivial BatchNorm statistics so pruned-vs-unpruned outputs are meaningful.
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, *SHAPE[1:]))
    model.eval()
    return model, analyze_model(model, SHAPE)


@pytest.fixture(scope="module")
def lenet5():
    torch.manual_seed(0)
    model = create_model("lenet5").eval()
    return model, analyze_model(model, SHAPE)
