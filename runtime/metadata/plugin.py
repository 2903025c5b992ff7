"""The metadata plugin: opens the SQLite database and the stores built on it.

It owns the one :class:`~wharfd.runtime.metadata.db.Database` of the daemon;
other plugins require ``io.containerd.metadata.v1`` and take ``.db`` from it.
The namespaces ``default`` (for the CLI) and ``k8s.io`` (for the CRI) exist
after the first start.
"""

from __future__ import annotations

from dataclasses import dataclass

from wharfd.runtime import namespaces, plugin
from wharfd.runtime.metadata import db as dbmod
from wharfd.runtime.metadata.db import Database
from wharfd.runtime.metadata.images import ImageStore
from wharfd.runtime.metadata.leases import LeaseStore
from wharfd.runtime.metadata.namespaces import NamespaceStore


@dataclass
class Metadata:
    """The database and the stores other plugins share."""

    db: Database
    namespaces: NamespaceStore
    images: ImageStore
    leases: LeaseStore


async def _init(ctx: plugin.InitContext) -> Metadata:
    ctx.root.mkdir(parents=True, exist_ok=True, mode=0o711)
    db = await Database.open(ctx.root / dbmod.FILENAME)
    store = NamespaceStore(db)
    await store.ensure(namespaces.DEFAULT, namespaces.K8S)
    ctx.exports["path"] = str(db.path)
    return Metadata(db=db, namespaces=store, images=ImageStore(db), leases=LeaseStore(db))


async def _close(instance: Metadata) -> None:
    await instance.db.close()


PLUGIN = plugin.Registration(type=plugin.METADATA, id="sqlite", init=_init, close=_close)
