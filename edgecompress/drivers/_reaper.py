"""A private Ray instance dies with the process that started it, however that process ends.

Ray shares fate with its starter only in part: the kernel kills the GCS server
and the raylet when the starter dies (``PR_SET_PDEATHSIG``), but the raylet's
own children (dashboard and runtime-env agents, which ignore SIGTERM, and the
workers) are not covered, and after a ``kill -9`` of the tool they lived on.

:func:`start` runs this file as a small watchdog (standard library only, run
with ``python -I`` so nothing from the package or the working folder is
imported) before the instance is started. It waits for its parent to go (the
pipe on its stdin reaches EOF, or it is re-parented), then SIGKILLs every
process of the instance until none is left. A process belongs to the instance
when

* its initial environment (``/proc/PID/environ``) holds
  ``EDGECOMPRESS_RAY_INSTANCE=<token>``, which :func:`marking` sets while Ray
  starts (Ray passes its environment on to the raylet, and the raylet to its
  agents and workers; no other process has the token), or
* it is one of Ray's renamed processes (agents and workers call themselves
  ``ray::NAME``; renaming can blank the environment the kernel shows, so the
  token alone misses them) and holds files in the instance's session folder
  (Ray names it ``session_<date>_<pid of the starter>``; only one created
  after the watchdog started counts).

The starter itself is never signalled (at a normal exit it is still alive, and
waits for the watchdog), nor is anything else that merely looks at the session
folder (a shell or a pager in its logs).

It needs ``/proc`` (Linux); elsewhere nothing is started and Ray's own
clean-up is all there is.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

__all__ = ["VARIABLE", "marked", "marking", "start", "stop", "sweep"]

VARIABLE = "EDGECOMPRESS_RAY_INSTANCE"


def _session_dirs(parent: int) -> re.Pattern[str]:
    """Paths of Ray session folders of a starter ``parent`` (``.../session_2026-01-31_12-00-00_123456_PID``)."""
    return re.compile(rf"(/[^\s=:'\"]*session_\d{{4}}-\d\d-\d\d_\d\d-\d\d-\d\d_\d+_{parent})(?![\d])")


def marked(token: str, parent: int, since: float, *, proc: str = "/proc") -> list[int]:
    """The instance's processes (never this one or ``parent``): with ``VARIABLE=token`` in their environment,
    or renamed ``ray::...`` and holding files in a session folder of ``parent`` created at ``since`` or later."""
    entry = f"{VARIABLE}={token}".encode()
    pattern, ours = _session_dirs(parent), {}
    found = []
    for name in os.listdir(proc):
        if not name.isdigit() or int(name) in (os.getpid(), parent):
            continue
        folder = os.path.join(proc, name)
        try:
            with open(os.path.join(folder, "environ"), "rb") as f:
                if entry in f.read().split(b"\0"):
                    found.append(int(name))
                    continue
            with open(os.path.join(folder, "cmdline"), "rb") as f:
                if not f.read(5) == b"ray::":
                    continue
            fds = os.path.join(folder, "fd")
            names = [os.readlink(os.path.join(folder, "cwd"))]
            names += [os.readlink(os.path.join(fds, fd)) for fd in os.listdir(fds)]
        except OSError:  # gone, a zombie, or not ours to read
            continue
        for session in {m.group(1) for text in names for m in pattern.finditer(text)}:
            if session not in ours:
                try:
                    ours[session] = os.stat(session).st_ctime >= since
                except OSError:
                    ours[session] = False
            if ours[session]:
                found.append(int(name))
                break
    return found


def sweep(token: str, parent: int, since: float, *, timeout: float = 20.0) -> int:
    """SIGKILL the marked processes until three looks in a row find none (a dying raylet may still start a
    worker) or ``timeout`` passes; returns how many signals were sent."""
    deadline = time.monotonic() + timeout
    sent, quiet = 0, 0
    while quiet < 3 and time.monotonic() < deadline:
        pids = marked(token, parent, since)
        quiet = 0 if pids else quiet + 1
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                sent += 1
        time.sleep(0.1)
    return sent


def start(token: str) -> subprocess.Popen[bytes] | None:
    """Start the watchdog for ``token``; ``None`` where there is no ``/proc`` to find the processes in."""
    if not os.path.isdir("/proc/self"):
        return None
    return subprocess.Popen(
        [sys.executable, "-I", os.path.abspath(__file__), token, str(os.getpid())],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # out of the terminal's process group: a Ctrl-C meant for the tool spares it
    )


def stop(watchdog: subprocess.Popen[bytes] | None, *, timeout: float = 30.0) -> None:
    """Let the watchdog sweep now (this process is about to end) and wait for it to finish."""
    if watchdog is None or watchdog.stdin is None:
        return
    with contextlib.suppress(OSError):
        watchdog.stdin.write(b"stop\n")  # said, not only EOF: a forked child may hold a copy of the pipe
        watchdog.stdin.close()
    with contextlib.suppress(subprocess.TimeoutExpired):
        watchdog.wait(timeout=timeout)


@contextlib.contextmanager
def marking(token: str) -> Iterator[None]:
    """Set ``VARIABLE=token`` for the processes started inside the block (Ray's), then restore the environment."""
    old = os.environ.get(VARIABLE)
    os.environ[VARIABLE] = token
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(VARIABLE, None)
        else:
            os.environ[VARIABLE] = old


def _main(token: str, parent: int) -> None:
    since = time.time() - 1.0  # the session folder is made after this process started (1 s for clock rounding)
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):  # only the parent's end ends the watch
        signal.signal(sig, signal.SIG_IGN)
    while os.getppid() == parent:  # re-parented: the parent died (a forked child may still hold the pipe)
        ready, _, _ = select.select([0], [], [], 0.5)
        if ready:  # "stop" from the parent, or EOF: it closed the pipe or died
            break
    sweep(token, parent, since)


if __name__ == "__main__":
    _main(sys.argv[1], int(sys.argv[2]))
