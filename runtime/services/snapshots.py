"""``containerd.services.snapshots.v1.Snapshots`` over the snapshotter plugins.

Every request names its snapshotter (``overlayfs``, ``native``): an empty
name is InvalidArgument, an unknown one NotFound naming it. The namespace
comes from the call's metadata (:mod:`~wharfd.runtime.services.boundary`)
and is required. After Prepare, Commit and Remove the optional ``publish``
callback gets the event containerd publishes (``/snapshot/prepare``,
``/snapshot/commit``, ``/snapshot/remove``), in the caller's namespace.

The plugins: ``io.containerd.snapshotter.v1`` ``overlayfs`` (skipped, with the
reason, where overlayfs cannot be mounted on its root) and ``native``
(:mod:`wharfd.runtime.snapshots.plugin`), each a
:class:`~wharfd.runtime.snapshots.metadata.NamespacedSnapshotter` over the
metadata plugin's database; and the gRPC plugin ``snapshots``
(:mod:`wharfd.runtime.services.plugins`) serving every snapshotter that started. Config keys of a snapshotter plugin:
``root_path`` (default: the plugin's root) and, for overlayfs,
``mount_options`` (added to every overlay mount).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import grpc
from google.protobuf import empty_pb2, timestamp_pb2
from google.protobuf.message import Message

from wharfd.api.events import snapshot_pb2 as events_pb2
from wharfd.api.services.snapshots.v1 import snapshots_pb2 as pb
from wharfd.api.services.snapshots.v1 import snapshots_pb2_grpc as pb_grpc
from wharfd.api.types import mount_pb2
from wharfd.runtime import errors
from wharfd.runtime.services import boundary
from wharfd.runtime.snapshots.snapshotter import Info, Kind, Mount, Snapshotter

TOPIC_PREPARE = "/snapshot/prepare"
TOPIC_COMMIT = "/snapshot/commit"
TOPIC_REMOVE = "/snapshot/remove"
# Infos per List response message, so a large namespace streams in pieces.
LIST_BATCH = 100

Publish = Callable[[str, Message], Awaitable[None]]
"""Hands (topic, event) to the events exchange; the namespace is in ``namespaces.current``."""

Context = grpc.aio.ServicerContext[Any, Any]


def _timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def info_to_proto(info: Info) -> pb.Info:
    """The API form of a snapshot's info."""
    return pb.Info(
        name=info.name,
        parent=info.parent,
        kind=info.kind.name,
        created_at=_timestamp(info.created),
        updated_at=_timestamp(info.updated),
        labels=dict(info.labels),
    )


def mounts_to_proto(mounts: Sequence[Mount]) -> list[mount_pb2.Mount]:
    """The API form of a list of mounts."""
    return [
        mount_pb2.Mount(type=m.type, source=m.source, target=m.target, options=list(m.options))
        for m in mounts
    ]


