"""An asyncio ttrpc server for unary methods, compatible with Go ttrpc clients.

Handlers are registered per (service, method) and receive the request payload
bytes and the call's metadata; they return the response payload bytes. A typed
error becomes the Response's ``google.rpc.Status``. Calls on one connection run
concurrently, as Go ttrpc serves them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from google.rpc import status_pb2

from wharfd.api.ttrpc import request_pb2
from wharfd.runtime import errors
from wharfd.runtime.ttrpc import protocol

log = logging.getLogger("wharfd.ttrpc")

Metadata = dict[str, list[str]]
Handler = Callable[[bytes, Metadata], Awaitable[bytes]]


class TtrpcServer:
    """Serves registered ttrpc methods on a unix socket."""

    def __init__(self) -> None:
        self._handlers: dict[tuple[str, str], Handler] = {}
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()

    def register(self, service: str, method: str, handler: Handler) -> None:
        """Route ``service/method`` to ``handler``."""
        self._handlers[(service, method)] = handler

    async def listen(self, path: Path) -> None:
        """Start accepting connections on the unix socket ``path``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._server = await asyncio.start_unix_server(self._serve, path=str(path))

    async def close(self) -> None:
        """Stop accepting and drop open connections."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        lock = asyncio.Lock()
        calls: set[asyncio.Task[None]] = set()
        try:
            while True:
                try:
                    frame = await protocol.read_frame(reader)
                except protocol.OversizedFrame as exc:
                    await self._reply(writer, lock, exc.stream_id, errors.ResourceExhausted(str(exc)), b"")
                    continue
                if frame.type != protocol.TYPE_REQUEST:
                    continue  # data frames belong to streaming calls, which this server does not offer
                call = asyncio.create_task(self._call(frame, writer, lock))
                calls.add(call)
                call.add_done_callback(calls.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            for call in list(calls):
                call.cancel()
            writer.close()
            self._connections.discard(task)

    async def _call(self, frame: protocol.Frame, writer: asyncio.StreamWriter, lock: asyncio.Lock) -> None:
        request = request_pb2.Request()
        try:
            request.ParseFromString(frame.data)
        except Exception:
            await self._reply(
                writer, lock, frame.stream_id, errors.InvalidArgument("malformed ttrpc request"), b""
            )
            return
        handler = self._handlers.get((request.service, request.method))
        if handler is None:
            error = errors.NotImplemented(f"{request.service}/{request.method}: method not implemented")
            await self._reply(writer, lock, frame.stream_id, error, b"")
            return
        metadata: Metadata = {}
        for kv in request.metadata:
            metadata.setdefault(kv.key, []).append(kv.value)
        try:
            if request.timeout_nano:
                async with asyncio.timeout(request.timeout_nano / 1e9):
                    payload = await handler(request.payload, metadata)
            else:
                payload = await handler(request.payload, metadata)
        except Exception as exc:
            if not isinstance(exc, errors.WharfError):
                log.exception("ttrpc %s/%s failed", request.service, request.method)
            await self._reply(writer, lock, frame.stream_id, exc, b"")
            return
        await self._reply(writer, lock, frame.stream_id, None, payload)

    async def _reply(
        self,
        writer: asyncio.StreamWriter,
        lock: asyncio.Lock,
        stream_id: int,
        error: BaseException | None,
        payload: bytes,
    ) -> None:
        response = request_pb2.Response(payload=payload)
        if error is not None:
            code, message = errors.to_status(error)
            response.status.CopyFrom(status_pb2.Status(code=code.value[0], message=message))
        data = protocol.encode(
            protocol.Frame(stream_id, protocol.TYPE_RESPONSE, 0, response.SerializeToString())
        )
        async with lock:  # frames of concurrent calls must not interleave
            writer.write(data)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
