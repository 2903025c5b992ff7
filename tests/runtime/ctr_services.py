"""Real wharfd services for ``wharf`` CLI tests: the runtime plugins wired as the daemon wires them.

The plugins start for real (SQLite metadata, local content store, native and,
as root, overlayfs snapshotters, events exchange, leases, images, GC) and are
served on a unix socket by a ``grpc.aio`` server running on an event loop in
a thread of its own, so the synchronous CLI can be run in-process against it.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc

from wharfd.api.services.images.v1 import images_pb2 as ipb
from wharfd.api.types import descriptor_pb2
from wharfd.runtime import events, gc, mount, plugin
from wharfd.runtime.client import Client
from wharfd.runtime.content import plugin as content_plugin
from wharfd.runtime.ctr import main
from wharfd.runtime.ctr.content import write_blob
from wharfd.runtime.metadata import plugin as metadata_plugin
from wharfd.runtime.services import plugins as api
from wharfd.runtime.snapshots import plugin as snapshots_plugin

T = TypeVar("T")

REGISTRATIONS = (
    metadata_plugin.PLUGIN,
    events.PLUGIN,
    api.EVENTS_PLUGIN,
    api.NAMESPACES_PLUGIN,
    api.IMAGES_PLUGIN,
    api.LEASES_PLUGIN,
    content_plugin.PLUGIN,
    api.CONTENT_PLUGIN,
    gc.PLUGIN,
    snapshots_plugin.OVERLAYFS_PLUGIN,
    snapshots_plugin.NATIVE_PLUGIN,
    api.SNAPSHOTS_PLUGIN,
    api.INTROSPECTION_PLUGIN,
)

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


@dataclass
class Served:
    """The running services: where they listen, and helpers to drive them."""

    address: str
    root: Path
    plugins: plugin.PluginSet
    loop: asyncio.AbstractEventLoop

    def wharf(self, *argv: str, namespace: str = "default") -> int:
        """Run the CLI in-process; return its exit code."""
        return main.main(["-a", self.address, "-n", namespace, *argv])

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the services' loop."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    @contextmanager
    def client(self, namespace: str = "default") -> Iterator[Client]:
        """A CLI client of the services."""
        with Client(self.address, namespace=namespace) as client:
            yield client


@contextmanager
def serve(tmp_path: Path, extra: Sequence[Callable[[grpc.aio.Server], None]] = ()) -> Iterator[Served]:
    """Start the plugins and serve every gRPC one (plus ``extra`` servicers) on a unix socket."""
    root = tmp_path / "root"
    address = str(tmp_path / "wharfd.sock")
    plugins = plugin.PluginSet(REGISTRATIONS)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def context(reg: plugin.Registration) -> plugin.InitContext:
        return plugin.InitContext(reg, None, {}, root / reg.uri, tmp_path / "state" / reg.uri, plugins)

    async def start() -> grpc.aio.Server:
        await plugins.start(context)
        server = grpc.aio.server()
        for p in plugins.started(plugin.GRPC):
            p.instance.register(server)
        for add in extra:
            add(server)
        server.add_insecure_port(f"unix://{address}")
        await server.start()
        return server

    server = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=60)
    try:
        yield Served(address, root, plugins, loop)
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(None), loop).result(timeout=30)
        asyncio.run_coroutine_threadsafe(plugins.close(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        mount.unmount_all(tmp_path, mount.MNT_DETACH)


def digest(data: bytes) -> str:
    """The sha256 digest of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def put(client: Client, data: bytes, labels: dict[str, str] | None = None) -> str:
    """Write a blob through the Content service; return its digest."""
    d = digest(data)
    write_blob(client, f"test-{d}", io.BytesIO(data), len(data), d, labels=labels)
    return d


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    """An OCI descriptor for ``data``."""
    return {"mediaType": media_type, "digest": digest(data), "size": len(data), **extra}


def config(arch: str, diff_ids: Sequence[str], os_name: str = "linux", variant: str = "") -> bytes:
    """An image config for a platform and its layers' diff ids."""
    obj: dict[str, Any] = {
        "architecture": arch,
        "os": os_name,
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
    }
    if variant:
        obj["variant"] = variant
    return json.dumps(obj).encode()


def manifest(cfg: bytes, layers: Sequence[bytes]) -> bytes:
    """An OCI image manifest over a config and layer blobs."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, cfg),
            "layers": [descriptor(OCI_LAYER, layer) for layer in layers],
        }
    ).encode()


def index(entries: Sequence[tuple[bytes, dict[str, str] | None]]) -> bytes:
    """An OCI index over manifests, each with an optional platform."""
    manifests = []
    for body, platform in entries:
        extra = {"platform": platform} if platform is not None else {}
        manifests.append(descriptor(OCI_MANIFEST, body, **extra))
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}).encode()


def create_image(
    client: Client, name: str, media_type: str, body: bytes, labels: dict[str, str] | None = None
) -> None:
    """Create an image record whose target is ``body`` (which must already be stored, or not)."""
    target = descriptor_pb2.Descriptor(media_type=media_type, digest=digest(body), size=len(body))
    client.images.Create(
        ipb.CreateImageRequest(image=ipb.Image(name=name, labels=labels or {}, target=target))
    )


def put_image_manifest(
    client: Client, cfg: bytes, layers: Sequence[bytes], *, store_layers: bool = True
) -> bytes:
    """Store a config, its layers (unless told not to) and the manifest with the GC labels a pull sets."""
    put(client, cfg)
    labels = {"containerd.io/gc.ref.content.config": digest(cfg)}
    for i, layer in enumerate(layers):
        if store_layers:
            put(client, layer)
        labels[f"containerd.io/gc.ref.content.l.{i}"] = digest(layer)
    body = manifest(cfg, layers)
    put(client, body, labels)
    return body


def put_index(client: Client, entries: Sequence[tuple[bytes, dict[str, str] | None]]) -> bytes:
    """Store an index over already stored manifests, with GC labels to them."""
    body = index(entries)
    labels = {f"containerd.io/gc.ref.content.m.{i}": digest(m) for i, (m, _) in enumerate(entries)}
    put(client, body, labels)
    return body
