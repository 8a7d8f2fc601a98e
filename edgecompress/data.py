"""Datasets with fixed-seed train / validation / test splits.

* ``fashion-mnist``: the original idx ``.gz`` files, in ``data_dir`` when it is
  given, else in ``$EDGECOMPRESS_DATA`` when that is set (a folder the user
  names is used alone: a typo is an error, never a fallback to another copy),
  else in ``/usr/share/datasets/fashion-mnist`` (Debian package
  ``dataset-fashion-mnist``), then torchvision's root (``~/.cache/edgecompress``);
  :func:`download_fashion_mnist` fetches it with torchvision's downloader.
* ``cifar10``: torchvision's ``cifar-10-batches-py`` folder, local only.
* ``imagefolder``: any user data in torchvision's ImageFolder layout, either
  ``root/train`` + ``root/test`` or a single folder that is split 80/10/10.

The validation split is carved from the training data with a fixed seed; the
first ``val_samples`` of it are what searches score policies on. This module
loads and splits data; it does not augment (see ``training.augment_batch``).
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from edgecompress.errors import DataError, did_you_mean

__all__ = [
    "DATASETS",
    "DataBundle",
    "batches",
    "download_fashion_mnist",
    "fashion_mnist_search_path",
    "load_dataset",
    "num_batches",
]

DATASETS = ("fashion-mnist", "cifar10", "imagefolder")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
TORCHVISION_ROOT = Path(os.path.expanduser("~/.cache/edgecompress"))
_FMNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


@dataclass
class DataBundle:
    """A dataset split three ways, plus what a model needs to know about it."""

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    in_channels: int
    input_size: int
    classes: tuple[str, ...]
    source: str
    """Where the data was read from (a folder), for run records."""

    def val_subset(self, n: int | None) -> Dataset:
        """The first ``n`` validation samples (all when ``n`` is None): what searches score on."""
        if n is None or n >= len(self.val):  # type: ignore[arg-type]
            return self.val
        if n < 1:
            raise DataError(f"val_samples must be >= 1, got {n}")
        return Subset(self.val, range(n))

    def sizes(self) -> dict[str, int]:
        return {k: len(getattr(self, k)) for k in ("train", "val", "test")}


def fashion_mnist_search_path(data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """The folders searched for Fashion-MNIST, in order."""
    paths: list[Path] = []
    if data_dir is not None:
        paths += [Path(data_dir), Path(data_dir) / "fashion-mnist", Path(data_dir) / "FashionMNIST" / "raw"]
    env = os.environ.get("EDGECOMPRESS_DATA")
    if env:
        paths += [Path(env), Path(env) / "fashion-mnist", Path(env) / "FashionMNIST" / "raw"]
    paths += [DEBIAN_FASHION_MNIST, TORCHVISION_ROOT / "FashionMNIST" / "raw"]
    return paths


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _read_idx(path: Path) -> np.ndarray:
    """Read an idx file (LeCun's MNIST format), gzip-compressed or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte idx file (bad magic number)")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape))
    if len(data) - offset != expected:
        raise DataError(f"{path} is truncated: header says {shape}, file holds {len(data) - offset} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def _locate_fashion_mnist(data_dir: str | os.PathLike[str] | None) -> Path:
    # A folder the user names (--data-dir, else $EDGECOMPRESS_DATA) is used alone: a typo must not fall back
    # silently to another copy of the data.
    env = os.environ.get("EDGECOMPRESS_DATA") or None
    named = ("--data-dir", data_dir) if data_dir is not None else ("$EDGECOMPRESS_DATA", env) if env else None
    if named is not None:
        flag, given = named
        root = Path(given)  # type: ignore[arg-type]
        folders = [root, root / "fashion-mnist", root / "FashionMNIST" / "raw"]
        for folder in folders:
            if all(_find_idx(folder, stem) for stem in _FMNIST_FILES.values()):
                return folder
        problem = "no such folder" if not root.is_dir() else "no Fashion-MNIST idx files there"
        raise DataError(
            f"{flag} {root}: {problem} (looked in {', '.join(str(f) for f in folders)} for "
            f"{', '.join(s + '[.gz]' for s in _FMNIST_FILES.values())}). Point it at the folder holding the four "
            "files, or leave it out to use the installed copy (Debian's dataset-fashion-mnist)."
        )
    searched = fashion_mnist_search_path(None)
    for folder in searched:
        if all(_find_idx(folder, stem) for stem in _FMNIST_FILES.values()):
            return folder
    raise DataError(
        "Fashion-MNIST not found. Looked in: "
        + ", ".join(str(p) for p in searched)
        + ". Install it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or run "
        "`edgecompress data download` (torchvision's downloader, needs internet), or pass "
        "--data-dir pointing at a folder with the four idx .gz files."
    )


def download_fashion_mnist(root: Path = TORCHVISION_ROOT) -> Path:
    """Fetch Fashion-MNIST with torchvision's downloader into ``root``; returns the raw folder."""
    from torchvision.datasets import FashionMNIST

    try:
        FashionMNIST(str(root), train=True, download=True)
        FashionMNIST(str(root), train=False, download=True)
    except Exception as exc:  # network errors come in many types
        raise DataError(
            f"downloading Fashion-MNIST into {root} failed ({exc}). "
            "Install the Debian package `dataset-fashion-mnist` instead, or copy the four idx .gz files "
            "into a folder and pass --data-dir."
        ) from exc
    return root / "FashionMNIST" / "raw"


def _split_indices(n: int, n_val: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not 0 < n_val < n:
        raise DataError(f"val_size must be between 1 and {n - 1} for a training set of {n}, got {n_val}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:], perm[:n_val]


def _normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (images.float().div_(255.0) - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def _tensor_bundle(
    name: str,
    source: str,
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    classes: tuple[str, ...],
    val_size: int,
    seed: int,
) -> DataBundle:
    """Images (N, C, H, W) uint8 -> normalised float tensors; mean/std from the training split only."""
    tx = torch.from_numpy(train_x.copy())
    ty = torch.from_numpy(train_y.astype(np.int64))
    train_idx, val_idx = _split_indices(len(tx), val_size, seed)
    fit = tx[train_idx].float().div_(255.0)
    mean = fit.mean(dim=(0, 2, 3))
    std = fit.std(dim=(0, 2, 3))
    x_all = _normalise(tx, mean, std)
    x_test = _normalise(torch.from_numpy(test_x.copy()), mean, std)
    return DataBundle(
        name=name,
        train=TensorDataset(x_all[train_idx], ty[train_idx]),
        val=TensorDataset(x_all[val_idx], ty[val_idx]),
        test=TensorDataset(x_test, torch.from_numpy(test_y.astype(np.int64))),
        num_classes=len(classes),
        in_channels=int(tx.shape[1]),
        input_size=int(tx.shape[-1]),
        classes=classes,
        source=source,
    )


def _load_fashion_mnist(data_dir: str | os.PathLike[str] | None, val_size: int, seed: int) -> DataBundle:
    folder = _locate_fashion_mnist(data_dir)
    arrays = {}
    for key, stem in _FMNIST_FILES.items():
        path = _find_idx(folder, stem)
        assert path is not None
        arrays[key] = _read_idx(path)
    return _tensor_bundle(
        "fashion-mnist",
        str(folder),
        arrays["train_images"][:, None],
        arrays["train_labels"],
        arrays["test_images"][:, None],
        arrays["test_labels"],
        FASHION_MNIST_CLASSES,
        val_size,
        seed,
    )


def _load_cifar10(data_dir: str | os.PathLike[str] | None, val_size: int, seed: int) -> DataBundle:
    from torchvision.datasets import CIFAR10

    roots = [Path(p) for p in (data_dir, os.environ.get("EDGECOMPRESS_DATA"), TORCHVISION_ROOT) if p]
    for root in roots:
        if (root / "cifar-10-batches-py").is_dir():
            train = CIFAR10(str(root), train=True, download=False)
            test = CIFAR10(str(root), train=False, download=False)
            return _tensor_bundle(
                "cifar10",
                str(root / "cifar-10-batches-py"),
                np.asarray(train.data).transpose(0, 3, 1, 2),
                np.asarray(train.targets),
                np.asarray(test.data).transpose(0, 3, 1, 2),
                np.asarray(test.targets),
                tuple(train.classes),
                val_size,
                seed,
            )
    raise DataError(
        "CIFAR-10 not found: looked for cifar-10-batches-py in "
        + ", ".join(str(r) for r in roots)
        + ". Download the python version of CIFAR-10 and pass --data-dir pointing at the folder that contains it."
    )


def _load_imagefolder(data_dir: str | os.PathLike[str] | None, val_size: int, seed: int, image_size: int) -> DataBundle:
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    if data_dir is None:
        raise DataError("dataset 'imagefolder' needs --data-dir pointing at an ImageFolder-layout folder")
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"imagefolder: {root} is not a folder")
    tf = transforms.Compose(
        [transforms.Resize(image_size), transforms.CenterCrop(image_size), transforms.ToTensor(),
         transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
    )  # fmt: skip
    try:
        if (root / "train").is_dir() and (root / "test").is_dir():
            full = ImageFolder(str(root / "train"), transform=tf)
            test: Dataset = ImageFolder(str(root / "test"), transform=tf)
            train_idx, val_idx = _split_indices(len(full), val_size, seed)
        else:
            full = ImageFolder(str(root), transform=tf)
            n = len(full)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
            n_test = max(1, n // 10)
            n_val = min(val_size, max(1, n // 10))
            test = Subset(full, perm[:n_test].tolist())
            val_idx, train_idx = perm[n_test : n_test + n_val], perm[n_test + n_val :]
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"imagefolder: cannot read {root}: {exc}") from exc
    return DataBundle(
        name="imagefolder",
        train=Subset(full, train_idx.tolist()),
        val=Subset(full, val_idx.tolist()),
        test=test,
        num_classes=len(full.classes),
        in_channels=3,
        input_size=image_size,
        classes=tuple(full.classes),
        source=str(root),
    )


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    val_size: int = 5000,
    seed: int = 0,
    image_size: int = 32,
) -> DataBundle:
    """Load ``name`` with a fixed-seed validation split of ``val_size`` training samples."""
    if name == "fashion-mnist":
        return _load_fashion_mnist(data_dir, val_size, seed)
    if name == "cifar10":
        return _load_cifar10(data_dir, val_size, seed)
    if name == "imagefolder":
        return _load_imagefolder(data_dir, val_size, seed, image_size)
    raise DataError(f"unknown dataset {name!r}.{did_you_mean(name, DATASETS)} Valid datasets: {', '.join(DATASETS)}")


def _as_tensors(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The (inputs, targets) tensors behind an in-memory dataset, or None for a lazy one."""
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        return dataset.tensors[0], dataset.tensors[1]
    if isinstance(dataset, Subset):
        inner = _as_tensors(dataset.dataset)
        if inner is not None:
            idx = torch.as_tensor(list(dataset.indices), dtype=torch.long)
            return inner[0][idx], inner[1][idx]
    return None


def batches(
    dataset: Dataset, batch_size: int, *, shuffle: bool = False, seed: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (inputs, targets) batches; shuffling is seeded.

    In-memory datasets are sliced directly (per-sample collation would cost more
    than a LeNet-5 forward pass); others go through a single-process DataLoader.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    tensors = _as_tensors(dataset)
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    if tensors is None:
        yield from DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)
        return
    x, y = tensors
    order = torch.randperm(len(x), generator=generator) if shuffle else None
    for start in range(0, len(x), batch_size):
        if order is None:
            yield x[start : start + batch_size], y[start : start + batch_size]
        else:
            idx = order[start : start + batch_size]
            yield x[idx], y[idx]


def num_batches(dataset: Dataset, batch_size: int) -> int:
    return -(-len(dataset) // batch_size)  # type: ignore[arg-type]
