"""The namespaced snapshotter: records in SQLite, layers in a backend.

The caller's key lives in its namespace; the backend only ever sees a
numeric id, unique per snapshotter and never reused. The records
(``snapshots`` and ``snapshot_ids``, migration 3, drawn in
:mod:`wharfd.runtime.metadata.db`) hold namespace, key, kind, parent link,
labels, timestamps and, for committed layers, the usage measured at commit.

Unlike containerd, the backend keeps no metadata of its own: one table
covers both levels, so there is no second store to fall out of step.

Crash safety comes from the order of every change:

- create (prepare, view): reserve an id (a write transaction that also checks
  key and parent), build the directory, *then* insert the record. A crash in
  between leaves a directory no record points at;
- commit: measure the layer, then flip the record to committed in place
  (same id, same directory);
- remove: delete the record, *then* the directory.

So a record always has its directory, and :meth:`NamespacedSnapshotter.cleanup`
deletes directories without a record, sparing ids whose creation is in
flight in this process.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from wharfd.runtime import errors, namespaces
from wharfd.runtime import filters as filter_syntax
from wharfd.runtime.metadata import labels as label_rules
from wharfd.runtime.metadata.db import Database, utcnow
from wharfd.runtime.metadata.namespaces import create_if_missing
from wharfd.runtime.snapshots.snapshotter import Backend, Info, Kind, Mount, Usage

log = logging.getLogger("wharfd.snapshots")

# With this label, prepare fails with AlreadyExists if the named snapshot exists
# (the unpacker's "is this layer already there?" in one call).
LABEL_TARGET = "containerd.io/snapshot.ref"
_LABELS_FIELD = "info.Labels"

_SELECT = """
    SELECT s.id, s.key, s.kind, s.labels, s.created_at, s.updated_at, s.size, s.inodes,
           s.parent_id, COALESCE(p.key, '') AS parent
    FROM snapshots AS s
    LEFT JOIN snapshots AS p ON p.snapshotter = s.snapshotter AND p.id = s.parent_id
    WHERE s.namespace = ? AND s.snapshotter = ?
"""
_CHAIN = """
    WITH RECURSIVE chain (id, parent_id, depth) AS (
        SELECT id, parent_id, 0 FROM snapshots WHERE snapshotter = ? AND id = ?
        UNION ALL
        SELECT s.id, s.parent_id, c.depth + 1
        FROM snapshots AS s JOIN chain AS c ON s.snapshotter = ? AND s.id = c.parent_id
    )
    SELECT id FROM chain ORDER BY depth
"""


@dataclass(frozen=True)
class _Record:
    """A row of ``snapshots`` with its parent's key."""

    id: int
    info: Info
    parent_id: int | None
    usage: Usage | None