class SnapshotsService(pb_grpc.SnapshotsServicer):
    """Servicer for the Snapshots API over the snapshotters by name."""

    def __init__(self, snapshotters: Mapping[str, Snapshotter], publish: Publish | None = None) -> None:
        """Serve ``snapshotters``; ``publish``, when given, receives an event after each change."""
        self._snapshotters = dict(snapshotters)
        self._publish = publish

    def _get(self, name: str) -> Snapshotter:
        if not name:
            raise errors.InvalidArgument("snapshotter argument missing: name one of " + self._known())
        try:
            return self._snapshotters[name]
        except KeyError:
            raise errors.NotFound(f"snapshotter {name!r} not loaded: known are {self._known()}") from None

    def _known(self) -> str:
        return ", ".join(repr(n) for n in sorted(self._snapshotters)) or "none"

    @boundary.unary
    async def Prepare(
        self, request: pb.PrepareSnapshotRequest, context: Context
    ) -> pb.PrepareSnapshotResponse:
        """Create an active snapshot and return its mounts."""
        sn = self._get(request.snapshotter)
        mounts = await sn.prepare(request.key, request.parent, dict(request.labels))
        event = events_pb2.SnapshotPrepare(key=request.key, parent=request.parent, snapshotter=sn.name)
        await self._emit(TOPIC_PREPARE, event)
        return pb.PrepareSnapshotResponse(mounts=mounts_to_proto(mounts))

    @boundary.unary
    async def View(self, request: pb.ViewSnapshotRequest, context: Context) -> pb.ViewSnapshotResponse:
        """Create a read-only view and return its mounts."""
        sn = self._get(request.snapshotter)
        mounts = await sn.view(request.key, request.parent, dict(request.labels))
        return pb.ViewSnapshotResponse(mounts=mounts_to_proto(mounts))

    @boundary.unary
    async def Mounts(self, request: pb.MountsRequest, context: Context) -> pb.MountsResponse:
        """Return the mounts of an active snapshot or view again."""
        mounts = await self._get(request.snapshotter).mounts(request.key)
        return pb.MountsResponse(mounts=mounts_to_proto(mounts))

    @boundary.unary
    async def Commit(self, request: pb.CommitSnapshotRequest, context: Context) -> empty_pb2.Empty:
        """Commit an active snapshot under a new name."""
        sn = self._get(request.snapshotter)
        if request.parent and (await sn.stat(request.key)).parent != request.parent:
            # containerd lets a parentless snapshot be rebased on commit; no backend here can.
            raise errors.NotImplemented(
                f"commit of {request.key!r}: changing the parent to {request.parent!r} is not supported"
            )
        await sn.commit(request.name, request.key, dict(request.labels))
        event = events_pb2.SnapshotCommit(key=request.key, name=request.name, snapshotter=sn.name)
        await self._emit(TOPIC_COMMIT, event)
        return empty_pb2.Empty()

    @boundary.unary
    async def Remove(self, request: pb.RemoveSnapshotRequest, context: Context) -> empty_pb2.Empty:
        """Remove a snapshot without children."""
        sn = self._get(request.snapshotter)
        await sn.remove(request.key)
        await self._emit(TOPIC_REMOVE, events_pb2.SnapshotRemove(key=request.key, snapshotter=sn.name))
        return empty_pb2.Empty()

    @boundary.unary
    async def Stat(self, request: pb.StatSnapshotRequest, context: Context) -> pb.StatSnapshotResponse:
        """Return a snapshot's info."""
        info = await self._get(request.snapshotter).stat(request.key)
        return pb.StatSnapshotResponse(info=info_to_proto(info))

    @boundary.unary
    async def Update(self, request: pb.UpdateSnapshotRequest, context: Context) -> pb.UpdateSnapshotResponse:
        """Change labels by the update mask; no mask replaces them all."""
        sn = self._get(request.snapshotter)
        wanted = Info(kind=Kind.UNKNOWN, name=request.info.name, labels=dict(request.info.labels))
        info = await sn.update(wanted, list(request.update_mask.paths))
        return pb.UpdateSnapshotResponse(info=info_to_proto(info))

    @boundary.stream
    async def List(
        self, request: pb.ListSnapshotsRequest, context: Context
    ) -> AsyncIterator[pb.ListSnapshotsResponse]:
        """Stream the infos matching the filters, in batches."""
        infos = await self._get(request.snapshotter).walk(list(request.filters))
        for start in range(0, len(infos), LIST_BATCH):
            batch = infos[start : start + LIST_BATCH]
            yield pb.ListSnapshotsResponse(info=[info_to_proto(i) for i in batch])

    @boundary.unary
    async def Usage(self, request: pb.UsageRequest, context: Context) -> pb.UsageResponse:
        """Return the disk use of a snapshot's own layer."""
        usage = await self._get(request.snapshotter).usage(request.key)
        return pb.UsageResponse(size=usage.size, inodes=usage.inodes)

    @boundary.unary
    async def Cleanup(self, request: pb.CleanupRequest, context: Context) -> empty_pb2.Empty:
        """Delete the snapshotter's directories that no snapshot record points at."""
        await self._get(request.snapshotter).cleanup()
        return empty_pb2.Empty()

    def register(self, server: grpc.aio.Server) -> None:
        """Add this servicer to a gRPC server."""
        pb_grpc.add_SnapshotsServicer_to_server(self, server)

    async def _emit(self, topic: str, event: Message) -> None:
        if self._publish is not None:
            await self._publish(topic, event)
