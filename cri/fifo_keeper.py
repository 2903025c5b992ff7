"""A detached process that keeps a container's output FIFOs alive while the daemon is away.

A FIFO's buffered bytes live only as long as some process has it open. The
daemon's read ends die with the daemon, and the stock containerd-shim-runc-v2
closes its own ends as soon as the container's output is copied (the process
exited), so output written while the daemon restarts would vanish with the
pipe. A keeper is ``sleep infinity``, started in its own session with read
ends of the FIFOs and orphaned at once (so nobody has to reap it), that never
reads: the pipe, and what is in it, lasts until the restarted daemon has read
it. It is stopped once the output reached end of file or the container is
removed.

Its pid and start time are recorded (``keeper.pid`` beside the FIFOs), so a
later daemon stops exactly that process and never a reused pid.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("wharfd.cri.io")

RECORD = "keeper.pid"
SLEEP = shutil.which("sleep") or "/bin/sleep"
SHELL = "/bin/sh"


def _start_time(pid: int) -> str:
    """Field 22 of /proc/<pid>/stat (after the parenthesised command name), "" when gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return ""
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else ""


def alive(directory: Path) -> bool:
    """Whether the keeper recorded in ``directory`` still runs (blocking)."""
    return _recorded(directory) is not None


def _recorded(directory: Path) -> int | None:
    try:
        pid_text, start = (directory / RECORD).read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    return pid if start and _start_time(pid) == start else None


def start(directory: Path, fifos: Sequence[Path]) -> None:
    """Start a keeper holding ``fifos`` open and record it in ``directory`` (blocking; logs failures)."""
    if not os.access(SLEEP, os.X_OK):
        log.warning("no %s: container output is not kept across a daemon restart", SLEEP)
        return
    fds: list[int] = []
    try:
        fds = [os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC) for p in fifos]
        # The shell backgrounds the sleep (its stdio on /dev/null, so only the shell writes the pid
        # to our pipe) and exits: the sleep is orphaned and init reaps it.
        done = subprocess.run(
            [SHELL, "-c", f"{SLEEP} infinity </dev/null >/dev/null 2>&1 & echo $!"],
            pass_fds=fds,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            check=True,
            timeout=10,
        )
        pid = int(done.stdout.decode().strip())
        (directory / RECORD).write_text(f"{pid} {_start_time(pid)}\n")
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        log.warning(
            "%s: cannot start the FIFO keeper (%s); output is not kept across a restart", directory, exc
        )
    finally:
        for fd in fds:
            os.close(fd)


def stop(directory: Path) -> None:
    """Stop the keeper recorded in ``directory``, if it is still that process (blocking)."""
    pid = _recorded(directory)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(FileNotFoundError):
        (directory / RECORD).unlink()


def stop_under(base: Path) -> list[int]:
    """Stop every keeper holding a FIFO under ``base`` (test and node clean-up); the pids stopped."""
    stopped: list[int] = []
    prefix = str(base).rstrip("/") + "/"
    want = f"{SLEEP}\0infinity\0".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "cmdline").read_bytes() != want:
                continue
            targets = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except OSError:
            continue
        if any(t.startswith(prefix) for t in targets):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
            stopped.append(int(entry.name))
    return stopped
