"""One process per run folder: an exclusive advisory lock that dies with its process.

Two searches writing one run folder interleave their episode logs and then
truncate each other on resume. :func:`run_folder_lock` takes ``RUN/.lock``
with ``fcntl.flock`` (released by the kernel when the holder exits, kill -9
included, so a stale lock cannot block a later run) and refuses a second
process with the holder's pid. Where ``fcntl`` does not exist (Windows) the
lock is not taken.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from edgecompress._io import check_output
from edgecompress.errors import ConfigError

__all__ = ["run_folder_lock"]


@contextlib.contextmanager
def run_folder_lock(run_dir: str | os.PathLike[str]) -> Iterator[None]:
    """Hold ``RUN/.lock`` for the block. A folder this call created and the block left empty (a run that failed
    before writing anything) is removed again, so bad input leaves nothing behind."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    check_output(run_dir, folder=True, error=ConfigError)
    path = Path(run_dir) / ".lock"
    created = not path.parent.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with path.open("a+") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "unknown"
                raise ConfigError(
                    f"run folder {run_dir} is in use by another edgecompress process (pid {holder}); wait for it "
                    "to finish, or use another --out"
                ) from None
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    finally:
        if created and {p.name for p in path.parent.iterdir()} <= {".lock"}:
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                path.parent.rmdir()
