"""The zygote: one long-lived process that forks a shim server per pod.

A fresh Python interpreter per pod costs ~15-20 MiB. The zygote imports the
shim once, freezes the heap out of the garbage collector's reach
(``gc.freeze``: collections in the children then do not touch, and so do not
copy, the inherited pages) and forks a server per request, so the pods share
the interpreter, the protobuf runtime and the shim's code copy-on-write.

What still gets copied (bench/shim.py, 30 pods, CPython 3.11): ~5 MiB per
shim with one container, nearly all of it pages whose objects the shim only
*used*: reference counts are written on every use. Hence the warm-up before
forking (lazy caches and bytecode specialization paid once) and shims that
configure and log as little as they can.

Protocol, on ``<socket dir>/wharf-zygote-<tag>.sock`` (mode 0600): the client
sends one JSON object (a :class:`~wharfd.runtime.shim.server.Launch`, with
``options`` in base64) and shuts down its write side; the zygote answers one
JSON object, ``{"pid": n}`` for a new server, ``{"exists": true}`` if a live
server already owns the socket (pod grouping, or a racing ``start``), or
``{"error": "..."}``. The tag changes with the interpreter and the installed
shim code (:data:`~wharfd.runtime.shim.launch.CODE_DIRS`), so an upgrade gets a
new zygote rather than old code.

The zygote is single-threaded (fork safety), reaps its children, and exits
after ``WHARF_SHIM_ZYGOTE_IDLE`` seconds (default 600) with no live shim.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import gc
import json
import os
import select
import signal
import socket
import sys
import time
from typing import Any

from wharfd.runtime.shim import server  # imported here so forked children share it

IDLE_ENV = "WHARF_SHIM_ZYGOTE_IDLE"
MAX_REQUEST = 1 << 20
READY_TIMEOUT = 10.0
# Pending launch requests: a burst of pod starts queues here (the kernel caps it at somaxconn).
BACKLOG = 256


class Zygote:
    """Accepts launch requests and forks shim servers."""

    def __init__(self, path: str, idle_seconds: float, version: str = "") -> None:
        """Bind the control socket at ``path`` (EADDRINUSE if a live zygote has it)."""
        self.path = path
        self.version = version
        self.idle_seconds = idle_seconds
        self.children: set[int] = set()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            self.sock.bind(path)
        finally:
            os.umask(old_umask)
        self.sock.listen(BACKLOG)
        self.sock.settimeout(min(idle_seconds, 30.0))

    def serve(self) -> None:
        """Accept requests until idle for too long."""
        signal.signal(signal.SIGCHLD, lambda *_: self._reap())
        idle_since = time.monotonic()
        try:
            while True:
                try:
                    conn, _ = self.sock.accept()
                except TimeoutError:
                    self._reap()
                    if self.children:
                        idle_since = time.monotonic()
                    elif time.monotonic() - idle_since >= self.idle_seconds:
                        return
                    continue
                with conn:
                    self._handle(conn)
                idle_since = time.monotonic()
        finally:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            self.sock.close()

    def _reap(self) -> None:
        while self.children:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            self.children.discard(pid)

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            request = json.loads(_receive(conn))
            reply = self._launch(request, conn)
        except Exception as exc:  # report anything to the starter, keep serving others
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps(reply).encode())

    def _launch(self, request: dict[str, Any], conn: socket.socket) -> dict[str, Any]:
        request["options"] = base64.b64decode(request.get("options", ""))
        launch = server.Launch(**request)
        launch.version = self.version
        listener = _listen(launch.socket_path)
        if listener is None:
            return {"exists": True}
        ready_r, ready_w = os.pipe()
        with listener:
            pid = os.fork()
            if pid == 0:
                # The starter waits for end of file on conn: the child must not keep it open.
                conn.close()
                self.sock.close()
                os.close(ready_r)
                server.run(launch, listener, ready_w)  # never returns
            self.children.add(pid)
        os.close(ready_w)
        status = _read_ready(ready_r)
        if status != "ok":
            with contextlib.suppress(OSError):
                os.unlink(launch.socket_path)
            return {"error": status or f"shim {launch.id} exited before serving"}
        return {"pid": pid}


def _read_ready(fd: int) -> str:
    """What a new shim reports on its readiness pipe ("ok", an error, or "" if it died silently)."""
    with os.fdopen(fd, "rb") as pipe:
        ready, _, _ = select.select([pipe], [], [], READY_TIMEOUT)
        return pipe.read(4096).decode(errors="replace") if ready else f"no answer in {READY_TIMEOUT:g}s"


def _receive(conn: socket.socket) -> bytes:
    chunks, size = [], 0
    while chunk := conn.recv(65536):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_REQUEST:
            raise ValueError(f"request larger than {MAX_REQUEST} bytes")
    return b"".join(chunks)


def _listen(path: str) -> socket.socket | None:
    """Bind the shim socket; None if a live shim already serves it (a stale file is replaced)."""
    os.makedirs(os.path.dirname(path), mode=0o711, exist_ok=True)
    for _ in range(2):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE:
                raise
            if can_connect(path):
                return None
            os.unlink(path)
            continue
        sock.listen(128)
        return sock
    raise OSError(errno.EADDRINUSE, f"shim socket {path} is in use")


def can_connect(path: str, timeout: float = 1.0) -> bool:
    """Whether something accepts connections on the unix socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout)
        try:
            probe.connect(path)
        except BlockingIOError:
            return True  # a full backlog: alive, only busy
        except OSError:
            return False
        return True


def main() -> None:
    """``python -m wharfd.runtime.shim.zygote <control socket>``: run a zygote (started by ``start``)."""
    path = sys.argv[1]
    idle = float(os.environ.get(IDLE_ENV, "600"))
    os.chdir("/")
    from wharfd.runtime.version import version

    try:
        zygote = Zygote(path, idle, version())
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE and can_connect(path):
            return  # another zygote won the race
        with contextlib.suppress(OSError):
            os.unlink(path)
        zygote = Zygote(path, idle, version())
    server.configure_logging()
    server.warm_up()
    gc.collect()
    gc.freeze()  # keep inherited objects out of the children's collections: their pages stay shared
    zygote.serve()


if __name__ == "__main__":
    main()
