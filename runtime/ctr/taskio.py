"""Client-side task I/O for ``wharf run``, ``tasks start|exec|attach``: FIFOs, copying, terminals.

As ctr does, the CLI makes a FIFO set ``<fifo dir>/<random>/<id>-stdin|stdout|stderr``
(``<id>`` is the exec id for execs), hands the paths to Tasks.Create or
Tasks.Exec, and copies between its own stdio and the FIFOs in threads:

* stdout/stderr: a blocking open (it returns once the shim opens its end),
  then copy to the local stream until EOF, which comes when the process and
  everything holding its output have exited;
* stdin: a blocking open for writing, copy from local stdin; at local EOF
  close the FIFO and tell the daemon (CloseIO), so the process sees EOF too.

With a terminal there is no stderr FIFO, the local terminal goes to raw mode,
and window size changes (SIGWINCH) become ResizePty calls, made from the main
thread while it waits for the process to exit.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import sys
import termios
import threading
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

DEFAULT_FIFO_DIR = "/run/wharfd/fifo"
_CHUNK = 32 * 1024
JOIN_TIMEOUT = 10.0


@dataclass
class Stdio:
    """The stdio paths a task or exec is created with (empty: not connected)."""

    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False
    folder: Path | None = None  # the FIFO set's own directory, removed by close()

    @classmethod
    def null(cls, terminal: bool = False) -> Stdio:
        """No stdio at all (``--null-io``)."""
        return cls(terminal=terminal)

    @classmethod
    def log_uri(cls, uri: str, terminal: bool = False) -> Stdio:
        """stdout and stderr to a log URI (``--log-uri``); a bare path means ``file://``."""
        if "://" not in uri:
            uri = "file://" + os.path.abspath(uri)
        return cls(stdout=uri, stderr=uri, terminal=terminal)

    @classmethod
    def fifos(cls, fifo_dir: str, name: str, *, terminal: bool, stdin: bool = True) -> Stdio:
        """A new FIFO set under ``fifo_dir`` (default /run/wharfd/fifo)."""
        root = Path(fifo_dir or DEFAULT_FIFO_DIR)
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        folder = root / secrets.token_hex(8)
        folder.mkdir(mode=0o700)
        io = cls(
            stdin=str(folder / f"{name}-stdin") if stdin else "",
            stdout=str(folder / f"{name}-stdout"),
            stderr="" if terminal else str(folder / f"{name}-stderr"),
            terminal=terminal,
            folder=folder,
        )
        for path in (io.stdin, io.stdout, io.stderr):
            if path:
                os.mkfifo(path, 0o600)
        return io

    def close(self) -> None:
        """Remove the FIFO set's directory (if this Stdio made one)."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


@dataclass
class Copier:
    """Threads copying between this process's stdio and a task's FIFOs."""

    io: Stdio
    close_stdin: Callable[[], None]  # tells the daemon stdin is done (CloseIO)
    stdin: IO[bytes] | None = None
    stdout: IO[bytes] = field(default_factory=lambda: sys.stdout.buffer)
    stderr: IO[bytes] = field(default_factory=lambda: sys.stderr.buffer)
    _outputs: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        """Start copying (call before the process is created, so no output is missed)."""
        for path, out in ((self.io.stdout, self.stdout), (self.io.stderr, self.stderr)):
            if path and _is_fifo(path):
                thread = threading.Thread(target=_drain, args=(path, out), daemon=True)
                thread.start()
                self._outputs.append(thread)
        if self.io.stdin and self.stdin is not None:
            threading.Thread(target=self._feed, daemon=True).start()

    def _feed(self) -> None:
        assert self.stdin is not None
        try:
            fd = os.open(self.io.stdin, os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            source = self.stdin.fileno()
            while data := os.read(source, _CHUNK):
                os.write(fd, data)
        except OSError:
            pass
        finally:
            os.close(fd)
        with contextlib.suppress(Exception):
            self.close_stdin()

    def wait(self, timeout: float = JOIN_TIMEOUT) -> None:
        """Wait for the outputs to reach EOF, then unblock any reader whose writer never came."""
        for thread in self._outputs:
            thread.join(timeout)
        for path in (self.io.stdout, self.io.stderr):
            if path and _is_fifo(path):
                with contextlib.suppress(OSError):
                    os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


def _is_fifo(path: str) -> bool:
    import stat

    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False


def _drain(path: str, out: IO[bytes]) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # blocks until the shim opens its end
    except OSError:
        return
    try:
        while data := os.read(fd, _CHUNK):
            out.write(data)
            out.flush()
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def raw_terminal(enabled: bool) -> Iterator[bool]:
    """Put the local terminal (stdin) in raw mode while inside; yields whether it did."""
    if not enabled or not os.isatty(0):
        yield False
        return
    saved = termios.tcgetattr(0)
    tty.setraw(0)
    try:
        yield True
    finally:
        termios.tcsetattr(0, termios.TCSADRAIN, saved)


class ResizeWatcher:
    """Records SIGWINCH; :meth:`pending` tells the main loop when to send ResizePty."""

    def __init__(self, enabled: bool) -> None:
        self._changed = threading.Event()
        self._previous: Any = None
        self.enabled = enabled and os.isatty(0)
        if self.enabled:
            self._previous = signal.signal(signal.SIGWINCH, lambda *_: self._changed.set())
            self._changed.set()  # the initial size

    def pending(self) -> tuple[int, int] | None:
        """(columns, rows) when the window changed since the last call."""
        if not self.enabled or not self._changed.is_set():
            return None
        self._changed.clear()
        size = os.get_terminal_size(0)
        return size.columns, size.lines

    def close(self) -> None:
        """Restore the previous SIGWINCH handler."""
        if self.enabled:
            signal.signal(signal.SIGWINCH, self._previous or signal.SIG_DFL)
