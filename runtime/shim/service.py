"""The Task service (``containerd.task.v2.Task`` and ``containerd.task.v3.Task``) of the shim.

Handlers are thin: decode, find the container, call it, publish the event,
encode. Exits are handled here, because their order matters to the daemon:

* an exit reported while ``Start`` runs is held until ``TaskStart`` is queued;
* a container's init exit is published last, after the exits of its execs
  (and, without a pid namespace, after every leftover process was killed);
* exits of processes whose pid runc had not yet written are caught by the
  reaper's subscription window around ``runc create``/``exec``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Coroutine
from types import SimpleNamespace
from typing import Any

from google.protobuf import any_pb2, empty_pb2, timestamp_pb2
from google.protobuf.message import Message

from wharfd.api.events import task_pb2 as ev
from wharfd.api.runtime.task.v3 import shim_pb2 as api
from wharfd.api.types.runc.options import oci_pb2
from wharfd.runtime import errors
from wharfd.runtime.shim import cgroups, options
from wharfd.runtime.shim.container import Container
from wharfd.runtime.shim.events import Publisher
from wharfd.runtime.shim.process import Process
from wharfd.runtime.shim.reaper import Exit, Reaper
from wharfd.runtime.shim.stdio import Stdio
from wharfd.runtime.ttrpc.protocol import NAMESPACE_KEY
from wharfd.runtime.ttrpc.server import Metadata, TtrpcServer
from wharfd.runtime.ttrpc.services import register_service

log = logging.getLogger("wharfd.shim")

TASK_V3 = api.DESCRIPTOR.services_by_name["Task"]
TASK_V2_NAME = "containerd.task.v2.Task"
EMPTY = empty_pb2.Empty()
PROCESS_DETAILS_TYPE = "containerd.runc.v1.ProcessDetails"


def timestamp(ns: int) -> timestamp_pb2.Timestamp | None:
    """A protobuf Timestamp from Unix nanoseconds; None (field left unset) for zero."""
    if not ns:
        return None
    return timestamp_pb2.Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


class TaskService:
    """The containers of one shim and the 17 Task calls over them."""

    def __init__(
        self,
        *,
        namespace: str,
        reaper: Reaper,
        publisher: Publisher,
        opts: oci_pb2.Options,
        version: str = "",
    ) -> None:
        """``opts`` are the runc options from the launch; Create's own options override them."""
        self.namespace, self.reaper, self.publisher = namespace, reaper, publisher
        self.opts, self.version = opts, version
        self.containers: dict[str, Container] = {}
        self.shutdown_requested = asyncio.Event()
        self.oom = cgroups.OomWatcher(self._on_oom)
        self._monitors: set[asyncio.Task[None]] = set()
        self._creating: set[str] = set()

    def register(self, server: TtrpcServer) -> None:
        """Serve the Task calls on ``server`` as ``containerd.task.v3.Task`` and ``.v2.Task``.

        The v2 service carries the same messages on the wire, so its calls are
        routed to the same handlers.
        """
        methods = SimpleNamespace(
            State=self.state,
            Create=self.create,
            Start=self.start,
            Delete=self.delete,
            Pids=self.pids,
            Pause=self.pause,
            Resume=self.resume,
            Checkpoint=self.checkpoint,
            Kill=self.kill,
            Exec=self.exec,
            ResizePty=self.resize_pty,
            CloseIO=self.close_io,
            Update=self.update,
            Wait=self.wait,
            Stats=self.stats,
            Connect=self.connect,
            Shutdown=self.shutdown,
        )
        for name in register_service(server, TASK_V3, methods):
            server.register(TASK_V2_NAME, name, server.lookup(TASK_V3.full_name, name).handler)

    def _get(self, container_id: str) -> Container:
        container = self.containers.get(container_id)
        if container is None:
            raise errors.NotFound(f"container {container_id} not found")
        return container

    def _publish(self, container: Container, event: Message) -> None:
        self.publisher.publish(container.namespace, event)

    # -- lifecycle ---------------------------------------------------------------------------

    async def create(self, req: api.CreateTaskRequest, md: Metadata) -> api.CreateTaskResponse:
        """Create the container (runc create) and watch its init process."""
        if not req.id:
            raise errors.InvalidArgument("create: id must not be empty")
        if req.id in self.containers or req.id in self._creating:
            raise errors.AlreadyExists(f"container {req.id} already exists")
        namespace = (md.get(NAMESPACE_KEY) or [self.namespace])[0]
        opts = options.from_any(req.options if req.HasField("options") else None) or self.opts
        self._creating.add(req.id)  # a second Create of the id must not run runc meanwhile
        try:
            with self.reaper.subscribe() as early:
                container = await Container.create(req, namespace=namespace, opts=opts, reaper=self.reaper)
                exited = self._exit_future(container.init.pid, early)
        finally:
            self._creating.discard(req.id)
        container.init_exited = exited
        self.containers[req.id] = container
        # Run just after the reply is written, and before any later call or exit is handled
        # (call_soon callbacks run first in the next loop iteration): off Create's latency.
        asyncio.get_running_loop().call_soon(self._created, container, req)
        self._monitor(self._init_exited(container, exited))
        return api.CreateTaskResponse(pid=container.init.pid)

    def _created(self, container: Container, req: api.CreateTaskRequest) -> None:
        """A new container's cgroup, its TaskCreate event and its OOM watch."""
        if self.containers.get(container.id) is not container:
            return
        container.find_cgroup()
        self._publish(
            container,
            ev.TaskCreate(
                container_id=req.id,
                bundle=container.bundle,
                rootfs=req.rootfs,
                checkpoint=req.checkpoint,
                io=ev.TaskIO(stdin=req.stdin, stdout=req.stdout, stderr=req.stderr, terminal=req.terminal),
                pid=container.init.pid,
            ),
        )
        # Watched from create on, not start: a process the OOM killer takes right after
        # runc start must not be missed (nor its kill counted into the baseline).
        try:
            self.oom.add(container.id, container.cgroup)
        except OSError as exc:
            log.warning("container %s: cannot watch for OOM kills: %s", container.id, exc)

    async def start(self, req: api.StartRequest, md: Metadata) -> api.StartResponse:
        """Start the init process (runc start) or a recorded exec process."""
        container = self._get(req.id)
        if req.exec_id:
            return api.StartResponse(pid=await self._start_exec(container, container.process(req.exec_id)))
        with container.init.hold():  # its exit must not overtake TaskStart
            pid = await container.start()
            self._publish(container, ev.TaskStart(container_id=container.id, pid=pid))
        return api.StartResponse(pid=pid)

    async def _start_exec(self, container: Container, proc: Process) -> int:
        if container.init_exit is not None:
            raise errors.FailedPrecondition(f"container {container.id} init process is not running")
        container.exec_started()
        try:
            with self.reaper.subscribe() as early:
                pid = await container.start_exec(proc, self.reaper)
                exited = self._exit_future(pid, early)
        except BaseException:
            container.exec_finished()
            raise
        self._publish(container, ev.TaskExecStarted(container_id=container.id, exec_id=proc.id, pid=pid))
        self._monitor(self._exec_exited(container, proc, exited))
        return pid

    async def delete(self, req: api.DeleteRequest, md: Metadata) -> api.DeleteResponse:
        """Delete an exec process, or the container (runc delete, rootfs unmounted)."""
        container = self._get(req.id)
        if req.exec_id:
            proc = container.process(req.exec_id)
            await container.delete_exec(proc)
        else:
            proc = container.init
            await container.delete()
            self.oom.remove(container.id)
            del self.containers[container.id]
            self._publish(
                container,
                ev.TaskDelete(
                    container_id=container.id,
                    pid=proc.pid,
                    exit_status=proc.exit_status,
                    exited_at=timestamp(proc.exited_at_ns),
                    id=container.id,
                ),
            )
        return api.DeleteResponse(
            pid=proc.pid, exit_status=proc.exit_status, exited_at=timestamp(proc.exited_at_ns)
        )

    async def exec(self, req: api.ExecProcessRequest, md: Metadata) -> empty_pb2.Empty:
        """Record an exec process to be started by Start."""
        container = self._get(req.id)
        stdio = Stdio(req.stdin, req.stdout, req.stderr, req.terminal)
        container.add_exec(req.exec_id, stdio, req.spec.value)
        self._publish(container, ev.TaskExecAdded(container_id=container.id, exec_id=req.exec_id))
        return EMPTY

    async def pause(self, req: api.PauseRequest, md: Metadata) -> empty_pb2.Empty:
        """Freeze the container."""
        container = self._get(req.id)
        await container.pause()
        self._publish(container, ev.TaskPaused(container_id=container.id))
        return EMPTY

    async def resume(self, req: api.ResumeRequest, md: Metadata) -> empty_pb2.Empty:
        """Thaw the container."""
        container = self._get(req.id)
        await container.resume()
        self._publish(container, ev.TaskResumed(container_id=container.id))
        return EMPTY

    async def kill(self, req: api.KillRequest, md: Metadata) -> empty_pb2.Empty:
        """Signal a process (``all``: every process of the container)."""
        await self._get(req.id).kill(req.exec_id, req.signal, req.all)
        return EMPTY

    async def checkpoint(self, req: api.CheckpointTaskRequest, md: Metadata) -> empty_pb2.Empty:
        """runc checkpoint into ``path``."""
        container = self._get(req.id)
        await container.checkpoint(req.path, options.checkpoint_from_any(req.options))
        return EMPTY

    async def update(self, req: api.UpdateTaskRequest, md: Metadata) -> empty_pb2.Empty:
        """Apply new resources (LinuxResources JSON) to the container."""
        if not req.resources.value:
            raise errors.InvalidArgument(f"update {req.id}: resources must not be empty")
        await self._get(req.id).update(req.resources.value)
        return EMPTY

    # -- queries -------------------------------------------------------------------------------

    async def state(self, req: api.StateRequest, md: Metadata) -> api.StateResponse:
        """The state of a process."""
        container = self._get(req.id)
        proc = container.process(req.exec_id)
        return api.StateResponse(
            id=proc.id,
            bundle=container.bundle,
            pid=proc.pid,
            status=proc.state.status,
            stdin=proc.stdio.stdin,
            stdout=proc.stdio.stdout,
            stderr=proc.stdio.stderr,
            terminal=proc.stdio.terminal,
            exit_status=proc.exit_status,
            exited_at=timestamp(proc.exited_at_ns),
            exec_id=req.exec_id,
        )

    async def wait(self, req: api.WaitRequest, md: Metadata) -> api.WaitResponse:
        """Block until the process exits."""
        proc = self._get(req.id).process(req.exec_id)
        await proc.wait()
        return api.WaitResponse(exit_status=proc.exit_status, exited_at=timestamp(proc.exited_at_ns))

    async def pids(self, req: api.PidsRequest, md: Metadata) -> api.PidsResponse:
        """The container's pids; exec processes are marked with their exec id."""
        container = self._get(req.id)
        by_pid = {proc.pid: proc.id for proc in container.execs.values() if proc.pid}
        response = api.PidsResponse()
        for pid in await container.pids():
            info = response.processes.add(pid=pid)
            if pid in by_pid:
                details = oci_pb2.ProcessDetails(exec_id=by_pid[pid]).SerializeToString()
                info.info.CopyFrom(any_pb2.Any(type_url=PROCESS_DETAILS_TYPE, value=details))
        return response

    async def stats(self, req: api.StatsRequest, md: Metadata) -> api.StatsResponse:
        """cgroup metrics of the container."""
        container = self._get(req.id)
        if not container.cgroup.dirs:
            raise errors.NotFound(f"container {req.id}: cgroup does not exist")
        return api.StatsResponse(stats=cgroups.metrics(container.cgroup))

    async def resize_pty(self, req: api.ResizePtyRequest, md: Metadata) -> empty_pb2.Empty:
        """Set a process's terminal size."""
        self._get(req.id).process(req.exec_id).resize(req.width, req.height)
        return EMPTY

    async def close_io(self, req: api.CloseIORequest, md: Metadata) -> empty_pb2.Empty:
        """Close a process's stdin."""
        proc = self._get(req.id).process(req.exec_id)
        if req.stdin:
            proc.close_stdin()
        return EMPTY

    async def connect(self, req: api.ConnectRequest, md: Metadata) -> api.ConnectResponse:
        """The shim's pid, the task's pid and the shim's version."""
        container = self.containers.get(req.id)
        return api.ConnectResponse(
            shim_pid=os.getpid(), task_pid=container.init.pid if container else 0, version=self.version
        )

    async def shutdown(self, req: api.ShutdownRequest, md: Metadata) -> empty_pb2.Empty:
        """Exit once no container is left (or now, with ``now``)."""
        if req.now or not self.containers:
            self.shutdown_requested.set()
        return EMPTY

    # -- exits ---------------------------------------------------------------------------------

    def _exit_future(self, pid: int, early: dict[int, Exit]) -> asyncio.Future[Exit]:
        """The exit of a pid just learned: from the subscription window if it already came."""
        if pid in early:
            future: asyncio.Future[Exit] = asyncio.get_running_loop().create_future()
            future.set_result(early[pid])
            return future
        return self.reaper.watch(pid)

    def _monitor(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._monitors.add(task)
        task.add_done_callback(self._monitors.discard)

    async def _init_exited(self, container: Container, exited: asyncio.Future[Exit]) -> None:
        exit_ = await exited
        container.init_exit = exit_
        await container.init.released()
        await container.resume_if_paused()
        if container.kill_all_on_exit:
            await container.kill_all()
        await container.execs_idle()
        container.init.set_exited(exit_.status, exit_.at_ns)
        # Published right after the waiters answer (queued behind their wake-ups), so the
        # event's OOM check and encoding do not delay Wait; before any later call still.
        asyncio.get_running_loop().call_soon(self._publish_exit, container, container.init, exit_)

    async def _exec_exited(self, container: Container, proc: Process, exited: asyncio.Future[Exit]) -> None:
        exit_ = await exited
        proc.set_exited(exit_.status, exit_.at_ns)
        asyncio.get_running_loop().call_soon(self._publish_exit, container, proc, exit_)
        container.exec_finished()  # after: the init's exit is published behind this one

    def _publish_exit(self, container: Container, proc: Process, exit_: Exit) -> None:
        # An OOM kill in the cgroup (this process, SIGKILLed, or a child of it) is published
        # first, as containerd orders them, even if its wake-up has not been dispatched yet
        # or never comes (v1 does not signal every kill): one small file read per exit.
        self.oom.flush(container.id)
        self._publish(
            container,
            ev.TaskExit(
                container_id=container.id,
                id=proc.id,
                pid=exit_.pid,
                exit_status=exit_.status,
                exited_at=timestamp(exit_.at_ns),
            ),
        )

    def _on_oom(self, container_id: str) -> None:
        container = self.containers.get(container_id)
        if container is not None:
            self._publish(container, ev.TaskOOM(container_id=container_id))

    async def close(self) -> None:
        """Stop watching exits and OOMs (the shim is exiting)."""
        self.oom.close()
        for task in list(self._monitors):
            task.cancel()
