"""The content store plugin (``io.containerd.content.v1`` ``content``): the local store under its root.

It requires the metadata plugin (visibility per namespace lives in the
database) and the events exchange, to which it publishes ``/content/create``
and ``/content/delete``. The gRPC Content service over it is a plugin of its own
(:mod:`wharfd.runtime.services.plugins`), loaded on its first call.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from wharfd.runtime import errors, plugin
from wharfd.runtime.content import store as content
from wharfd.runtime.content.local import LocalStore


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


async def _init(ctx: plugin.InitContext) -> LocalStore:
    metadata = ctx.get(plugin.METADATA)
    policy = str(ctx.plugin_config.get("content_sharing_policy", "shared"))
    await asyncio.to_thread(ctx.root.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(_clean_stale, ctx.root)
    ctx.exports["root"] = str(ctx.root)
    return LocalStore(ctx.root, metadata.db, policy=policy, publish=_publisher(ctx))


PLUGIN = plugin.Registration(
    type=plugin.CONTENT, id="content", init=_init, requires=(plugin.METADATA, plugin.EVENT)
)
