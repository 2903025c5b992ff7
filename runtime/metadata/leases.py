"""Leases: named holds that keep objects from garbage collection while work is in progress.

A pull creates a lease, and everything it writes (ingests, blobs, snapshots)
is attached to it until the image record exists; then the lease goes away and
references take over. A lease with the label ``containerd.io/gc.expire``
(RFC 3339) stops holding anything after that time. Calls carry the lease in
the gRPC metadata ``containerd-lease``; stores attach what they create to it.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import os
import sqlite3
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from wharfd.runtime import errors, filters, namespaces
from wharfd.runtime.metadata import labels as label_rules
from wharfd.runtime.metadata.db import Database, utcnow
from wharfd.runtime.metadata.namespaces import create_if_missing

GRPC_METADATA_KEY = "containerd-lease"
LABEL_EXPIRE = "containerd.io/gc.expire"
LABEL_FLAT = "containerd.io/gc.flat"

# The lease the current call works under (from the "containerd-lease" metadata).
current: ContextVar[str | None] = ContextVar("wharfd_lease", default=None)

_RESOURCE_TYPES = ("content", "ingests", "images")


@dataclass(frozen=True)
class Lease:
    """A lease and its labels."""

    id: str
    labels: dict[str, str] = field(default_factory=dict)
    created_at: datetime | None = None


@dataclass(frozen=True)
class Resource:
    """An object a lease holds: ``type`` is content, ingests, images or snapshots/<snapshotter>."""

    id: str
    type: str


def validate_resource(resource: Resource) -> None:
    """Refuse resource types containerd does not know, naming the resource."""
    if not resource.id:
        raise errors.InvalidArgument("lease resource: id must not be empty")
    kind, _, snapshotter = resource.type.partition("/")
    if resource.type in _RESOURCE_TYPES or (kind == "snapshots" and snapshotter):
        return
    raise errors.InvalidArgument(f'lease resource "{resource.id}": unsupported type "{resource.type}"')


def _lease(row: Sequence[object]) -> Lease:
    return Lease(str(row[0]), json.loads(str(row[1])), datetime.fromisoformat(str(row[2])).astimezone(UTC))


def adaptor(lease: Lease) -> filters.Adaptor:
    """Fields for lease filters: id and labels.<k>."""

    def get(path: Sequence[str]) -> str | None:
        if path and path[0] == "id":
            return lease.id
        return filters.labels_adaptor(lease.labels, path)

    return get


def attach(conn: sqlite3.Connection, namespace: str, resource: Resource) -> None:
    """Inside a write: hold ``resource`` with the current call's lease, if any."""
    lease_id = current.get()
    if not lease_id:
        return
    exists = conn.execute("SELECT 1 FROM leases WHERE namespace=? AND id=?", (namespace, lease_id)).fetchone()
    if exists is None:
        raise errors.NotFound(f'lease "{lease_id}": not found')
    conn.execute(
        "INSERT OR IGNORE INTO lease_resources (namespace, lease_id, type, id) VALUES (?, ?, ?, ?)",
        (namespace, lease_id, resource.type, resource.id),
    )


