"""Datasets with fixed-seed train / validation / test splits, served at the model's input size.

* ``fashion-mnist``: the original idx ``.gz`` files, in ``data_dir`` when it is
  given, else in ``$EDGECOMPRESS_DATA`` when that is set (a folder the user
  names is used alone: a typo is an error, never a fallback to another copy),
  else in ``/usr/share/datasets/fashion-mnist`` (Debian package
  ``dataset-fashion-mnist``), then torchvision's root (``~/.cache/edgecompress``);
  :func:`download_fashion_mnist` fetches it with torchvision's downloader.
* ``cifar10``: torchvision's ``cifar-10-batches-py`` folder, local only.
* ``imagefolder``: any user data in torchvision's ImageFolder layout (one
  sub-folder per class), either ``root/train`` + ``root/test`` or a single
  folder that is split 80/10/10.

Fashion-MNIST and CIFAR-10 are held in memory as normalised float tensors at
their native size (28 / 32), normalised per channel with the statistics of the
training split. ``input_size`` serves them bilinearly resized to
``input_size x input_size`` and ``channels=3`` serves grayscale data as RGB (the
gray plane repeated); both are applied lazily, per sample by
:class:`ResizedTensorDataset` and per batch (after slicing) by :func:`batches`,
so 60,000 images at 3x224x224 never exist at once. At native size and channel
count the splits are plain ``TensorDataset`` s.

``imagefolder`` is decoded per sample, always as RGB, with torchvision's
standard pipeline: the training split gets ``RandomResizedCrop(input_size)`` +
``RandomHorizontalFlip()``, the validation and test splits ``Resize(round(
input_size / 0.875))`` + ``CenterCrop(input_size)``; then ``ToTensor()`` and
``Normalize(mean, std)`` (ImageNet's statistics unless given). ``input_size``
defaults to 224. :func:`batches` reads it through a ``DataLoader`` with
``workers`` worker processes (seeded from ``seed``, shut down when the batches
end or are abandoned); in-memory data is sliced directly.

The validation split is carved from the training data with a fixed seed; the
first ``val_samples`` of it are what searches score policies on. Apart from
imagefolder's standard training transform this module does not augment (see
``training.augment_batch``).
"""

from __future__ import annotations

import gzip
import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from edgecompress.errors import DataError, did_you_mean

__all__ = [
    "DATASETS",
    "DataBundle",
    "ResizedTensorDataset",
    "TransformedSubset",
    "batches",
    "download_fashion_mnist",
    "fashion_mnist_search_path",
    "first_batches",
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
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGEFOLDER_INPUT_SIZE = 224
NATIVE_CHANNELS = {"fashion-mnist": 1, "cifar10": 3, "imagefolder": 3}
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
    workers: int = 0
    """DataLoader worker processes for data decoded per sample (pass to :func:`batches`)."""

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
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile, OSError) as exc:  # a cut-off or damaged download (EOFError: cut off)
        raise DataError(
            f"{path} cannot be read ({type(exc).__name__}: {exc or 'the compressed stream ends early'}); the file "
            "is truncated or damaged: download or copy it again"
        ) from None
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


