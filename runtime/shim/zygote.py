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
* :func:`~wharfd.runtime.shim.sharing.relocate_hot_code`: the code objects the warm-up ran are copied side
  by side, so the ones a shim writes share pages (-0.25 MiB per shim);
* :func:`~wharfd.runtime.shim.sharing.fill_pools`: the free blocks left in the allocator's partly used
  pools are taken up, so a shim's new objects land in fresh pools side by side
  instead of one here and one there in ~600 inherited pools, each write
  copying a page (-0.3 MiB per shim);
* shims that configure and log as little as they can;
* :func:`~wharfd.runtime.shim.sharing.mark_mergeable`: what a shim copies
  anyway is mostly unchanged when it is next looked at, and KSM merges it back
  (4.9 -> 1.2 MiB PSS per shim once ``ksmd`` has scanned them).

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

A spare: between requests the zygote keeps one child forked ahead
(:class:`Spare`), gone as far as a shim can go without its launch
(:func:`~wharfd.runtime.shim.server.prepare`: session, signals, subreaper, event loop),
then blocked on a socketpair. A launch sends it the listening socket
(SCM_RIGHTS) and the request; it becomes the shim and answers ``ok`` on the
same socketpair. That takes the fork off the launch's path (the next spare is
forked once no request is waiting). A spare that is dead, fails, or was forked
from a zygote whose inheritable state (cgroup, rlimits, oom_score_adj, the
sealed runc copy) has changed since, is killed and a shim forked as before. A
spare dies with its zygote (PR_SET_PDEATHSIG, and end of file on its socket),
and the zygote kills its spare when it exits. It is named ``wharf-spare``
until it becomes a shim (``wharf-spare-wu`` while it warms up: a spare first
runs one round of the warm-up itself, so that the pages a shim's start-up
writes are copied before its launch, not during; it tells the zygote with
one byte when it is done, and a launch that comes earlier gets a fork), and
is not counted as a live shim for the idle exit.
``WHARF_SHIM_ZYGOTE_SPARE=0`` turns spares off.

A launch given to a spare is answered (``{"pid": n}``) as soon as the spare
has it, before it serves, as containerd's own ``start`` answers once its
shim's socket is bound: the starter connects and sends its Create meanwhile,
and its connection waits in the listener's backlog for whichever shim takes
the listener (the spare, or a fork if the spare fails). What would make any
shim fail (a missing bundle or shim cgroup) is checked before the answer and
refused with the reason; a launch that fails after it (the spare and the
fork both) closes the listener, which resets the starter's connection, and
the reason goes to the bundle's shim log.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import gc
import json
import logging
import os
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any, NoReturn

from wharfd.runtime import version as wharfd_version
from wharfd.runtime.shim import runc as runc_binary
from wharfd.runtime.shim import server  # imported here so forked children share it
from wharfd.runtime.shim.sharing import fill_pools, mark_mergeable, relocate_hot_code

IDLE_ENV = "WHARF_SHIM_ZYGOTE_IDLE"
SPARE_ENV = "WHARF_SHIM_ZYGOTE_SPARE"  # "0": no spare (every launch forks; saves one idle shim's memory)
MAX_REQUEST = 1 << 20
READY_TIMEOUT = 10.0
# Pending launch requests: a burst of pod starts queues here (the kernel caps it at somaxconn).
BACKLOG = 256
# Warm-up rounds run under the profiler to find the code a shim runs (relocate_hot_code).
RELOCATION_ROUNDS = 4
PR_SET_PDEATHSIG = 1
SPARE_NAME = b"wharf-spare"
WARMING_NAME = b"wharf-spare-wu"  # a spare's name while it warms up (a prefix of it: SPARE_NAME)
# Spares that died unused in a row before the zygote stops forking them (each launch then forks).
MAX_SPARE_FAILURES = 3
WARM = b"w"  # what a spare sends once its warm-up is done


@dataclass
class Spare:
    """A child forked ahead of its launch, waiting on ``sock`` (its end of a socketpair)."""

    pid: int
    sock: socket.socket
    state: tuple[object, ...]  # the zygote's inheritable state when it was forked
    alive: bool = True
    warm: bool = False  # it has sent WARM: its warm-up is done


