"""The pull tests' rig: the real plugins (SQLite, content store, overlayfs, GC, puller) under a tmp root.

Everything is started through the plugin table as the daemon does, in the
``default`` namespace, and torn down (plugins closed, mounts gone) after the
test. Images are built with :mod:`tests.support.images` and pushed to a real
registry on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.support.images import Image, ImageIndex, push_image, push_index
from tests.support.registry import serve_app
from wharfd.runtime import events, gc, mount, namespaces, plugin
from wharfd.runtime.content import plugin as content_plugin
from wharfd.runtime.content.local import LocalStore
from wharfd.runtime.images.pull import PLUGIN as PULL_PLUGIN
from wharfd.runtime.images.pull import Puller
from wharfd.runtime.metadata import plugin as metadata_plugin
from wharfd.runtime.metadata.images import ImageStore
from wharfd.runtime.registry import HostsConfig, Resolver, Transport
from wharfd.runtime.services import differ
from wharfd.runtime.snapshots import plugin as snapshots_plugin
from wharfd.runtime.snapshots.metadata import NamespacedSnapshotter

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (overlayfs, owners, device nodes)")
NS = "default"


@dataclass
class Rig:
    """The started plugins and the objects tests talk to."""

    plugins: plugin.PluginSet
    root: Path

    @property
    def puller(self) -> Puller:
        return self.plugins.instance(plugin.TRANSFER, "local")  # type: ignore[no-any-return]

    @property
    def content(self) -> LocalStore:
        return self.plugins.instance(plugin.CONTENT, "content")  # type: ignore[no-any-return]

    @property
    def images(self) -> ImageStore:
        return self.plugins.instance(plugin.METADATA).images  # type: ignore[no-any-return]

    @property
    def collector(self) -> gc.Collector:
        return self.plugins.instance(plugin.GC, "scheduler")  # type: ignore[no-any-return]

    def snapshotter(self, name: str = "overlayfs") -> NamespacedSnapshotter:
        return self.plugins.instance(plugin.SNAPSHOTTER, name)  # type: ignore[no-any-return]

    @property
    def overlay_root(self) -> Path:
        return self.snapshotter().backend.root

    def staging_left(self) -> list[str]:
        """What is left in the unpacker's staging directories."""
        left = []
        for name in ("overlayfs", "native"):
            base = self.snapshotter(name).backend.root / "unpack"
            if base.exists():
                left += [str(p) for p in base.iterdir()]
        return left


REGISTRATIONS: Sequence[plugin.Registration] = (
    metadata_plugin.PLUGIN,
    events.PLUGIN,
    content_plugin.PLUGIN,
    snapshots_plugin.OVERLAYFS_PLUGIN,
    snapshots_plugin.NATIVE_PLUGIN,
    gc.PLUGIN,
    differ.PLUGIN,
    PULL_PLUGIN,
)


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, extra: Sequence[plugin.Registration] = ()) -> AsyncIterator[Rig]:
    """Start the plugins under ``tmp_path/root`` in namespace ``default``."""
    plugins = plugin.PluginSet([*REGISTRATIONS, *extra])
    root = tmp_path / "root"

    def context(reg: plugin.Registration) -> plugin.InitContext:
        return plugin.InitContext(reg, None, {}, root / reg.uri, tmp_path / "state" / reg.uri, plugins)

    token = namespaces.current.set(NS)
    try:
        await plugins.start(context)
        for p in plugins.plugins:
            if p.error is not None:
                raise RuntimeError(f"plugin {p.registration.uri} failed: {p.error}")
        yield Rig(plugins, root)
    finally:
        await plugins.close()
        await asyncio.to_thread(mount.unmount_all, tmp_path, mount.MNT_DETACH)
        namespaces.current.reset(token)


async def push(host: str, repo_tag: str, image: Image | ImageIndex) -> str:
    """Push ``image`` to ``host`` as ``repo:tag``; returns the reference."""
    ref = f"{host}/{repo_tag}"
    repo, _, tag = repo_tag.partition(":")
    async with Transport(HostsConfig(plain_http=True)) as transport:
        pusher = Resolver(transport).pusher(f"{host}/{repo}")
        if isinstance(image, ImageIndex):
            await push_index(pusher, image, tag=tag)
        else:
            await push_image(pusher, image, tag=tag)
    return ref


@dataclass
class Proxy:
    """A pass-through to the registry that counts blob bytes and can misbehave on blob GETs.

    ``drop_after``: a blob response dies after that many body bytes; with
    ``refuse`` set, later blob requests die before any. ``stall_after``: a
    blob response stops sending after that many bytes, until the test ends.
    """

    upstream: str
    host: str = ""
    drop_after: int | None = None
    refuse: bool = False
    then_refuse: bool = False
    stall_after: int | None = None
    blob_bytes: int = 0
    blob_gets: list[str] = field(default_factory=list)
    ranges: list[str] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def reset(self) -> None:
        """Behave, and forget what was counted."""
        self.drop_after = self.stall_after = None
        self.refuse = self.then_refuse = False
        self.blob_bytes = 0
        self.blob_gets.clear()
        self.ranges.clear()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        blob = request.method == "GET" and "/blobs/" in request.path
        if blob:
            self.blob_gets.append(request.path.rsplit("/", 1)[-1])
            self.ranges.append(request.headers.get("Range", ""))
            if self.refuse:
                assert request.transport is not None
                request.transport.close()
                return web.Response(status=500)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.request(
                request.method,
                f"http://{self.upstream}{request.path_qs}",
                headers=headers,
                data=await request.read(),
                allow_redirects=False,
            ) as upstream,
        ):
            resp = web.StreamResponse(status=upstream.status)
            for key, value in upstream.headers.items():
                if key.lower() not in ("transfer-encoding", "connection", "date", "server"):
                    resp.headers[key] = value
            await resp.prepare(request)
            await self._relay(request, resp, upstream, blob=blob)
            return resp

    async def _relay(
        self, request: web.Request, resp: web.StreamResponse, upstream: aiohttp.ClientResponse, *, blob: bool
    ) -> None:
        sent = 0
        async for chunk in upstream.content.iter_chunked(64 << 10):
            if blob and self.stall_after is not None and sent + len(chunk) > self.stall_after:
                await resp.write(chunk[: self.stall_after - sent])
                await self.release.wait()
                return
            if blob and self.drop_after is not None and sent + len(chunk) > self.drop_after:
                part = chunk[: self.drop_after - sent]
                await resp.write(part)
                self.blob_bytes += len(part)
                self.refuse = self.then_refuse
                assert request.transport is not None
                request.transport.close()
                return
            await resp.write(chunk)
            sent += len(chunk)
            if blob:
                self.blob_bytes += len(chunk)
        await resp.write_eof()


@contextlib.asynccontextmanager
async def proxy(registry: str) -> AsyncIterator[Proxy]:
    """A :class:`Proxy` in front of ``registry`` (host:port) on 127.0.0.1."""
    p = Proxy(registry)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", p.handle)
    async with serve_app(app) as host:
        p.host = host
        try:
            yield p
        finally:
            p.release.set()
