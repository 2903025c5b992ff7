"""The client's end of a streaming ttrpc call.

Flags, from the client's side (Go ttrpc's ``clientStream``):

* the Request is flagged *remote open* when the client will send messages,
  else *remote closed*;
* :meth:`ClientStream.send` sends a Data frame with no flags;
  :meth:`ClientStream.close_send` a Data frame flagged *remote closed* + *no data*;
* the server's Data frames are replies; one flagged *remote closed* is the last
  (with *no data* it carries none); a Response ends the stream with a status
  or, for a client-streaming call, with its single reply.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Generic, NamedTuple, TypeVar

from google.protobuf.message import DecodeError, Message

from wharfd.api.ttrpc import request_pb2
from wharfd.runtime import errors
from wharfd.runtime.ttrpc import protocol
from wharfd.runtime.ttrpc.connection import EndOfStream, Inbox

if TYPE_CHECKING:
    from wharfd.runtime.ttrpc.client import _ClientConnection

M = TypeVar("M", bound=Message)
T = TypeVar("T", bound=Message)

_CLOSE_FLAGS = protocol.FLAG_REMOTE_CLOSED | protocol.FLAG_NO_DATA


class StreamFrame(NamedTuple):
    """A frame received on a stream."""

    type: int
    flags: int
    data: bytes


class ClientStream(Generic[M]):
    """A streaming call in progress: send requests, receive replies (also by ``async for``).

    Use it as an async context manager, or call :meth:`aclose`, to let go of a
    stream before the server has finished it.
    """

    def __init__(
        self,
        conn: _ClientConnection,
        name: str,
        response_type: type[M],
        *,
        client_streaming: bool,
        server_streaming: bool,
    ) -> None:
        self._conn = conn
        self.name = name
        self.stream_id = 0
        self.response_type = response_type
        self.client_streaming = client_streaming
        self.server_streaming = server_streaming
        self.inbox: Inbox[StreamFrame] = Inbox(conn)
        self._local_closed = not client_streaming
        self._remote_closed = False
        self._timer: asyncio.TimerHandle | None = None

    async def send(self, message: Message) -> None:
        """Send one request message."""
        if not self.client_streaming:
            raise errors.FailedPrecondition(f"ttrpc {self.name}: cannot send data from non-streaming client")
        if self._conn.lost:
            raise protocol.ConnectionClosed()
        if self._local_closed or self._remote_closed:
            raise errors.FailedPrecondition(f"ttrpc {self.name}: stream closed")
        self._conn.write_frame(self.stream_id, protocol.TYPE_DATA, 0, message.SerializeToString())
        await self._conn.drain()

    async def close_send(self) -> None:
        """Tell the server no more requests follow."""
        if not self.client_streaming:
            raise errors.FailedPrecondition(f"ttrpc {self.name}: cannot close non-streaming client")
        if self._local_closed:
            raise errors.FailedPrecondition(f"ttrpc {self.name}: stream closed")
        self._conn.write_frame(self.stream_id, protocol.TYPE_DATA, _CLOSE_FLAGS, b"")
        self._local_closed = True

    async def recv(self) -> M | None:
        """The next reply, or None once the server has finished; raises the server's error."""
        if self._remote_closed:
            return None
        try:
            frame = await self.inbox.get()
        except EndOfStream:
            self._finish()
            return None
        except BaseException:
            self._finish()
            raise
        if frame.type == protocol.TYPE_RESPONSE:
            self._finish()
            response = self._decode(request_pb2.Response, frame.data)
            if response.status.code:
                raise protocol.error_of(response.status)
            return self._decode(self.response_type, response.payload)
        if frame.type != protocol.TYPE_DATA:
            self._finish()
            raise errors.WharfError(
                f"ttrpc {self.name}: unexpected message type {frame.type}: protocol error"
            )
        if not self.server_streaming:
            self._finish()
            raise errors.WharfError(
                f"ttrpc {self.name}: received data from non-streaming server: protocol error"
            )
        if frame.flags & protocol.FLAG_REMOTE_CLOSED:
            self._finish()
            if frame.flags & protocol.FLAG_NO_DATA:
                return None
        return self._decode(self.response_type, frame.data)

    async def close_and_recv(self) -> M:
        """Finish sending and return the single reply of a client-streaming call."""
        if not self._local_closed:
            await self.close_send()
        reply = await self.recv()
        if reply is None:
            raise errors.WharfError(f"ttrpc {self.name}: stream ended without a reply")
        return reply

    def expire_after(self, timeout: float) -> None:
        """Fail the stream with DeadlineExceeded if it has not finished within ``timeout`` seconds."""
        self._timer = self._conn.loop.call_later(timeout, self._expire, timeout)

    async def aclose(self) -> None:
        """Stop listening to the stream; later frames for it are dropped."""
        self._finish()
        self.inbox.finish()

    def __aiter__(self) -> ClientStream[M]:
        return self

    async def __anext__(self) -> M:
        reply = await self.recv()
        if reply is None:
            raise StopAsyncIteration
        return reply

    async def __aenter__(self) -> ClientStream[M]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _expire(self, timeout: float) -> None:
        self._timer = None
        self._conn.streams.pop(self.stream_id, None)
        self.inbox.fail(errors.DeadlineExceeded(f"ttrpc: {self.name}: deadline exceeded after {timeout:g}s"))

    def _finish(self) -> None:
        self._remote_closed = True
        self._local_closed = True
        self._conn.streams.pop(self.stream_id, None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _decode(self, message_type: type[T], data: bytes) -> T:
        try:
            return message_type.FromString(data)
        except DecodeError as exc:
            raise errors.WharfError(f"ttrpc {self.name}: malformed reply: {exc}") from exc