class ResizedTensorDataset(Dataset):
    """In-memory images served at another size and/or as RGB, resized lazily.

    ``images`` are (N, C, H, W) float tensors at their native size (already
    normalised); each sample, or each batch sliced by :func:`batches`, is
    bilinearly resized to ``size x size`` and, when ``channels`` is 3 and the
    images have one channel, the gray plane is repeated three times.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        size: int,
        channels: int,
        normalise: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        if images.dim() != 4 or len(images) != len(targets):
            raise ValueError(f"images must be (N, C, H, W) with one target each, got {tuple(images.shape)} and "
                             f"{len(targets)} targets")  # fmt: skip
        native = int(images.shape[1])
        if channels != native and not (native == 1 and channels == 3):
            raise ValueError(f"cannot serve {native}-channel images with {channels} channels")
        self.images = images
        self.targets = targets
        self.size = size
        self.channels = channels
        self.normalise = normalise
        """Per served channel (mean, std) applied after the resize and the channel repeat (``images`` then hold
        pixels in [0, 1]): a normalisation given by the user for the RGB-served images."""

    def __len__(self) -> int:
        return len(self.images)

    def resize(self, batch: torch.Tensor) -> torch.Tensor:
        """(n, C, H, W) native-size images -> (n, channels, size, size), as served."""
        if tuple(batch.shape[-2:]) != (self.size, self.size):
            down = self.size < max(batch.shape[-2:])
            batch = F.interpolate(batch, size=(self.size, self.size), mode="bilinear", align_corners=False,
                                  antialias=down)  # fmt: skip
        if batch.shape[1] != self.channels:
            batch = batch.expand(-1, self.channels, -1, -1).contiguous()
        if self.normalise is not None:
            mean, std = self.normalise
            batch = (batch - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
        return batch

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.resize(self.images[index].unsqueeze(0))[0], self.targets[index]


class TransformedSubset(Dataset):
    """The samples ``indices`` of ``dataset`` (which yields untransformed (image, target) pairs), with ``transform``
    applied to each image: lets the training and validation splits of one ImageFolder scan use different
    transforms."""

    def __init__(self, dataset: Dataset, indices: Sequence[int], transform: Callable[[Any], Any]) -> None:
        self.dataset = dataset
        self.indices = list(indices)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image, target = self.dataset[self.indices[index]]
        return self.transform(image), target


def _served(name: str, input_size: int | None, channels: int | None, default_size: int) -> tuple[int, int]:
    """Validated (input_size, channels) as served, defaults filled in."""
    native = NATIVE_CHANNELS[name]
    if channels is None:
        channels = native
    if (
        isinstance(channels, bool)
        or not isinstance(channels, int)
        or not (channels == native or (native == 1 and channels == 3))
    ):
        valid = (
            "use 1 (native, or leave it unset) or 3 (the gray plane repeated as RGB)"
            if native == 1
            else "use 3 (RGB, or leave it unset)"
        )
        kind = "1-channel grayscale" if native == 1 else "3-channel RGB"
        raise DataError(f"channels={channels!r} is not valid for {name} ({kind} images): {valid}")
    if input_size is None:
        input_size = default_size
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
        raise DataError(f"input_size must be a whole number of pixels >= 1 (or unset), got {input_size!r}")
    return input_size, channels


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
    input_size: int | None = None,
    channels: int | None = None,
    workers: int = 0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> DataBundle:
    """Images (N, C, H, W) uint8 -> normalised float tensors; mean/std from the training split only, unless given
    (one value per served channel: what a model trained elsewhere was normalised with).

    The tensors stay at their native size and channel count; other sizes / channels are served lazily by
    :class:`ResizedTensorDataset`.
    """
    native_size = int(train_x.shape[-1])
    size, chans = _served(name, input_size, channels, native_size)
    tx = torch.from_numpy(train_x.copy())
    ty = torch.from_numpy(train_y.astype(np.int64))
    train_idx, val_idx = _split_indices(len(tx), val_size, seed)
    given: tuple[torch.Tensor, torch.Tensor] | None = None
    if mean is not None or std is not None:
        given = (
            torch.tensor(_stats("mean", mean, None, name, chans)),
            torch.tensor(_stats("std", std, None, name, chans)),
        )
    native_chans = int(train_x.shape[1])
    after: tuple[torch.Tensor, torch.Tensor] | None = None
    if given is None:
        fit = tx[train_idx].float().div_(255.0)
        m, s = fit.mean(dim=(0, 2, 3)), fit.std(dim=(0, 2, 3))
        del fit
    elif chans == native_chans:
        m, s = given
    else:  # per served (RGB) channel: normalised after the gray plane is repeated
        m, s, after = torch.zeros(native_chans), torch.ones(native_chans), given
    x_all = _normalise(tx, m, s)
    x_test = _normalise(torch.from_numpy(test_x.copy()), m, s)
    y_test = torch.from_numpy(test_y.astype(np.int64))
    native = size == native_size and train_x.shape[-2] == native_size and chans == native_chans

    def wrap(x: torch.Tensor, y: torch.Tensor) -> Dataset:
        return TensorDataset(x, y) if native else ResizedTensorDataset(x, y, size, chans, after)

    return DataBundle(
        name=name,
        train=wrap(x_all[train_idx], ty[train_idx]),
        val=wrap(x_all[val_idx], ty[val_idx]),
        test=wrap(x_test, y_test),
        num_classes=len(classes),
        in_channels=chans,
        input_size=size,
        classes=classes,
        source=source,
        workers=workers,
    )


def _load_fashion_mnist(
    data_dir: str | os.PathLike[str] | None, val_size: int, seed: int, input_size: int | None = None,
    channels: int | None = None, workers: int = 0, mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> DataBundle:  # fmt: skip
    _served("fashion-mnist", input_size, channels, 28)  # fail before reading anything
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
        input_size,
        channels,
        workers,
        mean,
        std,
    )


def _load_cifar10(
    data_dir: str | os.PathLike[str] | None, val_size: int, seed: int, input_size: int | None = None,
    channels: int | None = None, workers: int = 0, mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> DataBundle:  # fmt: skip
    from torchvision.datasets import CIFAR10

    _served("cifar10", input_size, channels, 32)
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
                input_size,
                channels,
                workers,
                mean,
                std,
            )
    raise DataError(
        "CIFAR-10 not found: looked for cifar-10-batches-py in "
        + ", ".join(str(r) for r in roots)
        + ". Download the python version of CIFAR-10 and pass --data-dir pointing at the folder that contains it."
    )


def _rgb_loader(path: str) -> Any:
    """ImageFolder's loader, always RGB (grayscale, palette and RGBA files included)."""
    from PIL import Image

    with open(path, "rb") as f:
        image = Image.open(f)
        return image.convert("RGB")


