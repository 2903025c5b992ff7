"""ExecSync: run a command in a running container and return its output and exit code.

The command runs as an exec process of the container's task, with the
container's process settings (user, env, cwd, capabilities) and ``args``
replaced. Its stdout and stderr go through FIFOs the daemon holds open from
before the exec exists, so nothing written is lost however fast it exits;
each is kept up to 16 MiB (containerd's cap), the rest is read and dropped so
the command never blocks on a full pipe. A non-zero exit code is a normal
answer. When ``timeout`` (seconds, 0 = none) passes first, the exec is killed
and the call fails with DeadlineExceeded, which kubelet reports as a probe
timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

from google.protobuf import any_pb2

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.cri.container_io import FifoReader
from wharfd.cri.store import Container, CriState
from wharfd.runtime import errors
from wharfd.runtime.oci import spec as oci
from wharfd.runtime.tasks.task import IO

MAX_OUTPUT = 16 << 20
DRAIN_TIMEOUT = 2.0  # output still open after the exit: a background child holds it
KILL_WAIT = 10.0
STREAMS = ("stdout", "stderr")


class _Capture:
    """Collects up to ``limit`` bytes of one stream and discards the rest."""

    def __init__(self, limit: int = MAX_OUTPUT) -> None:
        self.data = bytearray()
        self.limit = limit

    def add(self, chunk: bytes) -> None:
        room = self.limit - len(self.data)
        if room > 0:
            self.data += chunk[:room]


def process_spec(spec: oci.Spec, cmd: list[str]) -> dict[str, Any]:
    """The container's process with ``cmd`` as argv and no terminal."""
    process = dict(spec.get("process") or {})
    process["args"] = cmd
    process["terminal"] = False
    process.pop("consoleSize", None)
    return process


def _open_fifos(directory: Path) -> dict[str, int]:
    directory.mkdir(parents=True, mode=0o700)
    fds: dict[str, int] = {}
    try:
        for name in STREAMS:
            os.mkfifo(directory / name, 0o600)
            fds[name] = os.open(directory / name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except BaseException:
        for fd in fds.values():
            os.close(fd)
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return fds


async def exec_sync(state: CriState, request: cri.ExecSyncRequest) -> cri.ExecSyncResponse:
    """Handle ExecSync."""
    container = state.containers.get(request.container_id)
    cmd = list(request.cmd)
    if not cmd:
        raise errors.InvalidArgument("cmd: must not be empty")
    if request.timeout < 0:
        raise errors.InvalidArgument(f"timeout {request.timeout}: must not be negative")
    task = state.task(container.id)
    if container.status.state() != cri.CONTAINER_RUNNING or task is None:
        raise errors.FailedPrecondition(f'container "{container.id}": not running')
    record = await state.meta.get(container.id)
    process = process_spec(oci.from_any(record.spec) if record.spec else {}, cmd)
    exec_id = os.urandom(16).hex()
    directory = state.container_state_dir(container.id) / "exec" / exec_id
    fds = await asyncio.to_thread(_open_fifos, directory)
    captures = {name: _Capture() for name in STREAMS}
    readers = [FifoReader(fds[name], captures[name].add, lambda: None) for name in STREAMS]
    try:
        status = await _run(
            container,
            task,
            exec_id,
            directory=directory,
            process=process,
            timeout=float(request.timeout),
            readers=readers,
        )
        await _drained(readers)
    finally:
        for reader in readers:
            reader.close()
        await asyncio.to_thread(shutil.rmtree, directory, True)
    return cri.ExecSyncResponse(
        stdout=bytes(captures["stdout"].data), stderr=bytes(captures["stderr"].data), exit_code=status
    )


async def _run(
    container: Container,
    task: Any,
    exec_id: str,
    *,
    directory: Path,
    process: dict[str, Any],
    timeout: float,
    readers: list[FifoReader],
) -> int:
    io = IO(stdout=str(directory / "stdout"), stderr=str(directory / "stderr"))
    spec = any_pb2.Any(type_url=oci.PROCESS_TYPE_URL, value=json.dumps(process).encode())
    await task.exec(exec_id, io, spec)
    try:
        await task.start(exec_id)
        for reader in readers:  # the shim has opened its ends now: a read of nothing means end of file
            reader.start()
        return await _wait(container, task, exec_id, timeout, process["args"])
    finally:
        with contextlib.suppress(errors.WharfError):
            await asyncio.shield(task.delete(exec_id))


async def _wait(container: Container, task: Any, exec_id: str, timeout: float, cmd: list[str]) -> int:
    try:
        async with asyncio.timeout(timeout or None):
            exit_ = await task.wait(exec_id)
        return int(exit_.status)
    except TimeoutError:
        pass
    with contextlib.suppress(errors.WharfError):
        await task.kill(signal.SIGKILL, exec_id=exec_id)
    with contextlib.suppress(TimeoutError, errors.WharfError):
        async with asyncio.timeout(KILL_WAIT):
            await task.wait(exec_id)
    raise errors.DeadlineExceeded(
        f'container "{container.id}": command {cmd!r} timed out after {timeout:g}s and was killed'
    )


async def _drained(readers: list[FifoReader]) -> None:
    """Read what is left once the command exited: the shim has closed its ends, so EOF comes soon."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_TIMEOUT):
            await asyncio.gather(*(r.done.wait() for r in readers))
