"""Weights trained elsewhere: files written with plain torch / torchvision, read and fitted by edgecompress."""

from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torchvision

from edgecompress.artifacts.checkpoint import ModelSpec, save_checkpoint
from edgecompress.artifacts.weights import (
    fit_weights,
    infer_in_channels,
    infer_num_classes,
    model_from_weights,
    read_weights,
)
from edgecompress.errors import CheckpointError
from edgecompress.models import create_model


def _trained(model: nn.Module) -> nn.Module:
    """Perturb BatchNorm statistics so that equal outputs show buffers were loaded too, not only parameters."""
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)  # type: ignore[union-attr]
            module.running_var.uniform_(0.5, 1.5)  # type: ignore[union-attr]
    return model.eval()


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    return _trained(torchvision.models.resnet18(num_classes=10))


@pytest.fixture(scope="module")
def mobilenet() -> nn.Module:
    return _trained(torchvision.models.mobilenet_v2(num_classes=10))


def _same_outputs(a: nn.Module, b: nn.Module, shape: tuple[int, ...] = (2, 3, 32, 32)) -> None:
    x = torch.randn(shape)
    with torch.no_grad():
        assert torch.equal(a.eval()(x), b.eval()(x))


def _start(text: str) -> str:
    return "^" + re.escape(text)


def test_plain_state_dict_round_trip(tmp_path: Path, resnet: nn.Module) -> None:
    path = tmp_path / "resnet18.pt"
    torch.save(resnet.state_dict(), path)
    model, weights, num_classes, in_channels = model_from_weights("torchvision:resnet18", path, input_size=32)
    assert (num_classes, in_channels) == (10, 3)
    assert (
        weights.kind == "state_dict"
        and weights.path == str(path)
        and weights.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    )
    assert not model.training
    _same_outputs(resnet, model)
    assert any("10 classes" in note for note in weights.notes)


def test_lightning_style_checkpoint_model_prefix(tmp_path: Path, mobilenet: nn.Module) -> None:
    path = tmp_path / "lightning.ckpt"
    state = {f"model.{k}": v for k, v in mobilenet.state_dict().items()}
    torch.save({"epoch": 3, "global_step": 120, "state_dict": state, "optimizer_states": []}, path)
    weights = read_weights(path)
    assert weights.kind == "checkpoint dict (key 'state_dict')"
    assert any(n.startswith("took the state_dict under the key 'state_dict'") for n in weights.notes)
    assert any(n.startswith("stripped the prefix 'model.'") and f"{len(state)} keys" in n for n in weights.notes)
    assert set(weights.state_dict) == set(mobilenet.state_dict())
    model, _, num_classes, _ = model_from_weights("torchvision:mobilenet_v2", path, input_size=32)
    assert num_classes == 10
    _same_outputs(mobilenet, model)


def test_model_key_with_ddp_prefix_and_nested_prefixes(tmp_path: Path, resnet: nn.Module) -> None:
    path = tmp_path / "ddp.pt"
    torch.save({"model": {f"module.{k}": v for k, v in resnet.state_dict().items()}, "best_acc": 0.9}, path)
    model, weights, _, _ = model_from_weights("torchvision:resnet18", path, input_size=32)
    assert weights.kind == "checkpoint dict (key 'model')"
    assert any(n.startswith("stripped the prefix 'module.'") for n in weights.notes)
    _same_outputs(resnet, model)

    nested = tmp_path / "nested.pt"  # a compiled DDP model inside a Lightning module
    torch.save({f"model.module._orig_mod.{k}": v for k, v in resnet.state_dict().items()}, nested)
    weights = read_weights(nested)
    stripped = [n.split()[3] for n in weights.notes if n.startswith("stripped the prefix")]
    assert stripped == ["'model.'", "'module.'", "'_orig_mod.'"]
    assert set(weights.state_dict) == set(resnet.state_dict())


def test_infer_num_classes_and_in_channels(resnet: nn.Module, mobilenet: nn.Module) -> None:
    for model in (resnet, mobilenet):
        assert infer_num_classes(model.state_dict()) == 10
        assert infer_in_channels(model.state_dict()) == 3
    lenet = create_model("lenet5", num_classes=7, in_channels=1)
    assert infer_num_classes(lenet.state_dict()) == 7
    assert infer_in_channels(lenet.state_dict()) == 1
    assert infer_num_classes({"w": torch.zeros(3, 3, 1, 1)}) is None
    assert infer_in_channels({"w": torch.zeros(3, 3)}) is None


