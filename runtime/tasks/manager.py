"""The task manager (containerd's runtime v2 shim manager): start, find, watch and delete tasks.

Create: bundle (config.json, rootfs/, work, the log FIFO opened; one worker
thread hop) → shim ``start`` (or the sandbox's shim, see below) → connect →
Task.Create, with ``bootstrap.json`` written meanwhile (Create answers once it
is on disk). Any failure undoes what was done, in reverse: shim shutdown, shim
``delete``, bundle.

Pod grouping: a container whose spec annotations name a group
(``io.containerd.runc.v2.group``, first) or a sandbox
(``io.kubernetes.cri.sandbox-id``) runs in that group's shim
(``launch.group_of``). A v3 shim of a sandbox task already known here is
dialled directly (``<bundle>/sandbox`` records it); a v2 shim is asked to
``start`` again and answers with the address it already serves.

Shim death: every task's connection is watched. When one closes without the
daemon closing it, the shim binary's ``delete`` cleans up (runc delete,
rootfs unmount), ``/tasks/exit`` is published, the bundle is removed, and the
task stays listed as STOPPED (with the exit the shim last reported, else the
clean-up's 137) until it is deleted.

Recovery: on start every bundle under the state directory is visited (all
concurrently, so dead shims cost one timeout, not one each): a shim that
answers gets its task back in its true state, and a task that exited while
the daemon was down gets its ``/tasks/exit`` published now (the shim keeps
the status until Delete, so Wait answers too). A bundle whose shim does not
answer is cleaned up as for a shim death.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import any_pb2

from wharfd.api.events import task_pb2 as events_pb2
from wharfd.api.types import mount_pb2
from wharfd.api.types.task import task_pb2
from wharfd.runtime import errors, namespaces, plugin
from wharfd.runtime.events import Exchange
from wharfd.runtime.shim import launch
from wharfd.runtime.tasks import memory_merge, shim
from wharfd.runtime.tasks.bundle import (
    SANDBOX_FILE,
    SHIM_BINARY_FILE,
    Bundle,
    ShimAddress,
    annotations_of,
    walk,
)
from wharfd.runtime.tasks.task import IO, Exit, Task

log = logging.getLogger("wharfd.tasks")

EXIT_TOPIC = "/tasks/exit"
CRI_PLUGIN = "io.containerd.grpc.v1.cri"
MAX_SOCKET_PATH = 106
RECOVERY_DIAL = 1.0


@dataclass(frozen=True)
class Timeouts:
    """Bounds on shim calls, from the config's ``timeouts`` (seconds)."""

    load: float = 5.0
    cleanup: float = 5.0
    shutdown: float = 3.0
    state: float = 2.0


@dataclass
class CreateRequest:
    """What a task is made from: the container's spec and runtime, plus the caller's rootfs and stdio."""

    spec_json: bytes
    runtime: str
    runtime_path: str = ""
    options: any_pb2.Any | None = None
    rootfs: Sequence[mount_pb2.Mount] = ()
    io: IO = field(default_factory=IO)
    checkpoint: str = ""


