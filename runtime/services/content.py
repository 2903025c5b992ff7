"""``containerd.services.content.v1.Content``: a thin adapter over the content store, and its plugins.

Each method checks the namespace, parses the request, calls the
:class:`~wharfd.runtime.content.store.ContentStore` and builds the response;
:mod:`wharfd.runtime.services.boundary` turns typed errors into statuses.
What containerd's server does beyond the store is kept, because stock clients
rely on it:

* ``Write`` is a bidi stream. The first message must carry the ref; every
  message is answered with the writer's offset (and, for ``STAT``, the
  running digest, times and total; for ``WRITE``/``COMMIT``, the digest).
  The response message is reused between answers, as containerd's is, so
  fields set once stay set. A ``WRITE``/``COMMIT`` at offset 0 on a non-empty
  ingest truncates it; any other offset must equal the current one
  (OUT_OF_RANGE). An expected digest the namespace already has ends the
  stream with ALREADY_EXISTS and aborts the ref.
* ``Read`` sends 1 MiB chunks from ``offset`` for ``size`` bytes (to the end
  when ``size <= 0``); an offset past the end is OUT_OF_RANGE. Each chunk's
  ``offset`` is its absolute position in the blob, as the API documents it
  (containerd's own server counts from the requested offset instead).
* ``List`` sends the matching blobs in batches of 100.

The content store's plugin is :mod:`wharfd.runtime.content.plugin`, this service's
:mod:`wharfd.runtime.services.plugins`; this module loads on the service's first call.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC
from typing import Any

import grpc
from google.protobuf import empty_pb2

from wharfd.api.services.content.v1 import content_pb2 as pb
from wharfd.api.services.content.v1 import content_pb2_grpc as pb_grpc
from wharfd.runtime import errors, namespaces
from wharfd.runtime.content import store as content
from wharfd.runtime.services import boundary

log = logging.getLogger("wharfd.content")

Context = grpc.aio.ServicerContext[Any, Any]
READ_CHUNK = 1 << 20
LIST_BATCH = 100


def info_to_proto(info: content.Info) -> pb.Info:
    """The API's form of an Info."""
    msg = pb.Info(digest=info.digest, size=info.size, labels=dict(info.labels))
    msg.created_at.FromDatetime(info.created_at)
    msg.updated_at.FromDatetime(info.updated_at)
    return msg


def status_to_proto(status: content.Status) -> pb.Status:
    """The API's form of a Status."""
    msg = pb.Status(ref=status.ref, offset=status.offset, total=status.total, expected=status.expected)
    msg.started_at.FromDatetime(status.started_at)
    msg.updated_at.FromDatetime(status.updated_at)
    return msg


async def _next(requests: AsyncIterator[pb.WriteContentRequest]) -> pb.WriteContentRequest | None:
    try:
        return await anext(requests)
    except StopAsyncIteration:
        return None


