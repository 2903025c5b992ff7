"""A small unary ttrpc server and client for the shim, free of grpc imports.

The wire format is that of :mod:`wharfd.runtime.ttrpc.protocol` (10-byte
header ``[length u32][stream u32][type u8][flags u8]``, ``ttrpc.Request`` /
``ttrpc.Response`` bodies). That module and the daemon's server import
:mod:`wharfd.runtime.errors`, which imports grpc; a shim forked per pod cannot
afford that, so the few lines of framing are repeated here.

The server serves an already-listening socket (the one the launcher bound) and
checks that peers run as the shim's own user (SO_PEERCRED), as containerd's
shims do. The client is used for ``Events/Forward`` and by tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Mapping

from google.rpc import status_pb2

from wharfd.api.ttrpc import request_pb2
from wharfd.runtime.shim import errors

log = logging.getLogger("wharfd.shim.ttrpc")

HEADER = struct.Struct(">IIBB")
MAX_DATA = 4 << 20
TYPE_REQUEST = 0x1
TYPE_RESPONSE = 0x2

Metadata = dict[str, list[str]]
Handler = Callable[[bytes, Metadata], Awaitable[bytes]]


def encode(stream_id: int, type_: int, data: bytes) -> bytes:
    """One frame; refuses data over the 4 MiB limit."""
    if len(data) > MAX_DATA:
        raise errors.ShimError(f"ttrpc message of {len(data)} bytes exceeds the {MAX_DATA} byte limit")
    return HEADER.pack(len(data), stream_id, type_, 0) + data


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
    """(stream id, type, data) of the next frame; IncompleteReadError at end of stream."""
    length, stream_id, type_, _flags = HEADER.unpack(await reader.readexactly(HEADER.size))
    if length > MAX_DATA:
        raise ConnectionError(f"ttrpc frame of {length} bytes exceeds the {MAX_DATA} byte limit")
    return stream_id, type_, await reader.readexactly(length)


class Server:
    """Serves registered unary methods on a listening unix socket."""

    def __init__(self, handlers: Mapping[tuple[str, str], Handler]) -> None:
        """``handlers`` maps (service, method) to ``async (payload, metadata) -> payload``."""
        self._handlers = dict(handlers)
        self._server: asyncio.AbstractServer | None = None
        self._calls: set[asyncio.Task[None]] = set()
        self._connections: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, sock: socket.socket) -> None:
        """Begin accepting on ``sock`` (already bound and listening)."""
        self._server = await asyncio.start_unix_server(self._serve, sock=sock)

    async def close(self, grace: float = 2.0) -> None:
        """Stop accepting, let calls in flight answer for up to ``grace`` seconds, drop connections."""
        if self._server is not None:
            self._server.close()
        if self._calls:
            await asyncio.wait(set(self._calls), timeout=grace)
        for writer in list(self._writers):
            writer.close()  # the connection's reader sees end of file and its task ends
        if self._connections:
            await asyncio.wait(set(self._connections), timeout=grace)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None and not _same_user(sock):
            writer.close()
            return
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        self._writers.add(writer)
        lock = asyncio.Lock()
        try:
            while True:
                stream_id, type_, data = await read_frame(reader)
                if type_ != TYPE_REQUEST:
                    continue
                call = asyncio.create_task(self._call(stream_id, data, writer, lock))
                self._calls.add(call)
                call.add_done_callback(self._calls.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:
            # Not re-raised: asyncio 3.11's callback for a cancelled connection task
            # calls task.exception() and logs the CancelledError as an error.
            pass
        finally:
            if task is not None:
                self._connections.discard(task)
            self._writers.discard(writer)
            writer.close()

    async def _call(
        self, stream_id: int, data: bytes, writer: asyncio.StreamWriter, lock: asyncio.Lock
    ) -> None:
        request = request_pb2.Request()
        try:
            request.ParseFromString(data)
            handler = self._handlers.get((request.service, request.method))
            if handler is None:
                raise errors.NotImplemented(f"{request.service}/{request.method}: method not implemented")
            metadata: Metadata = {}
            for kv in request.metadata:
                metadata.setdefault(kv.key, []).append(kv.value)
            timeout = request.timeout_nano / 1e9 if request.timeout_nano else None
            async with asyncio.timeout(timeout):
                response = request_pb2.Response(payload=await handler(request.payload, metadata))
        except Exception as exc:
            if not isinstance(exc, errors.ShimError):
                log.exception("ttrpc %s/%s failed", request.service, request.method)
            code, message = errors.to_status(exc)
            response = request_pb2.Response(status=status_pb2.Status(code=code, message=message))
        frame = encode(stream_id, TYPE_RESPONSE, response.SerializeToString())
        async with lock:  # responses of concurrent calls must not interleave
            writer.write(frame)
            with contextlib.suppress(ConnectionError):
                await writer.drain()


def _same_user(sock: socket.socket) -> bool:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    uid = int(struct.unpack("3i", creds)[1])
    return uid in (os.geteuid(), 0)


class Client:
    """A ttrpc client for unary calls over one unix socket connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Use :meth:`connect`."""
        self._writer = writer
        self._next_id = 1
        self._pending: dict[int, asyncio.Future[request_pb2.Response]] = {}
        self._reader_task = asyncio.create_task(self._read(reader))

    @classmethod
    async def connect(cls, path: str, timeout: float = 5.0) -> Client:
        """Dial ``path`` (a ``unix://`` prefix is accepted)."""
        path = path.removeprefix("unix://")
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(path)
        return cls(reader, writer)

    @property
    def closed(self) -> bool:
        """Whether the connection has ended."""
        return self._reader_task.done()

    async def call(
        self,
        service: str,
        method: str,
        payload: bytes,
        *,
        timeout: float = 5.0,
        metadata: Mapping[str, str] | None = None,
    ) -> bytes:
        """Call ``service/method``; a non-OK status raises the matching :class:`errors.ShimError`.

        Transport failures raise ConnectionError; the connection is then unusable.
        """
        if self.closed:
            raise ConnectionError("ttrpc connection closed")
        stream_id, self._next_id = self._next_id, self._next_id + 2
        request = request_pb2.Request(
            service=service, method=method, payload=payload, timeout_nano=int(timeout * 1e9)
        )
        for key, value in (metadata or {}).items():
            request.metadata.add(key=key, value=value)
        future: asyncio.Future[request_pb2.Response] = asyncio.get_running_loop().create_future()
        self._pending[stream_id] = future
        try:
            self._writer.write(encode(stream_id, TYPE_REQUEST, request.SerializeToString()))
            await self._writer.drain()
            async with asyncio.timeout(timeout):
                response = await future
        finally:
            self._pending.pop(stream_id, None)
        if response.status.code:
            raise _error(response.status.code, response.status.message)
        return response.payload

    async def close(self) -> None:
        """Close the connection."""
        self._writer.close()
        self._reader_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await self._reader_task

    async def _read(self, reader: asyncio.StreamReader) -> None:
        failure: BaseException = ConnectionError("ttrpc connection closed by peer")
        try:
            while True:
                stream_id, type_, data = await read_frame(reader)
                future = self._pending.get(stream_id)
                if type_ == TYPE_RESPONSE and future is not None and not future.done():
                    response = request_pb2.Response()
                    response.ParseFromString(data)
                    future.set_result(response)
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            if not isinstance(exc, asyncio.IncompleteReadError):
                failure = ConnectionError(str(exc))
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(failure)


_BY_CODE = {
    cls.code: cls
    for cls in (
        errors.InvalidArgument,
        errors.DeadlineExceeded,
        errors.NotFound,
        errors.AlreadyExists,
        errors.FailedPrecondition,
        errors.NotImplemented,
        errors.Unavailable,
    )
}


def _error(code: int, message: str) -> errors.ShimError:
    return _BY_CODE.get(code, errors.ShimError)(message)