class Zygote:
    """Accepts launch requests and forks shim servers."""

    def __init__(self, path: str, idle_seconds: float, version: str = "") -> None:
        """Bind the control socket at ``path`` (EADDRINUSE if a live zygote has it)."""
        self.path = path
        self.version = version
        self.idle_seconds = idle_seconds
        self.children: set[int] = set()
        self.spare: Spare | None = None  # the one waiting for a launch
        self.spares: dict[int, Spare] = {}  # every spare not yet reaped nor turned shim, by pid
        self.spare_failures = 0
        self.use_spares = os.environ.get(SPARE_ENV, "1") != "0"
        with open("/proc/self/comm", "rb") as f:
            self.name = f.read().rstrip(b"\n")  # restored after each spare's fork
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
                if self.spare is None and self.use_spares and not self._pending():
                    self._fork_spare()
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
            self._drop_spares()
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            self.sock.close()

    def _pending(self) -> bool:
        """Whether a launch request waits to be accepted (it goes first: no spare fork before it)."""
        return bool(select.select([self.sock], [], [], 0)[0])

    def _reap(self) -> None:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            self.children.discard(pid)
            spare = self.spares.pop(pid, None)
            if spare is not None:
                spare.alive = False  # its pid may be reused now: never signal it

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            data = _receive(conn)
            reply = self._launch(data, conn)
        except Exception as exc:  # report anything to the starter, keep serving others
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        if reply is not None:
            _answer(conn, reply)

    def _launch(self, data: bytes, conn: socket.socket) -> dict[str, Any] | None:
        """Launch a shim for the request ``data``: the answer, or None once answered already."""
        launch = _decode(data, self.version)
        listener = _listen(launch.socket_path)
        if listener is None:
            return {"exists": True}
        runc_binary.seal()  # a stat, unless runc changed on disk: then a fresh copy
        with listener:
            try:
                server.check_launch(launch)  # before any answer: a spare's is given early
            except OSError as exc:
                os.unlink(launch.socket_path)
                return {"error": f"shim {launch.id}: {type(exc).__name__}: {exc}"}
            pid, status, tried, answered = self._hand_to_spare(data, listener, conn)
            if status != "ok":
                pid, status = self._fork_shim(launch, listener, conn)
                if status == "ok" and tried:
                    # A spare failed where a fork did not: after a few in a row, fork only.
                    self.spare_failures += 1
                    self.use_spares = self.spare_failures < MAX_SPARE_FAILURES
        if status != "ok":
            with contextlib.suppress(OSError):
                os.unlink(launch.socket_path)
            error = status or f"shim {launch.id} exited before serving"
            if answered:  # the starter has its answer and may have connected: the reset tells it
                _log_to_bundle(launch.bundle, f"shim {launch.id} did not start: {error}")
                return None
            return {"error": error}
        return None if answered else {"pid": pid}

    def _fork_shim(
        self, launch: server.Launch, listener: socket.socket, conn: socket.socket
    ) -> tuple[int, str]:
        """Fork a shim for ``launch``; (pid, what it reported on its readiness pipe)."""
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            # The starter waits for end of file on conn: the child must not keep it open.
            conn.close()
            self._close_inherited()
            os.close(ready_r)
            server.run(launch, listener, ready_w)  # never returns
        self.children.add(pid)
        os.close(ready_w)
        return pid, _read_ready(ready_r)

    def _hand_to_spare(
        self, data: bytes, listener: socket.socket, conn: socket.socket
    ) -> tuple[int, str, bool, bool]:
        """Give the launch to the spare: (pid, "ok", True, answered) once it serves, else
        (0, why not, tried, answered).

        ``tried``: there was a spare, not outdated, and it died or failed. It is gone either way.
        ``answered``: the starter got ``{"pid": n}`` as soon as the spare had the launch, as
        containerd's ``start`` answers once its shim's socket is bound, before it serves:
        the starter's connection waits in the listener's backlog meanwhile, and whichever
        shim takes the listener (this spare, or a fork if it fails) accepts it.
        """
        spare, self.spare = self.spare, None
        if spare is None:
            return 0, "no spare", False, False
        if not spare.alive or spare.state != inherited_state():
            self._kill_spare(spare)
            return 0, "spare dead or outdated", not spare.alive, False
        warmth = _warmth(spare)
        if warmth == "warming":
            self.spare = spare  # a launch right after the last: kept for the next
            return 0, "spare warming up", False, False
        if warmth == "dead":
            self._kill_spare(spare)
            return 0, "spare died warming up", True, False
        answered = False
        try:
            socket.send_fds(spare.sock, [b"L"], [listener.fileno()])
            spare.sock.sendall(data)
            spare.sock.shutdown(socket.SHUT_WR)
            answered = _answer(conn, {"pid": spare.pid})
            status = _read_ready(os.dup(spare.sock.fileno()))
        except OSError as exc:
            status = str(exc)
        if status != "ok":
            self._kill_spare(spare)
            return 0, status, True, answered
        spare.sock.close()
        self.spare_failures = 0
        del self.spares[spare.pid]
        self.children.add(spare.pid)
        return spare.pid, status, True, answered

    def _fork_spare(self) -> None:
        """Fork the next spare (between requests); on failure the launches just fork."""
        mine, theirs = socket.socketpair()
        state = inherited_state()
        zygote = os.getpid()  # taken here: the child checks that its parent still is this process
        _set_name(WARMING_NAME)  # inherited at fork: a spare never shows the zygote's name
        try:
            pid = os.fork()
        except OSError:
            _set_name(self.name)
            mine.close()
            theirs.close()
            return
        if pid == 0:
            try:
                mine.close()
                self._close_inherited()
            finally:
                _serve_as_spare(theirs, zygote, self.version)  # never returns
        _set_name(self.name)
        theirs.close()
        self.spare = self.spares[pid] = Spare(pid, mine, state)

    def _close_inherited(self) -> None:
        """In a forked child: close what only the zygote may hold (its socket, its spare's)."""
        self.sock.close()
        if self.spare is not None:
            self.spare.sock.close()

    def _kill_spare(self, spare: Spare) -> None:
        if spare.alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(spare.pid, signal.SIGKILL)  # reaped by the SIGCHLD handler
        spare.sock.close()

    def _drop_spares(self) -> None:
        """Kill the spares and wait for them (the zygote is exiting)."""
        self.spare = None
        for spare in list(self.spares.values()):
            self._kill_spare(spare)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(spare.pid, 0)
        self.spares.clear()


