"""Rebuilding the CRI stores after a restart, and applying task exits to them.

:func:`recover` reads the k8s.io container records (kind sandbox or
container) and their status files, and reconciles them with the tasks the
task manager recovered: a pod whose pause task is gone or stopped becomes
NOTREADY; a started container whose task is gone ends with exit code 255 and
reason Unknown. IPs and everything else in the metadata are kept.

:class:`ExitMonitor` follows ``/tasks/exit`` (and ``/tasks/oom``) for
namespace k8s.io: a pause task's exit makes its pod NOTREADY, a container's
exit records finished_at and the exit code (reason OOMKilled after an OOM
event). Both delete the dead task so the shim forgets it. At start it first
replays the exits of tasks that stopped while the daemon was down.

:func:`check_networks` then runs, in the background, a CNI CHECK of every
pod recovered ready with a network namespace: whether the plugins still find
the attachments ADD made (an interface deleted, an address lost while the
daemon was away). A failure is logged and shown in PodSandboxStatus's verbose
``networkCheck``; the pod is left as it is (kubelet decides what a broken pod
needs, as it would with containerd, which does not check at all).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from wharfd.api.events import task_pb2 as events_pb2
from wharfd.api.types.task import task_pb2
from wharfd.cri import network
from wharfd.cri.records import (
    CONTAINER_METADATA_EXT,
    KIND_CONTAINER,
    KIND_LABEL,
    KIND_SANDBOX,
    OOM_EXIT_REASON,
    SANDBOX_METADATA_EXT,
    STATUS_FILE,
    UNKNOWN_EXIT_CODE,
    UNKNOWN_EXIT_REASON,
    ContainerMetadata,
    ContainerStatus,
    Sandbox,
    SandboxMetadata,
    SandboxState,
    SandboxStatus,
    now_ns,
)
from wharfd.cri.store import CriState, in_k8s_namespace
from wharfd.runtime import errors, namespaces
from wharfd.runtime.metadata.containers import Container as Record

log = logging.getLogger("wharfd.cri.recovery")

_S = TypeVar("_S", SandboxStatus, ContainerStatus)

# --- recovery -------------------------------------------------------------------------------------


def _read_status(path: Path, cls: type[_S]) -> _S | None:
    try:
        return cls.from_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except errors.DataLoss as exc:
        log.warning("%s: %s; status reset", path, exc)
        return None


async def recover(state: CriState) -> None:
    """Rebuild both stores from the k8s.io container records and status files, checked against tasks."""
    with in_k8s_namespace():
        records = await state.meta.list()
    for rec in records:
        kind = rec.labels.get(KIND_LABEL)
        try:
            if kind == KIND_SANDBOX:
                await _recover_sandbox(state, rec)
            elif kind == KIND_CONTAINER:
                await _recover_container(state, rec)
        except errors.WharfError as exc:
            log.error("cri recovery: skipping %s %s: %s", kind, rec.id, exc)


_ALIVE = (task_pb2.RUNNING, task_pb2.PAUSED, task_pb2.PAUSING)
# Pods checked at once after a restart (each CHECK runs every plugin of the chain).
CHECK_CONCURRENCY = 4


async def check_networks(state: CriState) -> None:
    """CNI CHECK of every ready pod with a network namespace (after :func:`recover`); see the module doc."""
    if state.cni is None:
        return
    pods = [
        s
        for s in state.sandboxes.list()
        if s.status.sandbox_state is SandboxState.READY
        and s.metadata.netns_path
        and not s.status.netns_closed
    ]
    if pods and not await state.cni.networks():
        for sandbox in pods:  # only loopback left to check: say so rather than "ok"
            sandbox.network_check = "not checked: no CNI network is configured"
        return
    limit = asyncio.Semaphore(CHECK_CONCURRENCY)

    async def check(sandbox: Sandbox) -> None:
        # Under the pod's lock, as StopPodSandbox's DEL is: CNI forbids a CHECK beside a DEL of the
        # same container, and a pod stopped meanwhile has nothing left to check.
        async with limit, sandbox.lock:
            if sandbox.status.sandbox_state is not SandboxState.READY or sandbox.status.netns_closed:
                return
            meta = sandbox.metadata
            try:
                await network.check(state.cni, sandbox.id, meta.netns_path, meta.config)
            except errors.WharfError as exc:
                sandbox.network_check = f"failed: {exc}"
                log.warning("pod %s (%s): CNI CHECK after restart failed: %s", meta.name, sandbox.id, exc)
            else:
                sandbox.network_check = "ok"

    async with asyncio.TaskGroup() as group:
        for sandbox in pods:
            group.create_task(check(sandbox))


async def _task_state(state: CriState, id: str) -> tuple[int, int, int] | None:
    """(status, pid, exit_status) of the id's task, or None when it has none."""
    task = state.task(id)
    if task is None:
        return None
    try:
        proc = await task.state()
    except errors.WharfError:
        return (task_pb2.STOPPED, task.pid, UNKNOWN_EXIT_CODE)
    return (proc.status, proc.pid, proc.exit_status)


