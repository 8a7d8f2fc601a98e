from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from edgecompress import data as data_mod
from edgecompress.data import batches, load_dataset
from edgecompress.errors import DataError


def test_tiny_folder_split_sizes_and_shapes(tiny_fmnist) -> None:
    b = load_dataset("fashion-mnist", tiny_fmnist, val_size=40, seed=3)
    assert b.sizes() == {"train": 260, "val": 40, "test": 50}
    assert (b.num_classes, b.in_channels, b.input_size) == (10, 1, 28)
    x, y = b.train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert b.source == str(tiny_fmnist)


def test_split_is_deterministic_and_seed_dependent(tiny_fmnist) -> None:
    a = load_dataset("fashion-mnist", tiny_fmnist, val_size=40, seed=0)
    b = load_dataset("fashion-mnist", tiny_fmnist, val_size=40, seed=0)
    c = load_dataset("fashion-mnist", tiny_fmnist, val_size=40, seed=1)
    assert torch.equal(a.val.tensors[0], b.val.tensors[0])
    assert not torch.equal(a.val.tensors[0], c.val.tensors[0])
    # Train and validation never share a sample.
    tr = {t.numpy().tobytes() for t in a.train.tensors[0]}
    assert not any(v.numpy().tobytes() in tr for v in a.val.tensors[0])


def test_val_subset_and_batches(tiny_fmnist) -> None:
    b = load_dataset("fashion-mnist", tiny_fmnist, val_size=40)
    sub = b.val_subset(25)
    assert len(sub) == 25
    sizes = [len(y) for _, y in batches(sub, 10)]
    assert sizes == [10, 10, 5]
    shuffled = [y for _, y in batches(b.train, 50, shuffle=True, seed=5)]
    again = [y for _, y in batches(b.train, 50, shuffle=True, seed=5)]
    assert all(torch.equal(p, q) for p, q in zip(shuffled, again, strict=True))
    assert b.val_subset(10_000) is b.val


def test_missing_data_says_where_it_looked(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(data_mod, "DEBIAN_FASHION_MNIST", tmp_path / "nope-debian")
    monkeypatch.setattr(data_mod, "TORCHVISION_ROOT", tmp_path / "nope-tv")
    monkeypatch.delenv("EDGECOMPRESS_DATA", raising=False)
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist")
    msg = str(err.value)
    assert msg.startswith("Fashion-MNIST not found. Looked in: ")
    assert str(tmp_path / "nope-debian") in msg and str(tmp_path / "nope-tv") in msg
    assert "apt-get install dataset-fashion-mnist" in msg


def test_env_var_is_searched(tiny_fmnist, monkeypatch) -> None:
    monkeypatch.setenv("EDGECOMPRESS_DATA", str(tiny_fmnist))
    assert data_mod.fashion_mnist_search_path(None)[0] == tiny_fmnist
    assert load_dataset("fashion-mnist", val_size=40).source == str(tiny_fmnist)


def test_truncated_idx_file_is_an_error(tiny_fmnist) -> None:
    path = tiny_fmnist / "train-labels-idx1-ubyte.gz"
    with gzip.open(path, "rb") as f:
        raw = f.read()
    with gzip.open(path, "wb") as f:
        f.write(raw[:-5])
    with pytest.raises(DataError, match="is truncated: header says \\(300,\\), file holds 295 bytes"):
        load_dataset("fashion-mnist", tiny_fmnist, val_size=40)


def test_unknown_dataset() -> None:
    with pytest.raises(DataError, match="unknown dataset 'fashion_mnist'. Did you mean 'fashion-mnist'?"):
        load_dataset("fashion_mnist")


def test_val_size_out_of_range(tiny_fmnist) -> None:
    with pytest.raises(DataError, match="val_size must be between 1 and 299 for a training set of 300, got 300"):
        load_dataset("fashion-mnist", tiny_fmnist, val_size=300)


def test_cifar10_missing_is_a_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(data_mod, "TORCHVISION_ROOT", tmp_path / "tv")
    monkeypatch.delenv("EDGECOMPRESS_DATA", raising=False)
    with pytest.raises(DataError, match="CIFAR-10 not found: looked for cifar-10-batches-py in"):
        load_dataset("cifar10", tmp_path)


def test_imagefolder(tmp_path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(
                tmp_path / "imgs" / cls / f"{i}.png"
            )
    b = load_dataset("imagefolder", tmp_path / "imgs", val_size=2, input_size=16)
    assert b.sizes() == {"train": 16, "val": 2, "test": 2}
    assert b.classes == ("cat", "dog") and b.input_size == 16
    x, _ = next(batches(b.train, 4))
    assert x.shape == (4, 3, 16, 16)


def test_real_fashion_mnist_split(fmnist) -> None:
    assert fmnist.sizes() == {"train": 55_000, "val": 5_000, "test": 10_000}
    assert len(fmnist.classes) == 10
    # Labels are balanced in the test split (1000 per class in the original data).
    counts = torch.bincount(fmnist.test.tensors[1], minlength=10)
    assert counts.tolist() == [1000] * 10
    again = load_dataset("fashion-mnist")
    assert torch.equal(fmnist.val.tensors[1], again.val.tensors[1])


def test_a_cut_off_download_is_named_not_aborted(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A truncated .gz raised EOFError, which the CLI's framework turned into a bare 'Aborted.'."""
    import gzip

    from edgecompress.data import _read_idx
    from edgecompress.errors import DataError

    whole = gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 200]) + bytes(200))
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz cannot be read \(EOFError: .*truncated or "
                                        r"damaged: download or copy it again"):  # fmt: skip
        _read_idx(path)
    path.write_bytes(whole)
    assert _read_idx(path).shape == (200,)
