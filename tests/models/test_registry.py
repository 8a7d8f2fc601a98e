from __future__ import annotations

import sys
import textwrap

import pytest
import torch
import torch.nn as nn

from edgecompress.errors import ModelError
from edgecompress.models import create_model, list_models

# Parameter counts at 10 classes, 1 input channel (hand-checked for lenet5: 156 + 2416 + 48120 + 10164 + 850).
EXPECTED_PARAMS = {
    "lenet5": 61_706,
    "resnet20": 272_186,
    "resnet56": 855_482,
    "vgg11-small": 2_309_610,
    "mobilenetv2": 2_236_106,
    "mobilenetv2-0.5": 700_202,
}


def test_list_models_has_the_builtins() -> None:
    assert set(list_models()) >= set(EXPECTED_PARAMS)  # the compact students: tests/models/test_students.py


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_builtin_shapes_and_params(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=1)
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMS[name]
    out = model.eval()(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["lenet5", "resnet20", "mobilenetv2", "vgg11-small"])
def test_builtins_take_cifar_shapes(name: str) -> None:
    model = create_model(name, num_classes=100, in_channels=3, input_size=32)
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 100)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small", "squeezenet1_1"])
def test_torchvision_models_adapt_input_channels(arch: str) -> None:
    model = create_model(f"torchvision:{arch}", num_classes=7, in_channels=1)
    assert model.eval()(torch.randn(1, 1, 64, 64)).shape == (1, 7)


def test_unknown_name_suggests_and_lists() -> None:
    with pytest.raises(ModelError) as err:
        create_model("resnet2O")
    msg = str(err.value)
    assert "unknown model 'resnet2O'. Did you mean 'resnet20'?" in msg
    assert "Known models: " + ", ".join(list_models()) in msg


def test_unknown_torchvision_name_suggests() -> None:
    with pytest.raises(ModelError, match="Did you mean 'resnet18'"):
        create_model("torchvision:resnet19")


def test_bad_num_classes() -> None:
    with pytest.raises(ModelError, match="num_classes must be a positive integer, got 0"):
        create_model("lenet5", num_classes=0)


def test_user_factory(tmp_path, monkeypatch) -> None:
    (tmp_path / "my_models.py").write_text(
        textwrap.dedent(
            """
            import torch.nn as nn

            def tiny(num_classes, in_channels):
                return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 28 * 28, num_classes))

            def not_a_model():
                return 3
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = create_model("my_models:tiny", num_classes=4, in_channels=1)
    assert isinstance(model, nn.Module)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 4)
    with pytest.raises(ModelError, match="returned int, not a torch.nn.Module"):
        create_model("my_models:not_a_model")
    with pytest.raises(ModelError, match="has no callable 'missing'"):
        create_model("my_models:missing")
    with pytest.raises(ModelError, match="cannot import 'no_such_module_xyz'"):
        create_model("no_such_module_xyz:f")
    sys.modules.pop("my_models", None)
