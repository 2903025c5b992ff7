"""An asyncio ttrpc server, compatible with Go ttrpc clients.

Methods are registered per (service, method) on the payload bytes; the typed
layer over protobuf service descriptors is :mod:`wharfd.runtime.ttrpc.services`.
The four shapes::

    unary           handler(payload, metadata) -> Awaitable[bytes]
    server stream   handler(payload, metadata) -> AsyncIterator[bytes]
    client stream   handler(messages, metadata) -> Awaitable[bytes]
    bidi stream     handler(messages, metadata) -> AsyncIterator[bytes]

``messages`` is an async iterator of the client's payloads; ``metadata`` maps
each key to its values. Every call runs in its own task, so calls on one
connection proceed concurrently and complete in any order. A typed error (or
``timeout_nano`` running out) becomes the Response's ``google.rpc.Status``; a
call for an unknown service or method answers Unimplemented with Go's text
(``service X`` / ``method Y``); frames over 4 MiB are refused with
ResourceExhausted on their stream. The call's ``containerd-namespace-ttrpc``
metadata is put into :data:`wharfd.runtime.namespaces.current` for the handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError

from wharfd.api.ttrpc import request_pb2
from wharfd.runtime import errors, namespaces
from wharfd.runtime.ttrpc import protocol
from wharfd.runtime.ttrpc.connection import FrameConnection, Inbox

log = logging.getLogger("wharfd.ttrpc")

Metadata = dict[str, list[str]]
Handler = Callable[[bytes, Metadata], Awaitable[bytes]]
ServerStreamHandler = Callable[[bytes, Metadata], AsyncIterator[bytes]]
ClientStreamHandler = Callable[[AsyncIterator[bytes], Metadata], Awaitable[bytes]]
BidiStreamHandler = Callable[[AsyncIterator[bytes], Metadata], AsyncIterator[bytes]]

_CLOSE_FLAGS = protocol.FLAG_REMOTE_CLOSED | protocol.FLAG_NO_DATA


class Kind(enum.Enum):
    """The shape of a method: whether the client, the server, or both stream."""

    UNARY = (False, False)
    SERVER_STREAM = (False, True)
    CLIENT_STREAM = (True, False)
    BIDI_STREAM = (True, True)

    @property
    def client_streaming(self) -> bool:
        """The client sends a stream of messages."""
        return self.value[0]

    @property
    def server_streaming(self) -> bool:
        """The server sends a stream of messages."""
        return self.value[1]


@dataclass(frozen=True, slots=True)
class _Method:
    kind: Kind
    handler: Callable[..., Any]


class TtrpcServer:
    """Serves registered ttrpc methods on unix sockets.

    ``require_same_user`` refuses peers whose SO_PEERCRED uid/gid differ from
    ours, as shims do (Go's ``UnixSocketRequireSameUser``).
    """

    def __init__(self, *, require_same_user: bool = False) -> None:
        self._services: dict[str, dict[str, _Method]] = {}
        self._servers: list[asyncio.AbstractServer] = []
        self._connections: set[_ServerConnection] = set()
        self.require_same_user = require_same_user

    def register(self, service: str, method: str, handler: Handler) -> None:
        """Route the unary ``service/method`` to ``handler``."""
        self._add(service, method, _Method(Kind.UNARY, handler))

    def register_server_stream(self, service: str, method: str, handler: ServerStreamHandler) -> None:
        """Route a server-streaming method: ``handler`` yields the replies to one request."""
        self._add(service, method, _Method(Kind.SERVER_STREAM, handler))

    def register_client_stream(self, service: str, method: str, handler: ClientStreamHandler) -> None:
        """Route a client-streaming method: ``handler`` consumes the requests and returns one reply."""
        self._add(service, method, _Method(Kind.CLIENT_STREAM, handler))

    def register_bidi_stream(self, service: str, method: str, handler: BidiStreamHandler) -> None:
        """Route a bidirectional method: ``handler`` consumes the requests and yields replies."""
        self._add(service, method, _Method(Kind.BIDI_STREAM, handler))

    def _add(self, service: str, method: str, entry: _Method) -> None:
        methods = self._services.setdefault(service, {})
        if method in methods:
            raise errors.AlreadyExists(f"ttrpc method {service}/{method} already registered")
        methods[method] = entry

    def lookup(self, service: str, method: str) -> _Method:
        """The registration of ``service/method``; Unimplemented with Go's text if there is none."""
        methods = self._services.get(service)
        if methods is None:
            raise errors.NotImplemented(f"service {service}")
        entry = methods.get(method)
        if entry is None:
            raise errors.NotImplemented(f"method {method}")
        return entry

    async def listen(self, path: Path | str) -> None:
        """Start accepting connections on the unix socket ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        self._servers.append(await loop.create_unix_server(self._connection, path=str(path)))

    async def listen_socket(self, sock: socket.socket) -> None:
        """Start accepting on an already bound, listening unix socket (a shim's inherited fd 3)."""
        loop = asyncio.get_running_loop()
        self._servers.append(await loop.create_unix_server(self._connection, sock=sock))

    async def serve_connected(self, sock: socket.socket) -> None:
        """Serve one already connected unix socket (e.g. one end of a socketpair)."""
        loop = asyncio.get_running_loop()
        await loop.create_unix_connection(self._connection, sock=sock)

    async def close(self, grace: float = 0.0) -> None:
        """Stop accepting, drop open connections and cancel their calls.

        With ``grace``, calls in flight first get up to that many seconds to
        answer (a shim answering its last calls before it exits).
        """
        for server in self._servers:
            server.close()
        in_flight = [task for conn in self._connections for task in conn._tasks.values()]
        if grace > 0 and in_flight:
            await asyncio.wait(in_flight, timeout=grace)
        tasks = [task for conn in list(self._connections) for task in conn.abort()]
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _connection(self) -> _ServerConnection:
        return _ServerConnection(self)


class _ServerConnection(FrameConnection):
    """One client connection: routes its frames to calls, each running in a task."""

    def __init__(self, server: TtrpcServer) -> None:
        super().__init__()
        self._server = server
        self._last_id = 0
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._inboxes: dict[int, Inbox[bytes] | None] = {}  # open streams; None: client not streaming

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Check the peer if asked to, and start tracking the connection."""
        super().connection_made(transport)
        if self._server.require_same_user and not _same_user(transport):
            assert self.transport is not None
            self.transport.abort()
            return
        self._server._connections.add(self)

    def closed(self, exc: BaseException | None) -> None:
        """The client went away: cancel its calls, as Go cancels their contexts."""
        self.abort()
        self._server._connections.discard(self)

    def abort(self) -> list[asyncio.Task[None]]:
        """Close the transport and cancel every call; returns the tasks being cancelled."""
        if self.transport is not None:
            self.transport.close()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        return tasks

    def frame_oversized(self, stream_id: int, length: int) -> None:
        """Refuse the frame on its own stream and keep the connection."""
        self._refuse(stream_id, errors.ResourceExhausted(protocol.oversize_message(length)))

    def frame_received(self, stream_id: int, type_: int, flags: int, data: bytes) -> None:
        """Route one frame: a Request opens a call, Data feeds a stream; others are ignored."""
        if stream_id % 2 != 1:
            message = "StreamID must be odd for client initiated streams"
            self._refuse(stream_id, errors.InvalidArgument(message))
        elif type_ == protocol.TYPE_REQUEST:
            self._on_request(stream_id, flags, data)
        elif type_ == protocol.TYPE_DATA:
            self._on_data(stream_id, flags, data)
        # Other types are ignored for forward compatibility, as Go ttrpc does.

    def _on_request(self, stream_id: int, flags: int, data: bytes) -> None:
        if stream_id <= self._last_id:
            self._refuse(stream_id, errors.InvalidArgument("StreamID cannot be re-used and must increment"))
            return
        self._last_id = stream_id
        try:
            request = request_pb2.Request.FromString(data)
            method = self._server.lookup(request.service, request.method)
        except DecodeError as exc:
            self._refuse(stream_id, errors.InvalidArgument(f"unmarshal request error: {exc}"))
            return
        except errors.WharfError as exc:
            self._refuse(stream_id, exc)
            return
        if method.kind is Kind.UNARY:
            call: Coroutine[Any, Any, None] = self._unary(stream_id, request, method.handler)
        else:
            inbox: Inbox[bytes] | None = None
            if method.kind.client_streaming:
                inbox = Inbox(self)
                # Go feeds a non-empty request payload as the first message.
                if request.payload:
                    inbox.put(request.payload)
                if flags & protocol.FLAG_REMOTE_CLOSED:
                    inbox.finish()
            self._inboxes[stream_id] = inbox
            call = self._stream(stream_id, request, method.kind, method.handler, inbox)
        task = self.loop.create_task(call)
        self._tasks[stream_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(stream_id, None))

    def _on_data(self, stream_id: int, flags: int, data: bytes) -> None:
        if stream_id not in self._inboxes:
            self._refuse(stream_id, errors.InvalidArgument("StreamID is no longer active"))
            return
        inbox = self._inboxes[stream_id]
        if not flags & protocol.FLAG_NO_DATA and (inbox is None or not inbox.put(data)):
            self._abort_stream(stream_id, errors.InvalidArgument("data handling error: ttrpc: stream closed"))
            return
        if flags & protocol.FLAG_REMOTE_CLOSED and inbox is not None:
            inbox.finish()

    async def _unary(self, stream_id: int, request: request_pb2.Request, handler: Handler) -> None:
        metadata = _enter_call(request)
        try:
            if request.timeout_nano > 0:
                try:
                    async with asyncio.timeout(request.timeout_nano / 1e9) as scope:
                        payload = await handler(request.payload, metadata)
                except TimeoutError:
                    if scope.expired():
                        raise _deadline_exceeded(request) from None
                    raise
            else:
                payload = await handler(request.payload, metadata)
        except Exception as exc:
            await self._respond_error(stream_id, request, exc)
        else:
            await self._respond(stream_id, request, request_pb2.Response(payload=payload))

    async def _stream(
        self,
        stream_id: int,
        request: request_pb2.Request,
        kind: Kind,
        handler: Callable[..., Any],
        inbox: Inbox[bytes] | None,
    ) -> None:
        metadata = _enter_call(request)
        source = inbox if inbox is not None else request.payload
        try:
            async with _deadline(request):
                if not kind.server_streaming:
                    payload = await handler(source, metadata)
                    await self._respond(stream_id, request, request_pb2.Response(payload=payload))
                    return
                replies: AsyncIterator[bytes] = handler(source, metadata)
                try:
                    async for reply in replies:
                        self.write_frame(stream_id, protocol.TYPE_DATA, 0, reply)
                        await self.drain()
                finally:
                    if aclose := getattr(replies, "aclose", None):
                        await aclose()
                self.write_frame(stream_id, protocol.TYPE_DATA, _CLOSE_FLAGS, b"")
        except Exception as exc:
            await self._respond_error(stream_id, request, exc)  # a no-op once the client is gone
        finally:
            self._inboxes.pop(stream_id, None)
            if inbox is not None:
                inbox.fail(protocol.ConnectionClosed("ttrpc: stream closed"))

    async def _respond(
        self, stream_id: int, request: request_pb2.Request, response: request_pb2.Response
    ) -> None:
        data = response.SerializeToString()
        if len(data) > protocol.MAX_DATA:
            log.warning(
                "ttrpc %s/%s: reply of %d bytes refused: over the limit",
                request.service,
                request.method,
                len(data),
            )
            response = request_pb2.Response(
                status=protocol.status_of(errors.ResourceExhausted(protocol.oversize_message(len(data))))
            )
            data = response.SerializeToString()
        with contextlib.suppress(protocol.ConnectionClosed):
            self.write_frame(stream_id, protocol.TYPE_RESPONSE, 0, data)
            if self.write_paused:
                await self.drain()

    async def _respond_error(self, stream_id: int, request: request_pb2.Request, exc: Exception) -> None:
        if not isinstance(exc, errors.WharfError | TimeoutError):
            log.error("ttrpc %s/%s failed", request.service, request.method, exc_info=exc)
        await self._respond(stream_id, request, request_pb2.Response(status=protocol.status_of(exc)))

    def _refuse(self, stream_id: int, exc: errors.WharfError) -> None:
        """Answer a frame the connection cannot take with an error Response on its stream."""
        response = request_pb2.Response(status=protocol.status_of(exc))
        with contextlib.suppress(protocol.ConnectionClosed):
            self.write_frame(stream_id, protocol.TYPE_RESPONSE, 0, response.SerializeToString())

    def _abort_stream(self, stream_id: int, exc: errors.WharfError) -> None:
        """End a stream the client broke the protocol on: stop its handler and answer the error."""
        self._inboxes.pop(stream_id, None)
        task = self._tasks.pop(stream_id, None)
        if task is not None:
            task.cancel()
        self._refuse(stream_id, exc)


def _enter_call(request: request_pb2.Request) -> Metadata:
    """The call's metadata; also sets the namespace the call runs in (its task has its own context)."""
    metadata: Metadata = {}
    for kv in request.metadata:
        metadata.setdefault(kv.key, []).append(kv.value)
    namespace = metadata.get(protocol.NAMESPACE_KEY)
    if namespace:
        namespaces.current.set(namespace[0])
    return metadata


@contextlib.asynccontextmanager
async def _deadline(request: request_pb2.Request) -> AsyncIterator[None]:
    """Bound a streaming call by the client's ``timeout_nano``."""
    if request.timeout_nano <= 0:
        yield
        return
    try:
        async with asyncio.timeout(request.timeout_nano / 1e9) as scope:
            yield
    except TimeoutError:
        if not scope.expired():
            raise
        raise _deadline_exceeded(request) from None


def _deadline_exceeded(request: request_pb2.Request) -> errors.DeadlineExceeded:
    seconds = request.timeout_nano / 1e9
    return errors.DeadlineExceeded(
        f"ttrpc: {request.service}/{request.method}: deadline exceeded after {seconds:g}s"
    )


def _same_user(transport: asyncio.BaseTransport) -> bool:
    sock = transport.get_extra_info("socket")
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError as exc:
        log.warning("ttrpc: refusing connection: cannot read peer credentials: %s", exc)
        return False
    pid, uid, gid = struct.unpack("3i", raw)
    if uid == os.geteuid() and gid == os.getegid():
        return True
    log.warning("ttrpc: refusing connection from pid %d (uid %d gid %d): invalid credentials", pid, uid, gid)
    return False
