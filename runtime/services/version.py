"""containerd's Version service: the daemon's version and the commit it was built from."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import empty_pb2

from wharfd.api.services.version.v1 import version_pb2 as pb
from wharfd.api.services.version.v1 import version_pb2_grpc as pb_grpc
from wharfd.runtime import version
from wharfd.runtime.services import boundary


class VersionService(pb_grpc.VersionServicer):
    """Answers ``Version`` with this build's version and revision."""

    @boundary.unary
    async def Version(
        self, request: empty_pb2.Empty, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.VersionResponse:
        return pb.VersionResponse(version=version.version(), revision=version.revision())

    def register(self, server: grpc.aio.Server) -> None:
        """Add this servicer to a gRPC server."""
        pb_grpc.add_VersionServicer_to_server(self, server)