class LeaseStore:
    """Leases over the metadata database, in the current call's namespace."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, lease_id: str = "", labels: Mapping[str, str] | None = None) -> Lease:
        """Create a lease (a random id when none is given); AlreadyExists if the id is taken."""
        ns = namespaces.required()
        lease_id = lease_id or f"wharfd-{os.urandom(8).hex()}"
        # containerd takes any non-empty lease id; ctr's random ones ("123-ab_-c=")
        # are not identifiers.
        if "/" in lease_id or len(lease_id) > 256:
            raise errors.InvalidArgument(
                f'lease "{lease_id}": id must not contain "/" or exceed 256 characters'
            )
        labels = {k: v for k, v in (labels or {}).items() if v}
        label_rules.validate_all(labels, field="lease.Labels")
        if LABEL_EXPIRE in labels:
            try:
                datetime.fromisoformat(labels[LABEL_EXPIRE].replace("Z", "+00:00"))
            except ValueError:
                raise errors.InvalidArgument(
                    f'lease "{lease_id}": label {LABEL_EXPIRE} must be an RFC 3339 time'
                ) from None

        def write(conn: sqlite3.Connection) -> Lease:
            create_if_missing(conn, ns)
            try:
                conn.execute(
                    "INSERT INTO leases (namespace, id, labels, created_at) VALUES (?, ?, ?, ?)",
                    (ns, lease_id, json.dumps(labels, sort_keys=True), utcnow()),
                )
            except sqlite3.IntegrityError:
                raise errors.AlreadyExists(f'lease "{lease_id}": already exists') from None
            row = conn.execute(
                "SELECT id, labels, created_at FROM leases WHERE namespace=? AND id=?", (ns, lease_id)
            )
            return _lease(row.fetchone())

        return await self._db.write(write)

    async def delete(self, lease_id: str) -> None:
        """Delete a lease; its resources become collectable. NotFound if absent."""
        ns = namespaces.required()

        def write(conn: sqlite3.Connection) -> None:
            cur = conn.execute("DELETE FROM leases WHERE namespace=? AND id=?", (ns, lease_id))
            if cur.rowcount == 0:
                raise errors.NotFound(f'lease "{lease_id}": not found')

        await self._db.write(write)

    async def list(self, filter_strings: Iterable[str] = ()) -> builtins.list[Lease]:
        """Leases matching the filters, oldest first."""
        ns = namespaces.required()
        flt = filters.parse(filter_strings)

        def read(conn: sqlite3.Connection) -> builtins.list[Lease]:
            rows = conn.execute(
                "SELECT id, labels, created_at FROM leases WHERE namespace=? ORDER BY created_at, id", (ns,)
            )
            return [_lease(r) for r in rows]

        return [lease for lease in await self._db.read(read) if flt.matches(adaptor(lease))]

    async def add_resource(self, lease_id: str, resource: Resource) -> None:
        """Hold ``resource`` with the lease (idempotent)."""
        validate_resource(resource)
        ns = namespaces.required()
        token = current.set(lease_id)
        try:
            await self._db.write(lambda conn: attach(conn, ns, resource))
        finally:
            current.reset(token)

    async def delete_resource(self, lease_id: str, resource: Resource) -> None:
        """Stop holding ``resource`` (idempotent); NotFound when the lease does not exist."""
        validate_resource(resource)
        ns = namespaces.required()

        def write(conn: sqlite3.Connection) -> None:
            if (
                conn.execute("SELECT 1 FROM leases WHERE namespace=? AND id=?", (ns, lease_id)).fetchone()
                is None
            ):
                raise errors.NotFound(f'lease "{lease_id}": not found')
            conn.execute(
                "DELETE FROM lease_resources WHERE namespace=? AND lease_id=? AND type=? AND id=?",
                (ns, lease_id, resource.type, resource.id),
            )

        await self._db.write(write)

    @contextlib.asynccontextmanager
    async def held(self, lifetime: float = 24 * 3600.0) -> AsyncIterator[str]:
        """The current call's lease, or a new one (expiring after ``lifetime``) deleted on exit.

        Work that writes several objects before one references them all (a
        pull, an import) runs inside this, so garbage collection leaves the
        half-done work alone and still collects it if the daemon dies.
        """
        given = current.get()
        if given:
            yield given
            return
        expire = (datetime.now(UTC) + timedelta(seconds=lifetime)).strftime("%Y-%m-%dT%H:%M:%SZ")
        lease = await self.create(labels={LABEL_EXPIRE: expire})
        token = current.set(lease.id)
        try:
            yield lease.id
        finally:
            current.reset(token)
            with contextlib.suppress(errors.NotFound):
                await asyncio.shield(self.delete(lease.id))

    async def list_resources(self, lease_id: str) -> builtins.list[Resource]:
        """What the lease holds; NotFound when the lease does not exist."""
        ns = namespaces.required()

        def read(conn: sqlite3.Connection) -> builtins.list[Resource]:
            if (
                conn.execute("SELECT 1 FROM leases WHERE namespace=? AND id=?", (ns, lease_id)).fetchone()
                is None
            ):
                raise errors.NotFound(f'lease "{lease_id}": not found')
            rows = conn.execute(
                "SELECT id, type FROM lease_resources WHERE namespace=? AND lease_id=? ORDER BY type, id",
                (ns, lease_id),
            )
            return [Resource(str(r[0]), str(r[1])) for r in rows]

        return await self._db.read(read)
