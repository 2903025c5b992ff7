"""The SQLite metadata database: connection discipline and schema migrations.

The database is one file, ``<root>/metadata.db`` (SQLite keeps ``-wal`` and
``-shm`` beside it). Schema at version 6::

    schema_version                         one row per applied migration
    ├── version     INTEGER NOT NULL       the migration's number; the schema is at MAX(version)
    └── applied_at  TEXT                   RFC 3339 UTC

    namespaces                             global: the partition every other object lives in
    ├── name        TEXT PRIMARY KEY       containerd identifier grammar
    ├── labels      TEXT NOT NULL '{}'     JSON object {key: value}; empty values are never stored
    ├── created_at  TEXT                   RFC 3339 UTC
    └── updated_at  TEXT                   RFC 3339 UTC

    content_blobs                          (v2) which namespace sees which blob of <content root>/blobs
    ├── namespace   TEXT NOT NULL          ┐ primary key; index on digest alone
    ├── digest      TEXT NOT NULL          ┘ "sha256:<64 hex>"
    ├── size        INTEGER NOT NULL       bytes
    ├── labels      TEXT NOT NULL '{}'     JSON object; empty values are never stored
    ├── created_at  TEXT NOT NULL          RFC 3339 UTC, when committed in this namespace
    └── updated_at  TEXT NOT NULL          RFC 3339 UTC

    content_ingests                        (v2) writes in progress (data under <content root>/ingest)
    ├── namespace   TEXT NOT NULL          ┐ primary key
    ├── ref         TEXT NOT NULL          ┘ the client's name for the write
    ├── expected    TEXT NOT NULL ''       digest of an existing blob this ingest shares (no data written)
    ├── total       INTEGER NOT NULL 0     expected size, 0 when unknown
    └── created_at  TEXT NOT NULL          RFC 3339 UTC

    snapshots                              (v3) every snapshot of every snapshotter
    ├── snapshotter TEXT NOT NULL          ┐ primary key; id is also the backend directory:
    ├── id          INTEGER NOT NULL       ┘ <snapshotter root>/snapshots/<id>
    ├── namespace   TEXT NOT NULL          ┐ unique: the caller's name for it
    ├── key         TEXT NOT NULL          ┘ (with snapshotter)
    ├── kind        INTEGER NOT NULL       1 view, 2 active, 3 committed (the API's Kind numbers)
    ├── parent_id   INTEGER                → snapshots (snapshotter, id); NULL for a base layer
    ├── labels      TEXT NOT NULL '{}'     JSON object; empty values are never stored
    ├── created_at  TEXT NOT NULL          RFC 3339 UTC (reset by commit)
    ├── updated_at  TEXT NOT NULL          RFC 3339 UTC
    ├── size        INTEGER                bytes of the layer, measured at commit; NULL before
    └── inodes      INTEGER                inodes of the layer, measured at commit; NULL before

    snapshot_ids                           (v3) the last id handed out per snapshotter; ids are never reused
    ├── snapshotter TEXT PRIMARY KEY
    └── last_id     INTEGER NOT NULL

    images                                 (v4) names pointing at a target descriptor
    ├── namespace   TEXT NOT NULL          ┐ primary key
    ├── name        TEXT NOT NULL          ┘
    ├── target_media_type, target_digest (indexed), target_size, target_annotations (JSON)
    ├── labels      TEXT NOT NULL '{}'     JSON object
    └── created_at, updated_at             RFC 3339 UTC

    leases                                 (v5) what keeps unreferenced objects from GC for a while
    ├── namespace   TEXT NOT NULL          ┐ primary key
    ├── id          TEXT NOT NULL          ┘
    ├── labels      TEXT NOT NULL '{}'     JSON object (containerd.io/gc.expire = RFC 3339 deadline)
    └── created_at  TEXT NOT NULL

    lease_resources                        (v5) objects a lease holds
    ├── namespace, lease_id                → leases, ON DELETE CASCADE
    ├── type        TEXT NOT NULL          content | ingests | images | snapshots/<snapshotter>
    └── id          TEXT NOT NULL          digest, ingest ref, image name or snapshot key

    containers                             (v6) containerd containers: metadata only, no process
    ├── namespace   TEXT NOT NULL          ┐ primary key
    ├── id          TEXT NOT NULL          ┘ containerd identifier grammar
    ├── labels      TEXT NOT NULL '{}'     JSON object; empty values are never stored
    ├── image       TEXT NOT NULL ''       the image reference it was made from (informational)
    ├── runtime_name TEXT NOT NULL         e.g. io.containerd.runc.v2
    ├── runtime_options BLOB               serialized google.protobuf.Any, NULL when none
    ├── spec        BLOB NOT NULL          serialized google.protobuf.Any (OCI spec: JSON value)
    ├── snapshotter TEXT NOT NULL ''       ┐ the rootfs snapshot, kept from GC while set
    ├── snapshot_key TEXT NOT NULL ''      ┘
    ├── sandbox_id  TEXT NOT NULL ''
    ├── extensions  TEXT NOT NULL '{}'     JSON {name: {"type_url": …, "value": <base64>}}
    └── created_at, updated_at             RFC 3339 UTC

Every later table (images, containers, leases, content labels, snapshots) has
a ``namespace TEXT NOT NULL`` column. Deleting a namespace finds what it still
holds through that column alone, so a new table needs no change there.

Threads. One writer connection lives on one dedicated thread, and every
:meth:`Database.write` runs there inside ``BEGIN IMMEDIATE … COMMIT``: writes
are serialized by construction and never fight over the write lock. Reads run
on a small pool of read-only connections on other threads; WAL lets them see
the last committed state while a write is in progress. The asyncio loop only
awaits futures and never touches the disk.

Durability. WAL with ``synchronous=NORMAL``: a commit reaches the WAL file
(the kernel's page cache) before :meth:`Database.write` returns, so killing the
daemon, even with SIGKILL, loses nothing acknowledged. Only an OS crash or
power loss can drop the last few commits, and then the database is still
consistent. ``FULL`` would add an fsync to every API call that writes.

Adding a migration: append ``Migration(N + 1, …)`` to :data:`MIGRATIONS`,
redraw the schema above, and add ``test_migration_<N + 1>`` to
``tests/runtime/test_metadata_db.py``. Never edit a migration once released:
databases in the field have already run it.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import queue
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

from wharfd.runtime import errors

log = logging.getLogger("wharfd.metadata")

FILENAME = "metadata.db"
READERS = 4
# Other connections (a checkpoint, someone inspecting with the sqlite3 CLI)
# can hold a lock briefly; wait for them rather than fail with SQLITE_BUSY.
BUSY_TIMEOUT_MS = 5000

T = TypeVar("T")


@dataclass(frozen=True)
class Migration:
    """One numbered step of the schema; applied exactly once, in its own transaction."""

    version: int
    description: str
    apply: Callable[[sqlite3.Connection], None]


def _v1_namespaces(conn: sqlite3.Connection) -> None:
    # NOT NULL is explicit: SQLite lets a non-INTEGER primary key be NULL otherwise.
    conn.execute(
        """
        CREATE TABLE namespaces (
            name       TEXT PRIMARY KEY NOT NULL,
            labels     TEXT NOT NULL DEFAULT '{}',
            created_at TEXT,
            updated_at TEXT
        )
        """
    )


def _v2_content(conn: sqlite3.Connection) -> None:
    # Blob files are shared on disk; these rows say which namespace sees which blob.
    conn.execute(
        """
        CREATE TABLE content_blobs (
            namespace  TEXT NOT NULL,
            digest     TEXT NOT NULL,
            size       INTEGER NOT NULL,
            labels     TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (namespace, digest)
        )
        """
    )
    # Deleting a blob's last row must find the other namespaces holding it quickly.
    conn.execute("CREATE INDEX content_blobs_by_digest ON content_blobs (digest)")
    conn.execute(
        """
        CREATE TABLE content_ingests (
            namespace  TEXT NOT NULL,
            ref        TEXT NOT NULL,
            expected   TEXT NOT NULL DEFAULT '',
            total      INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            PRIMARY KEY (namespace, ref)
        )
        """
    )


def _v3_snapshots(conn: sqlite3.Connection) -> None:
    # A parent cannot be deleted while a child points at it (foreign keys are on);
    # the snapshotter checks first to name the children, this is the backstop.
    conn.execute(
        """
        CREATE TABLE snapshots (
            snapshotter TEXT NOT NULL,
            id          INTEGER NOT NULL,
            namespace   TEXT NOT NULL,
            key         TEXT NOT NULL,
            kind        INTEGER NOT NULL CHECK (kind IN (1, 2, 3)),
            parent_id   INTEGER,
            labels      TEXT NOT NULL DEFAULT '{}',
            created_at  TEXT NOT NULL,
            updated_at  TEXT NOT NULL,
            size        INTEGER,
            inodes      INTEGER,
            PRIMARY KEY (snapshotter, id),
            UNIQUE (namespace, snapshotter, key),
            FOREIGN KEY (snapshotter, parent_id) REFERENCES snapshots (snapshotter, id)
        )
        """
    )
    # Finds children (remove, and the foreign key check on delete) without a scan.
    conn.execute("CREATE INDEX snapshots_by_parent ON snapshots (snapshotter, parent_id)")
    # Ids are handed out before the record exists (the directory is made first).
    conn.execute(
        """
        CREATE TABLE snapshot_ids (
            snapshotter TEXT PRIMARY KEY NOT NULL,
            last_id     INTEGER NOT NULL
        )
        """
    )


def _v4_images(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE images (
            namespace          TEXT NOT NULL,
            name               TEXT NOT NULL,
            target_media_type  TEXT NOT NULL,
            target_digest      TEXT NOT NULL,
            target_size        INTEGER NOT NULL,
            target_annotations TEXT NOT NULL DEFAULT '{}',
            labels             TEXT NOT NULL DEFAULT '{}',
            created_at         TEXT NOT NULL,
            updated_at         TEXT NOT NULL,
            PRIMARY KEY (namespace, name)
        )
        """
    )
    # Garbage collection asks "which images use this digest" without a scan.
    conn.execute("CREATE INDEX images_by_target ON images (target_digest)")


