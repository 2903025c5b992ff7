"""The plugins of containerd's client API, as the daemon starts them.

The plugins these services sit on start with the daemon: the content store,
the snapshotters, the stream manager and the shims' ttrpc Events/Forward
(the walking differ is :mod:`wharfd.runtime.services.differ`). Each gRPC
service's plugin also starts then, checking and taking what it requires as
before, but serves through a :class:`~wharfd.runtime.services.lazy.LazyService`:
its servicer module and generated ``*_pb2`` modules are imported on the
service's first call, which ``ctr``/``wharf`` make and kubelet never does.

This module must stay light: it imports no service implementation and no
generated module of the gRPC services.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from wharfd.api.services.ttrpc.events.v1 import events_pb2 as ttrpc_events_pb2
from wharfd.runtime import errors, namespaces, plugin
from wharfd.runtime.content import store as content
from wharfd.runtime.content.local import LocalStore
from wharfd.runtime.events import Exchange
from wharfd.runtime.metadata.containers import ContainerStore
from wharfd.runtime.services.lazy import BIDI, SERVER_STREAM, UNARY, Api, LazyService
from wharfd.runtime.snapshots import native, overlay
from wharfd.runtime.snapshots.metadata import NamespacedSnapshotter

if TYPE_CHECKING:
    from wharfd.runtime.services.streaming import Stream

STREAMING = "io.containerd.streaming.v1"
TTRPC_EVENTS_SERVICE = "containerd.services.events.ttrpc.v1.Events"
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _unary(*names: str) -> dict[str, tuple[bool, bool]]:
    return dict.fromkeys(names, UNARY)


# The services and their methods, as their .proto files declare them (tests/cri/test_daemon_memory.py
# checks these tables against the generated code).
_SERVICES = "wharfd.runtime.services"
CONTAINERS = Api(
    "containerd.services.containers.v1.Containers",
    f"{_SERVICES}.containers",
    {**_unary("Get", "List", "Create", "Update", "Delete"), "ListStream": SERVER_STREAM},
)
CONTENT = Api(
    "containerd.services.content.v1.Content",
    f"{_SERVICES}.content",
    {
        **_unary("Info", "Update", "Delete", "Status", "ListStatuses", "Abort"),
        "List": SERVER_STREAM,
        "Read": SERVER_STREAM,
        "Write": BIDI,
    },
)
DIFF = Api("containerd.services.diff.v1.Diff", f"{_SERVICES}.diff", _unary("Apply", "Diff"))
EVENTS = Api(
    "containerd.services.events.v1.Events",
    f"{_SERVICES}.events",
    {**_unary("Publish", "Forward"), "Subscribe": SERVER_STREAM},
)
IMAGES = Api(
    "containerd.services.images.v1.Images",
    f"{_SERVICES}.images",
    _unary("Get", "List", "Create", "Update", "Delete"),
)
INTROSPECTION = Api(
    "containerd.services.introspection.v1.Introspection",
    f"{_SERVICES}.introspection",
    _unary("Plugins", "Server", "PluginInfo"),
)
LEASES = Api(
    "containerd.services.leases.v1.Leases",
    f"{_SERVICES}.leases",
    _unary("Create", "Delete", "List", "AddResource", "DeleteResource", "ListResources"),
)
NAMESPACES = Api(
    "containerd.services.namespaces.v1.Namespaces",
    f"{_SERVICES}.namespaces",
    _unary("Get", "List", "Create", "Update", "Delete"),
)
SNAPSHOTS = Api(
    "containerd.services.snapshots.v1.Snapshots",
    f"{_SERVICES}.snapshots",
    {
        **_unary("Prepare", "View", "Mounts", "Commit", "Remove", "Stat", "Update", "Usage", "Cleanup"),
        "List": SERVER_STREAM,
    },
)
STREAMING_API = Api("containerd.services.streaming.v1.Streaming", f"{_SERVICES}.streaming", {"Stream": BIDI})
TASKS = Api(
    "containerd.services.tasks.v1.Tasks",
    f"{_SERVICES}.tasks",
    _unary(
        "Create",
        "Start",
        "Delete",
        "DeleteProcess",
        "Get",
        "List",
        "Kill",
        "Exec",
        "ResizePty",
        "CloseIO",
        "Pause",
        "Resume",
        "ListPids",
        "Checkpoint",
        "Update",
        "Metrics",
        "Wait",
    ),
)
TRANSFER = Api("containerd.services.transfer.v1.Transfer", f"{_SERVICES}.transfer", _unary("Transfer"))
VERSION = Api("containerd.services.version.v1.Version", f"{_SERVICES}.version", _unary("Version"))
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


# --- the content store -------------------------------------------------------


def _publisher(ctx: plugin.InitContext) -> content.Publish | None:
    # Events arrive with the events exchange; until it is loaded, nothing is published.
    try:
        exchange = ctx.get(plugin.EVENT)
    except errors.WharfError:
        return None
    publish: content.Publish | None = getattr(exchange, "publish", None)
    return publish


def _clean_stale(root: Path) -> None:
    # An abort renames an ingest to "<key>.<uuid>.tmp" before removing it; a crash can leave one.
    ingest_root = root / "ingest"
    if ingest_root.is_dir():
        for stale in ingest_root.glob("*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)


async def _init_content_store(ctx: plugin.InitContext) -> LocalStore:
    metadata = ctx.get(plugin.METADATA)
    policy = str(ctx.plugin_config.get("content_sharing_policy", "shared"))
    await asyncio.to_thread(ctx.root.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(_clean_stale, ctx.root)
    ctx.exports["root"] = str(ctx.root)
    return LocalStore(ctx.root, metadata.db, policy=policy, publish=_publisher(ctx))


CONTENT_STORE_PLUGIN = plugin.Registration(
    type=plugin.CONTENT, id="content", init=_init_content_store, requires=(plugin.METADATA, plugin.EVENT)
)


# --- the snapshotters --------------------------------------------------------


def _root(ctx: plugin.InitContext) -> Path:
    value = ctx.plugin_config.get("root_path") or ctx.root
    if not isinstance(value, str | Path):
        raise errors.InvalidArgument(f"plugins.{ctx.registration.uri!r}.root_path must be a string")
    ctx.exports["root"] = str(value)
    return Path(value)


def _mount_options(ctx: plugin.InitContext) -> list[str]:
    value = ctx.plugin_config.get("mount_options", [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise errors.InvalidArgument(
            f"plugins.{ctx.registration.uri!r}.mount_options must be a list of strings"
        )
    return value


async def _init_overlayfs(ctx: plugin.InitContext) -> NamespacedSnapshotter:
    root = _root(ctx)
    reason = await asyncio.to_thread(overlay.check_supported, root)
    if reason is not None:
        raise plugin.SkipPlugin(reason)
    backend = await asyncio.to_thread(overlay.OverlayBackend, root, options=_mount_options(ctx))
    return NamespacedSnapshotter(ctx.get(plugin.METADATA).db, backend)


async def _init_native(ctx: plugin.InitContext) -> NamespacedSnapshotter:
    backend = await asyncio.to_thread(native.NativeBackend, _root(ctx))
    return NamespacedSnapshotter(ctx.get(plugin.METADATA).db, backend)


OVERLAYFS_PLUGIN = plugin.Registration(
    type=plugin.SNAPSHOTTER,
    id=overlay.NAME,
    init=_init_overlayfs,
    requires=(plugin.METADATA,),
    host_platform=True,
)
NATIVE_PLUGIN = plugin.Registration(
    type=plugin.SNAPSHOTTER,
    id=native.NAME,
    init=_init_native,
    requires=(plugin.METADATA,),
    host_platform=True,
)


# --- streams, shim events, the installation's uuid ---------------------------


class StreamManager:
    """Registered streams (:class:`~wharfd.runtime.services.streaming.Stream`) by (namespace, id)."""

    def __init__(self) -> None:
        self._streams: dict[tuple[str, str], Stream] = {}

    def register(self, namespace: str, stream: Stream) -> None:
        """Make ``stream`` findable; AlreadyExists when the id is in use."""
        key = (namespace, stream.id)
        if key in self._streams:
            raise errors.AlreadyExists(f'stream "{stream.id}": already exists')
        self._streams[key] = stream

    def unregister(self, namespace: str, stream: Stream) -> None:
        """Forget ``stream`` (if it is still the one registered under its id)."""
        if self._streams.get((namespace, stream.id)) is stream:
            del self._streams[(namespace, stream.id)]

    def get(self, stream_id: str) -> Stream:
        """The open stream ``stream_id`` of the current namespace; NotFound otherwise."""
        found = self._streams.get((namespaces.required(), stream_id))
        if found is None or found.closed:
            raise errors.NotFound(f'stream "{stream_id}": not found')
        return found

    def __len__(self) -> int:
        return len(self._streams)


async def _init_stream_manager(ctx: plugin.InitContext) -> StreamManager:
    return StreamManager()


STREAM_MANAGER_PLUGIN = plugin.Registration(type=STREAMING, id="manager", init=_init_stream_manager)


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
    server_uuid = load_uuid(ctx.root)
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
