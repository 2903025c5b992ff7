"""The standard gRPC health service; serving once start-up has finished, not serving while stopping."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from wharfd.runtime import plugin


class HealthService:
    """Holds the health servicer so the daemon can flip its status."""

    def __init__(self) -> None:
        self.servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]  # set at import time

    def register(self, server: grpc.aio.Server) -> None:
        """Add the health servicer to a gRPC server."""
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)

    async def set_serving(self, serving: bool) -> None:
        """Report the whole server (service "") as SERVING or NOT_SERVING."""
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.servicer.set("", status)


async def _init(ctx: plugin.InitContext) -> HealthService:
    return HealthService()


PLUGIN = plugin.Registration(type=plugin.GRPC, id="healthcheck", init=_init)