def _quote(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _record(row: sqlite3.Row) -> _Record:
    info = Info(
        kind=Kind(row["kind"]),
        name=row["key"],
        parent=row["parent"],
        labels=json.loads(row["labels"]),
        created=_time(row["created_at"]),
        updated=_time(row["updated_at"]),
    )
    usage = None if row["size"] is None else Usage(row["size"], row["inodes"])
    return _Record(row["id"], info, row["parent_id"], usage)


def _clean_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    labels = dict(labels or {})
    label_rules.validate_all(labels, field=_LABELS_FIELD)
    return {k: v for k, v in labels.items() if v}


def _check_key(key: str, what: str = "key") -> None:
    if not key:
        raise errors.InvalidArgument(f"snapshot {what} must not be empty")


def adaptor(info: Info) -> filter_syntax.Adaptor:
    """The filter fields of a snapshot: ``kind``, ``name``, ``parent``, ``labels.<key>``."""

    def get(path: Sequence[str]) -> str | None:
        field = path[0] if path else ""
        if field == "kind":
            return info.kind.filter_value if info.kind != Kind.UNKNOWN else None
        if field == "name":
            return info.name
        if field == "parent":
            return info.parent
        if field == "labels" and len(path) > 1:
            return info.labels.get(".".join(path[1:]))
        return None

    return get


class NamespacedSnapshotter:
    """A :class:`~wharfd.runtime.snapshots.snapshotter.Snapshotter` over ``backend``."""

    def __init__(self, db: Database, backend: Backend) -> None:
        """Keep records in ``db`` (at schema 3 or later) and layers in ``backend``."""
        self.name = backend.name
        self.backend = backend
        self._db = db
        # Ids handed out whose directory may exist before their record does:
        # cleanup must leave them alone. An id becomes busy inside the transaction
        # that reserves it, so cleanup (reading this in a transaction too) never
        # misses one. A removed snapshot needs no such care: its directory is
        # garbage from the moment its record is gone.
        self._busy: set[int] = set()
        self._busy_lock = threading.Lock()

    # --- reads -------------------------------------------------------------

    async def stat(self, key: str) -> Info:
        """Return the info of ``key``; NotFound if it does not exist in this namespace."""
        return (await self._get(key)).info

    async def usage(self, key: str) -> Usage:
        """Committed: what commit measured. Active or view: measured now, off the loop."""
        record = await self._get(key)
        if record.usage is not None:
            return record.usage
        return await asyncio.to_thread(self.backend.usage, record.id)

    async def mounts(self, key: str) -> list[Mount]:
        """The mounts of active or view ``key``."""
        ns = namespaces.required()

        def read(conn: sqlite3.Connection) -> tuple[_Record, list[int]]:
            record = self._find(conn, ns, key)
            return record, self._parents(conn, record.parent_id)

        record, parents = await self._db.read(read)
        if record.info.kind == Kind.COMMITTED:
            raise errors.FailedPrecondition(
                f"snapshot {_quote(key)} is committed: only active and view snapshots have mounts"
            )
        return self.backend.mounts(record.id, record.info.kind, parents)

    async def walk(self, filters: Sequence[str] = ()) -> list[Info]:
        """Every snapshot of the namespace that matches ``filters``, ordered by key."""
        flt = filter_syntax.parse(filters)
        ns = namespaces.required()

        def read(conn: sqlite3.Connection) -> list[Info]:
            rows = conn.execute(_SELECT + " ORDER BY s.key", (ns, self.name))
            return [_record(row).info for row in rows]

        return [info for info in await self._db.read(read) if flt.matches(adaptor(info))]

    # --- changes -----------------------------------------------------------

    async def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """Create active ``key`` on committed ``parent``; return its writable mounts."""
        return await self._create(Kind.ACTIVE, key, parent, labels)

    async def view(self, key: str, parent: str = "", labels: Mapping[str, str] | None = None) -> list[Mount]:
        """Create view ``key`` of committed ``parent``; return its read-only mounts."""
        return await self._create(Kind.VIEW, key, parent, labels)

    async def commit(
        self, name: str, key: str, labels: Mapping[str, str] | None = None, *, usage: Usage | None = None
    ) -> None:
        """Make active ``key`` committed ``name``; labels are replaced, not inherited.

        ``usage``: the layer's size as the caller measured it already (the
        unpacker measures a layer in its worker process, where the walk does
        not compete with the event loop); by default it is measured here.
        """
        _check_key(name, "name")
        _check_key(key)
        stored = _clean_labels(labels)
        ns = namespaces.required()

        def check(conn: sqlite3.Connection) -> _Record:
            record = self._find(conn, ns, key)
            if record.info.kind != Kind.ACTIVE:
                raise errors.FailedPrecondition(
                    f"snapshot {_quote(key)} is {str(record.info.kind).lower()}, not active: cannot commit it"
                )
            if self._row(conn, ns, name) is not None:
                raise errors.AlreadyExists(f"snapshot {_quote(name)}: already exists")
            return record

        record = await self._db.read(check)
        if usage is None:
            usage = await asyncio.to_thread(self.backend.usage, record.id)

        def flip(conn: sqlite3.Connection) -> None:
            # Checked again: the snapshot may have changed while it was measured.
            if check(conn).id != record.id:
                raise errors.NotFound(f"snapshot {_quote(key)} does not exist")
            now = utcnow()
            conn.execute(
                "UPDATE snapshots SET key = ?, kind = ?, labels = ?, created_at = ?, updated_at = ?,"
                " size = ?, inodes = ? WHERE snapshotter = ? AND id = ?",
                (
                    name,
                    Kind.COMMITTED,
                    _encode(stored),
                    now,
                    now,
                    usage.size,
                    usage.inodes,
                    self.name,
                    record.id,
                ),
            )

        await self._db.write(flip)

    async def remove(self, key: str) -> None:
        """Remove ``key``: the record now, then its directory; FailedPrecondition if it has children."""
        ns = namespaces.required()

        def delete(conn: sqlite3.Connection) -> int:
            record = self._find(conn, ns, key)
            children = [
                r[0]
                for r in conn.execute(
                    "SELECT key FROM snapshots WHERE snapshotter = ? AND parent_id = ? ORDER BY key",
                    (self.name, record.id),
                )
            ]
            if children:
                names = ", ".join(_quote(c) for c in children)
                raise errors.FailedPrecondition(
                    f"cannot remove snapshot {_quote(key)}: it has children {names}"
                )
            conn.execute("DELETE FROM snapshots WHERE snapshotter = ? AND id = ?", (self.name, record.id))
            return record.id

        sid = await self._db.write(delete)
        try:
            await asyncio.to_thread(self.backend.remove, sid)
        except OSError as exc:
            # The record is gone and the key free again; cleanup retries the directory.
            log.warning("snapshotter %s: removed %s but not its directory: %s", self.name, key, exc)

    async def adopt(self, key: str, source: Path, *, keep_root: bool = False) -> None:
        """Make directory ``source`` the content of active ``key``, for backends with ``adopt``.

        NotImplemented for backends that cannot (native copies its parent);
        FailedPrecondition unless ``key`` is active.
        """
        adopt = getattr(self.backend, "adopt", None)
        if adopt is None:
            raise errors.NotImplemented(f"snapshotter {self.name} cannot adopt a directory as a layer")
        record = await self._get(key)
        if record.info.kind != Kind.ACTIVE:
            raise errors.FailedPrecondition(f"snapshot {_quote(key)} is not active: cannot adopt into it")
        await asyncio.to_thread(adopt, record.id, source, keep_root=keep_root)

    async def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        """Set labels by field path (``labels`` or ``labels.<key>``); no paths replaces all labels."""
        _check_key(info.name, "name")
        ns = namespaces.required()

        def change(conn: sqlite3.Connection) -> Info:
            record = self._find(conn, ns, info.name)
            result = _apply_update(info, dict(record.info.labels), fieldpaths)
            conn.execute(
                "UPDATE snapshots SET labels = ?, updated_at = ? WHERE snapshotter = ? AND id = ?",
                (_encode(result), utcnow(), self.name, record.id),
            )
            return self._find(conn, ns, info.name).info

        return await self._db.write(change)

    async def cleanup(self) -> None:
        """Delete backend directories that no record accounts for."""
        # List first: anything created after the listing is not a candidate, and
        # anything in it was reserved before `keep` is read, so it is recorded or busy.
        entries = await asyncio.to_thread(self.backend.entries)

        def keep(conn: sqlite3.Connection) -> set[int]:
            ids = {r[0] for r in conn.execute("SELECT id FROM snapshots WHERE snapshotter = ?", (self.name,))}
            with self._busy_lock:
                return ids | self._busy

        removed = await asyncio.to_thread(self.backend.cleanup, entries, await self._db.write(keep))
        if removed:
            log.info("snapshotter %s: cleanup removed %s", self.name, ", ".join(removed))

    async def close(self) -> None:
        """Nothing to release: the database belongs to the metadata plugin."""

    # --- helpers -----------------------------------------------------------

    async def _create(
        self, kind: Kind, key: str, parent: str, labels: Mapping[str, str] | None
    ) -> list[Mount]:
        _check_key(key)
        stored = _clean_labels(labels)
        ns = namespaces.required()
        sid, parent_id, parents = await self._db.write(
            lambda conn: self._reserve(conn, ns, key, parent, stored.get(LABEL_TARGET, ""))
        )
        try:
            await asyncio.to_thread(self.backend.create, sid, kind, parents)
        except BaseException:
            self._release(sid)
            raise
        record = functools.partial(
            self._insert,
            ns=ns,
            sid=sid,
            key=key,
            kind=kind,
            parent=parent,
            parent_id=parent_id,
            labels=stored,
        )
        # A submitted write commits even if this call is cancelled, so the id stays
        # busy (its directory spared by cleanup) until the write's outcome is known.
        insert = asyncio.ensure_future(self._db.write(record))
        insert.add_done_callback(functools.partial(self._settle, sid))
        try:
            await asyncio.shield(insert)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Definitely not recorded: the directory is garbage now.
            await asyncio.to_thread(self.backend.remove, sid)
            raise
        return self.backend.mounts(sid, kind, parents)

    def _reserve(
        self, conn: sqlite3.Connection, ns: str, key: str, parent: str, target: str
    ) -> tuple[int, int | None, list[int]]:
        """Check key and parent, and hand out the next id (marked busy until the record exists)."""
        create_if_missing(conn, ns)
        if target and self._row(conn, ns, target) is not None:
            raise errors.AlreadyExists(f"target snapshot {_quote(target)}: already exists")
        if self._row(conn, ns, key) is not None:
            raise errors.AlreadyExists(f"snapshot {_quote(key)}: already exists")
        parent_id, parents = None, []
        if parent:
            row = self._row(conn, ns, parent)
            if row is None:
                raise errors.NotFound(f"parent snapshot {_quote(parent)} does not exist")
            if row.info.kind != Kind.COMMITTED:
                raise errors.InvalidArgument(f"parent {_quote(parent)} is not a committed snapshot")
            parent_id, parents = row.id, self._parents(conn, row.id)
        sid = conn.execute(
            "INSERT INTO snapshot_ids (snapshotter, last_id) VALUES (?, 1) "
            "ON CONFLICT (snapshotter) DO UPDATE SET last_id = last_id + 1 RETURNING last_id",
            (self.name,),
        ).fetchone()[0]
        self._mark_busy(sid)
        return sid, parent_id, parents

    def _insert(
        self,
        conn: sqlite3.Connection,
        *,
        ns: str,
        sid: int,
        key: str,
        kind: Kind,
        parent: str,
        parent_id: int | None,
        labels: dict[str, str],
    ) -> None:
        now = utcnow()
        try:
            conn.execute(
                "INSERT INTO snapshots (snapshotter, id, namespace, key, kind, parent_id, labels,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (self.name, sid, ns, key, kind, parent_id, _encode(labels), now, now),
            )
        except sqlite3.IntegrityError as exc:
            # Lost a race since the reservation: the key was taken or the parent removed.
            if self._row(conn, ns, key) is not None:
                raise errors.AlreadyExists(f"snapshot {_quote(key)}: already exists") from exc
            raise errors.NotFound(f"parent snapshot {_quote(parent)} does not exist") from exc

    def _mark_busy(self, sid: int) -> None:
        with self._busy_lock:
            self._busy.add(sid)

    def _release(self, sid: int) -> None:
        with self._busy_lock:
            self._busy.discard(sid)

    def _settle(self, sid: int, insert: asyncio.Future[None]) -> None:
        self._release(sid)
        if not insert.cancelled():
            insert.exception()  # retrieved here: the caller may be gone

    async def _get(self, key: str) -> _Record:
        ns = namespaces.required()
        return await self._db.read(lambda conn: self._find(conn, ns, key))

    def _row(self, conn: sqlite3.Connection, ns: str, key: str) -> _Record | None:
        row = conn.execute(_SELECT + " AND s.key = ?", (ns, self.name, key)).fetchone()
        return None if row is None else _record(row)

    def _find(self, conn: sqlite3.Connection, ns: str, key: str) -> _Record:
        record = self._row(conn, ns, key)
        if record is None:
            raise errors.NotFound(f"snapshot {_quote(key)} does not exist")
        return record

    def _parents(self, conn: sqlite3.Connection, parent_id: int | None) -> list[int]:
        """Ids from ``parent_id`` down to the base layer."""
        if parent_id is None:
            return []
        return [r[0] for r in conn.execute(_CHAIN, (self.name, parent_id, self.name))]


def _encode(labels: Mapping[str, str]) -> str:
    return json.dumps(dict(labels), sort_keys=True, ensure_ascii=False)


def _apply_update(info: Info, current: dict[str, str], fieldpaths: Sequence[str]) -> dict[str, str]:
    """The labels after an update, by containerd's rules for snapshot field paths."""
    if not fieldpaths:
        return _clean_labels(info.labels)
    result = current
    for path in fieldpaths:
        if path == "labels":
            result = _clean_labels(info.labels)
        elif path.startswith("labels.") and len(path) > len("labels."):
            key = path[len("labels.") :]
            value = info.labels.get(key, "")
            label_rules.validate(key, value, field=_LABELS_FIELD)
            if value:
                result[key] = value
            else:
                result.pop(key, None)
        else:
            raise errors.InvalidArgument(
                f"cannot update {_quote(path)} field on snapshot {_quote(info.name)}"
            )
    return result