def test_builtin_model_infers_channels(tmp_path: Path) -> None:
    torch.manual_seed(0)
    lenet = create_model("lenet5", num_classes=7, in_channels=1, input_size=28).eval()
    path = tmp_path / "lenet.pth"
    torch.save(lenet.state_dict(), path)
    model, _, num_classes, in_channels = model_from_weights("lenet5", path, input_size=28)
    assert (num_classes, in_channels) == (7, 1)
    _same_outputs(lenet, model, (2, 1, 28, 28))


@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_loads_into_named_architecture(tmp_path: Path, resnet: nn.Module, how: str) -> None:
    path = tmp_path / f"resnet18-{how}.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export
        scripted = (
            torch.jit.script(resnet)
            if how == "script"
            else torch.jit.trace(resnet, torch.randn(1, 3, 32, 32), check_trace=False)
        )
    scripted.save(str(path))
    model, weights, num_classes, in_channels = model_from_weights("torchvision:resnet18", path, input_size=32)
    assert weights.kind == "TorchScript" and (num_classes, in_channels) == (10, 3)
    assert any("TorchScript" in n and "architecture" in n for n in weights.notes)
    assert isinstance(model, torchvision.models.ResNet)  # a Python module the compressors can rewrite
    _same_outputs(resnet, model)


def test_pickled_module_refused_unless_trusted(tmp_path: Path, resnet: nn.Module) -> None:
    path = tmp_path / "whole.pt"
    torch.save(resnet, path)
    with pytest.raises(CheckpointError, match=_start(f"weights file {path} holds pickled Python objects")) as info:
        read_weights(path)
    message = str(info.value)
    assert "--trust-pickle" in message and "runs code" in message and "model.state_dict()" in message
    assert "torchvision.models.resnet.ResNet" in message
    with pytest.raises(CheckpointError, match="--trust-pickle"):
        model_from_weights("torchvision:resnet18", path, input_size=32)

    weights = read_weights(path, trust_pickle=True)
    assert weights.kind == "pickled nn.Module"
    model, _, _, _ = model_from_weights("torchvision:resnet18", path, input_size=32, trust_pickle=True)
    _same_outputs(resnet, model)

    wrapped = tmp_path / "wrapped.pt"  # {"model": module}, as some training scripts save
    torch.save({"model": resnet, "epoch": 1}, wrapped)
    assert read_weights(wrapped, trust_pickle=True).kind == "pickled nn.Module (key 'model')"


def test_wrong_num_classes_names_classifier_shapes(tmp_path: Path, resnet: nn.Module) -> None:
    path = tmp_path / "resnet18.pt"
    torch.save(resnet.state_dict(), path)
    with pytest.raises(CheckpointError, match=_start(f"weights {path} do not fit model 'torchvision:resnet18': ")) as e:
        model_from_weights("torchvision:resnet18", path, num_classes=1000, input_size=32)
    message = str(e.value)
    assert "2 shape mismatches (fc.weight: model (1000, 512), file (10, 512), fc.bias: model (1000), file (10))" in (
        message
    )
    assert "--num-classes 10" in message
    with pytest.raises(CheckpointError, match=r"conv1\.weight: model \(64, 1, 7, 7\), file \(64, 3, 7, 7\)"):
        model_from_weights("torchvision:resnet18", path, in_channels=1, input_size=32)


def test_other_architecture_lists_missing_and_unexpected(
    tmp_path: Path, resnet: nn.Module, mobilenet: nn.Module
) -> None:
    path = tmp_path / "mobilenet.pt"
    torch.save(mobilenet.state_dict(), path)
    with pytest.raises(CheckpointError, match=_start(f"weights {path} do not fit model 'torchvision:resnet18': ")) as e:
        model_from_weights("torchvision:resnet18", path, input_size=32)
    message = str(e.value)
    resnet_keys = [k for k in resnet.state_dict() if not k.endswith("num_batches_tracked")]
    n_unexpected = len(mobilenet.state_dict())
    assert f"{len(resnet_keys)} missing keys ({', '.join(resnet_keys[:5])}, ...)" in message
    assert f"{n_unexpected} unexpected keys (features.0.0.weight, " in message
    assert "--model torchvision:resnet18" in message