async def _recover_sandbox(state: CriState, rec: Record) -> None:
    ext = rec.extensions.get(SANDBOX_METADATA_EXT)
    if ext is None:
        raise errors.DataLoss("sandbox record has no metadata extension")
    meta = SandboxMetadata.from_any(ext)
    path = state.sandbox_root(meta.id) / STATUS_FILE
    created = int(rec.created_at.timestamp() * 1e9) if rec.created_at else 0
    status = await asyncio.to_thread(_read_status, path, SandboxStatus) or SandboxStatus(created_at=created)
    task = await _task_state(state, meta.id)
    if task is not None and task[0] in _ALIVE:
        status = replace(status, state=SandboxState.READY.value, pid=task[1])
    else:
        if status.sandbox_state is not SandboxState.NOTREADY:
            # The pause process died while we were away: the pod is no longer ready.
            exit_status = task[2] if task is not None else UNKNOWN_EXIT_CODE
            status = replace(
                status, state=SandboxState.NOTREADY.value, exited_at=now_ns(), exit_status=exit_status, pid=0
            )
        await delete_task(state, meta.id)
    sandbox = state.new_sandbox(meta, status)
    await sandbox.update()
    state.sandbox_names.reserve(meta.name, meta.id)
    state.sandboxes.add(sandbox)


async def _recover_container(state: CriState, rec: Record) -> None:
    ext = rec.extensions.get(CONTAINER_METADATA_EXT)
    if ext is None:
        raise errors.DataLoss("container record has no metadata extension")
    meta = ContainerMetadata.from_any(ext)
    path = state.container_root(meta.id) / STATUS_FILE
    status = await asyncio.to_thread(_read_status, path, ContainerStatus)
    if status is None:
        created = int(rec.created_at.timestamp() * 1e9) if rec.created_at else now_ns()
        status = ContainerStatus(created_at=created, unknown=True)
    status = replace(status, starting=False)  # a start cut short by the crash did not finish
    task = await _task_state(state, meta.id)
    if status.started_at and not status.finished_at:
        if task is None:
            status = replace(
                status, finished_at=now_ns(), exit_code=UNKNOWN_EXIT_CODE, reason=UNKNOWN_EXIT_REASON
            )
        elif task[0] in _ALIVE:
            status = replace(status, pid=task[1])
        else:
            status = replace(status, finished_at=now_ns(), exit_code=task[2], pid=0)
    # A stopped task is kept here: its output may still sit in its FIFOs. The exit monitor
    # deletes it (after the output is drained) when it replays missed exits at start.
    container = state.new_container(meta, status)
    await container.update()
    state.container_names.reserve(meta.name, meta.id)
    state.containers.add(container)


# --- exits ----------------------------------------------------------------------------------------


