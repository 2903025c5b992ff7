"""The CRI container log format, and the file it is written to.

kubelet and ``crictl logs`` read container logs straight from the file, one
entry per line::

    2026-11-28T05:53:00.123456789Z stdout F hello world
    <RFC3339Nano time>            <stream> <tag> <content>

Tag ``F`` ends a line, ``P`` is part of one: a line longer than
``max_container_log_line_size`` is cut into ``P … P F``, and output that ends
without a newline (at end of stream) is written as ``P``. A trailing ``\\r\\n`` is
stripped like ``\\n``; a lone ``\\r`` is content. This is containerd's logger
(internal/cri/io/logger.go) restated as a pure function of the input bytes, so
the result does not depend on how the bytes were chunked when read.

:class:`LineSplitter` holds the unfinished line of one stream;
:class:`LogFile` is the file both streams of a container append to, reopened
at the same path when kubelet rotates it (ReopenContainerLog).
"""

from __future__ import annotations

import contextlib
import os
import time

TAG_FULL = b"F"
TAG_PARTIAL = b"P"
STDOUT = "stdout"
STDERR = "stderr"
DEFAULT_MAX_LINE = 16384


def rfc3339nano(ns: int | None = None) -> bytes:
    """Go's ``time.RFC3339Nano`` of ``ns`` (default now) in local time: trailing zeros of the fraction dropped."""
    ns = time.time_ns() if ns is None else ns
    seconds, fraction = divmod(ns, 1_000_000_000)
    local = time.localtime(seconds)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", local)
    if fraction:
        text += f".{fraction:09d}".rstrip("0")
    offset = local.tm_gmtoff or 0
    if offset == 0:
        return (text + "Z").encode()
    sign = "+" if offset > 0 else "-"
    hours, minutes = divmod(abs(offset) // 60, 60)
    return f"{text}{sign}{hours:02d}:{minutes:02d}".encode()


class LineSplitter:
    """Turns one stream's bytes into CRI log entries, keeping the unfinished line between calls."""

    def __init__(self, stream: str, max_line: int = DEFAULT_MAX_LINE, pending: bytes = b"") -> None:
        """``max_line`` <= 0 means lines are never split; ``pending`` resumes an unfinished line."""
        if stream not in (STDOUT, STDERR):
            raise ValueError(f"log stream {stream!r}: want stdout or stderr")
        self._prefix = b" " + stream.encode() + b" "
        self._max = max_line if max_line > 0 else 0
        self.pending = pending

    def _entry(self, stamp: bytes, tag: bytes, content: bytes) -> bytes:
        return stamp + self._prefix + tag + b" " + content + b"\n"

    def _too_long(self, content: bytes) -> bool:
        if not self._max:
            return False
        # A "\r" that may turn out to precede "\n" does not count yet (it would be stripped).
        length = len(content) - 1 if content.endswith(b"\r") else len(content)
        return length > self._max

    def feed(self, data: bytes, stamp: bytes | None = None) -> bytes:
        """The entries completed by ``data`` (possibly none); the rest waits for more input."""
        stamp = stamp or rfc3339nano()
        buf = self.pending + data if self.pending else data
        out: list[bytes] = []
        start = 0
        while (newline := buf.find(b"\n", start)) >= 0:
            line = buf[start:newline]
            if line.endswith(b"\r"):
                line = line[:-1]
            while self._max and len(line) > self._max:
                out.append(self._entry(stamp, TAG_PARTIAL, line[: self._max]))
                line = line[self._max :]
            out.append(self._entry(stamp, TAG_FULL, line))
            start = newline + 1
        rest = buf[start:]
        while self._too_long(rest):
            out.append(self._entry(stamp, TAG_PARTIAL, rest[: self._max]))
            rest = rest[self._max :]
        self.pending = rest
        return b"".join(out)

    def finish(self, stamp: bytes | None = None) -> bytes:
        """End of stream: an unfinished line is written as a partial entry."""
        if not self.pending:
            return b""
        entry = self._entry(stamp or rfc3339nano(), TAG_PARTIAL, self.pending)
        self.pending = b""
        return entry


class LogFile:
    """A container's CRI log file, appended to by both streams; no path means output is discarded."""

    def __init__(self, path: str) -> None:
        """Open (creating it and its directory) the file at ``path``; blocking."""
        self.path = path
        self._fd = -1
        if path:
            self._fd = _open_append(path)

    def write(self, data: bytes) -> None:
        """Append whole entries (one ``write`` each call, so entries of two streams never interleave)."""
        if self._fd < 0 or not data:
            return
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def reopen(self, fd: int | None = None) -> None:
        """Continue in a fresh file at the same path (kubelet renamed the old one away).

        ``fd`` is the new file opened beforehand with :meth:`open_path` (so the
        blocking open can run in a thread while writes stay on one thread);
        without it the file is opened here.
        """
        if not self.path:
            return
        fd = self.open_path() if fd is None else fd
        old, self._fd = self._fd, fd
        if old >= 0:
            os.close(old)

    def open_path(self) -> int:
        """Open (creating) the file at :attr:`path` for appending; blocking."""
        return _open_append(self.path)

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1

    @property
    def closed(self) -> bool:
        """Whether the file is closed (or there never was one)."""
        return self._fd < 0


def _open_append(path: str) -> int:
    os.makedirs(os.path.dirname(path) or "/", mode=0o755, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
