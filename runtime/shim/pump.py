"""Byte pumps between file descriptors, and the pty master hand-off, all on the event loop.

A :class:`Pump` copies one non-blocking fd into another with back-pressure: when
the destination is full it stops reading the source until it drains, so a
slow reader of a container's stdout slows the container rather than the shim
(containerd behaves the same). Nothing here blocks the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import struct
import tempfile
import termios
from collections.abc import Callable

CHUNK = 1 << 16


class Pump:
    """Copies ``src`` to ``dst`` until ``src`` ends, then calls ``on_eof`` and closes what it owns."""

    def __init__(
        self,
        src: int,
        dst: int,
        *,
        close_src: bool = True,
        close_dst: bool = True,
        on_eof: Callable[[], None] | None = None,
    ) -> None:
        """Both fds are switched to non-blocking; ``close_*`` say which ones the pump closes at the end."""
        self._loop = asyncio.get_running_loop()
        self._src, self._dst = src, dst
        self._close_src, self._close_dst = close_src, close_dst
        self._on_eof = on_eof
        self._pending = b""
        self.done: asyncio.Future[None] = self._loop.create_future()
        os.set_blocking(src, False)
        os.set_blocking(dst, False)
        self._loop.add_reader(src, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self._src, CHUNK)
        except BlockingIOError:
            return
        except OSError:
            # A pty master reads EIO once the last slave fd is closed: that is its end of file.
            data = b""
        if not data:
            self.stop()
            return
        self._write(data)

    def _write(self, data: bytes) -> None:
        try:
            written = os.write(self._dst, data)
        except BlockingIOError:
            written = 0
        except OSError:  # the reader went away for good: drop output rather than wedge
            self.stop()
            return
        if written < len(data):
            self._pending = data[written:]
            self._loop.remove_reader(self._src)
            self._loop.add_writer(self._dst, self._writable)

    def _writable(self) -> None:
        data, self._pending = self._pending, b""
        self._loop.remove_writer(self._dst)
        self._write(data)
        if not self._pending and not self.done.done():
            self._loop.add_reader(self._src, self._readable)

    def stop(self) -> None:
        """End the copy now (idempotent) and close the fds the pump owns."""
        if self.done.done():
            return
        self._loop.remove_reader(self._src)
        self._loop.remove_writer(self._dst)
        if self._close_src:
            _close(self._src)
        if self._close_dst:
            _close(self._dst)
        self.done.set_result(None)
        if self._on_eof is not None:
            self._on_eof()


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


async def wait_readable(fd: int) -> None:
    """Return once ``fd`` is readable."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


class ConsoleSocket:
    """A listening socket runc sends the pty master to (``--console-socket``)."""

    def __init__(self) -> None:
        """Bind a fresh socket in a private temporary directory (runc needs a path)."""
        self._dir = tempfile.mkdtemp(prefix="wharf-pty-")
        self.path = os.path.join(self._dir, "pty.sock")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(self.path)
        self._sock.listen(1)
        self._sock.setblocking(False)

    async def receive_master(self) -> int:
        """Accept runc's connection and return the pty master fd it passes (SCM_RIGHTS)."""
        conn, _ = await asyncio.get_running_loop().sock_accept(self._sock)
        with conn:
            conn.setblocking(False)
            while True:
                await wait_readable(conn.fileno())
                try:
                    _msg, fds, _flags, _addr = socket.recv_fds(conn, 4096, 1)
                except BlockingIOError:
                    continue
                if not fds:
                    raise ConnectionError("runc closed the console socket without sending a pty")
                os.set_inheritable(fds[0], False)
                return fds[0]

    def close(self) -> None:
        """Remove the socket and its directory."""
        self._sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.rmdir(self._dir)


def resize(master: int, width: int, height: int) -> None:
    """Set the window size of a pty (TIOCSWINSZ: rows, columns, x pixels, y pixels)."""
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))
