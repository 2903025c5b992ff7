"""One task as the daemon sees it: its bundle, its shim connection, and the Task API calls on it.

Calls go to the shim over ttrpc, as ``containerd.task.v3.Task`` when the shim
reported version 3 at start and ``containerd.task.v2.Task`` otherwise (the
messages are the same on the wire, so requests are built from the v2
module either way). Every call carries the task's namespace in the
``containerd-namespace-ttrpc`` metadata.

When the shim is gone the manager cleans up and calls :meth:`Task.mark_dead`:
from then on the task answers as a stopped process with the exit status the
clean-up found (137, as containerd reports a killed shim), so callers that
Wait get an answer and a later Delete reports it.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from google.protobuf import any_pb2, timestamp_pb2

from wharfd.api.runtime.task.v2 import shim_pb2 as api
from wharfd.api.runtime.task.v3 import shim_pb2 as v3
from wharfd.api.types import mount_pb2
from wharfd.api.types.task import task_pb2
from wharfd.runtime import errors, namespaces
from wharfd.runtime.tasks.bundle import Bundle, ShimAddress
from wharfd.runtime.tasks.shim import LogCopier
from wharfd.runtime.ttrpc.client import TtrpcClient
from wharfd.runtime.ttrpc.protocol import ConnectionClosed
from wharfd.runtime.ttrpc.services import Stub

TASK_V2 = api.DESCRIPTOR.services_by_name["Task"]
TASK_V3 = v3.DESCRIPTOR.services_by_name["Task"]
STOPPED = task_pb2.STOPPED


@dataclass(frozen=True)
class Exit:
    """How a process ended."""

    pid: int
    status: int
    exited_at: timestamp_pb2.Timestamp


@dataclass(frozen=True)
class IO:
    """A task's stdio: paths (FIFOs, files or log URIs) the shim opens, and whether it has a terminal."""

    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False


