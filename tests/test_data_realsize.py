"""Real input sizes: Fashion-MNIST served resized / as RGB, imagefolder with torchvision's pipeline, workers."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from edgecompress.data import ResizedTensorDataset, TransformedSubset, batches, load_dataset
from edgecompress.errors import DataError

# --- Fashion-MNIST at other sizes and as RGB -------------------------------------------------------------------


def test_fmnist_served_as_rgb_at_64(tiny_fmnist: Path) -> None:
    b = load_dataset("fashion-mnist", tiny_fmnist, val_size=40, channels=3, input_size=64)
    assert (b.num_classes, b.in_channels, b.input_size) == (10, 3, 64)
    assert b.sizes() == {"train": 260, "val": 40, "test": 50}
    assert all(isinstance(getattr(b, k), ResizedTensorDataset) for k in ("train", "val", "test"))
    # Memory stays native: one gray plane at 28x28 per image.
    assert b.train.images.shape == (260, 1, 28, 28)  # type: ignore[attr-defined]

    x, y = b.train[0]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])

    xb, yb = next(batches(b.train, 32))
    assert xb.shape == (32, 3, 64, 64) and yb.shape == (32,)
    assert xb.is_contiguous()
    assert torch.equal(xb[:, 0], xb[:, 1]) and torch.equal(xb[:, 0], xb[:, 2])
    per_sample = torch.stack([b.train[i][0] for i in range(32)])
    assert torch.allclose(xb, per_sample, atol=1e-6)
    assert torch.equal(yb, torch.stack([b.train[i][1] for i in range(32)]))

    # A Subset (what val_subset returns) goes through the batch path too, and so does a shuffled pass.
    sub = b.val_subset(25)
    got = torch.cat([x for x, _ in batches(sub, 10)])
    assert got.shape == (25, 3, 64, 64)
    assert torch.allclose(got, torch.stack([b.val[i][0] for i in range(25)]), atol=1e-6)
    shuffled = [(x, y) for x, y in batches(b.train, 100, shuffle=True, seed=4)]
    assert [len(y) for _, y in shuffled] == [100, 100, 60]
    assert all(x.shape[1:] == (3, 64, 64) for x, _ in shuffled)


def test_rgb_keeps_native_normalisation_and_content(tiny_fmnist: Path) -> None:
    native = load_dataset("fashion-mnist", tiny_fmnist, val_size=40)
    rgb = load_dataset("fashion-mnist", tiny_fmnist, val_size=40, channels=3, input_size=56)
    assert isinstance(native.train, TensorDataset)  # native size and channels: the plain fast path
    # Same statistics (those of the native training split), repeated per channel.
    assert torch.equal(rgb.train.images, native.train.tensors[0])  # type: ignore[attr-defined]
    # Served = the native image, bilinearly resized (align_corners=False), on each of the 3 channels.
    x, _ = rgb.test[3]
    expected = torch.nn.functional.interpolate(
        native.test[3][0][None], size=(56, 56), mode="bilinear", align_corners=False
    )[0, 0]
    assert all(torch.allclose(x[c], expected, atol=1e-6) for c in range(3))
    # Class k's bright band (rows 2k+4, 2k+5 at 28) is bright at 56 too (rows 4k+8 .. 4k+11).
    k = int(native.test[3][1])
    assert x[0, 4 * k + 8 : 4 * k + 12].mean() > x[0].mean() + 1


def test_fmnist_downsampled_stays_one_channel(tiny_fmnist: Path) -> None:
    b = load_dataset("fashion-mnist", tiny_fmnist, val_size=40, input_size=14)
    assert (b.in_channels, b.input_size) == (1, 14)
    xb, _ = next(batches(b.test, 8))
    assert xb.shape == (8, 1, 14, 14)
    assert torch.allclose(xb, torch.stack([b.test[i][0] for i in range(8)]), atol=1e-6)


def test_channel_and_stat_errors(tiny_fmnist: Path) -> None:
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", tiny_fmnist, channels=2)
    assert str(err.value) == (
        "channels=2 is not valid for fashion-mnist (1-channel grayscale images): use 1 (native, or leave it unset) "
        "or 3 (the gray plane repeated as RGB)"
    )
    # Checked before any data is looked for.
    with pytest.raises(DataError, match=r"^channels=1 is not valid for cifar10 \(3-channel RGB images\): use 3"):
        load_dataset("cifar10", tiny_fmnist / "nowhere", channels=1)
    with pytest.raises(DataError, match=r"^fashion-mnist: give both mean and std \(one value per served channel, 1\)"):
        load_dataset("fashion-mnist", tiny_fmnist, val_size=40, mean=[0.5])
    with pytest.raises(DataError, match=r"^fashion-mnist: mean must have 3 values, one per RGB channel, got 1"):
        load_dataset("fashion-mnist", tiny_fmnist, val_size=40, channels=3, mean=[0.5], std=[0.5])
    with pytest.raises(DataError, match=r"^input_size must be a whole number of pixels >= 1"):
        load_dataset("fashion-mnist", tiny_fmnist, input_size=0)


# --- imagefolder -------------------------------------------------------------------------------------------------


def write_images(folder: Path, classes: dict[str, int], gray: tuple[str, ...] = (), seed: int = 0) -> Path:
    """``classes[c]`` small PNGs per class folder (sizes vary; classes in ``gray`` saved in 8-bit 'L' mode)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, n in classes.items():
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            h, w = 40 + 3 * i, 48 - 2 * i
            shape = (h, w) if c in gray else (h, w, 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / c / f"{i}.png")
    return folder


