"""The CRI v1 servicers (RuntimeService and ImageService) with their error boundary.

Every handler runs in namespace ``k8s.io`` through :mod:`wharfd.runtime.services.boundary`,
so typed errors become gRPC statuses in one place. RPCs that are not built yet
answer UNIMPLEMENTED with the method's name; kubelet tolerates that for the
optional ones and the later work fills the rest.
"""

from __future__ import annotations

import functools
from typing import Any

import grpc

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.api.cri.v1 import api_pb2_grpc as cri_grpc
from wharfd.runtime import namespaces, plugin, version
from wharfd.runtime.services import boundary

cri_unary = functools.partial(boundary.unary, namespace=namespaces.K8S)


class RuntimeService(cri_grpc.RuntimeServiceServicer):
    """``runtime.v1.RuntimeService``."""

    @cri_unary
    async def Version(
        self, request: cri.VersionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cri.VersionResponse:
        # kubelet refuses a runtime whose Version leaves any of these four empty.
        return cri.VersionResponse(
            version=version.CRI_VERSION,
            runtime_name=version.RUNTIME_NAME,
            runtime_version=version.version(),
            runtime_api_version=version.CRI_API_VERSION,
        )


class ImageService(cri_grpc.ImageServiceServicer):
    """``runtime.v1.ImageService``."""


boundary.fill_unimplemented(RuntimeService, cri.DESCRIPTOR.services_by_name["RuntimeService"])
boundary.fill_unimplemented(ImageService, cri.DESCRIPTOR.services_by_name["ImageService"])


class CriPlugin:
    """The CRI plugin: registers both CRI services on the daemon's gRPC server."""

    def __init__(self) -> None:
        self.runtime = RuntimeService()
        self.images = ImageService()

    def register(self, server: grpc.aio.Server) -> None:
        """Add both CRI servicers to a gRPC server."""
        cri_grpc.add_RuntimeServiceServicer_to_server(self.runtime, server)
        cri_grpc.add_ImageServiceServicer_to_server(self.images, server)


async def _init(ctx: plugin.InitContext) -> CriPlugin:
    return CriPlugin()


PLUGIN = plugin.Registration(type=plugin.GRPC, id="cri", init=_init, requires=(plugin.METADATA,))
