"""StartContainer: run a CREATED container as a task in its pod's shim, its output copied to the CRI log.

The spec carries ``io.kubernetes.cri.sandbox-id``, so the task manager puts
the task in the shim that serves the pod's pause task. The stdio FIFOs are
opened before the task is created (so the pipes are held from the first
byte; their keeper process starts while the task is created) and copied into
the log file once the shim has opened them (:mod:`wharfd.cri.container_io`).
Only the final state is written to the status file before the answer: the
``starting`` mark is memory only, as recovery drops it anyway. A failure at any step leaves the container
EXITED with reason ``StartError``, exit code 128 and the error as message, as
containerd does, and nothing of the task behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.api.types import mount_pb2
from wharfd.cri import container_io
from wharfd.cri.store import Container, CriState, SandboxState, both, now_ns
from wharfd.runtime import errors, namespaces
from wharfd.runtime.metadata.containers import Container as Record
from wharfd.runtime.tasks.manager import CreateRequest

log = logging.getLogger("wharfd.cri.start")

START_ERROR_REASON = "StartError"
START_ERROR_EXIT_CODE = 128


async def start_container(state: CriState, request: cri.StartContainerRequest) -> cri.StartContainerResponse:
    """Handle StartContainer."""
    container = state.containers.get(request.container_id)
    async with container.lock:
        status = container.status
        if status.state() != cri.CONTAINER_CREATED or status.starting or status.removing:
            state_name = cri.ContainerState.Name(status.state())
            raise errors.FailedPrecondition(
                f'container "{container.id}": cannot start it in state {state_name}'
            )
        sandbox = state.sandboxes.find(container.sandbox_id)
        if sandbox is None or sandbox.status.sandbox_state is not SandboxState.READY:
            raise errors.FailedPrecondition(
                f'container "{container.id}": its sandbox {container.sandbox_id} is not ready'
            )
        # Memory only: recovery drops the flag anyway (a start cut short by a crash did not finish).
        container.set_memory_only(starting=True)
        try:
            pid, started = await _start(state, container)
        except BaseException as exc:
            await asyncio.shield(_record_start_error(container, exc))
            raise
        changes: dict[str, object] = {"starting": False, "started_at": started}
        if not container.status.finished_at:  # it may have exited already
            changes["pid"] = pid
        await container.update(**changes)
    return cri.StartContainerResponse()


async def _start(state: CriState, container: Container) -> tuple[int, int]:
    io = container_io.for_container(state, container)
    task = None
    try:
        # The FIFOs are opened while the record and the rootfs are read.
        (record, rootfs), _ = await both(
            _task_inputs(state, container), asyncio.to_thread(io.open, create=True)
        )
        request = CreateRequest(
            spec_json=record.spec.value if record.spec is not None else b"",
            runtime=record.runtime_name,
            options=record.runtime_options,
            rootfs=rootfs,
            io=io.task_io(),
        )
        # The keeper (a process of its own) starts while the shim creates the task.
        _, task = await both(
            asyncio.to_thread(io.keep), state.tasks.create(container.id, request, namespaces.K8S)
        )
        await io.start_copying()
        state.ios[container.id] = io
        started = now_ns()
        pid = await task.start()
    except BaseException:
        await asyncio.shield(_undo(state, container.id, io, task is not None))
        raise
    return pid, started


async def _task_inputs(state: CriState, container: Container) -> tuple[Record, list[mount_pb2.Mount]]:
    """The container's record (with its spec) and its rootfs mounts."""
    record = await state.meta.get(container.id)
    if record.spec is None:
        raise errors.DataLoss(f'container "{container.id}": its record has no spec')
    snapshotter = state.snapshotters.get(container.metadata.snapshotter)
    if snapshotter is None:
        raise errors.FailedPrecondition(f'snapshotter "{container.metadata.snapshotter}" is not available')
    rootfs = [
        mount_pb2.Mount(type=m.type, source=m.source, target=m.target, options=list(m.options))
        for m in await snapshotter.mounts(container.metadata.snapshot_key)
    ]
    return record, rootfs


async def _undo(state: CriState, container_id: str, io: container_io.ContainerIO, created: bool) -> None:
    if created:
        with contextlib.suppress(errors.WharfError):
            await state.tasks.delete(container_id, namespaces.K8S)
    state.ios.pop(container_id, None)
    await asyncio.to_thread(io.remove)


async def _record_start_error(container: Container, exc: BaseException) -> None:
    try:
        await container.update(
            starting=False,
            pid=0,
            finished_at=container.status.finished_at or now_ns(),
            exit_code=START_ERROR_EXIT_CODE,
            reason=START_ERROR_REASON,
            message=str(exc) or type(exc).__name__,
        )
    except (OSError, errors.WharfError) as err:
        log.error("container %s: recording its start error: %s", container.id, err)
    container.exited.set()
