"""StopContainer: the stop signal, a grace period, then SIGKILL; idempotent.

The signal is the container's (config ``stop_signal``, else the image's
STOPSIGNAL, else SIGTERM). The exit itself is recorded by the exit monitor
(:class:`wharfd.cri.store.ExitMonitor`), which sets finished_at, the exit code
and, if the kernel OOM-killed it, reason OOMKilled; this module only waits
for it (the container's ``exited`` event).
"""

from __future__ import annotations

import logging
import signal
from typing import Any

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.cri.store import Container, CriState, now_ns, wait_stopped
from wharfd.runtime import errors
from wharfd.runtime.oci.image_config import DEFAULT_STOP_SIGNAL, parse_signal

log = logging.getLogger("wharfd.cri.stop")

# After SIGKILL the exit follows within milliseconds unless the shim is wedged.
KILL_WAIT = 30.0
UNKNOWN_EXIT_CODE = 255


async def stop_container_rpc(state: CriState, request: cri.StopContainerRequest) -> cri.StopContainerResponse:
    """Handle StopContainer; idempotent as the CRI asks: an unknown or stopped container is success."""
    await stop_container(state, request.container_id, float(max(request.timeout, 0)))
    return cri.StopContainerResponse()


async def stop_container(state: CriState, container_id: str, timeout: float) -> None:
    """Stop a container by id or prefix (StopPodSandbox uses it); an unknown id is not an error."""
    container = state.containers.find(container_id)
    if container is not None:
        await stop(state, container, timeout)


async def stop(state: CriState, container: Container, timeout: float) -> None:
    """Signal, wait up to ``timeout`` seconds, SIGKILL, wait for the exit."""
    if container.status.starting:
        async with container.lock:  # let the start finish, then decide on its outcome
            pass
    status = container.status
    if status.state() not in (cri.CONTAINER_RUNNING, cri.CONTAINER_UNKNOWN):
        return
    task = state.task(container.id)
    if task is None:
        await _lost(container)
        return
    if timeout > 0:
        sig = stop_signal_number(container.metadata.stop_signal)
        if await _kill(container, task, sig) and await wait_stopped(container.exited, timeout):
            return
        log.info("container %s: still running %gs after signal %d; killing it", container.id, timeout, sig)
    await _kill(container, task, signal.SIGKILL)
    if not await wait_stopped(container.exited, KILL_WAIT):
        raise errors.DeadlineExceeded(f'container "{container.id}": no exit {KILL_WAIT:g}s after SIGKILL')


def stop_signal_number(name: str) -> int:
    """The signal to stop with: the recorded name (checked at create) or SIGTERM."""
    try:
        return parse_signal(name or DEFAULT_STOP_SIGNAL)
    except errors.InvalidArgument:
        return signal.SIGTERM


async def _kill(container: Container, task: Any, sig: int) -> bool:
    """Send ``sig``; False when the process is already gone (its exit is on its way)."""
    try:
        await task.kill(sig)
    except (errors.NotFound, errors.FailedPrecondition) as exc:
        log.debug("container %s: kill %d: %s", container.id, sig, exc)
        return False
    return True


async def _lost(container: Container) -> None:
    """Running (or unknown) without a task: its end was not observed; record it as containerd does."""
    if await wait_stopped(container.exited, 1.0):
        return
    await container.update(
        finished_at=now_ns(), exit_code=UNKNOWN_EXIT_CODE, reason=container.status.reason or "Unknown", pid=0
    )
    container.exited.set()
