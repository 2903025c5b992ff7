"""containerd's Introspection service: the plugin table and facts about this server.

``Plugins`` reports every registration with the outcome of its init (an
``init_err`` status for ``skip`` and ``error``), so ``wharf plugins ls`` and the
stock ``ctr plugins ls`` show the truth. ``Server`` answers a uuid that stays
the same across restarts (kept under the plugin's root) and the daemon's pid.
"""

from __future__ import annotations

import os
from typing import Any

import grpc
from google.protobuf import empty_pb2
from google.rpc import code_pb2, status_pb2

from wharfd.api.services.introspection.v1 import introspection_pb2 as pb
from wharfd.api.services.introspection.v1 import introspection_pb2_grpc as pb_grpc
from wharfd.api.types import platform_pb2
from wharfd.runtime import errors, filters, plugin
from wharfd.runtime.services import boundary


def _pidns() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def _platform(text: str) -> platform_pb2.Platform:
    os_, _, rest = text.partition("/")
    arch, _, variant = rest.partition("/")
    return platform_pb2.Platform(os=os_, architecture=arch, variant=variant)


def plugin_message(p: plugin.Plugin) -> pb.Plugin:
    """Describe one plugin as the Introspection API does."""
    reg = p.registration
    msg = pb.Plugin(
        type=reg.type,
        id=reg.id,
        requires=list(reg.requires),
        platforms=[_platform(x) for x in p.platforms],
        exports=p.exports,
        capabilities=list(reg.capabilities),
    )
    if p.error is not None:
        code, message = errors.to_status(p.error)
        if not isinstance(p.error, errors.WharfError):
            message = str(p.error)  # the init's own words, without the exception class
        # google.rpc.Code numbers equal grpc.StatusCode's first tuple element.
        msg.init_err.CopyFrom(status_pb2.Status(code=code.value[0] or code_pb2.UNKNOWN, message=message))
    return msg


def _adaptor(p: plugin.Plugin) -> filters.Adaptor:
    reg = p.registration

    def get(path: Any) -> str | None:
        field = path[0] if path else ""
        if field == "type":
            return reg.type
        if field == "id":
            return reg.id
        if field == "status":
            return p.status
        if field == "platforms":
            return ",".join(p.platforms) or None
        if field == "capabilities":
            return ",".join(reg.capabilities) or None
        return None

    return get


class IntrospectionService(pb_grpc.IntrospectionServicer):
    """Serves the plugin table and server facts."""

    def __init__(self, plugins: plugin.PluginSet, server_uuid: str) -> None:
        self._plugins = plugins
        self._uuid = server_uuid

    @boundary.unary
    async def Plugins(
        self, request: pb.PluginsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PluginsResponse:
        flt = filters.parse(request.filters)
        return pb.PluginsResponse(
            plugins=[plugin_message(p) for p in self._plugins.plugins if flt.matches(_adaptor(p))]
        )

    @boundary.unary
    async def Server(
        self, request: empty_pb2.Empty, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ServerResponse:
        return pb.ServerResponse(uuid=self._uuid, pid=os.getpid(), pidns=_pidns())

    @boundary.unary
    async def PluginInfo(
        self, request: pb.PluginInfoRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PluginInfoResponse:
        for p in self._plugins.plugins:
            reg = p.registration
            if reg.type == request.type and (not request.id or reg.id == request.id):
                return pb.PluginInfoResponse(plugin=plugin_message(p))
        raise errors.NotFound(f"plugin {request.type}.{request.id}: not found")

    def register(self, server: grpc.aio.Server) -> None:
        """Add this servicer to a gRPC server."""
        pb_grpc.add_IntrospectionServicer_to_server(self, server)
