"""``containerd.services.namespaces.v1.Namespaces``: a thin adapter over :class:`NamespaceStore`.

Each method parses the request, calls the store and builds the response;
:mod:`wharfd.runtime.services.boundary` turns typed errors into statuses.
Where containerd's service has behaviour of its own, it is kept: ``Get`` of a
namespace that does not exist answers with no labels, and ``List`` ignores
its filter. After each change, the optional ``publish`` callback receives the
event containerd would publish (``/namespaces/create``, ``/namespaces/update``,
``/namespaces/delete``), with :data:`wharfd.runtime.namespaces.current` set to
the namespace concerned, as containerd puts it in the event's context.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import empty_pb2
from google.protobuf.message import Message

from wharfd.api.events import namespace_pb2 as events_pb2
from wharfd.api.services.namespaces.v1 import namespace_pb2 as pb
from wharfd.api.services.namespaces.v1 import namespace_pb2_grpc as pb_grpc
from wharfd.runtime import namespaces
from wharfd.runtime.metadata.namespaces import Namespace, NamespaceStore
from wharfd.runtime.services import boundary

TOPIC_CREATE = "/namespaces/create"
TOPIC_UPDATE = "/namespaces/update"
TOPIC_DELETE = "/namespaces/delete"

Publish = Callable[[str, Message], Awaitable[None]]
"""Hands (topic, event) to the events exchange; the event's namespace is in ``namespaces.current``."""

Context = grpc.aio.ServicerContext[Any, Any]


def _to_proto(namespace: Namespace) -> pb.Namespace:
    return pb.Namespace(name=namespace.name, labels=namespace.labels)


class NamespacesService(pb_grpc.NamespacesServicer):
    """Servicer for the Namespaces API."""

    def __init__(self, store: NamespaceStore, publish: Publish | None = None) -> None:
        """Serve ``store``; ``publish``, when given, receives an event after each change."""
        self._store = store
        self._publish = publish

    @boundary.unary
    async def Get(self, request: pb.GetNamespaceRequest, context: Context) -> pb.GetNamespaceResponse:
        """Return the namespace's labels (none if it does not exist, as containerd answers)."""
        labels = await self._store.labels(request.name)
        return pb.GetNamespaceResponse(namespace=pb.Namespace(name=request.name, labels=labels))

    @boundary.unary
    async def List(self, request: pb.ListNamespacesRequest, context: Context) -> pb.ListNamespacesResponse:
        """Return every namespace; containerd ignores the filter, and so do we."""
        found = await self._store.list()
        return pb.ListNamespacesResponse(namespaces=[_to_proto(ns) for ns in found])

    @boundary.unary
    async def Create(
        self, request: pb.CreateNamespaceRequest, context: Context
    ) -> pb.CreateNamespaceResponse:
        """Create a namespace; AlreadyExists if it exists."""
        created = await self._store.create(request.namespace.name, dict(request.namespace.labels))
        event = events_pb2.NamespaceCreate(name=created.name, labels=request.namespace.labels)
        await self._emit(created.name, TOPIC_CREATE, event)
        return pb.CreateNamespaceResponse(namespace=_to_proto(created))

    @boundary.unary
    async def Update(
        self, request: pb.UpdateNamespaceRequest, context: Context
    ) -> pb.UpdateNamespaceResponse:
        """Set or remove labels by the update mask; no mask replaces them all."""
        name = request.namespace.name
        updated = await self._store.update(name, dict(request.namespace.labels), request.update_mask.paths)
        # containerd's event carries the labels of the request, not the result.
        await self._emit(
            name, TOPIC_UPDATE, events_pb2.NamespaceUpdate(name=name, labels=request.namespace.labels)
        )
        return pb.UpdateNamespaceResponse(namespace=_to_proto(updated))

    @boundary.unary
    async def Delete(self, request: pb.DeleteNamespaceRequest, context: Context) -> empty_pb2.Empty:
        """Delete an empty namespace; FailedPrecondition while it holds objects, NotFound if missing."""
        await self._store.delete(request.name)
        await self._emit(request.name, TOPIC_DELETE, events_pb2.NamespaceDelete(name=request.name))
        return empty_pb2.Empty()

    async def _emit(self, name: str, topic: str, event: Message) -> None:
        if self._publish is None:
            return
        token = namespaces.current.set(name)
        try:
            await self._publish(topic, event)
        finally:
            namespaces.current.reset(token)


def add_to_server(
    server: grpc.aio.Server, store: NamespaceStore, publish: Publish | None = None
) -> NamespacesService:
    """Register the Namespaces service on ``server`` and return the servicer."""
    service = NamespacesService(store, publish)
    # Generated grpc code carries no annotations.
    pb_grpc.add_NamespacesServicer_to_server(service, server)
    return service


class NamespacesPlugin:
    """The gRPC plugin: the Namespaces servicer over the metadata plugin's store."""

    def __init__(self, store: NamespaceStore, publish: Publish | None = None) -> None:
        self.service = NamespacesService(store, publish)

    def register(self, server: grpc.aio.Server) -> None:
        """Add the servicer to a gRPC server."""
        pb_grpc.add_NamespacesServicer_to_server(self.service, server)
