"""RemovePodSandbox: stop the pod if needed, remove its containers, snapshot, record and files; idempotent.

An unknown id is success (kubelet's garbage collector may repeat a removal).
The order keeps the stores consistent across a crash at any point: the
containerd record goes last but one, so a restart still finds (and can
remove again) a pod whose snapshot or files were already gone; the name and
the in-memory entry go last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.cri import sandbox_files
from wharfd.cri.container_remove import remove_container
from wharfd.cri.recovery import delete_task
from wharfd.cri.sandbox_stop import stop_sandbox
from wharfd.cri.store import CriState, Sandbox, both, in_k8s_namespace
from wharfd.runtime import errors

log = logging.getLogger("wharfd.cri.sandbox")


async def remove_pod_sandbox(
    state: CriState, request: cri.RemovePodSandboxRequest
) -> cri.RemovePodSandboxResponse:
    """Answer RemovePodSandbox."""
    try:
        sandbox = state.sandboxes.get(request.pod_sandbox_id)
    except errors.NotFound:
        return cri.RemovePodSandboxResponse()
    await stop_sandbox(state, sandbox)  # a no-op for a stopped pod
    async with sandbox.lock:
        if sandbox.id not in state.sandboxes:
            return cri.RemovePodSandboxResponse()  # a concurrent Remove won
        for container in state.containers_of(sandbox.id):
            await remove_container(state, container.id)
        await _remove_sandbox(state, sandbox)
    log.info("RemovePodSandbox %s (%s) removed", sandbox.metadata.name, sandbox.id)
    return cri.RemovePodSandboxResponse()


async def _remove_sandbox(state: CriState, sandbox: Sandbox) -> None:
    sandbox.forget()  # a late exit event must not write a status file into the removed directory
    await delete_task(state, sandbox.id)
    with in_k8s_namespace():
        # The snapshot and the files are independent; the record goes after both.
        await both(_remove_snapshot(state, sandbox), _remove_files(state, sandbox))
        with contextlib.suppress(errors.NotFound):
            await state.meta.delete(sandbox.id)
    state.sandboxes.delete(sandbox.id)
    state.sandbox_names.release_key(sandbox.id)


async def _remove_snapshot(state: CriState, sandbox: Sandbox) -> None:
    snapshotter = state.snapshotters.get(sandbox.metadata.snapshotter)
    if snapshotter is not None:
        with contextlib.suppress(errors.NotFound):
            await snapshotter.remove(sandbox.id)


async def _remove_files(state: CriState, sandbox: Sandbox) -> None:
    root, state_dir = state.sandbox_root(sandbox.id), state.sandbox_state_dir(sandbox.id)
    await asyncio.to_thread(sandbox_files.remove, root, state_dir, sandbox.metadata.config)
