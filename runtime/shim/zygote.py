"""The zygote: one long-lived process that forks a shim server per pod.

A fresh Python interpreter per pod costs ~15-20 MiB. The zygote imports the
shim once, freezes the heap out of the garbage collector's reach
(``gc.freeze``: collections in the children then do not touch, and so do not
copy, the inherited pages) and forks a server per request, so the pods share
the interpreter, the protobuf runtime and the shim's code copy-on-write.

What still gets copied (bench/shim.py, 30 pods, CPython 3.11): ~4.4 MiB per
shim with one container, nearly all of it pages whose objects the shim only
*used*: reference counts are written on every use, even by a call that
leaves them as they were. The shim's own new objects are few (~70 KiB).
Hence, before forking:

* the warm-up (:func:`~wharfd.runtime.shim.server.warm_up`): lazy caches,
  codec look-ups and bytecode specialization are paid once, here;
* :func:`relocate_hot_code`: the code objects the warm-up ran are copied side
  by side, so the ones a shim writes share pages (-0.25 MiB per shim);
* :func:`fill_pools`: the free blocks left in the allocator's partly used
  pools are taken up, so a shim's new objects land in fresh pools side by side
  instead of one here and one there in ~600 inherited pools, each write
  copying a page (-0.3 MiB per shim);
* :func:`version_in_child`: the version comes from a throwaway child, so
  importlib.metadata (email, zipfile, csv: ~1 MiB) is never loaded here;
* shims that configure and log as little as they can.

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
import types
from collections.abc import Callable
from typing import Any

from wharfd.runtime.shim import runc as runc_binary
from wharfd.runtime.shim import server  # imported here so forked children share it

IDLE_ENV = "WHARF_SHIM_ZYGOTE_IDLE"
MAX_REQUEST = 1 << 20
READY_TIMEOUT = 10.0
# Pending launch requests: a burst of pod starts queues here (the kernel caps it at somaxconn).
BACKLOG = 256
# Warm-up rounds run under the profiler to find the code a shim runs (relocate_hot_code).
RELOCATION_ROUNDS = 4


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
        runc_binary.seal()  # a stat, unless runc changed on disk: then a fresh copy
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
    version = version_in_child()
    try:
        zygote = Zygote(path, idle, version)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE and can_connect(path):
            return  # another zygote won the race
        with contextlib.suppress(OSError):
            os.unlink(path)
        zygote = Zygote(path, idle, version)
    server.configure_logging()
    relocate_hot_code(lambda: server.warm_up(RELOCATION_ROUNDS))
    server.warm_up()  # after the relocation: the new code objects are the ones to specialize
    runc_binary.seal()  # one sealed runc for every shim (runtime/shim/runc.py)
    gc.collect()
    fill_pools()
    gc.freeze()  # keep inherited objects out of the children's collections: their pages stay shared
    zygote.serve()


def relocate_hot_code(exercise: Callable[[], object]) -> int:
    """Run ``exercise``; give each function it ran a fresh copy of its code object. Return how many.

    Code objects are made at import, module after module, so the few hundred a
    shim runs lie scattered among the thousands it never does, a page or two
    apart. Running a function writes its code object (reference count; inline
    caches until it has specialized), so in a forked shim each one run copies
    a page of its own. Copied here one after the other, they share pages.
    The copies are equal (``code.replace``), nested code objects (closures,
    comprehensions) included; the originals are freed.
    """
    ran: set[types.CodeType] = set()

    def profile(frame: types.FrameType, event: str, arg: object) -> None:
        if event == "call":
            ran.add(frame.f_code)

    sys.setprofile(profile)
    try:
        exercise()
    finally:
        sys.setprofile(None)
    copies: dict[types.CodeType, types.CodeType] = {}

    def copy(code: types.CodeType) -> types.CodeType:
        new = copies.get(code)
        if new is None:
            consts = tuple(copy(c) if isinstance(c, types.CodeType) else c for c in code.co_consts)
            new = copies[code] = code.replace(co_consts=consts)
        return new

    moved = 0
    for obj in gc.get_objects():
        if isinstance(obj, types.FunctionType) and obj.__code__ in ran:
            obj.__code__ = copy(obj.__code__)
            moved += 1
    return moved


def version_in_child() -> str:
    """The package version, looked up in a throwaway child: its imports stay out of this process."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's own coverage is not collected
        try:
            from wharfd.runtime.version import version

            os.write(write, version().encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        answer = pipe.read().decode(errors="replace")
    os.waitpid(pid, 0)
    return answer or "0.0.0+unknown"


# Objects that take up the free blocks of partly used pools (fill_pools); never used, never freed.
_FILLERS: list[object] = []
FILL_ROUNDS = 3


def fill_pools() -> int:
    """Take up the free blocks of pymalloc's partly used pools; return how many are left.

    A forked shim allocates from those pools first, and they are scattered over
    the whole heap: each new object then copies a page of its own. Once they
    are full, the shim's objects go to fresh pools, packed. The fillers cost
    this process the free blocks' size (~0.5 MiB), shared by every shim.
    Without pymalloc (``PYTHONMALLOC=malloc``) there is nothing to do.
    """
    left = free_blocks()
    for _ in range(FILL_ROUNDS):
        if not left:
            break
        for size, count in left.items():
            _FILLERS.extend(_filler(size) for _ in range(count))
        left = free_blocks()
    return sum(left.values())


def _filler(size: int) -> object:
    """An object that takes exactly one block of pymalloc's size class ``size``."""
    if size <= 16:
        return object()  # a bare object: 16 bytes
    if size <= 32:
        return float(len(_FILLERS)) + 0.5  # 24 bytes (a new object, not a cached constant)
    return bytes(size - 33)  # a bytes object is 33 bytes plus its length


def free_blocks() -> dict[int, int]:
    """Size class -> free blocks in partly used pools, from ``sys._debugmallocstats`` (CPython)."""
    stats = getattr(sys, "_debugmallocstats", None)
    if stats is None:
        return {}
    # It prints to the C stderr: catch fd 2 in a memfd for the call.
    capture = os.memfd_create("mallocstats", os.MFD_CLOEXEC)
    saved = os.dup(2)
    try:
        os.dup2(capture, 2)
        try:
            stats()
        finally:
            os.dup2(saved, 2)
        os.lseek(capture, 0, os.SEEK_SET)
        with os.fdopen(os.dup(capture), "rb") as f:
            text = f.read().decode(errors="replace")
    finally:
        os.close(saved)
        os.close(capture)
    free: dict[int, int] = {}
    for line in text.splitlines():
        # "class   size   num pools   blocks in use  avail blocks"
        fields = line.split()
        if len(fields) == 5 and all(f.isdigit() for f in fields) and int(fields[4]):
            free[int(fields[1])] = int(fields[4])
    return free


if __name__ == "__main__":
    main()
