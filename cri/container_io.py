"""Container stdio: FIFOs the shim writes, copied by the daemon into the CRI log file.

Layout, in the container's volatile directory (``state.container_state_dir(id)``)::

    io/stdout   FIFO  the shim writes the process's stdout here (the pty's output with a tty)
    io/stderr   FIFO  (absent with a tty)
    io/stdin    FIFO  only when the config asks for stdin
    io/stdout.partial, io/stderr.partial   an unfinished last line not yet in the log

Why nothing is lost across a daemon restart (even SIGKILL): a pipe keeps its
bytes while any process has it open, and the daemon's own read ends die with
it. So a detached keeper process (:mod:`wharfd.cri.fifo_keeper`) holds a read
end of each output FIFO from before the task exists until the output has been
read to its end; shims may close theirs (the stock runc shim does once the
process has exited) without the pipe going away. While nobody reads, a full
pipe blocks the writer: back-pressure, not loss. A restarted daemon reopens
the FIFOs (:func:`reattach_all`) before anything may delete a task, and goes
on reading where the pipe stands. What the daemon
had read is either in the log file (complete entries are written at once) or
in the ``.partial`` file, which seeds the next reader. The remaining window is
the instant between a ``read`` and its ``write``.

Reads happen on the event loop, at most :data:`CHUNK` bytes per callback, so a
chatty container cannot starve the API; log writes are small appends to the
page cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.cri import fifo_keeper
from wharfd.cri.logs import STDERR, STDOUT, LineSplitter, LogFile
from wharfd.runtime import errors
from wharfd.runtime.tasks.task import IO

if TYPE_CHECKING:
    from wharfd.cri.store import Container, CriState

log = logging.getLogger("wharfd.cri.io")

CHUNK = 1 << 16
IO_DIR = "io"
DRAIN_TIMEOUT = 5.0


def max_line_size(config: dict[str, object]) -> int:
    """``max_container_log_line_size`` from the CRI config (-1 or 0: no limit)."""
    value = config.get("max_container_log_line_size", 16384)
    return int(value) if isinstance(value, int) else 16384


class FifoReader:
    """Reads a non-blocking FIFO on the event loop, handing each chunk to ``on_data`` and EOF to ``on_eof``."""

    def __init__(self, fd: int, on_data: Callable[[bytes], None], on_eof: Callable[[], None]) -> None:
        self._fd = fd
        self._on_data = on_data
        self._on_eof = on_eof
        self._loop = asyncio.get_running_loop()
        self.done = asyncio.Event()
        self._started = False

    def start(self) -> None:
        """Begin reading (only once a writer has opened the FIFO: with none, a read means EOF)."""
        if not self._started and self._fd >= 0:
            self._started = True
            self._loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            log.warning("reading container output: %s", exc)
            data = b""
        if data:
            self._on_data(data)
            return
        self.close()
        self.done.set()
        self._on_eof()

    def close(self) -> None:
        """Stop reading and close the fd (idempotent); EOF is not reported."""
        if self._fd >= 0:
            if self._started:
                self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1


class LogCopier:
    """One stream of a container: FIFO → :class:`LineSplitter` → :class:`LogFile`, with the partial line saved."""

    def __init__(
        self, fd: int, splitter: LineSplitter, sink: LogFile, partial: Path, on_done: Callable[[], None]
    ) -> None:
        self.splitter = splitter
        self.sink = sink
        self._partial = partial
        self._saved = len(splitter.pending)
        self._on_done = on_done
        self.reader = FifoReader(fd, self._data, self._eof)

    def _data(self, data: bytes) -> None:
        self._write(self.splitter.feed(data))
        # Entries first, then the unfinished line: a crash in between repeats a fragment, never drops one.
        pending = self.splitter.pending
        if pending or self._saved:
            try:
                _replace_small(self._partial, pending)
                self._saved = len(pending)
            except OSError as exc:
                log.warning("%s: %s", self._partial, exc)

    def _eof(self) -> None:
        self._write(self.splitter.finish())
        with contextlib.suppress(FileNotFoundError):
            self._partial.unlink()
        self._on_done()

    def _write(self, entries: bytes) -> None:
        try:
            self.sink.write(entries)
        except OSError as exc:  # keep draining the container's output even if the log is gone
            log.error("writing container log %s: %s", self.sink.path, exc)


def _arm_hangup(path: Path) -> None:
    """Make end of file visible to a reader that opened a FIFO whose writers may already be gone.

    Linux reports hang-up on a FIFO only after a writer connected since the
    reader opened it; a restarted daemon may find the shim's writer closed
    already, and would wait forever after the last byte. Connecting (and
    leaving) as a writer once counts as that writer; a live writer is unaffected.
    """
    os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC))


def _replace_small(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


class ContainerIO:
    """The FIFOs of one container and, once its task exists, the copies into its log file."""

    def __init__(self, directory: Path, *, terminal: bool, stdin: bool, log_path: str, max_line: int) -> None:
        self.directory = directory
        self.terminal = terminal
        self.stdin = stdin
        self.log_path = log_path
        self.max_line = max_line
        self._fds: dict[str, int] = {}
        self._stdin_fd = -1
        self.copiers: list[LogCopier] = []
        self.sink: LogFile | None = None

    # -- paths --------------------------------------------------------------------------------

    def _path(self, name: str) -> Path:
        return self.directory / name

    def streams(self) -> tuple[str, ...]:
        """The output streams this container has (only stdout with a terminal)."""
        return (STDOUT,) if self.terminal else (STDOUT, STDERR)

    def task_io(self) -> IO:
        """The stdio paths for the task's Create."""
        return IO(
            stdin=str(self._path("stdin")) if self.stdin else "",
            stdout=str(self._path(STDOUT)),
            stderr="" if self.terminal else str(self._path(STDERR)),
            terminal=self.terminal,
        )

    # -- life cycle ---------------------------------------------------------------------------

    def open(self, *, create: bool) -> None:
        """Make (``create``) and open the FIFOs: output read ends, and stdin held open for writers; blocking.

        Opened before the task exists, so the pipes are held from the first byte.
        NotFound when ``create`` is false and a FIFO is missing. The keeper that
        holds them across a daemon restart is :meth:`keep`'s.
        """
        try:
            if create:
                self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            names = [*self.streams(), *(("stdin",) if self.stdin else ())]
            for name in names:
                path = self._path(name)
                if create and not path.exists():
                    os.mkfifo(path, 0o600)
                if name == "stdin":
                    # Read-write: the process does not see end of file while nobody is attached.
                    self._stdin_fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
                else:
                    self._fds[name] = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                    if not create:
                        _arm_hangup(path)
        except FileNotFoundError as exc:
            self._close_fds()
            raise errors.NotFound(f"container io {exc.filename}: FIFO missing") from exc
        except BaseException:
            self._close_fds()
            raise

    def keep(self) -> None:
        """Start the FIFO keeper unless one holds these FIFOs already (blocking; logs a failure).

        Its own process, so a few milliseconds: StartContainer runs it beside the
        task's creation. It only matters once the daemon itself may go away, and
        a start the daemon did not finish is not resumed after a restart anyway.
        """
        if not fifo_keeper.alive(self.directory):
            fifo_keeper.start(self.directory, [self._path(name) for name in self.streams()])

    async def start_copying(self) -> None:
        """Open the log file and copy every stream into it (call once the shim has opened the FIFOs)."""
        sink, pending = await asyncio.to_thread(self._open_log)
        self.sink = sink
        for name in self.streams():
            splitter = LineSplitter(name, self.max_line, pending.get(name, b""))
            partial = self._path(f"{name}.partial")
            copier = LogCopier(self._fds.pop(name), splitter, sink, partial, self._stream_done)
            self.copiers.append(copier)
            copier.reader.start()

    def _stream_done(self) -> None:
        log.debug("%s: a stream ended; still copying: %s", self.directory, self.copying)
        if not self.copying:
            # Everything was read: the pipes need no keeping any more (a quick /proc read and a kill).
            fifo_keeper.stop(self.directory)

    def _open_log(self) -> tuple[LogFile, dict[str, bytes]]:
        pending: dict[str, bytes] = {}
        for name in self.streams():
            with contextlib.suppress(FileNotFoundError):
                pending[name] = self._path(f"{name}.partial").read_bytes()
        return LogFile(self.log_path), pending

    async def reopen_log(self) -> None:
        """Continue in a fresh log file at the same path (the swap happens on the loop, between writes)."""
        sink = self.sink
        if sink is None or sink.closed or not self.copying:
            raise errors.FailedPrecondition(
                f"log {self.log_path}: the container's output is not being copied"
            )
        fd = await asyncio.to_thread(sink.open_path)
        sink.reopen(fd)

    @property
    def copying(self) -> bool:
        """Whether some stream is still being copied."""
        return any(not c.reader.done.is_set() for c in self.copiers)

    async def drained(self, timeout: float = DRAIN_TIMEOUT) -> bool:
        """Wait until every stream reached end of file (the shim closed it); False on timeout."""
        waits = [c.reader.done.wait() for c in self.copiers]
        if not waits:
            return True
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*waits)
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        """Stop copying and close every fd; an unfinished line stays in its ``.partial`` file."""
        for copier in self.copiers:
            copier.reader.close()
        self._close_fds()
        if self.sink is not None:
            self.sink.close()

    def _close_fds(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        if self._stdin_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._stdin_fd)
            self._stdin_fd = -1

    def remove(self) -> None:
        """Close everything, stop the keeper and delete the FIFO directory (blocking)."""
        self.close()
        fifo_keeper.stop(self.directory)
        shutil.rmtree(self.directory, ignore_errors=True)


