"""containerd's Events service (gRPC) and the ttrpc Events/Forward endpoint shims call."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import empty_pb2

from wharfd.api.services.events.v1 import events_pb2 as pb
from wharfd.api.services.events.v1 import events_pb2_grpc as pb_grpc
from wharfd.api.types import event_pb2
from wharfd.runtime import errors, namespaces
from wharfd.runtime.events import Exchange, validate_topic
from wharfd.runtime.services import boundary

Context = grpc.aio.ServicerContext[Any, Any]


class EventsService(pb_grpc.EventsServicer):
    """Publish, Forward and Subscribe over the daemon's exchange."""

    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange

    @boundary.unary
    async def Publish(self, request: pb.PublishRequest, context: Context) -> empty_pb2.Empty:
        ns = namespaces.required()
        validate_topic(request.topic)
        envelope = event_pb2.Envelope(namespace=ns, topic=request.topic, event=request.event)
        envelope.timestamp.GetCurrentTime()
        await self._exchange.forward(envelope)
        return empty_pb2.Empty()

    @boundary.unary
    async def Forward(self, request: pb.ForwardRequest, context: Context) -> empty_pb2.Empty:
        if not request.HasField("envelope"):
            raise errors.InvalidArgument("forward: envelope is required")
        await self._exchange.forward(request.envelope)
        return empty_pb2.Empty()

    @boundary.stream
    async def Subscribe(
        self, request: pb.SubscribeRequest, context: Context
    ) -> AsyncIterator[event_pb2.Envelope]:
        async with self._exchange.subscribe(request.filters) as sub:
            async for envelope in sub:
                yield envelope

    def register(self, server: grpc.aio.Server) -> None:
        """Add the servicer to a gRPC server."""
        pb_grpc.add_EventsServicer_to_server(self, server)