@pytest.fixture
def split_folder(tmp_path: Path) -> Path:
    """root/train (3 classes x 4, 'cat' grayscale) + root/test (3 classes x 2, 'cat' grayscale)."""
    root = tmp_path / "imgs"
    write_images(root / "train", {"bird": 4, "cat": 4, "dog": 4}, gray=("cat",))
    write_images(root / "test", {"bird": 2, "cat": 2, "dog": 2}, gray=("cat",), seed=1)
    return root


def test_imagefolder_shapes_classes_and_rgb(split_folder: Path) -> None:
    b = load_dataset("imagefolder", split_folder, val_size=4, input_size=64)
    assert (b.num_classes, b.in_channels, b.input_size) == (3, 3, 64)
    assert b.classes == ("bird", "cat", "dog")
    assert b.sizes() == {"train": 8, "val": 4, "test": 6}
    assert isinstance(b.train, TransformedSubset) and isinstance(b.val, TransformedSubset)
    for split in (b.train, b.val, b.test):
        x, y = split[0]
        assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and y in (0, 1, 2)
    xb, yb = next(batches(b.test, 6))
    assert xb.shape == (6, 3, 64, 64) and yb.tolist() == [0, 0, 1, 1, 2, 2]
    # The grayscale PNGs (class 'cat', test items 2 and 3) come out as 3 channels; with ImageNet's per-channel
    # statistics the channels differ only by the normalisation: undo it and they are equal.
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    raw = xb[2] * std + mean
    assert torch.allclose(raw[0], raw[1], atol=1e-5) and torch.allclose(raw[1], raw[2], atol=1e-5)
    raw_rgb = xb[0] * std + mean
    assert not torch.allclose(raw_rgb[0], raw_rgb[1], atol=1e-2)


def test_imagefolder_default_size_is_224(split_folder: Path) -> None:
    b = load_dataset("imagefolder", split_folder, val_size=4)
    assert b.input_size == 224 and b.val[0][0].shape == (3, 224, 224)


def test_imagefolder_train_is_random_eval_is_deterministic(split_folder: Path) -> None:
    b = load_dataset("imagefolder", split_folder, val_size=4, input_size=32)
    torch.manual_seed(0)
    reads = [b.train[0][0] for _ in range(4)]
    assert any(not torch.equal(reads[0], r) for r in reads[1:])
    assert torch.equal(b.val[1][0], b.val[1][0])
    assert torch.equal(b.test[4][0], b.test[4][0])
    # Same seed, same random crops: training data is reproducible.
    torch.manual_seed(7)
    first = b.train[2][0]
    torch.manual_seed(7)
    assert torch.equal(first, b.train[2][0])