def _warmth(spare: Spare) -> str:
    """ "warm" once ``spare`` has sent WARM (read here: only its readiness answer follows), else
    "warming", or "dead" (end of file instead)."""
    if not spare.warm and select.select([spare.sock], [], [], 0)[0]:
        try:
            sent = spare.sock.recv(1)
        except OSError:
            sent = b""
        if sent != WARM:
            spare.alive = False
            return "dead"
        spare.warm = True
    return "warm" if spare.warm else "warming"


def _decode(data: bytes, version: str) -> server.Launch:
    """The launch a request asks for (the zygote and a spare decode the same bytes)."""
    request = json.loads(data)
    request["options"] = base64.b64decode(request.get("options", ""))
    launch = server.Launch(**request)
    launch.version = version
    return launch


def _serve_as_spare(sock: socket.socket, zygote: int, version: str) -> NoReturn:
    """In a spare: prepare, wait for a launch on ``sock``, become its shim (or exit without one)."""
    try:
        # Die with the zygote, from now on or already (then the parent is no longer it).
        server.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != zygote:
            os._exit(0)
        _warm_up_here()
        _set_name(SPARE_NAME)
        sock.sendall(WARM)
        prepared = server.prepare()
        first, fds, _, _ = socket.recv_fds(sock, 1, 1)
        if not first or len(fds) != 1:
            os._exit(0)  # end of file: the zygote went away
        # Close-on-exec, as a forked shim's listener is: runc must not inherit it. (recv_fds
        # drops its flags argument before Python 3.13: no MSG_CMSG_CLOEXEC.)
        os.set_inheritable(fds[0], False)
        listener = socket.socket(fileno=fds[0])
        launch = _decode(_receive(sock), version)
        server.prctl(PR_SET_PDEATHSIG, 0, 0, 0, 0)  # a shim outlives its zygote
    except BaseException as exc:
        with contextlib.suppress(OSError):
            sock.sendall(f"spare: {type(exc).__name__}: {exc}".encode()[:4000])
        os._exit(1)
    server.run(launch, listener, sock.detach(), prepared=prepared)