class ExitMonitor:
    """Applies task exits (and OOM events) of namespace k8s.io to the stores."""

    def __init__(self, state: CriState) -> None:
        self.state = state
        self._oom: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()

    def start(self) -> None:
        """Begin following events in the background."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="cri-exit-monitor")

    async def close(self) -> None:
        """Stop following events."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        topics = [f'topic=="{t}",namespace=="{namespaces.K8S}"' for t in ("/tasks/exit", "/tasks/oom")]
        async with self.state.exchange.subscribe(topics) as sub:
            self.subscribed.set()
            await self._replay()
            async for env in sub:
                try:
                    if env.topic == "/tasks/oom":
                        self._oom.add(events_pb2.TaskOOM.FromString(env.event.value).container_id)
                        continue
                    exit_ = events_pb2.TaskExit.FromString(env.event.value)
                    if exit_.id and exit_.id != exit_.container_id:
                        continue  # an exec process, not the init
                    await self.handle_exit(
                        exit_.container_id, exit_.exit_status, exit_.exited_at.ToNanoseconds()
                    )
                except Exception:
                    log.exception("cri exit monitor: event %s", env.topic)

    async def _replay(self) -> None:
        """Apply the exits of containers whose task stopped while nobody listened (before a restart)."""
        for container in self.state.containers.list():
            task = self.state.task(container.id)
            if task is None:
                continue
            try:
                proc = await task.state()
                if proc.status == task_pb2.STOPPED:
                    await self.handle_exit(container.id, proc.exit_status, proc.exited_at.ToNanoseconds())
            except Exception:
                log.exception("cri exit monitor: replaying the exit of %s", container.id)

    async def handle_exit(self, id: str, exit_status: int, exited_at: int) -> None:
        """Record that the init process of pod or container ``id`` exited."""
        await apply_exit(self.state, id, exit_status, exited_at, oom=id in self._oom)
        self._oom.discard(id)


async def apply_exit(
    state: CriState, id: str, exit_status: int, exited_at: int, *, oom: bool = False
) -> None:
    """Apply the exit of pod or container ``id``'s init process: task deleted, status updated (once)."""
    exited_at = exited_at or now_ns()
    if (sandbox := state.sandboxes.find(id)) is not None and sandbox.id == id:
        await delete_task(state, id)
        if sandbox.status.sandbox_state is SandboxState.READY or not sandbox.status.exited_at:
            await sandbox.update(
                state=SandboxState.NOTREADY.value, exited_at=exited_at, exit_status=exit_status, pid=0
            )
        sandbox.stopped.set()
        return
    container = state.containers.find(id)
    if container is None or container.id != id:
        return
    await delete_task(state, id)
    io = state.ios.get(id)
    if io is not None:
        # The shim has closed its FIFO ends: let the last lines reach the log before EXITED shows.
        await io.drained()
    if not container.status.finished_at:
        reason = OOM_EXIT_REASON if oom else container.status.reason
        await container.update(finished_at=exited_at, exit_code=exit_status, pid=0, reason=reason)
    container.exited.set()


async def delete_task(state: CriState, id: str) -> None:
    """Delete the task of pod or container ``id`` if there is one; concurrent callers share one deletion.

    Sharing matters: the exit monitor and StopPodSandbox both delete the pause
    task, and Stop must not return while the monitor's deletion is still running.
    """
    pending = state.task_deletions.get(id)
    if pending is None:
        if state.task(id) is None:
            return
        pending = asyncio.get_running_loop().create_task(_delete(state, id))
        state.task_deletions[id] = pending
        pending.add_done_callback(lambda _: state.task_deletions.pop(id, None))
    await asyncio.shield(pending)


async def _delete(state: CriState, id: str) -> None:
    try:
        await state.tasks.delete(id, namespaces.K8S)
    except errors.NotFound:
        pass
    except errors.WharfError as exc:
        log.warning("cri: deleting the task of %s: %s", id, exc)