def test_imagefolder_custom_mean_std(split_folder: Path) -> None:
    plain = load_dataset("imagefolder", split_folder, val_size=4, input_size=32, mean=[0, 0, 0], std=[1, 1, 1])
    x = torch.cat([x for x, _ in batches(plain.test, 6)])
    assert x.min() >= 0 and x.max() <= 1 and x.max() > 0.9
    half = load_dataset("imagefolder", split_folder, val_size=4, input_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert torch.allclose(half.test[0][0], plain.test[0][0] * 2 - 1, atol=1e-6)
    imagenet = load_dataset("imagefolder", split_folder, val_size=4, input_size=32)
    assert imagenet.test[0][0].min() < -1.5  # (0 - 0.485) / 0.229 for black pixels: the defaults apply


def test_imagefolder_single_folder_split(tmp_path: Path) -> None:
    root = write_images(tmp_path / "one", {"a": 4, "b": 4, "c": 4}, gray=("b",))
    b = load_dataset("imagefolder", root, val_size=50, input_size=64)
    assert b.sizes() == {"train": 10, "val": 1, "test": 1}
    assert b.classes == ("a", "b", "c")
    assert all(split[0][0].shape == (3, 64, 64) for split in (b.train, b.val, b.test))
    # Disjoint splits over one scan.
    idx = [set(s.indices) for s in (b.train, b.val, b.test)]  # type: ignore[attr-defined]
    assert sum(map(len, idx)) == len(set().union(*idx)) == 12


def test_imagefolder_errors(tmp_path: Path, split_folder: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(DataError) as err:
        load_dataset("imagefolder", missing)
    assert str(err.value).startswith(f"imagefolder: {missing} does not exist. Point --data-dir")

    empty = tmp_path / "empty"
    for c in ("cat", "dog"):
        (empty / c).mkdir(parents=True)
        (empty / c / "notes.txt").write_text("not an image")
    with pytest.raises(DataError) as err:
        load_dataset("imagefolder", empty)
    msg = str(err.value)
    assert msg.startswith(f"imagefolder: no images in {empty}: its class sub-folders (cat, dog) hold no files ")
    assert ".jpg, .jpeg, .png" in msg

    flat = tmp_path / "flat"
    write_images(tmp_path, {"flat": 2})  # images directly in the folder, no class sub-folders
    with pytest.raises(DataError) as err:
        load_dataset("imagefolder", flat)
    assert str(err.value).startswith(
        f"imagefolder: no images in {flat}: it has no class sub-folders (2 images lie directly in it"
    )

    single = write_images(tmp_path / "single", {"cat": 3})
    with pytest.raises(DataError) as err:
        load_dataset("imagefolder", single)
    assert str(err.value).startswith(f"imagefolder: {single} has only one class ('cat'): a classifier needs at least 2")

    with pytest.raises(DataError) as err:
        load_dataset("imagefolder", split_folder, mean=[0.5, 0.5])
    assert str(err.value).startswith("imagefolder: mean must have 3 values, one per RGB channel, got 2: [0.5, 0.5]")
    with pytest.raises(DataError, match=r"^imagefolder: std values must be finite and > 0, got \[0.2, 0.0, 0.2\]"):
        load_dataset("imagefolder", split_folder, std=[0.2, 0.0, 0.2])
    with pytest.raises(DataError, match=r"^channels=1 is not valid for imagefolder \(3-channel RGB images\)"):
        load_dataset("imagefolder", split_folder, channels=1)

    write_images(split_folder / "test", {"eel": 1})
    with pytest.raises(DataError) as err:
        load_dataset("imagefolder", split_folder, val_size=4)
    assert str(err.value).startswith(
        f"imagefolder: {split_folder}/train and {split_folder}/test have different class folders "
        "(only in train: none; only in test: eel)"
    )

    lonely = write_images(tmp_path / "lonely" / "train", {"a": 2, "b": 2}).parent
    with pytest.raises(DataError, match=r"has a train/ folder but no test/"):
        load_dataset("imagefolder", lonely)


def test_imagefolder_workers_match_single_process(split_folder: Path) -> None:
    b = load_dataset("imagefolder", split_folder, val_size=4, input_size=32, workers=2)
    assert b.workers == 2
    before = set(multiprocessing.active_children())
    serial = list(batches(b.val, 2))
    parallel = list(batches(b.val, 2, workers=b.workers))
    assert len(serial) == len(parallel) == 2
    for (xs, ys), (xp, yp) in zip(serial, parallel, strict=True):
        assert torch.equal(xs, xp) and torch.equal(ys, yp)
    assert set(multiprocessing.active_children()) <= before  # exhausted: workers gone

    # Random training transforms in workers are seeded from `seed`: two passes agree.
    one = torch.cat([x for x, _ in batches(b.train, 4, shuffle=True, seed=3, workers=2)])
    two = torch.cat([x for x, _ in batches(b.train, 4, shuffle=True, seed=3, workers=2)])
    assert torch.equal(one, two)

    # Abandoned after one batch: closing the iterator shuts the workers down.
    it = batches(b.train, 2, workers=2)
    next(it)
    assert set(multiprocessing.active_children()) - before
    it.close()
    assert set(multiprocessing.active_children()) <= before


def test_given_normalisation_for_a_model_trained_elsewhere(tiny_fmnist: Path) -> None:
    """mean/std per served channel replace the training split's statistics (native and RGB-served)."""
    raw = load_dataset("fashion-mnist", tiny_fmnist, val_size=40, mean=[0.0], std=[1.0])
    pixels = raw.train.tensors[0]
    assert float(pixels.min()) >= 0.0 and float(pixels.max()) <= 1.0  # x / 255, untouched
    rgb = load_dataset(
        "fashion-mnist", tiny_fmnist, val_size=40, channels=3, input_size=28, mean=[0.1, 0.2, 0.3], std=[0.5, 1, 2]
    )
    x, _ = next(batches(rgb.train, 8))
    assert x.shape == (8, 3, 28, 28)
    gray = pixels[:8, 0]
    for c, (m, s) in enumerate([(0.1, 0.5), (0.2, 1.0), (0.3, 2.0)]):
        assert torch.allclose(x[:, c], (gray - m) / s, atol=1e-6)
    assert torch.allclose(rgb.train[0][0], x[0], atol=1e-6)  # per-sample path agrees
