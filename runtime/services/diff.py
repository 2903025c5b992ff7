"""``containerd.services.diff.v1.Diff``: Apply and Diff over the walking differ.

What Apply and Diff do (overlay upper directories, whiteouts, compression,
``source_date_epoch``, the worker processes) is told where it is done, in
:mod:`wharfd.runtime.services.differ`; this module only maps the gRPC
messages. Imported on the service's first call (:mod:`wharfd.runtime.services.plugins`).
"""

from __future__ import annotations

from typing import Any

import grpc

from wharfd.api.services.diff.v1 import diff_pb2 as pb
from wharfd.api.services.diff.v1 import diff_pb2_grpc as pb_grpc
from wharfd.api.types import mount_pb2
from wharfd.runtime.services import boundary
from wharfd.runtime.services.convert import descriptor_from_proto, descriptor_to_proto
from wharfd.runtime.services.differ import WalkingDiffer
from wharfd.runtime.snapshots.snapshotter import Mount

Context = grpc.aio.ServicerContext[Any, Any]


def _mount_from(msg: mount_pb2.Mount) -> Mount:
    return Mount(type=msg.type, source=msg.source, target=msg.target, options=tuple(msg.options))


class DiffService(pb_grpc.DiffServicer):
    """Servicer for the Diff API over the walking differ."""

    def __init__(self, differ: WalkingDiffer) -> None:
        """Serve ``differ``."""
        self._differ = differ

    @boundary.unary
    async def Apply(self, request: pb.ApplyRequest, context: Context) -> pb.ApplyResponse:
        """Apply a layer blob onto mounts."""
        mounts = [_mount_from(m) for m in request.mounts]
        applied = await self._differ.apply(
            descriptor_from_proto(request.diff), mounts, sync_fs=request.sync_fs
        )
        return pb.ApplyResponse(applied=descriptor_to_proto(applied))

    @boundary.unary
    async def Diff(self, request: pb.DiffRequest, context: Context) -> pb.DiffResponse:
        """Compute the layer between two sets of mounts and store it."""
        epoch = request.source_date_epoch.seconds if request.HasField("source_date_epoch") else None
        made = await self._differ.compare(
            [_mount_from(m) for m in request.left],
            [_mount_from(m) for m in request.right],
            media_type=request.media_type,
            ref=request.ref,
            labels=dict(request.labels),
            source_date_epoch=epoch,
        )
        return pb.DiffResponse(diff=descriptor_to_proto(made))

    def register(self, server: grpc.aio.Server) -> None:
        """Add this servicer to a gRPC server."""
        pb_grpc.add_DiffServicer_to_server(self, server)


boundary.fill_unimplemented(DiffService, pb.DESCRIPTOR.services_by_name["Diff"])
