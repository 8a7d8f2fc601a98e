"""The watchdog that makes a private Ray die with the tool (edgecompress.drivers._reaper), without Ray."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edgecompress.drivers import _reaper

pytestmark = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux's /proc")


def _gone(pid: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def test_marked_processes_are_found_and_swept(tmp_path: Path) -> None:
    """The token in a process's environment marks it; the starter and unmarked processes are never touched."""
    token = "t" + os.urandom(4).hex()
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    marked = subprocess.Popen(sleeper, env={**os.environ, _reaper.VARIABLE: token})
    other = subprocess.Popen(sleeper, env={**os.environ, _reaper.VARIABLE: token + "x"})
    try:
        assert _reaper.marked(token, os.getpid(), time.time()) == [marked.pid]
        assert _reaper.sweep(token, os.getpid(), time.time(), timeout=10) == 1
        assert marked.wait(timeout=10) == -signal.SIGKILL and other.poll() is None
    finally:
        for p in (marked, other):
            p.kill()
            p.wait()


def test_a_renamed_process_in_the_starters_session_folder_is_found(tmp_path: Path) -> None:
    """Ray's agents rename themselves ("ray::...") and the kernel may then show a blank environment: they are
    found by the session folder they hold files in (named after the starter, made after the watchdog began)."""
    parent = 424242
    session = tmp_path / f"session_2026-01-31_12-00-00_123456_{parent}"
    (session / "logs").mkdir(parents=True)
    code = textwrap.dedent(f"""
        import time
        f = open({str(session / "logs" / "agent.out")!r}, "w")
        print("ready", flush=True)
        time.sleep(60)
    """)
    # exec -a gives the process the command line Ray's setproctitle gives its agents
    agent = subprocess.Popen(["bash", "-c", f'exec -a "ray::Agent" {sys.executable} -c "$0"', code],
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert agent.stdout is not None and agent.stdout.readline().strip() == "ready"
        since = time.time() - 60
        assert agent.pid in _reaper.marked("no-token", parent, since)
        assert agent.pid not in _reaper.marked("no-token", parent + 1, since)  # another starter's session
        assert agent.pid not in _reaper.marked("no-token", parent, time.time() + 60)  # an older session folder
    finally:
        agent.kill()
        agent.wait()


def test_the_watchdog_kills_the_marked_processes_when_its_parent_is_killed(tmp_path: Path) -> None:
    """The tool (here a small stand-in) starts the watchdog and a marked child, then dies by SIGKILL."""
    token = "t" + os.urandom(4).hex()  # unique: another test run on this machine has its own
    code = textwrap.dedent(f"""
        import subprocess, sys, time
        from edgecompress.drivers import _reaper
        watchdog = _reaper.start({token!r})
        with _reaper.marking({token!r}):
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
        print(watchdog.pid, child.pid, flush=True)
        time.sleep(60)
    """)
    tool = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert tool.stdout is not None
    watchdog, child = map(int, tool.stdout.readline().split())
    assert not _gone(child, timeout=0.5)
    tool.send_signal(signal.SIGKILL)
    tool.wait()
    assert _gone(child) and _gone(watchdog), "the marked child outlived the tool"


def test_a_normal_exit_waits_for_the_sweep() -> None:
    """At a normal exit the tool asks for the sweep and waits for it, even while a forked child of the tool
    (a data-loader worker, say) still holds a copy of the watchdog's pipe."""
    token = "t" + os.urandom(4).hex()
    code = textwrap.dedent(f"""
        import os, subprocess, sys, time
        from edgecompress.drivers import _reaper
        watchdog = _reaper.start({token!r})
        with _reaper.marking({token!r}):
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
        forked = os.fork()
        if forked == 0:  # keeps the pipe to the watchdog, not the test's output pipes
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1), os.dup2(null, 2)
            time.sleep(30)
            os._exit(0)
        started = time.monotonic()
        _reaper.stop(watchdog)
        print(child.pid, forked, watchdog.returncode, round(time.monotonic() - started), flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    child, forked, watchdog_code, seconds = map(int, done.stdout.split())
    os.kill(forked, signal.SIGKILL)
    assert done.returncode == 0 and watchdog_code == 0 and seconds < 10 and _gone(int(child), timeout=1)
