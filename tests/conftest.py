from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from edgecompress.analysis import analyze_model
from edgecompress.artifacts.checkpoint import ModelSpec, save_checkpoint
from edgecompress.compressors import Policy
from edgecompress.data import DataBundle, load_dataset
from edgecompress.errors import DataError
from edgecompress.models import create_model
from edgecompress.workflows.replay import replay


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_tiny_fmnist(folder: Path) -> Path:
    """Write a Fashion-MNIST-format folder with 300 train and 50 test images: class k is a bright kth row band."""
    rng = np.random.default_rng(0)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 40, (n, 28, 28))
        for i, k in enumerate(labels):
            images[i, 2 * k + 4 : 2 * k + 6, :] = 255
        return images, labels

    folder.mkdir(parents=True, exist_ok=True)
    tx, ty = make(300)
    sx, sy = make(50)
    write_idx(folder / "train-images-idx3-ubyte.gz", tx)
    write_idx(folder / "train-labels-idx1-ubyte.gz", ty)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", sx)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", sy)
    return folder


@pytest.fixture
def tiny_fmnist(tmp_path: Path) -> Path:
    return make_tiny_fmnist(tmp_path / "fmnist")


@pytest.fixture(scope="session")
def tiny_fmnist_shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny data set, written once per session (for module-scoped fixtures; do not modify it)."""
    return make_tiny_fmnist(tmp_path_factory.mktemp("tiny") / "fmnist")


@pytest.fixture(scope="session")
def fmnist() -> DataBundle:
    """The real Fashion-MNIST (installed by `make test` through the Debian package)."""
    try:
        return load_dataset("fashion-mnist")
    except DataError as exc:
        pytest.skip(f"real Fashion-MNIST not installed: {exc}")


def _train_tiny(folder: Path, model_name: str, epochs: int):  # type: ignore[no-untyped-def]
    """A model trained with seed 0 on the tiny data set in ``folder``; returns (model in eval mode, data)."""
    import torch

    from edgecompress.config import TrainConfig
    from edgecompress.models import create_model
    from edgecompress.training import train

    data = load_dataset("fashion-mnist", folder, val_size=60)
    torch.manual_seed(0)
    model = create_model(model_name)
    train(model, data.train, TrainConfig(epochs=epochs, batch_size=32), progress=False)
    return model.eval(), data


@pytest.fixture(scope="session")
def train_tiny():  # type: ignore[no-untyped-def]
    """``train_tiny(folder, model_name, epochs)``: the shared recipe for small trained test models."""
    return _train_tiny


SHAPE = (1, 1, 28, 28)
"""The input shape of the small-model fixtures below (module-scoped: do not modify their models)."""


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


@pytest.fixture(scope="module")
def replayed(tiny_fmnist_shared: Path, train_tiny, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A LeNet-5 policy (pruning, 4-bit weights, 8-bit activations, sharing, sparsity) replayed for one epoch."""
    root = tmp_path_factory.mktemp("replay")
    model, _data = train_tiny(tiny_fmnist_shared, "lenet5", 2)
    spec = ModelSpec("lenet5", 10, 1, 28, "fashion-mnist", 0)
    ckpt = save_checkpoint(root / "base.pt", model, spec)
    base = {"model": "lenet5", "checkpoint": str(ckpt), "input_shape": [1, 1, 28, 28]}
    policy = Policy.uniform(model, keep=0.5, base=base)
    policy = policy.with_layer("conv2", wbits=4, abits=8).with_layer("fc1", clusters=16, sparsity=0.5)
    policy_path = policy.save(root / "policy.json")
    out = root / "r1"
    report = replay(
        policy_path,
        out,
        finetune_epochs=1,
        data_dir=str(tiny_fmnist_shared),
        val_size=60,
        devices=["raspberry-pi-4"],
        progress=False,
    )
    return {
        "root": root,
        "ckpt": ckpt,
        "policy": policy_path,
        "out": out,
        "report": report,
        "data": str(tiny_fmnist_shared),
        "model": model,
    }


@pytest.fixture(scope="session")
def lenet_checkpoint(tiny_fmnist_shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LeNet-5 base checkpoint trained for 3 epochs on the tiny data set (shared: do not modify it)."""
    from edgecompress.config import load_config
    from edgecompress.workflows.train import train_base_model

    path = tmp_path_factory.mktemp("ckpt") / "lenet.pt"
    cfg = load_config(None, {"data.data_dir": str(tiny_fmnist_shared), "data.val_size": 60, "train.epochs": 3,
                             "train.batch_size": 32})  # fmt: skip
    train_base_model(cfg, path, bundle=load_dataset("fashion-mnist", tiny_fmnist_shared, val_size=60), progress=False)
    return path
