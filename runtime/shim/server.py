"""The shim server process: one per pod (group), forked from the zygote.

:func:`run` turns a freshly forked child into the shim daemon containerd
expects: its own session, cwd in the bundle, stdio away from the launcher
(logs to the bundle's ``log`` FIFO or file), a child subreaper, optionally in
``ShimCgroup``, OOM score one above the daemon's. It then serves the Task API
(:mod:`wharfd.runtime.ttrpc`, peers of our own uid and gid only) on the
listening socket it was handed until ``Shutdown``, flushes its events and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
from dataclasses import dataclass, field
from typing import NoReturn

from wharfd.api.types.runc.options import oci_pb2
from wharfd.runtime.shim import cgroups
from wharfd.runtime.shim.events import Publisher
from wharfd.runtime.shim.reaper import Reaper
from wharfd.runtime.shim.service import TaskService
from wharfd.runtime.ttrpc.server import TtrpcServer

log = logging.getLogger("wharfd.shim")

PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36
EVENT_FLUSH_SECONDS = 5.0
CLOSE_GRACE_SECONDS = 2.0  # calls in flight at Shutdown may still answer for this long
WARM_ROUNDS = 64
RUNTIME = "io.containerd.wharf.v2"
_LIBC = ctypes.CDLL(None, use_errno=True)
prctl = _LIBC.prctl  # looked up once, in the zygote


@dataclass
class Launch:
    """What a new shim server needs to know (sent by ``start`` through the zygote)."""

    id: str
    namespace: str
    bundle: str
    socket_path: str
    grpc_address: str = ""
    ttrpc_address: str = ""
    debug: bool = False
    options: bytes = b""
    env: dict[str, str] = field(default_factory=dict)
    oom_score_adj: int | None = None
    version: str = ""

    def runc_options(self) -> oci_pb2.Options:
        """The decoded runc options (empty if none were given)."""
        opts = oci_pb2.Options()
        opts.ParseFromString(self.options)
        return opts


@dataclass
class Prepared:
    """A shim made as far as it can be without its launch (:func:`prepare`)."""

    runner: asyncio.Runner
    reaper: Reaper
    publisher: Publisher
    service: TaskService
    server: TtrpcServer


def run(
    launch: Launch, listener: socket.socket, ready: int = -1, *, prepared: Prepared | None = None
) -> NoReturn:
    """Become the shim for ``launch`` (in a forked child), serve until shut down, and exit.

    ``ready`` (a pipe or socket) gets ``ok`` once the Task API is served, or the
    reason it will not be, and is closed: the launcher answers the daemon only
    then. ``prepared``: what :func:`prepare` returned, done already (a pre-forked spare).
    """
    code = 1
    try:
        shim = prepared or prepare()
        _become_daemon(launch)
        with shim.runner:
            code = shim.runner.run(serve(launch, listener, ready, shim))
    except BaseException as exc:
        log.exception("shim %s failed", launch.id)
        _report(ready, f"shim {launch.id}: {type(exc).__name__}: {exc}")
    finally:
        logging.shutdown()
        os._exit(code)  # never return into the zygote's code


def _report(ready: int, message: str) -> None:
    with contextlib.suppress(OSError):
        os.write(ready, message.encode()[:4000])
        os.close(ready)


def prepare() -> Prepared:
    """The part of becoming a shim that needs no launch details.

    Own session, default signal handlers, child subreaper, the event loop, the
    reaper on it, and the Task service registered on a ttrpc server not yet
    listening: the launch only fills in its details (:func:`serve`). A pre-forked
    spare (runtime/shim/zygote.py) does it before its launch arrives.
    """
    with contextlib.suppress(PermissionError):  # already a process group leader (re-exec style)
        os.setsid()
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    if prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    runner = asyncio.Runner()  # what asyncio.run() makes
    reaper = Reaper({})  # the launch's environment comes with it (os.environ stays the zygote's)
    reaper.install(runner.get_loop())
    publisher = Publisher("")
    service = TaskService(namespace="", reaper=reaper, publisher=publisher, opts=oci_pb2.Options())
    server = TtrpcServer(require_same_user=True)
    service.register(server)
    return Prepared(runner, reaper, publisher, service, server)


def _become_daemon(launch: Launch) -> None:
    os.chdir(launch.bundle)
    _redirect_stdio(launch.bundle)  # logging, set up by configure_logging(), writes to fd 2
    if launch.debug:
        logging.getLogger().setLevel(logging.DEBUG)
    prctl(PR_SET_NAME, b"wharf-shim", 0, 0, 0)
    if launch.oom_score_adj is not None:
        with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w", encoding="ascii") as f:
            f.write(str(min(launch.oom_score_adj + 1, 1000)))
    shim_cgroup = launch.runc_options().shim_cgroup
    if shim_cgroup:
        join_cgroup(shim_cgroup)


def configure_logging() -> None:
    """Log to stderr in containerd's shim format (done once in the zygote: shims inherit it).

    Configuring logging costs a forked shim ~0.3 MiB of copied pages, and
    an info line at start-up ~0.2 MiB more (measured), so the shims only
    adjust the level and log nothing on the happy path.
    """
    logging.basicConfig(
        level=logging.INFO,
        format=f'time="%(asctime)s" level=%(levelname)s msg="%(message)s" runtime={RUNTIME}',
        force=True,
    )


def _redirect_stdio(bundle: str) -> None:
    """stdin from /dev/null; stdout and stderr to the bundle's ``log`` (FIFO or file) if there is one."""
    null = os.open(os.devnull, os.O_RDWR)
    target = null
    path = os.path.join(bundle, "log")
    with contextlib.suppress(OSError):
        # containerd holds the FIFO open for reading; without a reader this open fails (ENXIO).
        target = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK)
        os.set_blocking(target, True)
    os.dup2(null, 0)
    os.dup2(target, 1)
    os.dup2(target, 2)  # sys.stderr writes to fd 2: it needs no new file object
    for fd in {null, target}:
        os.close(fd)