def for_container(state: CriState, container: Container) -> ContainerIO:
    """A (not yet opened) ContainerIO for ``container`` as its config describes it."""
    config = container.metadata.config
    return ContainerIO(
        state.container_state_dir(container.id) / IO_DIR,
        terminal=config.tty,
        stdin=config.stdin,
        log_path=container.metadata.log_path,
        max_line=max_line_size(state.config),
    )


async def release(state: CriState, container_id: str) -> None:
    """Stop copying a container's output and remove its FIFOs (RemoveContainer)."""
    io = state.ios.pop(container_id, None)
    if io is None:
        io = ContainerIO(state.container_state_dir(container_id) / IO_DIR, terminal=False, stdin=False,
                         log_path="", max_line=0)  # fmt: skip
    await asyncio.to_thread(io.remove)


async def reattach_all(state: CriState) -> None:
    """After a restart: resume copying the output of every container that still has a task.

    Call after :func:`wharfd.cri.store.recover` and before exits are handled,
    so no task is deleted (dropping the shim's FIFO ends) before its output is read.
    A container without a task keeps no pipe; its saved partial lines are flushed.
    """
    for container in state.containers.list():
        if container.id in state.ios or not container.status.started_at:
            continue
        io = for_container(state, container)
        if not io.directory.is_dir():
            log.debug("container %s: no FIFOs at %s", container.id, io.directory)
            continue
        try:
            # Only a task's shim or a keeper can still hold output; otherwise the pipes are gone.
            if state.task(container.id) is None and not await asyncio.to_thread(
                fifo_keeper.alive, io.directory
            ):
                await asyncio.to_thread(_flush_partials, io)
                continue
            await asyncio.to_thread(io.open, create=False)
            await asyncio.to_thread(io.keep)
            await io.start_copying()
        except (OSError, errors.WharfError) as exc:
            log.error("container %s: cannot resume copying its output: %s", container.id, exc)
            io.close()
            continue
        state.ios[container.id] = io
        log.info("container %s: copying its output again", container.id)


async def reopen_container_log(
    state: CriState, request: cri.ReopenContainerLogRequest
) -> cri.ReopenContainerLogResponse:
    """Handle ReopenContainerLog: only a running container's log is reopened (else no file is created)."""
    container = state.containers.get(request.container_id)
    if container.status.state() != cri.CONTAINER_RUNNING:
        raise errors.FailedPrecondition(
            f'container "{container.id}": not running, its log cannot be reopened'
        )
    io = state.ios.get(container.id)
    if io is None or not io.log_path:
        raise errors.FailedPrecondition(f'container "{container.id}": has no log being written')
    await io.reopen_log()
    return cri.ReopenContainerLogResponse()


def _flush_partials(io: ContainerIO) -> None:
    """Write lines left unfinished by a previous run as partial entries (the pipe is gone)."""
    sink = LogFile(io.log_path)
    try:
        for name in io.streams():
            path = io.directory / f"{name}.partial"
            try:
                pending = path.read_bytes()
            except FileNotFoundError:
                continue
            sink.write(LineSplitter(name, io.max_line, pending).finish())
            path.unlink()
    finally:
        sink.close()
