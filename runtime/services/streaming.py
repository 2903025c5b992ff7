"""containerd's Streaming service: named side channels that a Transfer call uses while it runs.

A client opens ``Streaming.Stream`` (bidirectional, ``google.protobuf.Any``
both ways), sends ``StreamInit{id}`` first, and waits for the server's empty
acknowledgement, sent once the stream is registered under that id in the
call's namespace. A later ``Transfer`` names the stream (progress, registry
credentials, tar data) and the server uses it as a :class:`Stream`. The call
ends when the server side closes the stream (the transfer is done with it),
or when the client goes away; either way the id is free again.

Byte streams on top follow containerd's flow control: the receiver grants
credit with ``WindowUpdate{update}`` (64 KiB at a time), the sender sends
``Data`` messages of at most 32 KiB and never more than it was granted
(:func:`receive_bytes` for imports, :class:`ByteSender` for exports).

Type URLs are the bare message names (``containerd.types.transfer.Data``),
as containerd's typeurl writes them; a ``type.googleapis.com/`` prefix is
accepted on input.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message

from wharfd.api.services.streaming.v1 import streaming_pb2 as pb
from wharfd.api.services.streaming.v1 import streaming_pb2_grpc as pb_grpc
from wharfd.api.types.transfer import streaming_pb2 as tpb
from wharfd.runtime import errors, namespaces
from wharfd.runtime.services import boundary
from wharfd.runtime.services.stream_manager import StreamManager

log = logging.getLogger("wharfd.streaming")

# containerd's flow-control constants (core/transfer/streaming).
MAX_DATA = 32 * 1024
WINDOW = 2 * MAX_DATA
# The acknowledgement of a StreamInit: an empty message, as containerd sends.
ACK_TYPE = "google.protobuf.Empty"

M = TypeVar("M", bound=Message)


def pack(msg: Message) -> any_pb2.Any:
    """``msg`` in an Any with containerd's bare type URL."""
    return any_pb2.Any(type_url=msg.DESCRIPTOR.full_name, value=msg.SerializeToString())


def type_name(value: any_pb2.Any) -> str:
    """The message name of an Any, without any ``…/`` URL prefix."""
    return value.type_url.rsplit("/", 1)[-1]


def unpack(value: any_pb2.Any, cls: type[M], *, what: str = "message") -> M:
    """The ``cls`` message inside ``value``; InvalidArgument for another type or bad bytes."""
    want = cls.DESCRIPTOR.full_name
    if type_name(value) != want:
        raise errors.InvalidArgument(f"{what}: expected {want}, got {value.type_url or 'an empty Any'}")
    msg = cls()
    try:
        msg.ParseFromString(value.value)
    except DecodeError as exc:
        raise errors.InvalidArgument(f"{what}: {want} does not parse: {exc}") from exc
    return msg


class Stream:
    """The server's end of one registered stream."""

    def __init__(self, stream_id: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.id = stream_id
        self._context = context
        self._done = asyncio.Event()
        self._lock = asyncio.Lock()

    @property
    def closed(self) -> bool:
        """Whether the stream was closed (by us, or because the client went away)."""
        return self._done.is_set()

    async def send(self, msg: Message) -> None:
        """Send one message; Unavailable when the stream is gone."""
        if self._done.is_set():
            raise errors.Unavailable(f'stream "{self.id}": closed')
        async with self._lock:
            try:
                await self._context.write(pack(msg))
            except Exception as exc:
                raise errors.Unavailable(f'stream "{self.id}": send failed: {exc}') from exc

    async def recv(self) -> any_pb2.Any | None:
        """The client's next message; None once the client has closed its side."""
        if self._done.is_set():
            return None
        try:
            msg = await self._context.read()
        except Exception as exc:
            raise errors.Unavailable(f'stream "{self.id}": receive failed: {exc}') from exc
        return None if msg is grpc.aio.EOF else msg  # type: ignore[attr-defined]

    def close(self) -> None:
        """End the call (OK status); messages already sent are delivered first."""
        self._done.set()

    async def wait_closed(self) -> None:
        """Until :meth:`close`."""
        await self._done.wait()


class StreamingService(pb_grpc.StreamingServicer):
    """``Stream``: register a side channel and keep it open until it is closed."""

    def __init__(self, manager: StreamManager) -> None:
        self.manager = manager

    @boundary.unary
    async def Stream(self, request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        ns = namespaces.required()
        first = await context.read()
        if first is grpc.aio.EOF:  # type: ignore[attr-defined]
            return
        init = unpack(first, pb.StreamInit, what="first message of Streaming.Stream")
        if not init.id:
            raise errors.InvalidArgument("StreamInit.id must not be empty")
        stream = Stream(init.id, context)
        self.manager.register(ns, stream)
        try:
            await context.write(any_pb2.Any(type_url=ACK_TYPE))
            await stream.wait_closed()
        finally:
            stream.close()
            self.manager.unregister(ns, stream)

    def register(self, server: grpc.aio.Server) -> None:
        """Add the servicer to a gRPC server."""
        pb_grpc.add_StreamingServicer_to_server(self, server)


async def receive_bytes(stream: Stream) -> AsyncIterator[bytes]:
    """The bytes a client sends on ``stream`` (``Data`` messages), granting credit 64 KiB at a time."""
    window = 0
    while True:
        if window < WINDOW:
            with contextlib.suppress(errors.Unavailable):  # the client may be done sending already
                await stream.send(tpb.WindowUpdate(update=WINDOW))
                window += WINDOW
        msg = await stream.recv()
        if msg is None:
            return
        if type_name(msg) != tpb.Data.DESCRIPTOR.full_name:
            log.warning('stream "%s": ignoring a %s', stream.id, msg.type_url)
            continue
        data = unpack(msg, tpb.Data).data
        window -= len(data)
        if data:
            yield data


class ByteSender:
    """Sends bytes to a client as ``Data`` messages, within the credit its ``WindowUpdate``\\ s grant."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self._credit = 0
        self._granted = asyncio.Event()
        self._ended = False
        self._reader = asyncio.get_running_loop().create_task(self._read_updates())

    async def _read_updates(self) -> None:
        try:
            while (msg := await self._stream.recv()) is not None:
                if type_name(msg) == tpb.WindowUpdate.DESCRIPTOR.full_name:
                    update = unpack(msg, tpb.WindowUpdate).update
                    if update > 0:
                        self._credit += update
                        self._granted.set()
        except errors.WharfError as exc:
            log.debug('stream "%s": window updates ended: %s', self._stream.id, exc)
        finally:
            self._ended = True
            self._granted.set()

    async def write(self, data: bytes) -> None:
        """Send ``data``, waiting for credit as needed; Unavailable if the client stops granting it."""
        view = memoryview(data)
        while view:
            while self._credit <= 0:
                if self._ended:
                    raise errors.Unavailable(f'stream "{self._stream.id}": the receiver went away')
                self._granted.clear()
                await self._granted.wait()
            n = min(len(view), MAX_DATA, self._credit)
            await self._stream.send(tpb.Data(data=bytes(view[:n])))
            self._credit -= n
            view = view[n:]

    async def close(self) -> None:
        """End the stream (the client sees the end of the data) and stop reading updates."""
        self._stream.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
