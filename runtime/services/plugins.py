"""The plugins of containerd's client API, as the daemon starts them.

The plugins these services sit on start with the daemon, each beside what it
serves: the content store (:mod:`wharfd.runtime.content.plugin`), the
snapshotters (:mod:`wharfd.runtime.snapshots.plugin`), the stream manager
(:mod:`wharfd.runtime.services.stream_manager`) and the walking differ
(:mod:`wharfd.runtime.services.differ`); the shims' ttrpc Events/Forward is
here. Each gRPC service's plugin also starts then, checking and taking what it
requires as before, but serves through a
:class:`~wharfd.runtime.services.lazy.LazyService`: its servicer module and
generated ``*_pb2`` modules are imported on the service's first call, which
``ctr``/``wharf`` make and kubelet never does.

This module must stay light: it imports no service implementation and no
generated module of the gRPC services.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from types import ModuleType
from typing import Any

from wharfd.api.services.ttrpc.events.v1 import events_pb2 as ttrpc_events_pb2
from wharfd.runtime import errors, plugin
from wharfd.runtime.events import Exchange
from wharfd.runtime.metadata.containers import ContainerStore
from wharfd.runtime.services.lazy import Api, LazyService
from wharfd.runtime.services.stream_manager import STREAMING

TTRPC_EVENTS_SERVICE = "containerd.services.events.ttrpc.v1.Events"
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


# The services, by full name, and the modules that serve them; each one's methods are the table
# hack/protogen.py generates from its .proto file (wharfd.api.services.methods).
_SERVICES = "wharfd.runtime.services"
CONTAINERS = Api("containerd.services.containers.v1.Containers", f"{_SERVICES}.containers")
CONTENT = Api("containerd.services.content.v1.Content", f"{_SERVICES}.content")
DIFF = Api("containerd.services.diff.v1.Diff", f"{_SERVICES}.diff")
EVENTS = Api("containerd.services.events.v1.Events", f"{_SERVICES}.events")
IMAGES = Api("containerd.services.images.v1.Images", f"{_SERVICES}.images")
INTROSPECTION = Api("containerd.services.introspection.v1.Introspection", f"{_SERVICES}.introspection")
LEASES = Api("containerd.services.leases.v1.Leases", f"{_SERVICES}.leases")
NAMESPACES = Api("containerd.services.namespaces.v1.Namespaces", f"{_SERVICES}.namespaces")
SNAPSHOTS = Api("containerd.services.snapshots.v1.Snapshots", f"{_SERVICES}.snapshots")
STREAMING_API = Api("containerd.services.streaming.v1.Streaming", f"{_SERVICES}.streaming")
TASKS = Api("containerd.services.tasks.v1.Tasks", f"{_SERVICES}.tasks")
TRANSFER = Api("containerd.services.transfer.v1.Transfer", f"{_SERVICES}.transfer")
VERSION = Api("containerd.services.version.v1.Version", f"{_SERVICES}.version")
APIS = (
    CONTAINERS,
    CONTENT,
    DIFF,
    EVENTS,
    IMAGES,
    INTROSPECTION,
    LEASES,
    NAMESPACES,
    SNAPSHOTS,
    STREAMING_API,
    TASKS,
    TRANSFER,
    VERSION,
)


# --- shim events, the installation's uuid -------------------------------------


class TtrpcForward:
    """``containerd.services.events.ttrpc.v1.Events/Forward`` on the daemon's ttrpc socket."""

    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange

    async def forward(self, payload: bytes, metadata: dict[str, list[str]]) -> bytes:
        """Decode a ForwardRequest and re-publish its envelope."""
        request = ttrpc_events_pb2.ForwardRequest.FromString(payload)
        if not request.HasField("envelope"):
            raise errors.InvalidArgument("forward: envelope is required")
        await self._exchange.forward(request.envelope)
        return b""  # google.protobuf.Empty

    def register(self, server: Any) -> None:
        """Add the Forward method to a TtrpcServer."""
        server.register(TTRPC_EVENTS_SERVICE, "Forward", self.forward)


async def _init_ttrpc_events(ctx: plugin.InitContext) -> TtrpcForward:
    return TtrpcForward(ctx.get(plugin.EVENT))


TTRPC_EVENTS_PLUGIN = plugin.Registration(
    type=plugin.TTRPC, id="events", init=_init_ttrpc_events, requires=(plugin.EVENT,)
)


def random_uuid() -> str:
    """A random (version 4, RFC 4122 variant) uuid in its canonical text form."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def load_uuid(root: Path) -> str:
    """Return this installation's uuid, creating it on first start (atomically)."""
    path = root / "uuid"
    try:
        found = path.read_text().strip().lower()
    except FileNotFoundError:
        found = ""
    if _UUID.fullmatch(found):
        return found
    root.mkdir(parents=True, exist_ok=True)
    value = random_uuid()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(value + "\n")
    os.replace(tmp, path)
    return value


# --- the gRPC services -------------------------------------------------------
# Each init takes what its service requires now, as an eager one would, and hands the service's
# constructor call to the LazyService, which makes it once the module is imported.