def _stats(
    what: str, given: Sequence[float] | None, default: tuple[float, ...] | None, dataset: str = "imagefolder",
    channels: int = 3,
) -> list[float]:  # fmt: skip
    if given is None:
        if default is None:
            raise DataError(
                f"{dataset}: give both mean and std (one value per served channel, {channels}), or neither to "
                "normalise with the training split's own statistics"
            )
        return list(default)
    values = list(given)
    if len(values) != channels:
        unset = f"ImageNet's {list(default)}" if default is not None else "the training split's own statistics"
        raise DataError(
            f"{dataset}: {what} must have {channels} values, one per {'RGB ' if channels == 3 else ''}channel, got "
            f"{len(values)}: {values}. Leave it unset for {unset}."
        )
    if not all(np.isfinite(v) for v in values) or (what == "std" and min(values) <= 0):
        raise DataError(f"{dataset}: {what} values must be finite{' and > 0' if what == 'std' else ''}, "
                        f"got {values}")  # fmt: skip
    return [float(v) for v in values]


_LAYOUT = "one sub-folder per class holding its images (FOLDER/<class>/<image>)"


def _scan_imagefolder(folder: Path) -> Any:
    """An ImageFolder over ``folder`` (no transform, RGB loader), or a DataError that says what is wrong."""
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS

    exts = ", ".join(IMG_EXTENSIONS)
    if not folder.is_dir():
        raise DataError(f"imagefolder: {folder} does not exist{' as a folder' if folder.exists() else ''}. "
                        f"Point --data-dir (data.data_dir) at a folder with {_LAYOUT}, directly or under "
                        "train/ and test/.")  # fmt: skip
    try:
        scanned = ImageFolder(str(folder), loader=_rgb_loader, allow_empty=True)
    except FileNotFoundError:  # no class sub-folders at all
        loose = sum(1 for f in folder.iterdir() if f.is_file() and f.name.lower().endswith(IMG_EXTENSIONS))
        hint = f" ({loose} images lie directly in it: move them into class sub-folders)" if loose else ""
        raise DataError(
            f"imagefolder: no images in {folder}: it has no class sub-folders{hint}. ImageFolder reads files "
            f"ending in {exts} (any case) from {_LAYOUT.replace('FOLDER', str(folder))}."
        ) from None
    except OSError as exc:
        raise DataError(f"imagefolder: cannot read {folder}: {exc}") from exc
    counts = np.bincount(np.asarray(scanned.targets, dtype=np.int64), minlength=len(scanned.classes))
    if counts.sum() == 0:
        raise DataError(
            f"imagefolder: no images in {folder}: its class sub-folders ({', '.join(scanned.classes)}) hold no "
            f"files ending in {exts} (any case). ImageFolder reads {_LAYOUT.replace('FOLDER', str(folder))}."
        )
    if len(scanned.classes) < 2:
        raise DataError(
            f"imagefolder: {folder} has only one class ({scanned.classes[0]!r}): a classifier needs at least 2, "
            f"so give {_LAYOUT.replace('FOLDER', str(folder))}, one sub-folder per class."
        )
    empty = [c for c, n in zip(scanned.classes, counts, strict=True) if n == 0]
    if empty:
        raise DataError(
            f"imagefolder: class folders with no images in {folder}: {', '.join(empty)}. Every class needs at "
            f"least one file ending in {exts}; remove the empty folders or add images."
        )
    return scanned