class ContentService(pb_grpc.ContentServicer):
    """Servicer for the Content API."""

    def __init__(self, store: content.ContentStore) -> None:
        """Serve ``store``."""
        self._store = store

    def register(self, server: grpc.aio.Server) -> None:
        """Add this servicer to a gRPC server."""
        pb_grpc.add_ContentServicer_to_server(self, server)

    @boundary.unary
    async def Info(self, request: pb.InfoRequest, context: Context) -> pb.InfoResponse:
        """The blob as the caller's namespace sees it."""
        namespaces.required()
        return pb.InfoResponse(info=info_to_proto(await self._store.info(request.digest)))

    @boundary.unary
    async def Update(self, request: pb.UpdateRequest, context: Context) -> pb.UpdateResponse:
        """Change labels by the update mask (none: replace them all)."""
        namespaces.required()
        given = request.info
        info = content.Info(
            given.digest,
            given.size,
            given.created_at.ToDatetime(tzinfo=UTC),
            given.updated_at.ToDatetime(tzinfo=UTC),
            dict(given.labels),
        )
        updated = await self._store.update(info, list(request.update_mask.paths))
        return pb.UpdateResponse(info=info_to_proto(updated))

    @boundary.stream
    async def List(
        self, request: pb.ListContentRequest, context: Context
    ) -> AsyncIterator[pb.ListContentResponse]:
        """The namespace's blobs matching the filters, 100 per message."""
        namespaces.required()
        found = await self._store.walk(list(request.filters))
        for start in range(0, len(found), LIST_BATCH):
            yield pb.ListContentResponse(info=[info_to_proto(i) for i in found[start : start + LIST_BATCH]])

    @boundary.unary
    async def Delete(self, request: pb.DeleteContentRequest, context: Context) -> empty_pb2.Empty:
        """Remove the blob from the caller's namespace."""
        namespaces.required()
        await self._store.delete(request.digest)
        return empty_pb2.Empty()

    @boundary.stream
    async def Read(
        self, request: pb.ReadContentRequest, context: Context
    ) -> AsyncIterator[pb.ReadContentResponse]:
        """Stream part of a blob in 1 MiB chunks."""
        namespaces.required()
        reader = await self._store.reader_at(request.digest)
        try:
            size = reader.size
            offset = max(request.offset, 0)
            if offset > size:
                raise content.OutOfRange(f"read past object length {size} bytes")
            end = size if request.size <= 0 else min(size, offset + request.size)
            while offset < end:
                data = await reader.read_at(offset, min(READ_CHUNK, end - offset))
                if not data:
                    raise errors.DataLoss(
                        f"content {request.digest}: blob file ends at {offset} of {size} bytes"
                    )
                yield pb.ReadContentResponse(offset=offset, data=data)
                offset += len(data)
        finally:
            await reader.close()

    @boundary.unary
    async def Status(self, request: pb.StatusRequest, context: Context) -> pb.StatusResponse:
        """The progress of one ingest."""
        namespaces.required()
        return pb.StatusResponse(status=status_to_proto(await self._store.status(request.ref)))

    @boundary.unary
    async def ListStatuses(
        self, request: pb.ListStatusesRequest, context: Context
    ) -> pb.ListStatusesResponse:
        """The namespace's ingests matching the filters (field ``ref``)."""
        namespaces.required()
        found = await self._store.list_statuses(list(request.filters))
        return pb.ListStatusesResponse(statuses=[status_to_proto(s) for s in found])

    @boundary.unary
    async def Abort(self, request: pb.AbortRequest, context: Context) -> empty_pb2.Empty:
        """Throw an ingest away."""
        namespaces.required()
        await self._store.abort(request.ref)
        return empty_pb2.Empty()

    @boundary.stream
    async def Write(
        self, request: AsyncIterator[pb.WriteContentRequest], context: Context
    ) -> AsyncIterator[pb.WriteContentResponse]:
        """The bidi write stream; the writer is closed (not aborted) when the stream ends or drops."""
        namespaces.required()
        first = await _next(request)
        if first is None:
            return
        if not first.ref:
            raise errors.InvalidArgument("first message must have a reference")
        writer = await self._store.open_writer(first.ref, content.Expected(first.expected, first.total))
        try:
            async for response in self._write_session(writer, first, request):
                yield response
        finally:
            await writer.close()

    async def _write_session(
        self,
        writer: content.Writer,
        req: pb.WriteContentRequest,
        requests: AsyncIterator[pb.WriteContentRequest],
    ) -> AsyncIterator[pb.WriteContentResponse]:
        total, expected = req.total, req.expected
        msg = pb.WriteContentResponse()
        while True:
            msg.action = req.action
            status = writer.status()
            msg.offset = status.offset
            if req.expected:
                expected = req.expected
                await self._refuse_existing(writer, expected)
            if req.total > 0:
                total = req.total
            if req.action == pb.STAT:
                msg.digest = writer.digest()
                msg.started_at.FromDatetime(status.started_at)
                msg.updated_at.FromDatetime(status.updated_at)
                msg.total = total
            elif req.action in (pb.WRITE, pb.COMMIT):
                msg.offset = await self._apply_write(writer, req, status.offset)
                if req.action == pb.COMMIT:
                    await writer.commit(total, expected, dict(req.labels))
                msg.digest = writer.digest()
            else:
                raise errors.InvalidArgument(f"ref {writer.ref}: unknown write action {req.action}")
            answer = pb.WriteContentResponse()
            answer.CopyFrom(msg)
            yield answer
            if req.action == pb.COMMIT:
                return
            nxt = await _next(requests)
            if nxt is None:
                return
            req = nxt

    async def _apply_write(self, writer: content.Writer, req: pb.WriteContentRequest, offset: int) -> int:
        if req.offset > 0 and req.offset != offset:
            raise content.OutOfRange(f"write @{req.offset} must occur at current offset {offset}")
        if req.offset == 0 and offset > 0:
            await writer.truncate(0)
            offset = 0
        if req.data:
            offset += await writer.write(req.data)
            # Each answer carries the digest so far, and Status must see what was acknowledged.
            await writer.flush()
        return offset

    async def _refuse_existing(self, writer: content.Writer, expected: str) -> None:
        try:
            await self._store.info(expected)
        except errors.NotFound:
            return
        await writer.close()
        with contextlib.suppress(errors.NotFound):
            await self._store.abort(writer.ref)
        raise errors.AlreadyExists(f"blob with expected digest {expected} exists")


boundary.fill_unimplemented(ContentService, pb.DESCRIPTOR.services_by_name["Content"])
