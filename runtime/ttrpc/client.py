"""An asyncio ttrpc client, compatible with Go ttrpc servers (containerd shims).

One connection carries any number of concurrent calls. Each call opens a new
odd stream id (1, 3, 5, ...); the connection's protocol callback routes every
incoming frame to its call by stream id, so replies may arrive in any order.
Errors a caller sees:

* the server's non-OK status, as the typed error of :mod:`wharfd.runtime.errors`;
* :class:`~wharfd.runtime.ttrpc.protocol.ConnectionClosed` (Unavailable,
  ``ttrpc: closed``) for every call pending or started once the connection is gone;
* DeadlineExceeded naming the method when the call's ``timeout`` runs out
  (the timeout is also sent to the server as ``timeout_nano``);
* ResourceExhausted for a message over 4 MiB, in either direction.

:attr:`TtrpcClient.closed` is set when the connection ends, whoever ended it.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from wharfd.api.ttrpc import request_pb2
from wharfd.runtime import errors
from wharfd.runtime.ttrpc import protocol
from wharfd.runtime.ttrpc.connection import FrameConnection
from wharfd.runtime.ttrpc.stream import ClientStream, StreamFrame

M = TypeVar("M", bound=Message)
MetadataIn = Mapping[str, str | list[str]]

_RETRY_DIAL = (FileNotFoundError, ConnectionRefusedError)


class TtrpcClient:
    """A ttrpc connection to one server; make it with :meth:`connect` or :meth:`from_socket`."""

    def __init__(self, conn: _ClientConnection) -> None:
        self._conn = conn
        self.closed: asyncio.Event = conn.closed_event

    @classmethod
    async def connect(cls, address: str | Path, *, timeout: float = 10.0) -> TtrpcClient:
        """Dial a unix socket (``/path``, ``unix:///path`` or ``@abstract``).

        A socket that does not exist yet or refuses is retried until ``timeout``,
        because a shim may still be starting; then Unavailable.
        """
        path = _socket_path(address)
        loop = asyncio.get_running_loop()
        delay = 0.005
        try:
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        _, conn = await loop.create_unix_connection(_ClientConnection, path)
                        return cls(conn)
                    except _RETRY_DIAL:
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 0.1)
        except TimeoutError:
            raise errors.Unavailable(f"ttrpc: dial {address}: timed out after {timeout:g}s") from None
        except OSError as exc:
            raise errors.Unavailable(f"ttrpc: dial {address}: {exc.strerror or exc}") from exc

    @classmethod
    async def from_socket(cls, sock: socket.socket) -> TtrpcClient:
        """Speak ttrpc over an already connected unix socket (the client takes it over)."""
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_unix_connection(_ClientConnection, sock=sock)
        return cls(conn)

    @property
    def close_reason(self) -> BaseException | None:
        """Why the connection ended: None for a clean close or end of stream."""
        return self._conn.reason

    async def call(
        self,
        service: str,
        method: str,
        request: Message,
        response_type: type[M],
        *,
        # A per-call argument (not asyncio.timeout) because it also travels as timeout_nano.
        timeout: float | None = None,
        metadata: MetadataIn | None = None,
    ) -> M:
        """Make a unary call and return its reply, or raise the typed error the server answered."""
        conn = self._conn
        data = _encode_request(service, method, request.SerializeToString(), timeout, metadata)
        stream_id, reply = conn.open_unary(data)
        # A timer that fails the reply future is cheaper than asyncio.timeout on this hot path.
        timer = (
            None
            if timeout is None
            else conn.loop.call_later(timeout, _expire, reply, service, method, timeout)
        )
        try:
            if conn.write_paused:
                await conn.drain(reply)
            raw = await reply
        finally:
            if timer is not None:
                timer.cancel()
            conn.calls.pop(stream_id, None)
        response = _decode(request_pb2.Response, raw, service, method)
        if response.status.code:
            raise protocol.error_of(response.status)
        return _decode(response_type, response.payload, service, method)

    def stream(
        self,
        service: str,
        method: str,
        request: Message | None,
        response_type: type[M],
        *,
        client_streaming: bool | None = None,
        server_streaming: bool = True,
        timeout: float | None = None,
        metadata: MetadataIn | None = None,
    ) -> ClientStream[M]:
        """Open a streaming call and return it; the Request frame is sent before this returns.

        ``client_streaming`` defaults to "no ``request`` given". A client-streaming
        call may also carry a first ``request``; the server sees it as the
        first message.
        """
        if client_streaming is None:
            client_streaming = request is None
        payload = request.SerializeToString() if request is not None else b""
        data = _encode_request(service, method, payload, timeout, metadata)
        flags = protocol.FLAG_REMOTE_OPEN if client_streaming else protocol.FLAG_REMOTE_CLOSED
        stream = ClientStream(
            self._conn,
            f"{service}/{method}",
            response_type,
            client_streaming=client_streaming,
            server_streaming=server_streaming,
        )
        self._conn.open_stream(data, flags, stream)
        if timeout is not None:
            stream.expire_after(timeout)
        return stream

    async def close(self) -> None:
        """Close the connection; pending calls fail with ConnectionClosed."""
        if self._conn.transport is not None:
            self._conn.transport.close()
        await self.closed.wait()

    async def __aenter__(self) -> TtrpcClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class _ClientConnection(FrameConnection):
    """Routes reply frames to the pending calls and open streams by stream id."""

    def __init__(self) -> None:
        super().__init__()
        self.next_id = 1
        self.calls: dict[int, asyncio.Future[bytes]] = {}
        self.streams: dict[int, ClientStream[Message]] = {}
        self.closed_event = asyncio.Event()
        self.reason: BaseException | None = None

    def _send_request(self, data: bytes, flags: int) -> int:
        # Ids go out in the order they are handed out because allocation and the
        # write happen in the same callback: Go servers require them to increase.
        stream_id = self.next_id
        self.write_frame(stream_id, protocol.TYPE_REQUEST, flags, data)
        self.next_id += 2
        return stream_id

    def open_unary(self, data: bytes) -> tuple[int, asyncio.Future[bytes]]:
        """Send a unary Request; returns its stream id and the future of its Response data."""
        stream_id = self._send_request(data, 0)
        reply: asyncio.Future[bytes] = self.loop.create_future()
        self.calls[stream_id] = reply
        return stream_id, reply

    def open_stream(self, data: bytes, flags: int, stream: ClientStream[M]) -> None:
        """Send a streaming Request and register ``stream`` for its frames."""
        stream.stream_id = self._send_request(data, flags)
        self.streams[stream.stream_id] = stream  # type: ignore[assignment]

    def frame_received(self, stream_id: int, type_: int, flags: int, data: bytes) -> None:
        """Hand a frame to its call; frames for calls already given up on are dropped."""
        reply = self.calls.get(stream_id)
        if reply is not None:
            if reply.done():
                return
            if type_ == protocol.TYPE_RESPONSE:
                reply.set_result(data)
            else:
                reply.set_exception(
                    errors.WharfError(f"ttrpc: unexpected message type {type_} on unary call: protocol error")
                )
            return
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.inbox.put(StreamFrame(type_, flags, data))

    def frame_oversized(self, stream_id: int, length: int) -> None:
        """Fail the call the oversized frame was meant for."""
        error = errors.ResourceExhausted(protocol.oversize_message(length))
        reply = self.calls.get(stream_id)
        if reply is not None and not reply.done():
            reply.set_exception(error)
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            stream.inbox.fail(error)

    def closed(self, exc: BaseException | None) -> None:
        """Fail every pending call and stream with ConnectionClosed, then signal :attr:`closed_event`."""
        self.reason = exc
        for reply in self.calls.values():
            if not reply.done():
                reply.set_exception(protocol.ConnectionClosed())
        for stream in self.streams.values():
            stream.inbox.finish(protocol.ConnectionClosed())
        self.streams.clear()
        self.closed_event.set()


def _expire(reply: asyncio.Future[bytes], service: str, method: str, timeout: float) -> None:
    if not reply.done():
        reply.set_exception(
            errors.DeadlineExceeded(f"ttrpc: {service}/{method}: deadline exceeded after {timeout:g}s")
        )


def _socket_path(address: str | Path) -> str:
    path = str(address)
    if path.startswith("unix://"):
        path = path[len("unix://") :]
    if path.startswith("@"):
        path = "\0" + path[1:]  # Go's spelling of an abstract socket
    return path


def _encode_request(
    service: str, method: str, payload: bytes, timeout: float | None, metadata: MetadataIn | None
) -> bytes:
    request = request_pb2.Request(service=service, method=method, payload=payload)
    if timeout is not None:
        request.timeout_nano = max(1, int(timeout * 1e9))
    if metadata:
        for key, values in metadata.items():
            # Go's MD lower-cases keys on every set.
            for value in [values] if isinstance(values, str) else values:
                request.metadata.add(key=key.lower(), value=value)
    return request.SerializeToString()


def _decode(message_type: type[M], data: bytes, service: str, method: str) -> M:
    try:
        return message_type.FromString(data)
    except DecodeError as exc:
        raise errors.WharfError(f"ttrpc: {service}/{method}: malformed reply: {exc}") from exc