def _load_imagefolder(
    data_dir: str | os.PathLike[str] | None,
    val_size: int,
    seed: int,
    input_size: int | None = None,
    channels: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    workers: int = 0,
) -> DataBundle:
    from torchvision import transforms

    size, chans = _served("imagefolder", input_size, channels, IMAGEFOLDER_INPUT_SIZE)
    norm = transforms.Normalize(_stats("mean", mean, IMAGENET_MEAN), _stats("std", std, IMAGENET_STD))
    train_tf = transforms.Compose(
        [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(), transforms.ToTensor(), norm]
    )
    eval_tf = transforms.Compose(
        [transforms.Resize(round(size / 0.875)), transforms.CenterCrop(size), transforms.ToTensor(), norm]
    )
    if data_dir is None:
        raise DataError("dataset 'imagefolder' needs --data-dir pointing at an ImageFolder-layout folder")
    root = Path(data_dir)
    if not root.is_dir():
        _scan_imagefolder(root)  # raises the missing-folder error
    has_train, has_test = (root / "train").is_dir(), (root / "test").is_dir()
    if has_train != has_test:
        have, lack = ("train", "test") if has_train else ("test", "train")
        raise DataError(
            f"imagefolder: {root} has a {have}/ folder but no {lack}/: give both ({root}/train/<class>/<image> and "
            f"{root}/test/<class>/<image>), or one folder of class sub-folders that is split 80/10/10."
        )
    full = _scan_imagefolder(root / "train" if has_train else root)
    test: Dataset
    if has_train:
        scanned_test = _scan_imagefolder(root / "test")
        if scanned_test.classes != full.classes:
            only_train = sorted(set(full.classes) - set(scanned_test.classes))
            only_test = sorted(set(scanned_test.classes) - set(full.classes))
            raise DataError(
                f"imagefolder: {root}/train and {root}/test have different class folders (only in train: "
                f"{', '.join(only_train) or 'none'}; only in test: {', '.join(only_test) or 'none'}). Both need "
                "the same class sub-folders: a class's label is its position in the sorted list."
            )
        scanned_test.transform = eval_tf
        test = scanned_test
        train_idx, val_idx = _split_indices(len(full), val_size, seed)
    else:
        n = len(full)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        n_test = max(1, n // 10)
        n_val = min(val_size, max(1, n // 10))
        if n - n_test - n_val < 1:
            raise DataError(f"imagefolder: {root} holds {n} images: too few to split into train, val and test")
        test = TransformedSubset(full, perm[:n_test].tolist(), eval_tf)
        val_idx, train_idx = perm[n_test : n_test + n_val], perm[n_test + n_val :]
    return DataBundle(
        name="imagefolder",
        train=TransformedSubset(full, train_idx.tolist(), train_tf),
        val=TransformedSubset(full, val_idx.tolist(), eval_tf),
        test=test,
        num_classes=len(full.classes),
        in_channels=chans,
        input_size=size,
        classes=tuple(full.classes),
        source=str(root),
        workers=workers,
    )


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    val_size: int = 5000,
    seed: int = 0,
    input_size: int | None = None,
    channels: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    workers: int = 0,
) -> DataBundle:
    """Load ``name`` with a fixed-seed validation split of ``val_size`` training samples.

    ``input_size`` / ``channels`` are what the bundle serves (default: the data's own; 224 and RGB for
    imagefolder); ``mean`` / ``std``, one value per served channel, normalise the data as a model trained
    elsewhere expects (default: ImageNet's for imagefolder, the training split's own for the others);
    ``workers`` is stored on the bundle for :func:`batches`.
    """
    if name not in DATASETS:
        raise DataError(
            f"unknown dataset {name!r}.{did_you_mean(name, DATASETS)} Valid datasets: {', '.join(DATASETS)}"
        )
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise DataError(f"workers must be a whole number >= 0, got {workers!r}")
    if name == "imagefolder":
        return _load_imagefolder(data_dir, val_size, seed, input_size, channels, mean, std, workers)
    if name == "fashion-mnist":
        return _load_fashion_mnist(data_dir, val_size, seed, input_size, channels, workers, mean, std)
    return _load_cifar10(data_dir, val_size, seed, input_size, channels, workers, mean, std)


def _in_memory(
    dataset: Dataset,
) -> tuple[torch.Tensor, torch.Tensor, Callable[[torch.Tensor], torch.Tensor] | None] | None:
    """(inputs, targets, per-batch transform or None) behind an in-memory dataset, or None for a lazy one."""
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        return dataset.tensors[0], dataset.tensors[1], None
    if isinstance(dataset, ResizedTensorDataset):
        return dataset.images, dataset.targets, dataset.resize
    if isinstance(dataset, Subset):
        inner = _in_memory(dataset.dataset)
        if inner is not None:
            idx = torch.as_tensor(list(dataset.indices), dtype=torch.long)
            return inner[0][idx], inner[1][idx], inner[2]
    return None


def batches(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    workers: int = 0,
    pin_memory: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (inputs, targets) batches; shuffling is seeded.

    In-memory datasets (``TensorDataset``, :class:`ResizedTensorDataset`, ``Subset`` s of them) are sliced
    directly (per-sample collation would cost more than a LeNet-5 forward pass) and resized per batch;
    ``workers`` and ``pin_memory`` are ignored for them. Others go through a ``DataLoader`` with ``workers``
    worker processes, seeded from ``seed`` (shuffle order and worker seeds alike), which are shut down when
    the batches are exhausted or the iterator is closed.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 0:
        raise DataError(f"workers must be >= 0, got {workers}")
    tensors = _in_memory(dataset)
    if tensors is None:
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            generator=torch.Generator().manual_seed(seed),
            num_workers=workers,
            pin_memory=pin_memory and torch.cuda.is_available(),
            persistent_workers=False,
        )
        it = iter(loader)
        try:
            yield from it
        finally:
            shutdown = getattr(it, "_shutdown_workers", None)  # no-op after the last batch; needed on close()
            if shutdown is not None:
                shutdown()
            del it
        return
    x, y, transform = tensors
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    order = torch.randperm(len(x), generator=generator) if shuffle else None
    for start in range(0, len(x), batch_size):
        if order is None:
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        else:
            idx = order[start : start + batch_size]
            xb, yb = x[idx], y[idx]
        yield (xb if transform is None else transform(xb)), yb


def first_batches(dataset: Dataset, n: int, batch_size: int = 64, *, seed: int = 0) -> list[torch.Tensor]:
    """The inputs of the first ``n`` batches of a seeded shuffle, drawn lazily (listing every batch first would
    hold the whole training set in memory: 6 GB at 3x96x96)."""
    return [x for x, _ in itertools.islice(batches(dataset, batch_size, shuffle=True, seed=seed), n)]


def num_batches(dataset: Dataset, batch_size: int) -> int:
    return -(-len(dataset) // batch_size)  # type: ignore[arg-type]
