"""edgecompress._io: the output check probes the file system instead of trusting permission bits."""

from __future__ import annotations

import errno
import tempfile
from pathlib import Path

import pytest

from edgecompress._io import check_output, probe_writable
from edgecompress.errors import ConfigError


def test_the_probe_creates_and_removes_a_file(tmp_path: Path) -> None:
    assert probe_writable(tmp_path) is None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("code", "words"), [(errno.EROFS, "Read-only file system"), (errno.EACCES, "Permission denied")]
)
def test_an_output_the_probe_cannot_write_is_refused(
    code: int, words: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a read-only mount (EROFS) or a folder the user may not write (EACCES) answers: os.access would pass
    both for root, and os.access says nothing of a read-only mount on some systems."""
    probed: list[Path] = []

    def refuse(*args: object, dir: Path, **kwargs: object) -> tuple[int, str]:
        probed.append(Path(dir))
        raise OSError(code, words)

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    out = tmp_path / "runs" / "a"  # does not exist yet: the nearest existing folder is probed
    with pytest.raises(ConfigError) as err:
        check_output(out, folder=True, error=ConfigError)
    assert str(err.value) == (
        f"--out {out}: cannot create files in {tmp_path} ({words}); choose an --out on a writable file system, "
        "in a folder you may write to"
    )
    assert probed == [tmp_path]
    with pytest.raises(ConfigError, match=rf"--model-out {tmp_path}/m.onnx: cannot create files in {tmp_path}"):
        check_output(tmp_path / "m.onnx", folder=False, error=ConfigError, flag="--model-out")
    assert list(tmp_path.iterdir()) == []


def test_a_writable_output_passes_and_nothing_is_left(tmp_path: Path) -> None:
    check_output(tmp_path / "new" / "run", folder=True, error=ConfigError)
    check_output(tmp_path / "m.onnx", folder=False, error=ConfigError)
    assert list(tmp_path.iterdir()) == []
