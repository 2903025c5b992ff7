"""Serve and call protobuf-defined services over ttrpc, with decoding done from the descriptor.

Server side, :func:`register_service` routes every RPC of a service
descriptor to the method of the same name on an implementation object::

    class TaskService:
        async def State(self, request: StateRequest, metadata: Metadata) -> StateResponse: ...
        # server streaming:  async def Logs(self, request, metadata) -> AsyncIterator[Reply]  (a generator)
        # client streaming:  async def Push(self, requests: AsyncIterator[Req], metadata) -> Reply
        # bidi streaming:    async def Chat(self, requests, metadata) -> AsyncIterator[Reply]

    register_service(server, shim_pb2.DESCRIPTOR.services_by_name["Task"], TaskService())

RPCs the object lacks are left unregistered, so callers get Unimplemented.
Client side, :class:`Stub` gives ``await stub.State(request, timeout=5)`` for
unary RPCs and returns a :class:`~wharfd.runtime.ttrpc.stream.ClientStream`
for streaming ones (``stub.Logs(request)``, ``stub.Push()``).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from wharfd.runtime import errors
from wharfd.runtime.ttrpc.client import MetadataIn, TtrpcClient
from wharfd.runtime.ttrpc.server import Kind, Metadata, TtrpcServer

_UNSET: Any = object()


def _kind(method: MethodDescriptor) -> Kind:
    return Kind((method.client_streaming, method.server_streaming))


def register_service(server: TtrpcServer, service: ServiceDescriptor, impl: object) -> list[str]:
    """Register each RPC of ``service`` that ``impl`` implements; returns the method names registered."""
    registered = []
    for method in service.methods:
        fn = getattr(impl, method.name, None)
        if fn is None:
            continue
        request_type = message_factory.GetMessageClass(method.input_type)
        response_type = message_factory.GetMessageClass(method.output_type)
        kind = _kind(method)
        decode = functools.partial(_decode, request_type, method.full_name)
        encode = functools.partial(_encode, response_type, method.full_name)
        if kind is Kind.UNARY:
            server.register(service.full_name, method.name, _unary(fn, decode, encode))
        elif kind is Kind.SERVER_STREAM:
            server.register_server_stream(service.full_name, method.name, _server_stream(fn, decode, encode))
        elif kind is Kind.CLIENT_STREAM:
            server.register_client_stream(service.full_name, method.name, _client_stream(fn, decode, encode))
        else:
            server.register_bidi_stream(service.full_name, method.name, _bidi_stream(fn, decode, encode))
        registered.append(method.name)
    return registered


def _decode(message_type: type[Message], name: str, data: bytes) -> Message:
    try:
        return message_type.FromString(data)
    except DecodeError as exc:
        # Go answers codes.Internal here; InvalidArgument names the real culprit, the request.
        raise errors.InvalidArgument(f"{name}: error unmarshalling request: {exc}") from exc


def _encode(message_type: type[Message], name: str, message: object) -> bytes:
    if not isinstance(message, message_type):
        raise TypeError(f"{name} returned {type(message).__name__}, not {message_type.__name__}")
    return message.SerializeToString()


Decode = Callable[[bytes], Message]
Encode = Callable[[object], bytes]


def _unary(
    fn: Callable[..., Awaitable[Any]], decode: Decode, encode: Encode
) -> Callable[..., Awaitable[bytes]]:
    async def handler(payload: bytes, metadata: Metadata) -> bytes:
        return encode(await fn(decode(payload), metadata))

    return handler


def _server_stream(
    fn: Callable[..., AsyncIterator[Any]], decode: Decode, encode: Encode
) -> Callable[..., AsyncIterator[bytes]]:
    async def handler(payload: bytes, metadata: Metadata) -> AsyncIterator[bytes]:
        async for reply in fn(decode(payload), metadata):
            yield encode(reply)

    return handler


async def _decoded(messages: AsyncIterator[bytes], decode: Decode) -> AsyncIterator[Message]:
    async for data in messages:
        yield decode(data)


def _client_stream(
    fn: Callable[..., Awaitable[Any]], decode: Decode, encode: Encode
) -> Callable[..., Awaitable[bytes]]:
    async def handler(messages: AsyncIterator[bytes], metadata: Metadata) -> bytes:
        return encode(await fn(_decoded(messages, decode), metadata))

    return handler


def _bidi_stream(
    fn: Callable[..., AsyncIterator[Any]], decode: Decode, encode: Encode
) -> Callable[..., AsyncIterator[bytes]]:
    async def handler(messages: AsyncIterator[bytes], metadata: Metadata) -> AsyncIterator[bytes]:
        async for reply in fn(_decoded(messages, decode), metadata):
            yield encode(reply)

    return handler


class Stub:
    """Calls the RPCs of ``service`` on ``client`` as attributes named after them.

    ``timeout`` and ``metadata`` are defaults for every call (e.g. the
    ``containerd-namespace-ttrpc`` of the task); a call's own arguments win,
    its metadata merged over the defaults.
    """

    def __init__(
        self,
        client: TtrpcClient,
        service: ServiceDescriptor,
        *,
        timeout: float | None = None,
        metadata: MetadataIn | None = None,
    ) -> None:
        self._client = client
        self._service = service
        self._timeout = timeout
        self._metadata = dict(metadata or {})
        # Bound on first use: a daemon holds a stub per task and most tasks call a few methods.
        self._methods: dict[str, Callable[..., Any]] = {}

    def __getattr__(self, name: str) -> Any:
        methods = self.__dict__["_methods"]
        bound = methods.get(name)
        if bound is None:
            method = self._service.methods_by_name.get(name)
            if method is None:
                raise AttributeError(f"service {self._service.full_name} has no method {name}")
            bound = methods[name] = self._bind(method)
        return bound

    def _options(self, timeout: float | None, metadata: MetadataIn | None) -> dict[str, Any]:
        merged = {**self._metadata, **metadata} if metadata else self._metadata
        return {"timeout": self._timeout if timeout is _UNSET else timeout, "metadata": merged}

    def _bind(self, method: MethodDescriptor) -> Callable[..., Any]:
        service, name = self._service.full_name, method.name
        response_type = message_factory.GetMessageClass(method.output_type)
        kind = _kind(method)

        if kind is Kind.UNARY:

            async def call(
                request: Message,
                *,
                timeout: float | None = _UNSET,
                metadata: MetadataIn | None = None,
            ) -> Message:
                options = self._options(timeout, metadata)
                return await self._client.call(service, name, request, response_type, **options)

            return call

        def open_stream(
            request: Message | None = None,
            *,
            timeout: float | None = _UNSET,
            metadata: MetadataIn | None = None,
        ) -> Any:
            return self._client.stream(
                service,
                name,
                request,
                response_type,
                client_streaming=kind.client_streaming,
                server_streaming=kind.server_streaming,
                **self._options(timeout, metadata),
            )

        return open_stream
