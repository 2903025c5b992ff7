"""containerd's Transfer service: ``Transfer(source, destination, options)`` for what ``ctr`` 2.x sends.

Source and destination are ``containerd.types.transfer`` messages in Anys
(bare type URLs). The pairs served, with the side channels they use (streams
opened beforehand with :mod:`~wharfd.runtime.services.streaming`):

====================  ===================  ==================================================
source                destination          streams
====================  ===================  ==================================================
OCIRegistry           ImageStore           ``resolver.auth_stream``: AuthRequest → AuthResponse
ImageStore            OCIRegistry          the same
ImageStore            ImageExportStream    ``stream``: Data to the client, WindowUpdate back
ImageImportStream     ImageStore           ``stream``: Data from the client, WindowUpdate back
ImageStore            ImageStore           (tag; unpack when the destination lists unpacks)
====================  ===================  ==================================================

``options.progress_stream`` receives ``containerd.types.transfer.Progress``
messages while the transfer runs, and is closed when it ends, after the last
record. Any other pair is UNIMPLEMENTED, with both type URLs in the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import any_pb2, empty_pb2

from wharfd.api.services.transfer.v1 import transfer_pb2 as pb
from wharfd.api.services.transfer.v1 import transfer_pb2_grpc as pb_grpc
from wharfd.api.types import platform_pb2
from wharfd.api.types.transfer import imagestore_pb2, importexport_pb2, progress_pb2, registry_pb2
from wharfd.runtime import errors
from wharfd.runtime.images import platforms, walk
from wharfd.runtime.images.destination import Destination, Reference, Unpack
from wharfd.runtime.images.progress import Progress, Throttle
from wharfd.runtime.images.transfer import LocalTransfer, RegistryEndpoint, host_default
from wharfd.runtime.registry.auth import Credentials
from wharfd.runtime.services import boundary
from wharfd.runtime.services.convert import descriptor_to_proto
from wharfd.runtime.services.stream_manager import StreamManager
from wharfd.runtime.services.streaming import (
    ByteSender,
    Stream,
    receive_bytes,
    type_name,
    unpack,
)

log = logging.getLogger("wharfd.transfer")

_REGISTRY = registry_pb2.OCIRegistry.DESCRIPTOR.full_name
_STORE = imagestore_pb2.ImageStore.DESCRIPTOR.full_name
_EXPORT = importexport_pb2.ImageExportStream.DESCRIPTOR.full_name
_IMPORT = importexport_pb2.ImageImportStream.DESCRIPTOR.full_name


def platform_from_proto(msg: platform_pb2.Platform) -> platforms.Platform:
    """A normalized platform from ``containerd.types.Platform``."""
    p = platforms.Platform(msg.os, msg.architecture, msg.variant, msg.os_version, tuple(msg.os_features))
    return platforms.normalize(p)


def destination_from_proto(msg: imagestore_pb2.ImageStore) -> Destination:
    """The image store endpoint as :class:`~wharfd.runtime.images.destination.Destination`."""
    return Destination(
        name=msg.name,
        labels=dict(msg.labels),
        platforms=tuple(platform_from_proto(p) for p in msg.platforms),
        all_metadata=msg.all_metadata,
        manifest_limit=msg.manifest_limit,
        references=tuple(
            Reference(r.name, r.is_prefix, r.allow_overwrite, r.add_digest, r.skip_named_digest)
            for r in msg.extra_references
        ),
        unpacks=tuple(
            Unpack(platform_from_proto(u.platform) if u.HasField("platform") else None, u.snapshotter)
            for u in msg.unpacks
        ),
    )


def progress_to_proto(record: Progress) -> progress_pb2.Progress:
    """A ``containerd.types.transfer.Progress``."""
    msg = progress_pb2.Progress(
        event=record.event,
        name=record.name,
        parents=list(record.parents),
        progress=record.progress,
        total=record.total,
    )
    if record.desc is not None:
        msg.desc.CopyFrom(descriptor_to_proto(walk.to_record(record.desc)))
    return msg


class StreamCredentials:
    """Registry credentials asked from the client over its auth stream, once per host."""

    def __init__(self, stream: Stream, reference: str) -> None:
        self._stream = stream
        self._reference = reference
        self._lock = asyncio.Lock()
        self._known: dict[str, Credentials | None] = {}

    async def __call__(self, host: str) -> Credentials | None:
        """The client's answer for ``host`` (None: anonymous)."""
        async with self._lock:
            if host not in self._known:
                self._known[host] = await self._ask(host)
            return self._known[host]

    async def _ask(self, host: str) -> Credentials | None:
        await self._stream.send(registry_pb2.AuthRequest(host=host, reference=self._reference))
        reply = await self._stream.recv()
        if reply is None:
            return None
        resp = unpack(reply, registry_pb2.AuthResponse, what=f'auth stream "{self._stream.id}"')
        if resp.authType == registry_pb2.CREDENTIALS and resp.username:
            return Credentials(resp.username, resp.secret)
        if resp.authType == registry_pb2.REFRESH and resp.secret:
            return Credentials(secret=resp.secret)
        if resp.authType == registry_pb2.HEADER and resp.secret.lower().startswith("bearer "):
            return Credentials(registry_token=resp.secret[len("bearer ") :])
        return None