class TaskManager:
    """Every task of every namespace this daemon runs."""

    def __init__(
        self,
        state: Path,
        root: Path,
        launcher: shim.Launcher,
        exchange: Exchange,
        *,
        timeouts: Timeouts | None = None,
        runtime_paths: dict[str, str] | None = None,
    ) -> None:
        self.state = state
        self.root = root
        self.launcher = launcher
        self.exchange = exchange
        self.timeouts = timeouts or Timeouts()
        self.runtime_paths = dict(runtime_paths or {})
        self._tasks: dict[tuple[str, str], Task] = {}
        self._reserved: set[tuple[str, str]] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._closing = False

    # -- lookup ---------------------------------------------------------------------------------

    def get(self, task_id: str, namespace: str | None = None) -> Task:
        """The task of container ``task_id`` in the namespace (default: the current call's)."""
        ns = namespace or namespaces.required()
        task = self._tasks.get((ns, task_id))
        if task is None:
            raise errors.NotFound(f"task {task_id} not found")
        return task

    def list(self, namespace: str | None = None) -> list[Task]:
        """The namespace's tasks, by id."""
        ns = namespace or namespaces.required()
        return [t for (n, _), t in sorted(self._tasks.items()) if n == ns]

    # -- create ---------------------------------------------------------------------------------

    async def create(self, task_id: str, request: CreateRequest, namespace: str | None = None) -> Task:
        """Start a shim (or join the sandbox's) and create the task in it; AlreadyExists if it has one."""
        ns = namespace or namespaces.required()
        key = (ns, task_id)
        if key in self._tasks or key in self._reserved:
            raise errors.AlreadyExists(f"task {task_id}: already exists")
        binary = shim.resolve(
            request.runtime, request.runtime_path or self.runtime_paths.get(request.runtime, "")
        )
        bundle = Bundle.at(self.state, self.root, ns, task_id)
        self._reserved.add(key)
        try:
            task = await self._create(bundle, binary, request)
        finally:
            self._reserved.discard(key)
        self._tasks[key] = task
        self._spawn(self._watch(task))
        return task

    async def _create(self, bundle: Bundle, binary: str, request: CreateRequest) -> Task:
        # One worker-thread hop makes the whole bundle, opens its log FIFO and, for our own
        # shim, has the zygote launch it (or finds the sandbox's shim to join).
        joinable = self._joinable(bundle.namespace)
        log_fd, annotations, launched = await asyncio.to_thread(
            self._make_bundle_and_launch, bundle, binary, request, joinable
        )
        copier: shim.LogCopier | None = None
        task: Task | None = None
        address: ShimAddress | None = None
        recorded: asyncio.Future[None] | None = None
        try:
            copier = shim.LogCopier(bundle, log_fd)
            if isinstance(launched, BaseException):
                raise launched
            address = launched or await self.launcher.start(
                binary, bundle, request.options, annotations, in_process=False
            )
            # bootstrap.json is written while the shim creates the task; Create answers
            # only once it is on disk, so a recovered daemon finds every task it reported.
            recorded = asyncio.ensure_future(asyncio.to_thread(bundle.write_bootstrap, address))
            task = await Task.connect(bundle, binary, address, self.timeouts.load)
            task.log, copier = copier, None
            await task.create(list(request.rootfs), request.io, request.options, request.checkpoint)
            await recorded
            return task
        except BaseException:
            if recorded is not None:  # a worker thread cannot be stopped: let it finish first
                await asyncio.shield(asyncio.wait([recorded]))
                if not recorded.cancelled():
                    recorded.exception()  # retrieved: the failure being raised is what counts
            await asyncio.shield(self._undo_create(bundle, binary, task, address, copier))
            raise

    async def _undo_create(
        self,
        bundle: Bundle,
        binary: str,
        task: Task | None,
        address: ShimAddress | None,
        copier: shim.LogCopier | None,
    ) -> None:
        if task is not None:
            await task.shutdown(self.timeouts.shutdown)
            await task.close()
        if copier is not None:
            copier.close()
        if address is not None:
            await self.launcher.delete(binary, bundle, self.timeouts.cleanup)
        try:
            await asyncio.to_thread(bundle.remove)
        except errors.WharfError as exc:
            log.error("task %s/%s: %s", bundle.namespace, bundle.id, exc)

    def _joinable(self, namespace: str) -> dict[str, ShimAddress]:
        """The namespace's live v3 shims by task id: the sandboxes a new container may join."""
        return {
            id_: task.address
            for (ns, id_), task in self._tasks.items()
            if ns == namespace and task.dead is None and task.address.version >= 3
        }

    def _make_bundle_and_launch(
        self, bundle: Bundle, binary: str, request: CreateRequest, joinable: dict[str, ShimAddress]
    ) -> tuple[int, dict[str, str], ShimAddress | BaseException | None]:
        """The bundle (its log's fd, the spec's annotations) and, when it can be had here, the
        shim's address: the sandbox's to join, or our shim started in-process. Blocking.

        A failure after the bundle is made is returned, not raised: the caller owns the log's fd
        and undoes the bundle. None: the caller exec's the shim's ``start`` (our shim too, when
        no zygote runs yet: ``start`` launches one).
        """
        log_fd, annotations = _make_bundle(bundle, binary, request.spec_json)
        try:
            group = launch.group_of(annotations, "")
            if group and group != bundle.id and group in joinable:
                bundle.write_file(SANDBOX_FILE, group)
                return log_fd, annotations, joinable[group]
            if shim.is_ours(binary):
                address = self.launcher.start_ours(binary, bundle, request.options, annotations)
                return log_fd, annotations, address
        except Exception as exc:
            return log_fd, annotations, exc
        return log_fd, annotations, None

    # -- delete ---------------------------------------------------------------------------------

    async def delete(self, task_id: str, namespace: str | None = None) -> Exit:
        """Delete a stopped (or never started) task: shim Delete, shim shutdown, bundle removal."""
        ns = namespace or namespaces.required()
        task = self.get(task_id, ns)
        if task.dead is None:
            # Old shims answer this with an untyped error; say it with the right code.
            state = await task.state(timeout=self.timeouts.state)
            if state.status in (task_pb2.RUNNING, task_pb2.PAUSED, task_pb2.PAUSING):
                status = task_pb2.Status.Name(state.status).lower()
                raise errors.FailedPrecondition(
                    f"task {task_id}: cannot delete a {status} task; kill it first"
                )
        # From here the shim may exit on its own once the task is gone: that is not a death.
        task.detaching = True
        try:
            exit_ = await task.delete()
        except BaseException:
            task.detaching = False
            if task.client.closed.is_set() and task.dead is None:
                self._spawn(self._bury(task))  # it died meanwhile and the watcher stood aside
            raise
        if self._tasks.get((ns, task_id)) is not task:
            raise errors.NotFound(f"task {task_id} not found")  # a concurrent Delete won
        del self._tasks[(ns, task_id)]
        await task.shutdown(self.timeouts.shutdown)
        await task.close()
        await asyncio.to_thread(task.bundle.remove)
        return exit_

    # -- shim death and exits -------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        job = asyncio.get_running_loop().create_task(coro)
        self._background.add(job)
        job.add_done_callback(self._background.discard)

    async def _watch(self, task: Task) -> None:
        await task.client.closed.wait()
        if task.detaching or self._closing or self._tasks.get((task.namespace, task.id)) is not task:
            return
        log.warning("task %s/%s: shim connection closed; cleaning up", task.namespace, task.id)
        await self._bury(task)

    async def _bury(self, task: Task) -> None:
        """The shim is gone: clean up after it, report the exit, keep the task as STOPPED."""
        response = await self.launcher.delete(task.binary, task.bundle, self.timeouts.cleanup)
        exited = task.exited
        exit_ = exited or Exit(int(response.pid) or task.pid, int(response.exit_status), response.exited_at)
        task.mark_dead(exit_)
        await task.close()
        if exited is None:
            await self._publish_exit(task.namespace, task.id, exit_)
        try:
            await asyncio.to_thread(task.bundle.remove)
        except errors.WharfError as exc:
            log.error("task %s/%s: %s", task.namespace, task.id, exc)

    async def _publish_exit(self, namespace: str, task_id: str, exit_: Exit) -> None:
        event = events_pb2.TaskExit(
            container_id=task_id,
            id=task_id,
            pid=exit_.pid,
            exit_status=exit_.status,
            exited_at=exit_.exited_at,
        )
        await self.exchange.publish(EXIT_TOPIC, event, namespace=namespace)

    async def _follow_exits(self) -> None:
        """Remember each task's exit as its shim reports it (used if the shim dies afterwards)."""
        async with self.exchange.subscribe([f'topic=="{EXIT_TOPIC}"']) as sub:
            async for envelope in sub:
                event = events_pb2.TaskExit.FromString(envelope.event.value)
                task = self._tasks.get((envelope.namespace, event.container_id))
                if task is not None and event.id in ("", event.container_id):
                    task.exited = Exit(int(event.pid), int(event.exit_status), event.exited_at)

    # -- recovery and shutdown ------------------------------------------------------------------

    async def load(self) -> None:
        """Find the tasks of a previous run again (see the module docstring)."""
        bundles = await asyncio.to_thread(lambda: list(walk(self.state, self.root)))
        await asyncio.gather(*(self._recover(b) for b in bundles))
        if bundles:
            log.info("recovered %d of %d tasks", len(self._tasks), len(bundles))

    async def _recover(self, bundle: Bundle) -> None:
        binary = (await asyncio.to_thread(bundle.read_file, SHIM_BINARY_FILE) or "").strip()
        try:
            address = await asyncio.to_thread(bundle.read_bootstrap)
        except errors.DataLoss as exc:
            log.warning("task %s/%s: %s", bundle.namespace, bundle.id, exc)
            address = None
        task: Task | None = None
        if address is not None and binary:
            try:
                # A live shim accepts at once; a dead one's socket refuses: no need to wait out "load".
                task = await Task.connect(bundle, binary, address, min(self.timeouts.load, RECOVERY_DIAL))
                state = await task.state(timeout=self.timeouts.load)
            except (errors.WharfError, OSError) as exc:
                log.warning(
                    "task %s/%s: shim does not answer (%s); cleaning up", bundle.namespace, bundle.id, exc
                )
                if task is not None:
                    await task.close()
                task = None
        if task is None:
            await self._clean_orphan(bundle, binary)
            return
        task.log = shim.LogCopier(bundle)
        task.pid = state.pid
        self._tasks[(bundle.namespace, bundle.id)] = task
        self._spawn(self._watch(task))
        if state.status == task_pb2.STOPPED:
            # Its exit event went nowhere while the daemon was down.
            await self._publish_exit(
                bundle.namespace, bundle.id, Exit(state.pid, state.exit_status, state.exited_at)
            )

    async def _clean_orphan(self, bundle: Bundle, binary: str) -> None:
        if binary:  # a missing binary fails the delete, which is logged
            response = await self.launcher.delete(binary, bundle, self.timeouts.cleanup)
            exit_ = Exit(int(response.pid), int(response.exit_status), response.exited_at)
            await self._publish_exit(bundle.namespace, bundle.id, exit_)
        try:
            await asyncio.to_thread(bundle.remove)
        except errors.WharfError as exc:
            log.error("task %s/%s: %s", bundle.namespace, bundle.id, exc)

    async def start(self) -> None:
        """Recover tasks and start following exit events."""
        self._spawn(self._follow_exits())
        await self.load()

    async def close(self) -> None:
        """Disconnect from every shim; the shims and their tasks keep running."""
        self._closing = True
        for task in list(self._tasks.values()):
            await task.close()
        for job in list(self._background):
            job.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)


