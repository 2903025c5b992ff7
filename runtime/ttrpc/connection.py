"""The byte pipe under both ends of a ttrpc connection.

:class:`FrameConnection` is an asyncio protocol that cuts the incoming bytes
into frames and hands each to :meth:`FrameConnection.frame_received` in the
order they arrived, writes frames whole (one ``transport.write`` each, so
frames of concurrent calls never interleave), and gives writers back-pressure
through :meth:`FrameConnection.drain`.

:class:`Inbox` queues the messages of one stream for its consumer. Reading
from the socket pauses while an inbox holds :data:`INBOX_HIGH` messages; if
the consumer does not make room within :data:`INBOX_FULL_TIMEOUT` seconds the
stream fails with ResourceExhausted and reading resumes, so one stalled stream
can neither exhaust memory nor starve the other calls on the connection (Go
ttrpc's ``ErrStreamFull`` rule).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from wharfd.runtime import errors
from wharfd.runtime.ttrpc import protocol

T = TypeVar("T")

INBOX_HIGH = 64
INBOX_FULL_TIMEOUT = 1.0


class FrameConnection(asyncio.Protocol):
    """Frame parsing and writing over one stream transport; subclasses route the frames."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.write_paused = False
        self._partial = bytearray()  # an incomplete frame
        self._need = 0  # bytes _partial must reach before it can be parsed
        self._skip = 0  # bytes of a refused oversized frame still to discard
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._throttled: dict[object, asyncio.TimerHandle] = {}

    # Hooks for subclasses.

    def frame_received(self, stream_id: int, type_: int, flags: int, data: bytes) -> None:
        """Handle one whole frame."""
        raise NotImplementedError

    def frame_oversized(self, stream_id: int, length: int) -> None:
        """Handle a frame whose data exceeded :data:`protocol.MAX_DATA` (its bytes are discarded)."""
        raise NotImplementedError

    def closed(self, exc: BaseException | None) -> None:
        """The connection is gone (``exc`` is None at a clean end of stream)."""

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        """Cut ``data`` (plus what was left over) into frames."""
        if self._skip:
            taken = min(self._skip, len(data))
            self._skip -= taken
            data = data[taken:]
            if not data:
                return
        if self._partial:
            self._partial += data
            if len(self._partial) < self._need:
                return  # keep collecting without re-copying what we have
            data = bytes(self._partial)
            self._partial.clear()
        self._parse(data)

    def _parse(self, data: bytes) -> None:
        pos, end = 0, len(data)
        unpack = protocol.HEADER.unpack_from
        while end - pos >= protocol.HEADER_SIZE:
            length, stream_id, type_, flags = unpack(data, pos)
            body = pos + protocol.HEADER_SIZE
            if length > protocol.MAX_DATA:
                self.frame_oversized(stream_id, length)
                if end - body < length:
                    self._skip = length - (end - body)
                    return
                pos = body + length
                continue
            if body + length > end:
                break
            pos = body + length
            self.frame_received(stream_id, type_, flags, data[body:pos])
        if pos < end:
            self._partial += memoryview(data)[pos:]
            self._need = protocol.HEADER_SIZE
            if end - pos >= protocol.HEADER_SIZE:
                self._need += protocol.HEADER.unpack_from(data, pos)[0]

    def connection_lost(self, exc: Exception | None) -> None:
        """Release writers waiting for room and tell the subclass."""
        self.lost = True
        for handle in self._throttled.values():
            handle.cancel()
        self._throttled.clear()
        self._wake_writers()
        self.closed(exc)

    def pause_writing(self) -> None:
        """The transport's buffer is full: writers wait in :meth:`drain`."""
        self.write_paused = True

    def resume_writing(self) -> None:
        """The transport's buffer has room again."""
        self.write_paused = False
        self._wake_writers()

    # Writing

    def write_frame(self, stream_id: int, type_: int, flags: int, data: bytes) -> None:
        """Send one frame; ResourceExhausted if too large, ConnectionClosed if the peer is gone."""
        frame = protocol.pack(stream_id, type_, flags, data)
        transport = self.transport
        if transport is None or self.lost or transport.is_closing():
            raise protocol.ConnectionClosed()
        transport.write(frame)

    async def drain(self, abandon: asyncio.Future[Any] | None = None) -> None:
        """Wait until the transport accepts more data; ConnectionClosed if it went away.

        Returns early once ``abandon`` is done (a call that failed or timed out meanwhile).
        """
        while self.write_paused and not self.lost:
            waiter = self.loop.create_future()
            self._drain_waiters.append(waiter)
            if abandon is None:
                await waiter
                continue
            await asyncio.wait((waiter, abandon), return_when=asyncio.FIRST_COMPLETED)
            if abandon.done():
                return
        if self.lost:
            raise protocol.ConnectionClosed()

    def _wake_writers(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # Read-side back-pressure, driven by the inboxes.

    def throttle(self, key: object, on_timeout: Callable[[], None]) -> None:
        """Stop reading until ``key`` calls :meth:`unthrottle`, or ``on_timeout`` after a while."""
        if key in self._throttled or self.lost or self.transport is None:
            return
        if not self._throttled:
            self.transport.pause_reading()
        self._throttled[key] = self.loop.call_later(INBOX_FULL_TIMEOUT, self._overflow, key, on_timeout)

    def unthrottle(self, key: object) -> None:
        """``key`` has room again; resume reading when nobody else is full."""
        handle = self._throttled.pop(key, None)
        if handle is None:
            return
        handle.cancel()
        if not self._throttled and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _overflow(self, key: object, on_timeout: Callable[[], None]) -> None:
        self.unthrottle(key)
        on_timeout()


class EndOfStream(Exception):
    """The sender closed the stream cleanly."""


class Inbox(Generic[T]):
    """The queue of one stream's incoming messages, iterated by the stream's consumer.

    :meth:`finish` ends the stream after the queued messages are consumed;
    :meth:`fail` ends it at once with an error.
    """

    __slots__ = ("_conn", "_end", "_items", "_waiter")

    def __init__(self, conn: FrameConnection) -> None:
        self._conn = conn
        self._items: collections.deque[T] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._end: BaseException | None = None

    @property
    def done(self) -> bool:
        """True once the stream has ended, cleanly or not."""
        return self._end is not None

    def put(self, item: T) -> bool:
        """Queue a message; False if the stream has already ended."""
        if self._end is not None:
            return False
        self._items.append(item)
        self._wake()
        if len(self._items) >= INBOX_HIGH:
            self._conn.throttle(self, self._overflow)
        return True

    def finish(self, error: BaseException | None = None) -> None:
        """End the stream once the queued messages are read; then raise ``error`` (or end cleanly)."""
        if self._end is None:
            self._end = error if error is not None else EndOfStream()
            self._conn.unthrottle(self)
            self._wake()

    def fail(self, error: BaseException) -> None:
        """End the stream now, dropping queued messages."""
        self._items.clear()
        self._end = None
        self.finish(error)

    async def get(self) -> T:
        """The next message; EndOfStream at a clean end, else the stream's error."""
        while not self._items:
            if self._end is not None:
                raise self._end
            self._waiter = self._conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = self._items.popleft()
        if len(self._items) < INBOX_HIGH:
            self._conn.unthrottle(self)
        return item

    def __aiter__(self) -> Inbox[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.get()
        except EndOfStream:
            raise StopAsyncIteration from None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _overflow(self) -> None:
        self.fail(errors.ResourceExhausted("ttrpc: stream buffer full"))