async def _init_containers(ctx: plugin.InitContext) -> LazyService:
    meta = ctx.get(plugin.METADATA)
    gc = ctx.plugins.instances(plugin.GC).get("scheduler")
    publish = ctx.get(plugin.EVENT).publish
    store = ContainerStore(meta.db)
    return LazyService(CONTAINERS, lambda m: m.ContainersService(store, publish, gc))


async def _init_content(ctx: plugin.InitContext) -> LazyService:
    store = ctx.get(plugin.CONTENT, "content")
    return LazyService(CONTENT, lambda m: m.ContentService(store))


async def _init_diff(ctx: plugin.InitContext) -> LazyService:
    differ = ctx.get(plugin.DIFF, "walking")
    return LazyService(DIFF, lambda m: m.DiffService(differ))


async def _init_events(ctx: plugin.InitContext) -> LazyService:
    exchange = ctx.get(plugin.EVENT)
    return LazyService(EVENTS, lambda m: m.EventsService(exchange))


async def _init_images(ctx: plugin.InitContext) -> LazyService:
    meta = ctx.get(plugin.METADATA)
    gc = ctx.plugins.instances(plugin.GC).get("scheduler")
    publish = ctx.get(plugin.EVENT).publish
    return LazyService(IMAGES, lambda m: m.ImagesService(meta.images, publish, gc))


async def _init_introspection(ctx: plugin.InitContext) -> LazyService:
    plugins = ctx.plugins
    server_uuid = await asyncio.to_thread(load_uuid, ctx.root)  # a read; on first boot, a write
    return LazyService(INTROSPECTION, lambda m: m.IntrospectionService(plugins, server_uuid))


async def _init_leases(ctx: plugin.InitContext) -> LazyService:
    gc = ctx.plugins.instances(plugin.GC).get("scheduler")
    store = ctx.get(plugin.METADATA).leases
    return LazyService(LEASES, lambda m: m.LeasesService(store, gc))


async def _init_namespaces(ctx: plugin.InitContext) -> LazyService:
    publish = ctx.get(plugin.EVENT).publish
    store = ctx.get(plugin.METADATA).namespaces
    return LazyService(NAMESPACES, lambda m: m.NamespacesPlugin(store, publish))


async def _init_snapshots(ctx: plugin.InitContext) -> LazyService:
    snapshotters = ctx.get_all(plugin.SNAPSHOTTER)
    publish = ctx.get(plugin.EVENT).publish
    return LazyService(SNAPSHOTS, lambda m: m.SnapshotsService(snapshotters, publish))


async def _init_streaming(ctx: plugin.InitContext) -> LazyService:
    manager = ctx.get(STREAMING, "manager")
    return LazyService(STREAMING_API, lambda m: m.StreamingService(manager))


async def _init_tasks(ctx: plugin.InitContext) -> LazyService:
    manager = ctx.get(plugin.RUNTIME, "task")
    store = ContainerStore(ctx.get(plugin.METADATA).db)
    return LazyService(TASKS, lambda m: m.TasksService(manager, store))


async def _init_transfer(ctx: plugin.InitContext) -> LazyService:
    meta = ctx.get(plugin.METADATA)
    puller = ctx.get(plugin.TRANSFER, "local")
    store = ctx.get(plugin.CONTENT, "content")
    manager = ctx.get(STREAMING, "manager")
    snapshotter = str(ctx.plugin_config.get("snapshotter", "overlayfs"))

    def build(m: ModuleType) -> Any:
        local = m.LocalTransfer(puller, store, meta.images, meta.leases, default_snapshotter=snapshotter)
        return m.TransferService(local, manager)

    return LazyService(TRANSFER, build)


async def _init_version(ctx: plugin.InitContext) -> LazyService:
    return LazyService(VERSION, lambda m: m.VersionService())


def _grpc(id_: str, init: Any, *requires: str) -> plugin.Registration:
    return plugin.Registration(type=plugin.GRPC, id=id_, init=init, requires=requires)


CONTAINERS_PLUGIN = _grpc("containers", _init_containers, plugin.METADATA, plugin.EVENT, plugin.GC)
CONTENT_PLUGIN = _grpc("content", _init_content, plugin.CONTENT)
DIFF_PLUGIN = _grpc("diff", _init_diff, plugin.DIFF)
EVENTS_PLUGIN = _grpc("events", _init_events, plugin.EVENT)
IMAGES_PLUGIN = _grpc("images", _init_images, plugin.METADATA, plugin.EVENT, plugin.GC)
INTROSPECTION_PLUGIN = _grpc("introspection", _init_introspection)
LEASES_PLUGIN = _grpc("leases", _init_leases, plugin.METADATA, plugin.GC)
NAMESPACES_PLUGIN = _grpc("namespaces", _init_namespaces, plugin.METADATA, plugin.EVENT)
SNAPSHOTS_PLUGIN = _grpc("snapshots", _init_snapshots, plugin.SNAPSHOTTER, plugin.EVENT)
STREAMING_PLUGIN = _grpc("streaming", _init_streaming, STREAMING)
TASKS_PLUGIN = _grpc("tasks", _init_tasks, plugin.RUNTIME, plugin.METADATA)
TRANSFER_PLUGIN = _grpc(
    "transfer", _init_transfer, plugin.TRANSFER, STREAMING, plugin.METADATA, plugin.CONTENT
)
VERSION_PLUGIN = _grpc("version", _init_version)