def _v5_leases(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE leases (
            namespace  TEXT NOT NULL,
            id         TEXT NOT NULL,
            labels     TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL,
            PRIMARY KEY (namespace, id)
        )
        """
    )
    # A resource is named by type ("content", "ingests", "snapshots/<snapshotter>",
    # "images") and id; deleting the lease deletes its rows.
    conn.execute(
        """
        CREATE TABLE lease_resources (
            namespace TEXT NOT NULL,
            lease_id  TEXT NOT NULL,
            type      TEXT NOT NULL,
            id        TEXT NOT NULL,
            PRIMARY KEY (namespace, lease_id, type, id),
            FOREIGN KEY (namespace, lease_id) REFERENCES leases (namespace, id) ON DELETE CASCADE
        )
        """
    )


def _v6_containers(conn: sqlite3.Connection) -> None:
    # Protobuf Any values are stored serialized, as containerd's bolt store keeps them,
    # so options and specs of any type round-trip byte for byte.
    conn.execute(
        """
        CREATE TABLE containers (
            namespace       TEXT NOT NULL,
            id              TEXT NOT NULL,
            labels          TEXT NOT NULL DEFAULT '{}',
            image           TEXT NOT NULL DEFAULT '',
            runtime_name    TEXT NOT NULL,
            runtime_options BLOB,
            spec            BLOB NOT NULL,
            snapshotter     TEXT NOT NULL DEFAULT '',
            snapshot_key    TEXT NOT NULL DEFAULT '',
            sandbox_id      TEXT NOT NULL DEFAULT '',
            extensions      TEXT NOT NULL DEFAULT '{}',
            created_at      TEXT NOT NULL,
            updated_at      TEXT NOT NULL,
            PRIMARY KEY (namespace, id)
        )
        """
    )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "create namespaces", _v1_namespaces),
    Migration(2, "content blobs and ingests per namespace", _v2_content),
    Migration(3, "snapshots and their id sequences", _v3_snapshots),
    Migration(4, "images", _v4_images),
    Migration(5, "leases and their resources", _v5_leases),
    Migration(6, "containers", _v6_containers),
)


class SchemaTooNew(errors.FailedPrecondition):
    """The database was written by a newer wharfd; this code could corrupt what it stored."""


def utcnow() -> str:
    """Return the current time as RFC 3339 UTC text, the form every timestamp column uses."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _connect(path: Path, *, reader: bool) -> sqlite3.Connection:
    # isolation_level=None: no implicit BEGINs; transactions are spelled out below.
    # Readers are handed between pool threads, one user at a time, hence
    # check_same_thread=False; the writer stays confined to its own thread.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=not reader)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    # Safe against a killed daemon in WAL mode, and no fsync per commit: see "Durability" above.
    conn.execute("PRAGMA synchronous = NORMAL")
    if reader:
        conn.execute("PRAGMA query_only = ON")
    return conn


def _in_transaction(conn: sqlite3.Connection, begin: str, fn: Callable[[sqlite3.Connection], T]) -> T:
    conn.execute(begin)
    try:
        result = fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


def _check_sequence(migrations: Sequence[Migration]) -> None:
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"migrations must be numbered 1..{len(versions)} in order, got {versions}")


