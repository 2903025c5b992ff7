"""containerd's Tasks service: the client API over the task manager.

Thin, as containerd's ``plugins/services/tasks/local.go``: Create reads the
container record (spec, runtime, runtime options) and hands the manager the
caller's rootfs mounts and stdio; everything else looks the task up and
forwards to its shim. Task events (/tasks/create, start, exit, delete, oom,
exec-added, exec-started, paused, resumed) come from the shims themselves,
over the daemon's ttrpc Events/Forward.

Not done here: restoring from a checkpoint descriptor (Create with
``checkpoint``: NotImplemented), and writing a checkpoint into the content
store (Checkpoint asks the shim to checkpoint into the task's work directory
and returns no descriptors).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import empty_pb2, timestamp_pb2

from wharfd.api.services.tasks.v1 import tasks_pb2 as pb
from wharfd.api.services.tasks.v1 import tasks_pb2_grpc as pb_grpc
from wharfd.api.types import metrics_pb2
from wharfd.api.types.task import task_pb2
from wharfd.runtime import errors, filters, namespaces
from wharfd.runtime.metadata.containers import ContainerStore
from wharfd.runtime.services import boundary
from wharfd.runtime.tasks.manager import CreateRequest, TaskManager
from wharfd.runtime.tasks.task import IO, Exit, Task

log = logging.getLogger("wharfd.tasks")
Context = grpc.aio.ServicerContext[Any, Any]
SPEC_TYPE = "types.containerd.io/opencontainers/runtime-spec/1/Spec"


def _delete_response(task_id: str, exit_: Exit) -> pb.DeleteResponse:
    return pb.DeleteResponse(id=task_id, pid=exit_.pid, exit_status=exit_.status, exited_at=exit_.exited_at)


def _adaptor(task: Task) -> filters.Adaptor:
    def get(path: Sequence[str]) -> str | None:
        field = path[0] if path else ""
        return {"id": task.id, "namespace": task.namespace}.get(field)

    return get


class TasksService(pb_grpc.TasksServicer):
    """Create, Start, Delete, DeleteProcess, Get, List, Kill, Exec, ResizePty, CloseIO, Pause,
    Resume, ListPids, Checkpoint, Update, Metrics, Wait."""

    def __init__(self, manager: TaskManager, containers: ContainerStore) -> None:
        self._manager = manager
        self._containers = containers

    @boundary.unary
    async def Create(self, request: pb.CreateTaskRequest, context: Context) -> pb.CreateTaskResponse:
        namespaces.required()
        if request.HasField("checkpoint") and request.checkpoint.digest:
            raise errors.NotImplemented(f"task {request.container_id}: restoring from a checkpoint")
        container = await self._containers.get(request.container_id)
        if container.spec is None:
            raise errors.InvalidArgument(f"container {container.id}: spec is missing")
        if container.spec.type_url.rsplit("/", 1)[-1] != "Spec":
            raise errors.InvalidArgument(
                f"container {container.id}: spec has type {container.spec.type_url!r}, want {SPEC_TYPE}"
            )
        options = request.options if request.HasField("options") else container.runtime_options
        task = await self._manager.create(
            container.id,
            CreateRequest(
                spec_json=container.spec.value,
                runtime=container.runtime_name,
                runtime_path=request.runtime_path,
                options=options,
                rootfs=list(request.rootfs),
                io=IO(request.stdin, request.stdout, request.stderr, request.terminal),
            ),
        )
        return pb.CreateTaskResponse(container_id=container.id, pid=task.pid)

    @boundary.unary
    async def Start(self, request: pb.StartRequest, context: Context) -> pb.StartResponse:
        task = self._manager.get(request.container_id)
        return pb.StartResponse(pid=await task.start(request.exec_id))

    @boundary.unary
    async def Delete(self, request: pb.DeleteTaskRequest, context: Context) -> pb.DeleteResponse:
        exit_ = await self._manager.delete(request.container_id)
        return _delete_response(request.container_id, exit_)

    @boundary.unary
    async def DeleteProcess(self, request: pb.DeleteProcessRequest, context: Context) -> pb.DeleteResponse:
        if not request.exec_id:
            raise errors.InvalidArgument("exec_id is required to delete a process; use Delete for the task")
        task = self._manager.get(request.container_id)
        return _delete_response(request.exec_id, await task.delete(request.exec_id))

    @boundary.unary
    async def Get(self, request: pb.GetRequest, context: Context) -> pb.GetResponse:
        task = self._manager.get(request.container_id)
        return pb.GetResponse(process=await task.state(request.exec_id))

    @boundary.unary
    async def List(self, request: pb.ListTasksRequest, context: Context) -> pb.ListTasksResponse:
        tasks = self._manager.list()
        timeout = self._manager.timeouts.state
        states = await asyncio.gather(*(t.state(timeout=timeout) for t in tasks), return_exceptions=True)
        processes: list[task_pb2.Process] = []
        for task, state in zip(tasks, states, strict=True):
            if isinstance(state, BaseException):
                # One hung or vanished shim must not hide every other task.
                log.warning("task %s: state: %s", task.id, state)
                processes.append(task_pb2.Process(container_id=task.id, id=task.id, status=task_pb2.UNKNOWN))
                continue
            processes.append(state)
        return pb.ListTasksResponse(tasks=processes)

    @boundary.unary
    async def Kill(self, request: pb.KillRequest, context: Context) -> empty_pb2.Empty:
        task = self._manager.get(request.container_id)
        await task.kill(request.signal, all_=request.all, exec_id=request.exec_id)
        return empty_pb2.Empty()

    @boundary.unary
    async def Exec(self, request: pb.ExecProcessRequest, context: Context) -> empty_pb2.Empty:
        if not request.exec_id:
            raise errors.InvalidArgument("exec_id must be set")
        if not request.HasField("spec"):
            raise errors.InvalidArgument(f"exec {request.exec_id}: process spec must be set")
        task = self._manager.get(request.container_id)
        io = IO(request.stdin, request.stdout, request.stderr, request.terminal)
        await task.exec(request.exec_id, io, request.spec)
        return empty_pb2.Empty()

    @boundary.unary
    async def ResizePty(self, request: pb.ResizePtyRequest, context: Context) -> empty_pb2.Empty:
        task = self._manager.get(request.container_id)
        await task.resize_pty(request.width, request.height, request.exec_id)
        return empty_pb2.Empty()

    @boundary.unary
    async def CloseIO(self, request: pb.CloseIORequest, context: Context) -> empty_pb2.Empty:
        task = self._manager.get(request.container_id)
        if request.stdin:
            await task.close_io(request.exec_id, stdin=True)
        return empty_pb2.Empty()

    @boundary.unary
    async def Pause(self, request: pb.PauseTaskRequest, context: Context) -> empty_pb2.Empty:
        await self._manager.get(request.container_id).pause()
        return empty_pb2.Empty()

    @boundary.unary
    async def Resume(self, request: pb.ResumeTaskRequest, context: Context) -> empty_pb2.Empty:
        await self._manager.get(request.container_id).resume()
        return empty_pb2.Empty()

    @boundary.unary
    async def ListPids(self, request: pb.ListPidsRequest, context: Context) -> pb.ListPidsResponse:
        task = self._manager.get(request.container_id)
        return pb.ListPidsResponse(processes=await task.pids())

    @boundary.unary
    async def Checkpoint(
        self, request: pb.CheckpointTaskRequest, context: Context
    ) -> pb.CheckpointTaskResponse:
        task = self._manager.get(request.container_id)
        path = task.bundle.work / "checkpoint"
        options = request.options if request.HasField("options") else None
        await task.checkpoint(str(path), options)
        return pb.CheckpointTaskResponse()

    @boundary.unary
    async def Update(self, request: pb.UpdateTaskRequest, context: Context) -> empty_pb2.Empty:
        task = self._manager.get(request.container_id)
        resources = request.resources if request.HasField("resources") else None
        await task.update(resources, dict(request.annotations))
        return empty_pb2.Empty()

    @boundary.unary
    async def Metrics(self, request: pb.MetricsRequest, context: Context) -> pb.MetricsResponse:
        flt = filters.parse(request.filters)
        tasks = [t for t in self._manager.list() if t.dead is None and flt.matches(_adaptor(t))]
        stats = await asyncio.gather(*(t.stats() for t in tasks), return_exceptions=True)
        metrics = []
        for task, data in zip(tasks, stats, strict=True):
            if isinstance(data, BaseException):
                log.warning("task %s: stats: %s", task.id, data)
                continue
            now = timestamp_pb2.Timestamp()
            now.GetCurrentTime()
            metrics.append(metrics_pb2.Metric(timestamp=now, id=task.id, data=data))
        return pb.MetricsResponse(metrics=metrics)

    @boundary.unary
    async def Wait(self, request: pb.WaitRequest, context: Context) -> pb.WaitResponse:
        task = self._manager.get(request.container_id)
        exit_ = await task.wait(request.exec_id)
        return pb.WaitResponse(exit_status=exit_.status, exited_at=exit_.exited_at)

    def register(self, server: grpc.aio.Server) -> None:
        """Add the servicer to a gRPC server."""
        pb_grpc.add_TasksServicer_to_server(self, server)