def _warm_up_here() -> None:
    """A spare's own round of the launch path, before it waits: the pages a shim's start-up and
    Create write (reference counts, mostly) are copied now rather than on the task's path
    (docs/benchmarks.md: launch to serving 2.1 -> 1.2 ms, Create 3-5 ms shorter; +0.5 MiB
    per shim before KSM merges). A failure only costs that time."""
    with contextlib.suppress(Exception):
        server.warm_up(1, launch_path=True)


def warm_up_spare(rounds: int = server.WARM_ROUNDS) -> None:
    """Run a spare's own steps (receive a launch and a socket, decode) here, as server.warm_up does.

    What a spare runs beyond a forked shim is then warm, relocated and
    specialized in the zygote, and costs a spare-born shim no more copied pages.
    """
    request = {
        "id": "x",
        "namespace": "x",
        "bundle": "/",
        "socket_path": "",
        "options": "",
        "env": {"A": "b"},
    }
    data = json.dumps(request).encode()
    for _ in range(rounds):
        mine, theirs = socket.socketpair()
        with mine, theirs:
            socket.send_fds(mine, [b"L"], [mine.fileno()])
            mine.sendall(data)
            mine.shutdown(socket.SHUT_WR)
            _, fds, _, _ = socket.recv_fds(theirs, 1, 1)
            os.set_inheritable(fds[0], False)
            socket.socket(fileno=fds[0]).close()
            _decode(_receive(theirs), "")


def inherited_state() -> tuple[object, ...]:
    """What a shim inherits from the zygote that can change under it: a spare from before differs.

    The cgroups, the resource limits, the OOM score (a shim without one in its launch keeps it)
    and the sealed runc copy (a new one once runc changed on disk).
    """
    return (*map(_read_proc, _STATE_FILES), runc_binary._sealed)  # a new value whenever seal() copies


_STATE_FILES = ("/proc/self/cgroup", "/proc/self/limits", "/proc/self/oom_score_adj")


def _read_proc(path: str) -> bytes:
    # os.open and os.read: the fewest objects made (each one the zygote makes, it writes a page of
    # its heap that the last spare-born shim then keeps to itself).
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        return os.read(fd, 16384)  # /proc/self/limits, the largest, is ~1.3 KiB
    finally:
        os.close(fd)


def _set_name(name: bytes) -> None:
    server.prctl(server.PR_SET_NAME, name, 0, 0, 0)


def _answer(conn: socket.socket, reply: dict[str, Any]) -> bool:
    """Send the starter its answer and end it there (it reads to end of file); whether it went."""
    try:
        conn.sendall(json.dumps(reply).encode())
        conn.shutdown(socket.SHUT_WR)
    except OSError:
        return False
    return True


def _log_to_bundle(bundle: str, message: str) -> None:
    """A line in the bundle's shim log (the daemon copies it into its own), if anyone reads it."""
    line = f'time="{time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}" level=error msg="{message}"\n'
    with contextlib.suppress(OSError):
        fd = os.open(os.path.join(bundle, "log"), os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            os.write(fd, line.encode(errors="replace")[:4000])
        finally:
            os.close(fd)


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
    version = wharfd_version.VERSION  # a constant: importlib.metadata (~1 MiB) is never loaded
    try:
        zygote = Zygote(path, idle, version)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE and can_connect(path):
            return  # another zygote won the race
        with contextlib.suppress(OSError):
            os.unlink(path)
        zygote = Zygote(path, idle, version)
    server.configure_logging()
    try:
        relocate_hot_code(_warm_up_for_relocation)
        server.warm_up()  # after the relocation: the new code objects are the ones to specialize
        warm_up_spare()
    except Exception:  # the warm-up only saves memory; shims work without it
        logging.getLogger("wharfd.shim.zygote").exception("zygote warm-up failed; serving without it")
    runc_binary.seal()  # one sealed runc for every shim (runtime/shim/runc.py)
    gc.collect()
    fill_pools()
    gc.freeze()  # keep inherited objects out of the children's collections: their pages stay shared
    mark_mergeable()  # what the shims copy unchanged, KSM shares again (sharing.py)
    zygote.serve()


def _warm_up_for_relocation() -> None:
    server.warm_up(RELOCATION_ROUNDS)
    warm_up_spare(RELOCATION_ROUNDS)


if __name__ == "__main__":
    main()
