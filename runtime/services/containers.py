"""containerd's Containers service over the container store, publishing /containers/* events.

Thin, as containerd's ``plugins/services/containers/local.go``: convert the
message, call the store, publish the event once the change is committed.
ListStream sends one container per message, as containerd does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import any_pb2, empty_pb2
from google.protobuf.message import Message

from wharfd.api.events import container_pb2 as events_pb2
from wharfd.api.services.containers.v1 import containers_pb2 as pb
from wharfd.api.services.containers.v1 import containers_pb2_grpc as pb_grpc
from wharfd.runtime import errors
from wharfd.runtime.metadata.containers import Container, ContainerStore
from wharfd.runtime.services import boundary
from wharfd.runtime.services.convert import timestamp
from wharfd.runtime.services.images import Collector, Publish

Context = grpc.aio.ServicerContext[Any, Any]


def _copy(value: any_pb2.Any | None) -> any_pb2.Any | None:
    return None if value is None else _clone(value)


def _clone(value: any_pb2.Any) -> any_pb2.Any:
    # A copy, so store records and messages never share (mutable) Any instances.
    return any_pb2.Any(type_url=value.type_url, value=value.value)


def to_proto(c: Container) -> pb.Container:
    """A ``containerd.services.containers.v1.Container`` message."""
    return pb.Container(
        id=c.id,
        labels=c.labels,
        image=c.image,
        runtime=pb.Container.Runtime(name=c.runtime_name, options=_copy(c.runtime_options)),
        spec=_copy(c.spec),
        snapshotter=c.snapshotter,
        snapshot_key=c.snapshot_key,
        created_at=timestamp(c.created_at),
        updated_at=timestamp(c.updated_at),
        extensions={name: _clone(ext) for name, ext in c.extensions.items()},
        sandbox=c.sandbox_id,
    )


def from_proto(msg: pb.Container) -> Container:
    """A store Container from the API message (timestamps are the store's to set)."""
    runtime = msg.runtime
    return Container(
        id=msg.id,
        image=msg.image,
        labels=dict(msg.labels),
        runtime_name=runtime.name,
        runtime_options=_copy(runtime.options) if runtime.HasField("options") else None,
        spec=_copy(msg.spec) if msg.HasField("spec") else None,
        snapshotter=msg.snapshotter,
        snapshot_key=msg.snapshot_key,
        sandbox_id=msg.sandbox,
        extensions={name: _clone(ext) for name, ext in msg.extensions.items()},
    )


class ContainersService(pb_grpc.ContainersServicer):
    """Get, List, ListStream, Create, Update, Delete.

    ``store`` is public: the task manager reads containers through it.
    """

    def __init__(
        self, store: ContainerStore, publish: Publish | None = None, gc: Collector | None = None
    ) -> None:
        self.store = store
        self._publish = publish
        self._gc = gc

    async def _event(self, topic: str, event: Message) -> None:
        if self._publish is not None:
            await self._publish(topic, event)

    @boundary.unary
    async def Get(self, request: pb.GetContainerRequest, context: Context) -> pb.GetContainerResponse:
        return pb.GetContainerResponse(container=to_proto(await self.store.get(request.id)))

    @boundary.unary
    async def List(self, request: pb.ListContainersRequest, context: Context) -> pb.ListContainersResponse:
        found = await self.store.list(request.filters)
        return pb.ListContainersResponse(containers=[to_proto(c) for c in found])

    @boundary.stream
    async def ListStream(
        self, request: pb.ListContainersRequest, context: Context
    ) -> AsyncIterator[pb.ListContainerMessage]:
        # One read transaction, then one message per container: a consistent listing
        # that does not hold a reader while a slow client drains the stream.
        for c in await self.store.list(request.filters):
            yield pb.ListContainerMessage(container=to_proto(c))

    @boundary.unary
    async def Create(
        self, request: pb.CreateContainerRequest, context: Context
    ) -> pb.CreateContainerResponse:
        created = await self.store.create(from_proto(request.container))
        runtime = events_pb2.ContainerCreate.Runtime(
            name=created.runtime_name, options=_copy(created.runtime_options)
        )
        await self._event(
            "/containers/create",
            events_pb2.ContainerCreate(id=created.id, image=created.image, runtime=runtime),
        )
        return pb.CreateContainerResponse(container=to_proto(created))

    @boundary.unary
    async def Update(
        self, request: pb.UpdateContainerRequest, context: Context
    ) -> pb.UpdateContainerResponse:
        if not request.container.id:
            raise errors.InvalidArgument("Container.ID required")
        paths = list(request.update_mask.paths) if request.HasField("update_mask") else []
        updated = await self.store.update(from_proto(request.container), paths)
        event = events_pb2.ContainerUpdate(
            id=updated.id, image=updated.image, labels=updated.labels, snapshot_key=updated.snapshot_key
        )
        await self._event("/containers/update", event)
        return pb.UpdateContainerResponse(container=to_proto(updated))

    @boundary.unary
    async def Delete(self, request: pb.DeleteContainerRequest, context: Context) -> empty_pb2.Empty:
        await self.store.delete(request.id)
        await self._event("/containers/delete", events_pb2.ContainerDelete(id=request.id))
        if self._gc is not None:
            # The container's snapshot may now be unreferenced (containerd marks the db dirty).
            self._gc.schedule()
        return empty_pb2.Empty()

    def register(self, server: grpc.aio.Server) -> None:
        """Add the servicer to a gRPC server."""
        pb_grpc.add_ContainersServicer_to_server(self, server)
