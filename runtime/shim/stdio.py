"""A container process's stdio: FIFOs, log files, logger binaries and ptys, as containerd names them.

Each of stdin/stdout/stderr is given as a string:

* ``""``: nothing; the process gets /dev/null.
* a plain path: a FIFO the daemon created. The shim gives the process pipes
  and pumps between them and the FIFOs. Output FIFOs are opened like
  containerd does, read end first and both non-blocking, and the read end is
  kept so the output is buffered while the daemon's reader is away. A stdin
  FIFO ends when its writer closes it (or on CloseIO).
* ``file:///path``: output appended to a file, handed to the process directly.
* ``binary:///path?k=v``: a logger program started with the read ends of the
  stdout/stderr pipes as fds 3 and 4 and a readiness pipe as fd 5 (closed by the
  logger when it is ready); its arguments are the query's keys and values.

With a terminal, runc passes the pty master through a console socket and the
shim pumps stdin into it and its output to stdout; stderr is unused.
``IoUid``/``IoGid`` own the pipes, so a process in a user namespace can reopen them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from wharfd.runtime import errors
from wharfd.runtime.shim.pump import Pump
from wharfd.runtime.shim.reaper import Reaper
from wharfd.runtime.shim.runc import read_all


@dataclass(frozen=True)
class Stdio:
    """The stdio strings of a process, as the Task API carries them."""

    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False


@dataclass
class Owner:
    """Who owns the pipes (IoUid/IoGid); -1 keeps the shim's."""

    uid: int = -1
    gid: int = -1


@dataclass
class ProcessIO:
    """The shim's side of a process's stdio; :meth:`open` builds it."""

    stdio: Stdio
    runc_fds: tuple[int, int, int] = (-1, -1, -1)
    master: int = -1
    _handed: list[int] = field(default_factory=list)  # container ends: closed once runc has them
    _owned: list[int] = field(default_factory=list)  # FIFO keep-alives, closed at the end
    _outputs: list[Pump] = field(default_factory=list)
    _stdin: Pump | None = None
    _stdin_fd: int = -1

    @classmethod
    async def open(
        cls, stdio: Stdio, *, owner: Owner, reaper: Reaper, env: dict[str, str] | None = None
    ) -> ProcessIO:
        """Open the stdio of a process about to be created (stdio paths are checked here)."""
        io = cls(stdio)
        try:
            if stdio.terminal:
                io.runc_fds = (io._null(), io._null(), io._null())
            else:
                stdin = io._input(stdio.stdin, owner)
                stdout, stderr = await io._outputs_for(owner, reaper, env or {})
                io.runc_fds = (stdin, stdout, stderr)
        except BaseException:
            io.close()
            raise
        return io

    def handed_over(self) -> None:
        """runc has started the process: drop the shim's copies of its ends."""
        for fd in self._handed:
            _close(fd)
        self._handed.clear()

    def attach_console(self, master: int) -> None:
        """Pump between the pty master and the stdin/stdout FIFOs."""
        self.master = master
        if self.stdio.stdout:
            out = _open_output_fifo(self.stdio.stdout, self._owned)
            self._outputs.append(Pump(master, out, close_src=False))
        if self.stdio.stdin:
            src = _open_input_fifo(self.stdio.stdin)
            self._stdin = Pump(src, os.dup(master))

    def close_stdin(self) -> None:
        """CloseIO: the process sees end of file on stdin (buffered input is dropped)."""
        if self._stdin is not None:
            self._stdin.stop()
        if self._stdin_fd >= 0:
            _close(self._stdin_fd)
            self._stdin_fd = -1

    async def drained(self) -> None:
        """Return once the output copies have reached the end (a leftover child may hold them open)."""
        for pump in self._outputs:
            await asyncio.shield(pump.done)

    def close(self) -> None:
        """Stop every copy and close every fd the shim holds for this process."""
        for pump in self._outputs:
            pump.stop()
        self.close_stdin()
        self.handed_over()
        for fd in self._owned:
            _close(fd)
        self._owned.clear()
        if self.master >= 0:
            _close(self.master)
            self.master = -1

    # -- building the pieces --------------------------------------------------------------

    def _null(self) -> int:
        fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self._handed.append(fd)
        return fd

    def _input(self, path: str, owner: Owner) -> int:
        if not path:
            return self._null()
        if _scheme(path):
            raise errors.InvalidArgument(f"stdin {path!r}: only a FIFO path is supported for stdin")
        r, w = _pipe(owner)
        self._handed.append(r)
        self._stdin_fd = w
        self._stdin = Pump(_open_input_fifo(path), w, on_eof=self._stdin_ended)
        return r

    def _stdin_ended(self) -> None:
        self._stdin_fd = -1  # the pump closed it

    async def _outputs_for(self, owner: Owner, reaper: Reaper, env: dict[str, str]) -> tuple[int, int]:
        out, err = self.stdio.stdout, self.stdio.stderr
        if _scheme(out) == "binary" or _scheme(err) == "binary":
            return await self._logger(out or err, owner, reaper, env)
        files: dict[str, int] = {}
        return self._output(out, owner, files), self._output(err, owner, files)

    def _output(self, target: str, owner: Owner, files: dict[str, int]) -> int:
        if not target:
            return self._null()
        scheme = _scheme(target)
        if scheme == "file":
            path = urlsplit(target).path
            if path not in files:
                os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
                files[path] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
                self._handed.append(files[path])
            return files[path]
        if scheme:
            raise errors.InvalidArgument(f"stdio {target!r}: unsupported scheme {scheme!r}")
        r, w = _pipe(owner)
        self._handed.append(w)
        self._outputs.append(Pump(r, _open_output_fifo(target, self._owned)))
        return w

    async def _logger(self, uri: str, owner: Owner, reaper: Reaper, env: dict[str, str]) -> tuple[int, int]:
        parts = urlsplit(uri)
        args = [item for pair in parse_qsl(parts.query, keep_blank_values=True) for item in pair if item]
        out_r, out_w = _pipe(owner)
        err_r, err_w = _pipe(owner)
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        self._handed += [out_w, err_w]
        try:
            reaper.spawn(
                [parts.path, *args],
                stdio=(self._null(), self._null(), self._null()),
                extra_fds=(out_r, err_r, ready_w),
                env={**reaper.env, **env},
            )
        finally:
            for fd in (out_r, err_r, ready_w):
                os.close(fd)
        async with asyncio.timeout(10):  # the logger closes fd 5 once it is ready
            await read_all(ready_r)
        return out_w, err_w


def _scheme(target: str) -> str:
    return urlsplit(target).scheme if "://" in target else ""


def _pipe(owner: Owner) -> tuple[int, int]:
    r, w = os.pipe2(os.O_CLOEXEC)
    if owner.uid >= 0 or owner.gid >= 0:
        for fd in (r, w):
            os.fchown(fd, owner.uid, owner.gid)
    return r, w


def _open_output_fifo(path: str, keep: list[int]) -> int:
    # Opening the read end first lets the non-blocking write open succeed with no reader yet.
    try:
        reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise errors.NotFound(f"stdio FIFO {path!r} does not exist") from exc
    keep.append(reader)
    return os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)


def _open_input_fifo(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise errors.NotFound(f"stdin FIFO {path!r} does not exist") from exc


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
