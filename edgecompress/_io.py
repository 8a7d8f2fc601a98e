"""Reading and writing the project's JSON files: one place for safe loading and atomic saving."""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "check_foreign_files",
    "check_output",
    "is_png",
    "probe_writable",
    "read_json",
    "replace_atomically",
    "temp_sibling",
    "write_json_atomic",
    "write_text_atomic",
]


def read_json(path: str | os.PathLike[str], what: str, error: type[Exception]) -> Any:
    """Parse ``path``; a missing or malformed file raises ``error`` naming ``what`` it should have been."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{what} {path} is corrupt (not JSON): {exc}") from None


def check_output(path: str | os.PathLike[str], *, folder: bool, error: type[Exception], flag: str = "--out") -> None:
    """Refuse, before any work, an output that cannot be written: a folder that is a file (or the reverse),
    a parent that is a file, a location this process cannot create files in. Leaves nothing behind."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        if folder:
            raise error(f"{flag} {path} is a file, not a folder; choose another {flag}")
        raise error(f"{flag} {path} is a folder; give a file name")
    parent = path if folder else path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise error(f"{flag} {path}: {parent} is a file, so nothing can be written below it")
    problem = probe_writable(parent)
    if problem is not None:
        raise error(
            f"{flag} {path}: cannot create files in {parent} ({problem}); choose an {flag} on a writable file "
            "system, in a folder you may write to"
        )


def check_foreign_files(
    folder: str | os.PathLike[str],
    ours: Iterable[str],
    marker: str,
    *,
    error: type[Exception],
    flag: str = "--out",
) -> None:
    """Refuse a ``folder`` that holds files named as this command's outputs (``ours``) but not the ``marker`` an
    earlier run of it leaves: those are someone else's files, and the run would replace them. Other files in the
    folder are never touched, and a folder of an earlier run (its marker there) resumes as before."""
    folder = Path(folder)
    if not folder.is_dir() or (folder / marker).exists():
        return
    clash = sorted(name for name in ours if (folder / name).exists())
    if clash:
        raise error(
            f"{flag} {folder} holds {', '.join(clash)}, which this command writes, but no {marker} of an earlier "
            f"run there: they are not this tool's, and would be replaced. Choose another {flag}, or move them"
        )


def probe_writable(folder: Path) -> str | None:
    """Why no file can be created in ``folder`` (the OS's words), or ``None`` when one can: a file is created
    and removed again. Permission bits alone do not tell (root passes every ``os.access`` test, and a read-only
    mount or a virtual file system refuses even root)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".edgecompress-probe-", dir=folder)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    os.close(fd)
    os.unlink(name)
    return None


def write_json_atomic(path: str | os.PathLike[str], data: Any, *, indent: int = 2, sort_keys: bool = False) -> Path:
    """Write through a temporary file and a rename, so a crash never leaves half a file."""
    return write_text_atomic(path, json.dumps(data, indent=indent, sort_keys=sort_keys) + "\n")


def temp_sibling(path: str | os.PathLike[str]) -> Path:
    """A fresh hidden name beside ``path`` for writing it atomically (write there, then ``os.replace``): unique
    per call, so it is never a file of the user's (``model.pt.tmp`` could be) nor another writer's."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def replace_atomically(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> Path:
    """``write(tmp)`` a fresh hidden name beside ``path`` (:func:`temp_sibling`), then rename it over ``path``: a
    crash never leaves half a file, and a failed write leaves no temporary file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write text through a temporary file and a rename (a crash never leaves half a file)."""
    return replace_atomically(path, lambda tmp: tmp.write_text(text))


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def is_png(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` starts as a PNG file does (an earlier plot of ours may be replaced, anything else not)."""
    with Path(path).open("rb") as f:
        return f.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE
