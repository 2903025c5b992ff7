"""The local content store: blob files under a directory, visibility in the metadata database.

Layout under the plugin's root::

    blobs/sha256/<hex>     committed blobs, read-only, shared by every namespace
    ingest/<key>/          writes in progress (see wharfd.runtime.content.ingest)

Tables (migration 2 of wharfd.runtime.metadata.db): ``content_blobs`` says
which namespace sees which blob, with its labels; ``content_ingests`` names
each namespace's ingests, and for a *shared* ingest (the expected blob is
already on disk, so the client need not send it) the digest it will commit.

Ordering, so that a crash at any point leaves no corrupt or dangling blob:
commit syncs the data, renames it into ``blobs/`` and only then records it in
the namespace; delete drops the record first and removes the file only when
no namespace and no shared ingest still needs it. Per-digest locks keep a
commit, a shared open and a delete of the same digest from interleaving.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from wharfd.api.events import content_pb2 as events_pb2
from wharfd.runtime import errors, filters, namespaces
from wharfd.runtime.content import ingest as ingestmod
from wharfd.runtime.content.store import (
    LABEL_SHAREABLE,
    POLICIES,
    TOPIC_DELETE,
    Described,
    Info,
    Publish,
    Status,
    digest_hex,
    parse_digest,
)
from wharfd.runtime.content.writer import KeyedLocks, LocalWriter, RefLocks, Shared, clean_labels
from wharfd.runtime.metadata import leases
from wharfd.runtime.metadata.db import Database, utcnow
from wharfd.runtime.metadata.namespaces import create_if_missing

log = logging.getLogger("wharfd.content")

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_EXISTS = "exists"


def _time(text: str) -> datetime:
    return datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=UTC)


def _info(row: sqlite3.Row) -> Info:
    return Info(
        digest=row["digest"],
        size=row["size"],
        created_at=_time(row["created_at"]),
        updated_at=_time(row["updated_at"]),
        labels=json.loads(row["labels"]),
    )


def _apply_paths(
    current: Mapping[str, str], given: Mapping[str, str], paths: Sequence[str], digest: str
) -> dict[str, str]:
    if not paths:
        return dict(given)
    result = dict(current)
    for path in paths:
        if path == "labels":
            result = dict(given)
        elif path.startswith("labels.") and len(path) > len("labels."):
            key = path[len("labels.") :]
            result[key] = given.get(key, "")
        else:
            raise errors.InvalidArgument(f'cannot update "{path}" field on content info "{digest}"')
    return result


def _info_adaptor(info: Info) -> filters.Adaptor:
    def get(path: Sequence[str]) -> str | None:
        field = path[0] if path else ""
        if field == "digest":
            return info.digest
        if field == "size":
            return str(info.size)
        return filters.labels_adaptor(info.labels, path)

    return get


def _status_adaptor(status: Status) -> filters.Adaptor:
    return lambda path: status.ref if list(path) == ["ref"] else None


def _select_blob(conn: sqlite3.Connection, namespace: str, digest: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM content_blobs WHERE namespace = ? AND digest = ?", (namespace, digest)
    ).fetchone()
    return row


def _not_found(digest: str) -> errors.NotFound:
    return errors.NotFound(f"content digest {digest}: not found")


def _ref_not_found(ref: str) -> errors.NotFound:
    return errors.NotFound(f'ingest ref "{ref}": not found')


@dataclass(frozen=True)
class Committed:
    """The outcome of recording a commit: the blob, and whether this namespace is new to it."""

    info: Info
    created: bool


class LocalStore:
    """The :class:`~wharfd.runtime.content.store.ContentStore` of this daemon."""

    def __init__(
        self, root: str | Path, db: Database, *, policy: str = "shared", publish: Publish | None = None
    ) -> None:
        """Keep blobs under ``root`` and visibility in ``db`` (schema version 2 or later).

        ``policy`` is containerd's ``content_sharing_policy``: ``shared`` or
        ``isolated``. ``publish`` receives ``/content/create`` and
        ``/content/delete`` events.
        """
        if policy not in POLICIES:
            raise errors.InvalidArgument(f"content_sharing_policy: {policy!r} is not one of {POLICIES}")
        self.root = Path(root)
        self.db = db
        self.policy = policy
        self.publish = publish
        self.refs = RefLocks()
        self.digests = KeyedLocks()

    # --- paths -----------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        """Where the blob file of ``digest`` lives (whether or not it exists)."""
        return self.root / "blobs" / "sha256" / digest_hex(digest)

    def ingest_path(self, namespace: str, ref: str) -> Path:
        """Where the ingest of ``ref`` in ``namespace`` lives."""
        return ingestmod.directory(self.root, namespace, ref)

    # --- reading ---------------------------------------------------------------

    async def info(self, digest: str) -> Info:
        """See :meth:`ContentStore.info`."""
        ns = namespaces.required()
        digest = parse_digest(digest)
        row = await self.db.read(lambda c: _select_blob(c, ns, digest))
        if row is None:
            raise _not_found(digest)
        return _info(row)

    async def walk(self, filters_: Sequence[str] = ()) -> list[Info]:
        """See :meth:`ContentStore.walk`."""
        ns = namespaces.required()
        flt = filters.parse(filters_)
        rows = await self.db.read(
            lambda c: c.execute(
                "SELECT * FROM content_blobs WHERE namespace = ? ORDER BY digest", (ns,)
            ).fetchall()
        )
        return [info for info in map(_info, rows) if flt.matches(_info_adaptor(info))]

    async def open_blob(self, digest: str) -> Path:
        """See :meth:`ContentStore.open_blob`."""
        info = await self.info(digest)
        path = self.blob_path(info.digest)
        if not await asyncio.to_thread(path.exists):
            raise errors.DataLoss(f"content {info.digest}: blob file {path} is missing")
        return path

    async def reader_at(self, digest: str) -> BlobFile:
        """See :meth:`ContentStore.reader_at`."""
        path = await self.open_blob(digest)
        return await asyncio.to_thread(BlobFile.open, path)

    # --- changing ---------------------------------------------------------------

    async def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        """See :meth:`ContentStore.update`."""
        ns = namespaces.required()
        digest = parse_digest(info.digest, field="info.digest")
        paths = list(fieldpaths)

        def change(conn: sqlite3.Connection) -> Info:
            row = _select_blob(conn, ns, digest)
            if row is None:
                raise _not_found(digest)
            labels = clean_labels(_apply_paths(json.loads(row["labels"]), info.labels, paths, digest))
            now = utcnow()
            conn.execute(
                "UPDATE content_blobs SET labels = ?, updated_at = ? WHERE namespace = ? AND digest = ?",
                (json.dumps(labels, sort_keys=True), now, ns, digest),
            )
            return Info(digest, row["size"], _time(row["created_at"]), _time(now), labels)

        return await self.db.write(change)

    async def delete(self, digest: str) -> None:
        """See :meth:`ContentStore.delete`."""
        ns = namespaces.required()
        digest = parse_digest(digest)

        def forget(conn: sqlite3.Connection) -> bool:
            gone = conn.execute("DELETE FROM content_blobs WHERE namespace = ? AND digest = ?", (ns, digest))
            if gone.rowcount == 0:
                raise _not_found(digest)
            needed = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM content_blobs WHERE digest = ?)"
                " OR EXISTS (SELECT 1 FROM content_ingests WHERE expected = ?)",
                (digest, digest),
            ).fetchone()[0]
            return not needed

        async with self.digests.hold(digest):
            if await self.db.write(forget):
                await asyncio.to_thread(self.blob_path(digest).unlink, missing_ok=True)
        await self.emit(ns, TOPIC_DELETE, events_pb2.ContentDelete(digest=digest))

    async def remove_unreferenced(self, digests: Iterable[str]) -> int:
        """Unlink the blob files of ``digests`` that no namespace and no shared ingest needs.

        Garbage collection calls this after dropping records; the check is
        repeated under each digest's lock so a commit of the same digest that
        raced with the collection keeps its file.
        """

        def needed(conn: sqlite3.Connection, digest: str) -> bool:
            return bool(
                conn.execute(
                    "SELECT EXISTS (SELECT 1 FROM content_blobs WHERE digest = ?)"
                    " OR EXISTS (SELECT 1 FROM content_ingests WHERE expected = ?)",
                    (digest, digest),
                ).fetchone()[0]
            )

        removed = 0
        for digest in digests:
            async with self.digests.hold(digest):
                if await self.db.read(functools.partial(needed, digest=digest)):
                    continue
                path = self.blob_path(digest)
                if await asyncio.to_thread(path.exists):
                    await asyncio.to_thread(path.unlink, missing_ok=True)
                    removed += 1
        return removed

    # --- ingests ----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def writer(self, ref: str, expected: Described | None = None) -> AsyncIterator[LocalWriter]:
        """See :meth:`ContentStore.writer`."""
        w = await self.open_writer(ref, expected)
        try:
            yield w
        finally:
            await w.close()

    async def open_writer(self, ref: str, expected: Described | None = None) -> LocalWriter:
        """See :meth:`ContentStore.open_writer`."""
        ns = namespaces.required()
        if not ref:
            raise errors.InvalidArgument("ref must not be empty")
        digest = parse_digest(expected.digest, field="expected") if expected and expected.digest else ""
        total = expected.size if expected else 0
        if total < 0:
            raise errors.InvalidArgument(f'ingest "{ref}": expected size {total} is negative')
        media_type = str(getattr(expected, "media_type", "") or "")
        release = self.refs.acquire(ns, ref)
        try:
            shared = await self._register(ns, ref, digest, total)
            if shared is None:
                opened = await asyncio.to_thread(
                    ingestmod.Ingest.open, self.ingest_path(ns, ref), ns, ref, total, digest
                )
                return LocalWriter(self, ns, ref, release, ingest=opened, media_type=media_type)
            return LocalWriter(self, ns, ref, release, shared=shared, media_type=media_type)
        except BaseException:
            release()
            raise

    async def _register(self, ns: str, ref: str, digest: str, total: int) -> Shared | None:
        """Record the ingest; return the blob it shares, if any. AlreadyExists if ``ns`` has ``digest``."""

        def record(conn: sqlite3.Connection) -> Shared | str | None:
            create_if_missing(conn, ns)
            shared = None
            if digest:
                if _select_blob(conn, ns, digest) is not None:
                    # The caller's lease must hold what it will not write, or GC could take it.
                    leases.attach(conn, ns, leases.Resource(digest, "content"))
                    return _EXISTS
                shared = self._shareable(conn, digest, total)
            conn.execute(
                "INSERT INTO content_ingests (namespace, ref, expected, total, created_at)"
                " VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (namespace, ref) DO UPDATE SET expected = excluded.expected,"
                " total = CASE WHEN excluded.total > 0 THEN excluded.total ELSE total END",
                (ns, ref, shared.digest if shared else "", shared.size if shared else total, utcnow()),
            )
            leases.attach(conn, ns, leases.Resource(ref, "ingests"))
            return shared

        if not digest:
            outcome = await self.db.write(record)
        else:
            # Under the digest's lock: a delete must not remove the file we decide to share.
            async with self.digests.hold(digest):
                outcome = await self.db.write(record)
        if outcome == _EXISTS:
            raise errors.AlreadyExists(f"content {digest}: already exists")
        assert not isinstance(outcome, str)
        return outcome

    def _shareable(self, conn: sqlite3.Connection, digest: str, total: int) -> Shared | None:
        if self.policy == "isolated":
            row = conn.execute(
                "SELECT 1 FROM content_blobs AS b JOIN namespaces AS n ON n.name = b.namespace"
                " WHERE b.digest = ? AND json_extract(n.labels, ?) = 'true' LIMIT 1",
                (digest, f'$."{LABEL_SHAREABLE}"'),
            ).fetchone()
            if row is None:
                return None
        try:
            size = self.blob_path(digest).stat().st_size
        except FileNotFoundError:
            return None
        # A different size is the client's mistake; it gets a real ingest and fails at commit.
        return Shared(digest, size) if total in (0, size) else None

    async def status(self, ref: str) -> Status:
        """See :meth:`ContentStore.status`."""
        ns = namespaces.required()
        row = await self.db.read(
            lambda c: c.execute(
                "SELECT * FROM content_ingests WHERE namespace = ? AND ref = ?", (ns, ref)
            ).fetchone()
        )
        if row is None:
            raise _ref_not_found(ref)
        return (await asyncio.to_thread(self._statuses, ns, [row]))[0]

    async def list_statuses(self, filters_: Sequence[str] = ()) -> list[Status]:
        """See :meth:`ContentStore.list_statuses`."""
        ns = namespaces.required()
        flt = filters.parse(filters_)
        rows = await self.db.read(
            lambda c: c.execute(
                "SELECT * FROM content_ingests WHERE namespace = ? ORDER BY ref", (ns,)
            ).fetchall()
        )
        found = await asyncio.to_thread(self._statuses, ns, rows)
        return [s for s in found if flt.matches(_status_adaptor(s))]

    def _statuses(self, ns: str, rows: Iterable[sqlite3.Row]) -> list[Status]:
        out = []
        for row in rows:
            ref, started = row["ref"], _time(row["created_at"])
            if row["expected"]:
                out.append(Status(ref, row["total"], row["total"], row["expected"], started, started))
                continue
            # A record without data (a crash between the two) still shows, so it can be aborted.
            found = ingestmod.read_status(self.ingest_path(ns, ref), ref)
            out.append(found or Status(ref, 0, row["total"], "", started, started))
        return out

    async def abort(self, ref: str) -> None:
        """See :meth:`ContentStore.abort`."""
        ns = namespaces.required()
        gone = await self.db.write(
            lambda c: (
                c.execute("DELETE FROM content_ingests WHERE namespace = ? AND ref = ?", (ns, ref)).rowcount
            )
        )
        removed = await asyncio.to_thread(ingestmod.remove, self.ingest_path(ns, ref))
        if not gone and not removed:
            raise _ref_not_found(ref)

    # --- used by writers ----------------------------------------------------------

    async def record_commit(
        self, ns: str, ref: str, *, digest: str, size: int, labels: Mapping[str, str], data: Path | None
    ) -> Committed:
        """Move ``data`` (None for a shared ingest) to the blob and make it visible in ``ns``."""

        def record(conn: sqlite3.Connection) -> Committed:
            create_if_missing(conn, ns)
            now = utcnow()
            created = conn.execute(
                "INSERT OR IGNORE INTO content_blobs"
                " (namespace, digest, size, labels, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (ns, digest, size, json.dumps(dict(labels), sort_keys=True), now, now),
            ).rowcount
            conn.execute("DELETE FROM content_ingests WHERE namespace = ? AND ref = ?", (ns, ref))
            leases.attach(conn, ns, leases.Resource(digest, "content"))
            row = _select_blob(conn, ns, digest)
            assert row is not None
            return Committed(_info(row), bool(created))

        async with self.digests.hold(digest):
            await asyncio.to_thread(self._place, ns, ref, digest, data)
            return await self.db.write(record)

    def _place(self, ns: str, ref: str, digest: str, data: Path | None) -> None:
        target = self.blob_path(digest)
        if data is not None and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.chmod(data, 0o444)
                os.rename(data, target)
            except FileNotFoundError as exc:
                raise errors.FailedPrecondition(f'ingest "{ref}": aborted before its commit') from exc
            ingestmod.fsync_dir(target.parent)
        elif not target.exists():
            raise errors.NotFound(f"content {digest}: the blob shared by ingest {ref!r} is gone")
        ingestmod.remove(self.ingest_path(ns, ref))

    async def unshare(self, ns: str, ref: str) -> None:
        """Record that ingest ``ref`` now has data of its own instead of sharing a blob."""
        await self.db.write(
            lambda c: c.execute(
                "UPDATE content_ingests SET expected = '', total = 0 WHERE namespace = ? AND ref = ?",
                (ns, ref),
            )
        )

    async def emit(
        self, ns: str, topic: str, event: events_pb2.ContentCreate | events_pb2.ContentDelete
    ) -> None:
        """Publish an event for namespace ``ns``; a failing publisher is logged, not raised."""
        if self.publish is None:
            return
        token = namespaces.current.set(ns)
        try:
            await self.publish(topic, event)
        except Exception:
            log.exception("content: publishing %s failed", topic)
        finally:
            namespaces.current.reset(token)


class BlobFile:
    """An open blob for random access (:class:`~wharfd.runtime.content.store.BlobReader`)."""

    def __init__(self, fd: int, size: int) -> None:
        """Own ``fd`` of a blob of ``size`` bytes."""
        self._fd: int | None = fd
        self._size = size

    @classmethod
    def open(cls, path: Path) -> BlobFile:
        """Open the blob at ``path`` (blocking)."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return cls(fd, os.fstat(fd).st_size)
        except BaseException:
            os.close(fd)
            raise

    @property
    def size(self) -> int:
        """The blob's size."""
        return self._size

    async def read_at(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset``."""
        if self._fd is None:
            raise errors.FailedPrecondition("blob reader is closed")
        return await asyncio.to_thread(os.pread, self._fd, length, offset)

    async def close(self) -> None:
        """Close the file. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    async def __aenter__(self) -> BlobFile:
        """Use as ``async with await store.reader_at(d) as r``."""
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Close the file."""
        await self.close()