def _make_bundle(bundle: Bundle, binary: str, spec_json: bytes) -> tuple[int, dict[str, str]]:
    """Create the bundle (recording the shim binary) and open its log FIFO (blocking).

    Returns the log's fd, opened before the shim starts (the stock shim blocks
    until its log has a reader), and the spec's annotations.
    """
    bundle.create(spec_json, {SHIM_BINARY_FILE: binary})
    try:
        return shim.open_log(bundle), annotations_of(spec_json)
    except BaseException:
        bundle.remove()
        raise


def _daemon_binary() -> str:
    """This daemon's executable, which shims are told to call to publish events (legacy)."""
    return os.path.abspath(sys.argv[0])


def _socket_dir(state: str) -> str | None:
    """``<state>/s`` for our shims' sockets, when ``<dir>/<64 hex>`` fits a unix socket path."""
    candidate = os.path.join(state, "s")
    return candidate if len(candidate) + 65 <= MAX_SOCKET_PATH else None


def _runtime_paths(cri: dict[str, Any]) -> dict[str, str]:
    """runtime_type → runtime_path from the CRI runtimes that set one (also keyed by runtime name)."""
    paths: dict[str, str] = {}
    runtimes = (cri.get("containerd") or {}).get("runtimes") or {}
    for name, runtime in runtimes.items():
        path = runtime.get("runtime_path") or ""
        if path:
            paths.setdefault(runtime.get("runtime_type") or "", path)
            paths.setdefault(name, path)
    return paths