def test_num_batches_tracked_tolerated_and_noted(tmp_path: Path, resnet: nn.Module) -> None:
    path = tmp_path / "old.pt"
    torch.save({k: v for k, v in resnet.state_dict().items() if not k.endswith("num_batches_tracked")}, path)
    model, weights, _, _ = model_from_weights("torchvision:resnet18", path, input_size=32)
    assert any(n.startswith("the file lacks 20 BatchNorm num_batches_tracked") for n in weights.notes)
    _same_outputs(resnet, model)


def test_prefix_put_back_when_model_has_it(tmp_path: Path) -> None:
    class Wrapper(nn.Module):  # a user model whose only child is called `model`
        def __init__(self) -> None:
            super().__init__()
            self.model = create_model("lenet5")

    torch.manual_seed(0)
    trained = Wrapper().eval()
    path = tmp_path / "wrapper.pt"
    torch.save(trained.state_dict(), path)
    weights = read_weights(path)
    assert weights.stripped_prefix == "model." and "conv1.weight" in weights.state_dict
    fresh = Wrapper()
    fit_weights(fresh, weights)
    assert any(n.startswith("put the prefix 'model.' back") for n in weights.notes)
    _same_outputs(trained.model, fresh.model, (2, 1, 28, 28))


def test_edgecompress_checkpoint_accepted(tmp_path: Path) -> None:
    torch.manual_seed(0)
    lenet = create_model("lenet5").eval()
    spec = ModelSpec(model="lenet5", num_classes=10, in_channels=1, input_size=28, dataset="fashion-mnist", seed=0)
    path = save_checkpoint(tmp_path / "m.pt", lenet, spec)
    model, weights, _, _ = model_from_weights("lenet5", path, input_size=28)
    assert weights.kind == "edgecompress checkpoint"
    _same_outputs(lenet, model, (2, 1, 28, 28))


def test_bad_contents(tmp_path: Path, resnet: nn.Module) -> None:
    extras = tmp_path / "extras.pt"
    torch.save({"state_dict": {**resnet.state_dict(), "metric.name": "acc", "metric.k": 5}}, extras)
    with pytest.raises(
        CheckpointError, match=_start(f"weights file {extras}: the state_dict under 'state_dict' holds")
    ):
        read_weights(extras)
    with pytest.raises(CheckpointError, match=r"2 entries that are not tensors \(metric\.name \(str\), metric\.k"):
        read_weights(extras)
    config = tmp_path / "config.pt"
    torch.save({"lr": 0.1, "epochs": 3}, config)
    with pytest.raises(CheckpointError, match=_start(f"weights file {config} holds no state_dict: a dict with keys")):
        read_weights(config)
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(CheckpointError, match=_start(f"weights file {tensor} holds a Tensor, not a state_dict")):
        read_weights(tensor)
    empty = tmp_path / "empty.pt"
    torch.save({}, empty)
    with pytest.raises(CheckpointError, match=_start(f"weights file {empty} holds an empty dict")):
        read_weights(empty)


def test_missing_file_and_not_a_torch_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=_start(f"weights file {tmp_path / 'none.pt'} does not exist")):
        model_from_weights("torchvision:resnet18", tmp_path / "none.pt", input_size=32)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a torch file")
    for trust in (False, True):
        with pytest.raises(CheckpointError, match=_start(f"cannot read weights file {junk}: it is not a file")):
            read_weights(junk, trust_pickle=trust)
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match="cannot read weights file"):
        read_weights(tmp_path / "empty.bin")


def test_num_classes_needed_without_classifier(tmp_path: Path) -> None:
    path = tmp_path / "convs.pt"
    torch.save({"conv.weight": torch.zeros(4, 3, 3, 3)}, path)
    with pytest.raises(CheckpointError, match=_start(f"cannot tell the number of classes of weights {path}")):
        model_from_weights("torchvision:resnet18", path, input_size=32)
    with pytest.raises(CheckpointError, match=_start(f"cannot build model 'nosuchmodel' for weights {path}")):
        model_from_weights("nosuchmodel", path, num_classes=10, input_size=32)