def check_launch(launch: Launch) -> None:
    """Raise what becoming ``launch``'s shim would fail on (a missing bundle or shim cgroup).

    The zygote checks before it hands a launch to a spare and answers at once: a launch that
    cannot start is refused with the reason, not found out after the answer.
    """
    if not os.path.isdir(launch.bundle):
        raise FileNotFoundError(f"bundle {launch.bundle} does not exist")
    shim_cgroup = launch.runc_options().shim_cgroup
    if shim_cgroup:
        _procs_files(shim_cgroup)


def join_cgroup(path: str) -> None:
    """Move this process into cgroup ``path`` (v2: the unified one; v1: every controller having it)."""
    for procs_file in _procs_files(path):
        with open(procs_file, "w", encoding="ascii") as f:
            f.write(str(os.getpid()))


def _procs_files(path: str) -> list[str]:
    """The ``cgroup.procs`` files of cgroup ``path``; FileNotFoundError if it has none."""
    procs = []
    if cgroups.UNIFIED:
        procs.append(os.path.join("/sys/fs/cgroup", path.lstrip("/"), "cgroup.procs"))
    else:
        for mount_point in {mp for _, mp in cgroups.mount_points().values()}:
            candidate = os.path.join(mount_point, path.lstrip("/"), "cgroup.procs")
            if os.path.exists(candidate):
                procs.append(candidate)
    if not procs:
        raise FileNotFoundError(f"shim cgroup {path!r} does not exist")
    return procs


async def serve(launch: Launch, listener: socket.socket, ready: int, shim: Prepared) -> int:
    """Serve the Task API on ``listener`` until Shutdown (or SIGTERM); return the exit code."""
    loop = asyncio.get_running_loop()
    shim.reaper.env = dict(launch.env)  # os.environ stays the zygote's: rewriting it costs pages
    shim.publisher.address = launch.ttrpc_address.removeprefix("unix://")
    shim.publisher.start()
    service, server = shim.service, shim.server
    service.namespace, service.opts, service.version = launch.namespace, launch.runc_options(), launch.version
    await server.listen_socket(listener)
    loop.add_signal_handler(signal.SIGTERM, service.shutdown_requested.set)
    log.debug("serving on %s (pid %d)", launch.socket_path, os.getpid())
    if ready >= 0:
        _report(ready, "ok")
    await service.shutdown_requested.wait()
    await server.close(grace=CLOSE_GRACE_SECONDS)
    with contextlib.suppress(OSError):
        os.unlink(launch.socket_path)
    await service.close()
    try:
        async with asyncio.timeout(EVENT_FLUSH_SECONDS):
            await shim.publisher.drained()
    except TimeoutError:
        log.warning("exiting with unsent events")
    await shim.publisher.close()
    log.debug("shut down")
    return 0