class ProgressSender:
    """Queues progress records and sends them on the progress stream, in order, off the caller's path."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self._queue: asyncio.Queue[Progress | None] = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def __call__(self, record: Progress) -> None:
        """Queue ``record``."""
        self._queue.put_nowait(record)

    async def _run(self) -> None:
        while (record := await self._queue.get()) is not None:
            try:
                await self._stream.send(progress_to_proto(record))
            except errors.Unavailable as exc:
                log.debug("progress not sent (%s): %s %s", exc, record.event, record.name)

    async def close(self) -> None:
        """Send what is queued, then end the stream."""
        self._queue.put_nowait(None)
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._stream.close()


class TransferService(pb_grpc.TransferServicer):
    """``Transfer``: decode the endpoints, run the transfer, report progress."""

    def __init__(self, local: LocalTransfer, streams: StreamManager) -> None:
        self.local = local
        self.streams = streams

    @boundary.unary
    async def Transfer(
        self, request: pb.TransferRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> empty_pb2.Empty:
        sender = None
        if request.options.progress_stream:
            sender = ProgressSender(self.streams.get(request.options.progress_stream))
        try:
            await self._dispatch(request.source, request.destination, Throttle(sender))
        finally:
            if sender is not None:
                await sender.close()
        return empty_pb2.Empty()

    async def _dispatch(self, src: any_pb2.Any, dst: any_pb2.Any, report: Throttle) -> None:
        pair = (type_name(src), type_name(dst))
        if pair == (_REGISTRY, _STORE):
            async with self._registry(src) as registry:
                await self.local.pull(registry, self._store(dst), report)
        elif pair == (_STORE, _REGISTRY):
            async with self._registry(dst) as registry:
                await self.local.push(self._store(src), registry, report)
        elif pair == (_STORE, _EXPORT):
            await self._export(self._store(src), unpack(dst, importexport_pb2.ImageExportStream), report)
        elif pair == (_IMPORT, _STORE):
            msg = unpack(src, importexport_pb2.ImageImportStream)
            stream = self.streams.get(msg.stream)
            try:
                await self.local.import_archive(receive_bytes(stream), self._store(dst), report)
            finally:
                stream.close()
        elif pair == (_STORE, _STORE):
            await self.local.tag(self._store(src), self._store(dst), report)
        else:
            raise errors.NotImplemented(
                f"method Transfer not implemented for {src.type_url or 'nothing'} to {dst.type_url or 'nothing'}"
            )

    @staticmethod
    def _store(value: any_pb2.Any) -> Destination:
        return destination_from_proto(unpack(value, imagestore_pb2.ImageStore))

    @contextlib.asynccontextmanager
    async def _registry(self, value: any_pb2.Any) -> AsyncIterator[RegistryEndpoint]:
        msg = unpack(value, registry_pb2.OCIRegistry)
        if not msg.reference:
            raise errors.InvalidArgument("OCIRegistry.reference must not be empty")
        resolver = msg.resolver
        auth = self.streams.get(resolver.auth_stream) if resolver.auth_stream else None
        if resolver.http_debug:
            log.info("registry HTTP debugging (%s) is not supported; ignored", resolver.http_debug)
        try:
            yield RegistryEndpoint(
                reference=msg.reference,
                hosts_dir=resolver.host_dir,
                plain_http=resolver.default_scheme == "http",
                headers=dict(resolver.headers),
                credentials=StreamCredentials(auth, msg.reference) if auth is not None else None,
            )
        finally:
            if auth is not None:
                auth.close()

    async def _export(
        self, source: Destination, msg: importexport_pb2.ImageExportStream, report: Throttle
    ) -> None:
        from wharfd.runtime.images import archive  # tarfile and the archive formats, on first use

        wanted = [platform_from_proto(p) for p in msg.platforms]
        opts = archive.ExportOptions(
            platforms=platforms.ordered(wanted) if wanted else host_default(),
            all_platforms=msg.all_platforms,
            skip_manifest_json=msg.skip_compatibility_manifest,
            skip_non_distributable=msg.skip_non_distributable,
        )
        sender = ByteSender(self.streams.get(msg.stream))
        try:
            await self.local.export(source, sender.write, opts, report)
        finally:
            await sender.close()

    def register(self, server: grpc.aio.Server) -> None:
        """Add the servicer to a gRPC server."""
        pb_grpc.add_TransferServicer_to_server(self, server)