class Task:
    """A task whose shim this daemon is connected to (or was, until it died)."""

    def __init__(self, bundle: Bundle, binary: str, address: ShimAddress, client: TtrpcClient) -> None:
        self.bundle = bundle
        self.binary = binary
        self.address = address
        self.client = client
        self.stub = Stub(
            client,
            TASK_V3 if address.version >= 3 else TASK_V2,
            metadata={namespaces.TTRPC_METADATA_KEY: bundle.namespace},
        )
        self.pid = 0
        self.log: LogCopier | None = None
        self.dead: Exit | None = None
        # The init process's exit as the shim reported it (/tasks/exit), if it exited.
        self.exited: Exit | None = None
        self.dead_event = asyncio.Event()
        # Set while the daemon itself ends the connection (Delete, shutdown): not a shim death.
        self.detaching = False

    @property
    def id(self) -> str:
        """The container (and task) id."""
        return self.bundle.id

    @property
    def namespace(self) -> str:
        """The namespace the task lives in."""
        return self.bundle.namespace

    @classmethod
    async def connect(
        cls,
        bundle: Bundle,
        binary: str,
        address: ShimAddress,
        timeout: float,
    ) -> Task:
        """Dial the shim; Unavailable when nothing accepts within ``timeout``.

        No Connect call: the first real call (Create, or State on recovery)
        tells whether the shim serves, and one round trip less per task counts.
        """
        if address.protocol != "ttrpc":
            raise errors.NotImplemented(f"task {bundle.id}: shim protocol {address.protocol!r} (only ttrpc)")
        client = await TtrpcClient.connect(address.address, timeout=timeout)
        return cls(bundle, binary, address, client)

    def mark_dead(self, exit_: Exit) -> None:
        """Record that the shim is gone and how the task ended."""
        if self.dead is None:
            self.dead = exit_
        self.dead_event.set()

    def _alive(self) -> None:
        if self.dead is not None:
            raise errors.FailedPrecondition(f"task {self.id}: the shim is gone; the task is stopped")

    async def close(self) -> None:
        """Close the connection (the shim keeps running) and stop copying its log."""
        self.detaching = True
        with contextlib.suppress(Exception):
            await self.client.close()
        if self.log is not None:
            self.log.close()
            self.log = None

    # -- the Task API ------------------------------------------------------------------------

    async def create(
        self,
        rootfs: list[mount_pb2.Mount],
        io: IO,
        options: any_pb2.Any | None,
        checkpoint: str = "",
    ) -> int:
        """Create the init process (not started); returns its pid."""
        request = api.CreateTaskRequest(
            id=self.id,
            bundle=str(self.bundle.path),
            rootfs=rootfs,
            terminal=io.terminal,
            stdin=io.stdin,
            stdout=io.stdout,
            stderr=io.stderr,
            checkpoint=checkpoint,
        )
        if options is not None and options.type_url:
            request.options.CopyFrom(options)
        reply = await self.stub.Create(request)
        self.pid = reply.pid
        return int(reply.pid)

    async def start(self, exec_id: str = "") -> int:
        """Start the init process or an exec; returns its pid."""
        self._alive()
        reply = await self.stub.Start(api.StartRequest(id=self.id, exec_id=exec_id))
        if not exec_id:
            self.pid = reply.pid
        return int(reply.pid)

    async def state(self, exec_id: str = "", timeout: float | None = None) -> task_pb2.Process:
        """The process as the Tasks API reports it (init when ``exec_id`` is empty)."""
        if self.dead is not None:
            return task_pb2.Process(
                container_id=self.id,
                id=exec_id or self.id,
                pid=self.dead.pid if not exec_id else 0,
                status=STOPPED,
                exit_status=self.dead.status,
                exited_at=self.dead.exited_at,
            )
        s = await self.stub.State(api.StateRequest(id=self.id, exec_id=exec_id), timeout=timeout)
        return task_pb2.Process(
            container_id=self.id,
            id=exec_id or self.id,
            pid=s.pid,
            status=s.status,
            stdin=s.stdin,
            stdout=s.stdout,
            stderr=s.stderr,
            terminal=s.terminal,
            exit_status=s.exit_status,
            exited_at=s.exited_at,
        )

    async def delete(self, exec_id: str = "") -> Exit:
        """Delete the init process (the task) or an exec; returns how it ended."""
        if self.dead is not None:
            return self.dead
        reply = await self.stub.Delete(api.DeleteRequest(id=self.id, exec_id=exec_id))
        return Exit(int(reply.pid), int(reply.exit_status), reply.exited_at)

    async def wait(self, exec_id: str = "") -> Exit:
        """Block until the process exits; a shim that dies meanwhile answers with the clean-up's exit."""
        if self.dead is None:
            try:
                reply = await self.stub.Wait(api.WaitRequest(id=self.id, exec_id=exec_id), timeout=None)
                return Exit(0, int(reply.exit_status), reply.exited_at)
            except errors.Unavailable as exc:
                # The connection dropping fails the call before `closed` is set: both
                # mean the shim is gone, and the manager's clean-up will say how it ended.
                if not isinstance(exc, ConnectionClosed) and not self.client.closed.is_set():
                    raise
            await self.dead_event.wait()
        assert self.dead is not None
        return self.dead

    async def kill(self, signal: int, *, all_: bool = False, exec_id: str = "") -> None:
        """Signal the process (every process of the task with ``all_``)."""
        self._alive()
        await self.stub.Kill(api.KillRequest(id=self.id, exec_id=exec_id, signal=signal, all=all_))

    async def exec(self, exec_id: str, io: IO, spec: any_pb2.Any) -> None:
        """Add an exec process (not started)."""
        self._alive()
        request = api.ExecProcessRequest(
            id=self.id,
            exec_id=exec_id,
            terminal=io.terminal,
            stdin=io.stdin,
            stdout=io.stdout,
            stderr=io.stderr,
            spec=spec,
        )
        await self.stub.Exec(request)

    async def resize_pty(self, width: int, height: int, exec_id: str = "") -> None:
        """Resize the process's terminal."""
        self._alive()
        await self.stub.ResizePty(
            api.ResizePtyRequest(id=self.id, exec_id=exec_id, width=width, height=height)
        )

    async def close_io(self, exec_id: str = "", *, stdin: bool = True) -> None:
        """Close the process's stdin."""
        self._alive()
        await self.stub.CloseIO(api.CloseIORequest(id=self.id, exec_id=exec_id, stdin=stdin))

    async def pause(self) -> None:
        """Freeze every process of the task."""
        self._alive()
        await self.stub.Pause(api.PauseRequest(id=self.id))

    async def resume(self) -> None:
        """Thaw the task."""
        self._alive()
        await self.stub.Resume(api.ResumeRequest(id=self.id))

    async def pids(self) -> list[task_pb2.ProcessInfo]:
        """The task's processes."""
        self._alive()
        reply = await self.stub.Pids(api.PidsRequest(id=self.id))
        # Keep an absent info absent: clients unpack any info that is present.
        return [
            task_pb2.ProcessInfo(pid=p.pid, info=p.info if p.HasField("info") else None)
            for p in reply.processes
        ]

    async def checkpoint(self, path: str, options: any_pb2.Any | None) -> None:
        """Checkpoint the task into ``path`` (CRIU, through the shim)."""
        self._alive()
        request = api.CheckpointTaskRequest(id=self.id, path=path)
        if options is not None and options.type_url:
            request.options.CopyFrom(options)
        await self.stub.Checkpoint(request)

    async def update(self, resources: any_pb2.Any | None, annotations: dict[str, str]) -> None:
        """Change the task's resources (and annotations)."""
        self._alive()
        request = api.UpdateTaskRequest(id=self.id, annotations=annotations)
        if resources is not None and resources.type_url:
            request.resources.CopyFrom(resources)
        await self.stub.Update(request)

    async def stats(self) -> any_pb2.Any:
        """The task's cgroup metrics, as the shim packs them."""
        self._alive()
        reply: Any = await self.stub.Stats(api.StatsRequest(id=self.id))
        return any_pb2.Any(type_url=reply.stats.type_url, value=reply.stats.value)

    async def shutdown(self, timeout: float) -> None:
        """Ask the shim to exit once it serves no task (it may stay for others of its group)."""
        if self.dead is not None:
            return
        with contextlib.suppress(errors.WharfError):
            await self.stub.Shutdown(api.ShutdownRequest(id=self.id), timeout=timeout)