def warm_up(rounds: int = WARM_ROUNDS, *, launch_path: bool = False) -> None:
    """Run the shim's hot paths in this process, without side effects (the zygote, before forking).

    Caches built on first use (protobuf descriptor wrappers, asyncio's stream
    machinery, logging formatters) are then built once and shared by every
    shim. And Python 3.11 rewrites a function's bytecode in place while it
    warms up and specializes: done here, that write is not repeated, page by
    copied page, in every shim.

    ``launch_path``: only what a launch and its Create run (serving, a call,
    Create's steps without runc), for a spare (runtime/shim/zygote.py): its
    copies of those pages are then made before its launch, not during.
    """
    asyncio.run(_exercise(rounds, launch_path))


async def _exercise(rounds: int, launch_path: bool = False) -> None:
    from google.protobuf.message import Message

    from wharfd.api.events import task_pb2 as events
    from wharfd.api.runtime.task.v3 import shim_pb2 as api
    from wharfd.runtime import errors
    from wharfd.runtime.shim import events as publish
    from wharfd.runtime.shim import options
    from wharfd.runtime.shim.runc import Runc
    from wharfd.runtime.ttrpc.client import TtrpcClient

    reaper = Reaper()
    reaper.install(asyncio.get_running_loop())
    address = f"\0wharf-shim-warm-up-{os.getpid()}"  # abstract: nothing on disk
    publisher = Publisher(address)
    service = TaskService(namespace="", reaper=reaper, publisher=publisher, opts=oci_pb2.Options())
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen()
    server = TtrpcServer(require_same_user=True)
    service.register(server)
    server.register(publish.SERVICE, "Forward", _ignore)
    await server.listen_socket(listener)
    client = await TtrpcClient.connect(address)
    publisher.start()
    runc = Runc(reaper, binary="true")
    calls: tuple[tuple[str, Message, type[Message]], ...] = (
        ("Connect", api.ConnectRequest(), api.ConnectResponse),
        ("State", api.StateRequest(id="none"), api.StateResponse),
    )
    try:
        for round_ in range(rounds):
            for method, request, response_type in calls:
                with contextlib.suppress(errors.WharfError):
                    await client.call("containerd.task.v3.Task", method, request, response_type, timeout=5)
            if launch_path:
                await _exercise_create(reaper)
                continue
            for name in publish.TOPICS:
                publisher.publish("", getattr(events, name)(container_id="x"))
            await publisher.drained()
            if round_ % 4 == 0:
                await runc.run(["warm-up"])
                await _exercise_create(reaper)
            options.from_any(None)
            cgroups.metrics(cgroups.Cgroup({}))
    finally:
        await client.close()
        await publisher.close()
        await server.close()
        listener.close()


async def _exercise_create(reaper: Reaper) -> None:
    """The steps of Create that need no runc: spec, options.json, stdio, a spawn, the cgroup."""
    import json
    import tempfile

    from wharfd.runtime.shim import container, options
    from wharfd.runtime.shim.runc import Runc
    from wharfd.runtime.shim.stdio import Owner, ProcessIO, Stdio

    with tempfile.TemporaryDirectory(prefix="wharf-shim-warm-up-") as bundle:
        spec = {"process": {"args": ["x"]}, "linux": {"namespaces": [{"type": "pid"}]}}
        _write(os.path.join(bundle, "config.json"), json.dumps(spec))
        # Pid files and oom_score_adj are ASCII text: looked up here, the codec is not
        # imported (encodings.ascii, through the whole import machinery) by every shim.
        _write(os.path.join(bundle, "init.pid"), "1", encoding="ascii")
        _read(os.path.join(bundle, "init.pid"), encoding="ascii")
        container._load_spec(bundle, "x")
        options.write(bundle, oci_pb2.Options(root="/"))
        options.read(bundle)
        io = await ProcessIO.open(Stdio(), owner=Owner(), reaper=reaper)
        try:
            runc = Runc(reaper, binary="true", log_file=os.path.join(bundle, "log.json"))
            await runc.run_with_stdio(["create", "x"], io.runc_fds)
        finally:
            io.close()
        cgroups.of_pid(os.getpid())


def _write(path: str, text: str, encoding: str = "utf-8") -> None:
    with open(path, "w", encoding=encoding) as f:
        f.write(text)


def _read(path: str, encoding: str) -> str:
    with open(path, encoding=encoding) as f:
        return f.read()


async def _ignore(payload: bytes, metadata: dict[str, list[str]]) -> bytes:
    return b""
