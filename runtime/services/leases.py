"""containerd's Leases service."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import empty_pb2

from wharfd.api.services.leases.v1 import leases_pb2 as pb
from wharfd.api.services.leases.v1 import leases_pb2_grpc as pb_grpc
from wharfd.runtime.metadata.leases import Lease, LeaseStore, Resource
from wharfd.runtime.services import boundary
from wharfd.runtime.services.convert import timestamp
from wharfd.runtime.services.images import Collector

Context = grpc.aio.ServicerContext[Any, Any]


def _lease(lease: Lease) -> pb.Lease:
    return pb.Lease(id=lease.id, labels=lease.labels, created_at=timestamp(lease.created_at))


class LeasesService(pb_grpc.LeasesServicer):
    """Create, Delete, List, AddResource, DeleteResource, ListResources."""

    def __init__(self, store: LeaseStore, gc: Collector | None = None) -> None:
        self._store = store
        self.gc = gc

    @boundary.unary
    async def Create(self, request: pb.CreateRequest, context: Context) -> pb.CreateResponse:
        return pb.CreateResponse(lease=_lease(await self._store.create(request.id, dict(request.labels))))

    @boundary.unary
    async def Delete(self, request: pb.DeleteRequest, context: Context) -> empty_pb2.Empty:
        await self._store.delete(request.id)
        if self.gc is not None:
            if request.sync:
                await self.gc.collect()
            else:
                self.gc.schedule()
        return empty_pb2.Empty()

    @boundary.unary
    async def List(self, request: pb.ListRequest, context: Context) -> pb.ListResponse:
        return pb.ListResponse(leases=[_lease(x) for x in await self._store.list(request.filters)])

    @boundary.unary
    async def AddResource(self, request: pb.AddResourceRequest, context: Context) -> empty_pb2.Empty:
        await self._store.add_resource(request.id, Resource(request.resource.id, request.resource.type))
        return empty_pb2.Empty()

    @boundary.unary
    async def DeleteResource(self, request: pb.DeleteResourceRequest, context: Context) -> empty_pb2.Empty:
        await self._store.delete_resource(request.id, Resource(request.resource.id, request.resource.type))
        return empty_pb2.Empty()

    @boundary.unary
    async def ListResources(
        self, request: pb.ListResourcesRequest, context: Context
    ) -> pb.ListResourcesResponse:
        found = await self._store.list_resources(request.id)
        return pb.ListResourcesResponse(resources=[pb.Resource(id=r.id, type=r.type) for r in found])

    def register(self, server: grpc.aio.Server) -> None:
        """Add the servicer to a gRPC server."""
        pb_grpc.add_LeasesServicer_to_server(self, server)
