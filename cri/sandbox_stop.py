"""StopPodSandbox: stop the pod's containers, kill the pause task, tear the network down; idempotent.

Like containerd: an unknown id is success (kubelet may call Stop many times,
also after Remove); a pod's containers are stopped with timeout 0 (killed);
the pause task is killed and deleted only while the pod is READY or UNKNOWN;
/dev/shm is unmounted; beside all that CNI DEL runs (it does not need the pause
gone), then the netns is removed, once, recorded in the status file
(``netns_closed``) so a repeat or a restart does not redo DEL and removal.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.cni import netns
from wharfd.cri import network, sandbox_files
from wharfd.cri.container_stop import stop_container
from wharfd.cri.recovery import apply_exit, delete_task
from wharfd.cri.store import (
    UNKNOWN_EXIT_CODE,
    CriState,
    Sandbox,
    SandboxState,
    both,
)
from wharfd.runtime import errors

log = logging.getLogger("wharfd.cri.sandbox")

# How long a killed pause task gets to report its exit.
KILL_WAIT = 10.0


async def stop_pod_sandbox(state: CriState, request: cri.StopPodSandboxRequest) -> cri.StopPodSandboxResponse:
    """Answer StopPodSandbox."""
    try:
        sandbox = state.sandboxes.get(request.pod_sandbox_id)
    except errors.NotFound:
        return cri.StopPodSandboxResponse()  # already gone: Stop is idempotent
    await stop_sandbox(state, sandbox)
    return cri.StopPodSandboxResponse()


async def stop_sandbox(state: CriState, sandbox: Sandbox) -> None:
    """Stop everything of one pod (used by Stop and Remove)."""
    async with sandbox.lock:
        for container in state.containers_of(sandbox.id):
            try:
                await stop_container(state, container.id, 0)
            except errors.NotFound:
                continue  # removed meanwhile
        # The pause's end and CNI DEL do not depend on each other; the netns goes after both.
        await both(_stop_pause_and_shm(state, sandbox), _cni_del(state, sandbox))
        await _remove_netns(state, sandbox)


async def _stop_pause_and_shm(state: CriState, sandbox: Sandbox) -> None:
    if sandbox.status.sandbox_state is not SandboxState.NOTREADY or state.task(sandbox.id) is not None:
        await _stop_pause(state, sandbox)
    await asyncio.to_thread(
        sandbox_files.cleanup, state.sandbox_state_dir(sandbox.id), sandbox.metadata.config
    )


async def kill_and_reap(state: CriState, task_id: str) -> None:
    """SIGKILL a task, wait for its exit, then apply that exit (delete the task, update the status)."""
    task = state.task(task_id)
    if task is None:
        return
    try:
        await task.kill(signal.SIGKILL, all_=True)
    except errors.WharfError as exc:
        # Gone already, or its shim is closing (the exit monitor may be deleting it right now).
        log.debug("task %s: SIGKILL: %s", task_id, exc)
    try:
        exit_ = await asyncio.wait_for(task.wait(), KILL_WAIT)
        status, at = exit_.status, exit_.exited_at.ToNanoseconds()
    except (TimeoutError, errors.WharfError) as exc:
        log.warning("task %s: no exit after SIGKILL (%s); treating it as gone", task_id, exc)
        status, at = UNKNOWN_EXIT_CODE, 0
    # The exit monitor does the same on /tasks/exit; whichever runs second finds it done.
    await apply_exit(state, task_id, status, at)
    await delete_task(state, task_id)


async def _stop_pause(state: CriState, sandbox: Sandbox) -> None:
    await kill_and_reap(state, sandbox.id)
    if sandbox.status.sandbox_state is not SandboxState.NOTREADY:
        # No task at all (lost with its shim): the pod is just not ready any more.
        await apply_exit(state, sandbox.id, UNKNOWN_EXIT_CODE, 0)


def _network_open(sandbox: Sandbox) -> bool:
    return bool(sandbox.metadata.netns_path) and not sandbox.status.netns_closed


async def _cni_del(state: CriState, sandbox: Sandbox) -> None:
    """CNI DEL, unless the netns was closed before; FailedPrecondition/Unavailable if DEL fails after a good ADD."""
    meta = sandbox.metadata
    if not _network_open(sandbox) or state.cni is None:
        return
    # CNI asks for an empty netns path when the namespace is gone already.
    present = await asyncio.to_thread(os.path.exists, meta.netns_path)
    try:
        await network.teardown(state.cni, sandbox.id, meta.netns_path if present else "", meta.config)
    except errors.WharfError as exc:
        if meta.cni_result is not None:
            raise type(exc)(f"failed to destroy network for sandbox {sandbox.id}: {exc}") from exc
        log.warning("sandbox %s: CNI DEL failed after an incomplete ADD: %s", sandbox.id, exc)


async def _remove_netns(state: CriState, sandbox: Sandbox) -> None:
    """Remove the pinned netns and record it closed, once (a repeat or a restart does not redo it)."""
    if not _network_open(sandbox):
        return
    path = sandbox.metadata.netns_path
    try:
        await netns.remove(Path(path))
    except OSError as exc:
        raise errors.Unavailable(
            f"failed to remove network namespace {path} of sandbox {sandbox.id}: {exc}"
        ) from exc
    await sandbox.update(netns_closed=True)
