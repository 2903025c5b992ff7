"""RemoveContainer: stop if needed, then delete the task, the stdio, the snapshot, the record; idempotent.

The order keeps the output: the task is deleted first (the shim then closes
its FIFO ends) and the copies drain to end of file before the FIFOs go. The
log file itself stays; kubelet owns it. A removal that fails half-way leaves
the container listed (no longer ``removing``) so the next call retries it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.cri import container_io, image_volumes
from wharfd.cri.container_stop import stop
from wharfd.cri.store import Container, CriState
from wharfd.runtime import errors, namespaces

log = logging.getLogger("wharfd.cri.remove")


async def remove_container_rpc(
    state: CriState, request: cri.RemoveContainerRequest
) -> cri.RemoveContainerResponse:
    """Handle RemoveContainer (an unknown id is success)."""
    await remove_container(state, request.container_id)
    return cri.RemoveContainerResponse()


async def remove_container(state: CriState, container_id: str) -> None:
    """Remove a container by id or unique prefix; nothing to do when it is gone."""
    if not container_id:
        raise errors.InvalidArgument("container_id: must not be empty")
    container = state.containers.find(container_id)
    if container is None:
        return
    # Force-stop first (without the lock: the exit monitor must be free to record the exit).
    await stop(state, container, 0)
    async with container.lock:
        if container.id not in state.containers:
            return  # a concurrent RemoveContainer finished it
        await container.update(removing=True)
        try:
            await _remove(state, container)
        except BaseException:
            with contextlib.suppress(OSError, errors.WharfError):
                await container.update(removing=False)
            raise


async def _remove(state: CriState, container: Container) -> None:
    if state.task(container.id) is not None:
        with contextlib.suppress(errors.NotFound):
            await state.tasks.delete(container.id, namespaces.K8S)
    io = state.ios.get(container.id)
    if io is not None and not await io.drained():
        log.warning("container %s: output still open after its task was deleted; closing it", container.id)
    await container_io.release(state, container.id)
    snapshotter = state.snapshotters.get(container.metadata.snapshotter)
    await image_volumes.release(state, container.id, container.metadata.config, snapshotter)
    if snapshotter is not None and container.metadata.snapshot_key:
        with contextlib.suppress(errors.NotFound):
            await snapshotter.remove(container.metadata.snapshot_key)
    with contextlib.suppress(errors.NotFound):
        await state.meta.delete(container.id)
    for path in (state.container_root(container.id), state.container_state_dir(container.id)):
        await asyncio.to_thread(shutil.rmtree, path, True)
    state.containers.delete(container.id)
    state.container_names.release_key(container.id)