async def _init(ctx: plugin.InitContext) -> TaskManager:
    from wharfd.runtime import version

    cfg = ctx.config
    level = str(cfg.debug.level).lower()
    timeouts = cfg.timeouts
    launcher = shim.Launcher(
        grpc_address=str(cfg.grpc.address),
        ttrpc_address=str(cfg.ttrpc_address()),
        publish_binary=_daemon_binary(),
        version=version.version(),
        debug=level in ("debug", "trace"),
        socket_dir=_socket_dir(str(cfg.state)),
    )
    manager = TaskManager(
        ctx.state,
        ctx.root,
        launcher,
        ctx.get(plugin.EVENT),
        timeouts=Timeouts(
            load=timeouts.get("io.containerd.timeout.shim.load", 5.0),
            cleanup=timeouts.get("io.containerd.timeout.shim.cleanup", 5.0),
            shutdown=timeouts.get("io.containerd.timeout.shim.shutdown", 3.0),
            state=timeouts.get("io.containerd.timeout.task.state", 2.0),
        ),
        runtime_paths=_runtime_paths(cfg.plugin(CRI_PLUGIN)),
    )
    ctx.state.mkdir(parents=True, exist_ok=True, mode=0o711)
    ctx.root.mkdir(parents=True, exist_ok=True, mode=0o711)
    if ctx.plugin_config.get("merge_shim_memory", True):
        memory_merge.enable_ksmd(memory_merge.KSM_DIR)  # read at call time: tests point it elsewhere
    await manager.start()
    return manager


async def _close(manager: TaskManager) -> None:
    await manager.close()


PLUGIN = plugin.Registration(
    type=plugin.RUNTIME,
    id="task",
    init=_init,
    requires=(plugin.EVENT,),
    host_platform=True,
    close=_close,
)