def _current_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
    return int(row[0])


def _apply(migration: Migration, conn: sqlite3.Connection) -> None:
    migration.apply(conn)
    conn.execute(
        "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", (migration.version, utcnow())
    )


def _migrate(conn: sqlite3.Connection, path: Path, migrations: Sequence[Migration]) -> int:
    """Bring the schema up to the last of ``migrations``; return the resulting version."""

    def bootstrap(c: sqlite3.Connection) -> int:
        c.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied_at TEXT)")
        return _current_version(c)

    found = _in_transaction(conn, "BEGIN IMMEDIATE", bootstrap)
    known = len(migrations)
    if found > known:
        raise SchemaTooNew(
            f"metadata database {path} has schema version {found}, newer than the {known} "
            "this wharfd knows: run the wharfd that wrote it, or a newer one"
        )
    for migration in migrations[found:]:
        _in_transaction(conn, "BEGIN IMMEDIATE", functools.partial(_apply, migration))
        log.info("metadata %s: applied migration %d (%s)", path, migration.version, migration.description)
    return known


class Database:
    """The metadata database: serialized writes on one thread, concurrent snapshot reads.

    Open it with :meth:`open`. A write submitted runs to completion even if
    the awaiting caller is cancelled; the caller just does not see the result.
    """

    def __init__(
        self,
        *,
        path: Path,
        version: int,
        writer: ThreadPoolExecutor,
        writer_conn: sqlite3.Connection,
        readers: ThreadPoolExecutor,
        reader_conns: list[sqlite3.Connection],
    ) -> None:
        """Take over already opened connections; use :meth:`open` instead."""
        self._path = path
        self._version = version
        self._writer = writer
        self._writer_conn = writer_conn
        self._readers = readers
        self._reader_conns = reader_conns
        self._idle: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        for conn in reader_conns:
            self._idle.put(conn)
        self._closed = False

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        readers: int = READERS,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> Database:
        """Open (creating if needed) the database at ``path`` and apply pending migrations.

        Raises :class:`SchemaTooNew` if the file was migrated past what
        ``migrations`` knows.
        """
        _check_sequence(migrations)
        path = Path(path)
        loop = asyncio.get_running_loop()
        writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wharfd-db-writer")
        try:
            conn, version = await loop.run_in_executor(writer, _open_writer, path, migrations)
        except BaseException:
            writer.shutdown(wait=False)
            raise
        pool = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="wharfd-db-reader")
        reader_conns: list[sqlite3.Connection] = []
        try:
            for _ in range(readers):
                reader_conns.append(
                    await loop.run_in_executor(pool, functools.partial(_connect, path, reader=True))
                )
        except BaseException:
            for reader in reader_conns:
                reader.close()
            await loop.run_in_executor(writer, conn.close)
            writer.shutdown(wait=False)
            pool.shutdown(wait=False)
            raise
        return cls(
            path=path,
            version=version,
            writer=writer,
            writer_conn=conn,
            readers=pool,
            reader_conns=reader_conns,
        )

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    @property
    def schema_version(self) -> int:
        """The schema version the database is at (the last migration applied)."""
        return self._version

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in a write transaction on the writer thread and return its result.

        ``fn`` runs inside ``BEGIN IMMEDIATE … COMMIT``; if it raises, the
        transaction is rolled back and the exception re-raised unchanged.
        """
        return await self._submit(self._writer, self._run_write, fn)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on a read-only connection, inside one transaction so it sees one snapshot."""
        return await self._submit(self._readers, self._run_read, fn)

    async def close(self) -> None:
        """Finish queued work, then close every connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        # Queued behind any pending writes, so those still commit.
        await loop.run_in_executor(self._writer, _close_writer, self._writer_conn)
        await asyncio.to_thread(self._writer.shutdown)
        await asyncio.to_thread(self._readers.shutdown)
        for conn in self._reader_conns:
            conn.close()

    async def __aenter__(self) -> Self:
        """Use the database as an async context manager that closes it."""
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close the database."""
        await self.close()

    async def _submit(
        self,
        executor: Executor,
        run: Callable[[Callable[[sqlite3.Connection], T]], T],
        fn: Callable[[sqlite3.Connection], T],
    ) -> T:
        if self._closed:
            raise errors.Unavailable(f"metadata database {self._path} is closed")
        # Carry context variables (the call's namespace, the trace span) into the thread.
        ctx = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(executor, ctx.run, run, fn)

    def _run_write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return _in_transaction(self._writer_conn, "BEGIN IMMEDIATE", fn)

    def _run_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._idle.get()
        try:
            return _in_transaction(conn, "BEGIN", fn)
        finally:
            self._idle.put(conn)


def _open_writer(path: Path, migrations: Sequence[Migration]) -> tuple[sqlite3.Connection, int]:
    """Open the writer connection, switch to WAL and migrate. Runs on the writer thread."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = _connect(path, reader=False)
    try:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise errors.FailedPrecondition(
                f"metadata database {path}: cannot use WAL journal (got {mode!r})"
            )
        version = _migrate(conn, path, migrations)
    except BaseException:
        conn.close()
        raise
    return conn, version


def _close_writer(conn: sqlite3.Connection) -> None:
    # SQLite's advice for long-lived connections: let it refresh planner statistics on close.
    conn.execute("PRAGMA optimize")
    conn.close()
