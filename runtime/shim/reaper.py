"""The one owner of ``waitpid(-1)`` in the shim, and the only way the shim starts programs.

The shim is a child subreaper: container processes whose runc parent exits
are re-parented to it, and so are their orphans when the container shares the
host pid namespace. Exactly one place may collect exit statuses, or they get
stolen: asyncio's subprocess watchers and ``Popen.wait`` call ``waitpid`` on
their own pids and would race with a ``waitpid(-1)``. So every child is
started with :meth:`Reaper.spawn` (``posix_spawn``, no Popen object) and every
exit arrives through :meth:`Reaper.reap`, run on the event loop for SIGCHLD.

Exits are fanned out by pid. A pid only becomes known after runc has started
the process, and the process may already be dead by then; a caller that is
about to learn a pid opens a :meth:`Reaper.subscribe` window first, which
records every exit while it is open, so that exit is found there instead of
being dropped as the exit of a stranger.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import signal
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

log = logging.getLogger("wharfd.shim.reaper")

# Dispositions a child must not inherit: Python ignores SIGPIPE, and ignored
# signals survive execve into runc and from there into the container.
_RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD, signal.SIGINT, signal.SIGTERM)
_HIGH_FD = 64


@dataclass(frozen=True)
class Exit:
    """A reaped child: its pid, containerd-style status (128+signal if killed), and when (ns)."""

    pid: int
    status: int
    at_ns: int


def exit_status(wait_status: int) -> int:
    """The status containerd reports: the exit code, or 128 + the signal that killed it."""
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


def resolve(name: str, env: Mapping[str, str]) -> str:
    """The program ``name`` runs: itself if it has a slash, else looked up on ``env``'s PATH."""
    if "/" in name:
        return name
    found = shutil.which(name, path=env.get("PATH", os.defpath))
    if found is None:
        raise FileNotFoundError(f"{name}: executable file not found in $PATH")
    return found


class Reaper:
    """Collects every child exit and hands it to whoever waits for that pid."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        """Create a reaper; call :meth:`install` from the running loop.

        ``env`` is the environment of the programs it starts (default: this process's).
        """
        self.env = dict(os.environ if env is None else env)
        self._waiters: dict[int, asyncio.Future[Exit]] = {}
        self._windows: list[dict[int, Exit]] = []

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Reap on SIGCHLD from now on (and once now, for children that died before)."""
        loop.add_signal_handler(signal.SIGCHLD, self.reap)
        self.reap()

    def reap(self) -> None:
        """Collect all exited children without blocking and dispatch their exits."""
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._dispatch(Exit(pid, exit_status(wait_status), time.time_ns()))

    def watch(self, pid: int) -> asyncio.Future[Exit]:
        """A future resolved with ``pid``'s exit. Register it before the next loop iteration."""
        future = self._waiters.get(pid)
        if future is None or future.done():
            future = asyncio.get_running_loop().create_future()
            self._waiters[pid] = future
        return future

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[dict[int, Exit]]:
        """A window recording every exit (by pid) while open; see the module docstring."""
        window: dict[int, Exit] = {}
        self._windows.append(window)
        try:
            yield window
        finally:
            self._windows.remove(window)

    def spawn(
        self,
        argv: Sequence[str],
        *,
        stdio: Sequence[int],
        extra_fds: Sequence[int] = (),
        env: Mapping[str, str] | None = None,
        new_session: bool = False,
        program: str | None = None,
    ) -> tuple[int, asyncio.Future[Exit]]:
        """Start ``argv`` and return (pid, its exit future).

        The file run is ``program`` if given, else ``argv[0]`` looked up on the
        environment's PATH. ``stdio`` are the fds for 0, 1 and 2; ``extra_fds``
        become 3, 4, …. No other descriptor is inherited (the shim opens
        everything close-on-exec).
        """
        env = self.env if env is None else env
        program = program or resolve(argv[0], env)
        sources = [*stdio, *extra_fds]
        # Copy sources above every target first, so no dup2 clobbers a source still needed.
        temps = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD) for fd in sources]
        try:
            actions = [(os.POSIX_SPAWN_DUP2, temp, target) for target, temp in enumerate(temps)]
            pid = os.posix_spawn(
                program,
                list(argv),
                dict(env),
                file_actions=actions,
                setsid=new_session,
                setsigdef=_RESET_SIGNALS,
                setsigmask=(),
            )
        finally:
            for temp in temps:
                os.close(temp)
        return pid, self.watch(pid)

    def _dispatch(self, exit_: Exit) -> None:
        for window in self._windows:
            window[exit_.pid] = exit_
        future = self._waiters.pop(exit_.pid, None)
        if future is not None and not future.done():
            future.set_result(exit_)
        elif not self._windows:
            log.debug("reaped pid %d (status %d) that nobody waited for", exit_.pid, exit_.status)
