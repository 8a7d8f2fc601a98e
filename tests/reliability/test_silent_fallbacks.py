"""A mistyped path is an error naming it, never a silent substitute (issue 23, silent fallbacks)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecompress.cli import main


def test_a_mistyped_checkpoint_is_an_error_not_a_new_model(tmp_path: Path, fmnist, capsys) -> None:  # type: ignore[no-untyped-def]
    # configs/lenet5-fmnist.yaml trains its base model when missing; a path typed on the command line must exist.
    typo = tmp_path / "lenet-typo.pt"
    config = Path(__file__).resolve().parents[2] / "configs" / "lenet5-fmnist.yaml"
    args = ["search", "--config", str(config), "--checkpoint", str(typo), "--out", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as done:
        main(args)
    err = capsys.readouterr().err
    assert done.value.code == 2 and "Traceback" not in err
    assert f"base checkpoint {typo} does not exist" in err.replace("\n", "") and "--train-if-missing" in err
    assert not typo.exists()


def test_a_named_data_folder_is_used_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmnist) -> None:  # type: ignore[no-untyped-def]
    from edgecompress.data import load_dataset
    from edgecompress.errors import DataError

    with pytest.raises(DataError, match=r"--data-dir /nonexistent: no such folder \(looked in /nonexistent, "):
        load_dataset("fashion-mnist", "/nonexistent")
    with pytest.raises(DataError, match=f"--data-dir {tmp_path}: no Fashion-MNIST idx files there"):
        load_dataset("fashion-mnist", tmp_path)
    monkeypatch.setenv("EDGECOMPRESS_DATA", "/nonexistent")
    with pytest.raises(DataError, match=r"\$EDGECOMPRESS_DATA /nonexistent: no such folder"):
        load_dataset("fashion-mnist")


def test_an_unknown_precision_is_refused_on_every_device_path(capsys) -> None:  # type: ignore[no-untyped-def]
    for device in ("raspberry-pi-4", "host"):  # a device model, a measured table
        with pytest.raises(SystemExit) as done:
            main(["latency", "--model", "lenet5", "--device", device, "--precision", "int9"])
        err = capsys.readouterr().err
        assert done.value.code == 2 and "precision 'int9' is not one of fp32, fp16, int8" in err
