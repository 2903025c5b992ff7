"""The snapshotter plugins (``io.containerd.snapshotter.v1``): ``overlayfs`` and ``native``.

Each is a backend under the namespaced snapshotter, whose records live in the
metadata database. ``overlayfs`` skips itself, with the reason, where the
kernel or the root's filesystem cannot do overlay mounts. ``root_path`` and
(overlayfs) ``mount_options`` come from the plugin's config section. The gRPC
Snapshots service over them is a plugin of its own
(:mod:`wharfd.runtime.services.plugins`), loaded on its first call.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from wharfd.runtime import errors, plugin
from wharfd.runtime.snapshots import native, overlay
from wharfd.runtime.snapshots.metadata import NamespacedSnapshotter


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
