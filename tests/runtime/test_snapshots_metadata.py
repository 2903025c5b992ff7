"""Snapshot records: migration 3, crash safety (SIGKILL between directory and record), busy ids."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import pytest

from wharfd.runtime import errors, namespaces
from wharfd.runtime.metadata.db import MIGRATIONS, Database
from wharfd.runtime.metadata.namespaces import NamespaceStore
from wharfd.runtime.snapshots.metadata import NamespacedSnapshotter
from wharfd.runtime.snapshots.native import NativeBackend
from wharfd.runtime.snapshots.snapshotter import Kind

T = TypeVar("T")


def run(tmp_path: Path, fn: Callable[[NamespacedSnapshotter, Database], Awaitable[T]]) -> T:
    """Run ``fn`` on a native snapshotter (no mounts needed) in namespace ``default``."""

    async def main() -> T:
        token = namespaces.current.set("default")
        try:
            async with await Database.open(tmp_path / "metadata.db") as db:
                return await fn(NamespacedSnapshotter(db, NativeBackend(tmp_path / "native")), db)
        finally:
            namespaces.current.reset(token)

    return asyncio.run(main())


def columns(conn: sqlite3.Connection, table: str) -> list[tuple[str, str, int, int]]:
    return [(r[1], r[2], r[3], r[5]) for r in conn.execute(f"PRAGMA table_info({table})")]


def test_migration_3(tmp_path: Path) -> None:
    async def check(db: Database) -> None:
        assert db.schema_version >= 3
        assert await db.read(lambda c: columns(c, "snapshots")) == [
            ("snapshotter", "TEXT", 1, 1),
            ("id", "INTEGER", 1, 2),
            ("namespace", "TEXT", 1, 0),
            ("key", "TEXT", 1, 0),
            ("kind", "INTEGER", 1, 0),
            ("parent_id", "INTEGER", 0, 0),
            ("labels", "TEXT", 1, 0),
            ("created_at", "TEXT", 1, 0),
            ("updated_at", "TEXT", 1, 0),
            ("size", "INTEGER", 0, 0),
            ("inodes", "INTEGER", 0, 0),
        ]
        assert await db.read(lambda c: columns(c, "snapshot_ids")) == [
            ("snapshotter", "TEXT", 1, 1),
            ("last_id", "INTEGER", 1, 0),
        ]

        def insert(c: sqlite3.Connection, *rows: tuple[object, ...]) -> None:
            c.executemany(
                "INSERT INTO snapshots (snapshotter, id, namespace, key, kind, parent_id,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 't', 't')",
                rows,
            )

        await db.write(lambda c: insert(c, ("o", 1, "ns", "base", 3, None), ("o", 2, "ns", "top", 2, 1)))
        labels = await db.read(lambda c: c.execute("SELECT labels FROM snapshots WHERE id = 1").fetchone()[0])
        assert labels == "{}"
        bad: list[tuple[tuple[object, ...], str]] = [
            (("o", 3, "ns", "base", 2, None), "UNIQUE"),  # key taken in (namespace, snapshotter)
            (("o", 3, "ns", "x", 2, 99), "FOREIGN KEY"),  # parent must exist in the same snapshotter
            (("n", 3, "ns", "x", 2, 1), "FOREIGN KEY"),
            (("o", 3, "ns", "x", 4, None), "CHECK"),  # kind is 1..3
        ]
        for row, message in bad:
            with pytest.raises(sqlite3.IntegrityError, match=message):
                await db.write(lambda c, row=row: insert(c, row))  # type: ignore[misc]
        await db.write(
            lambda c: insert(c, ("o", 3, "other", "base", 3, None), ("n", 1, "ns", "base", 3, None))
        )
        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
            await db.write(lambda c: c.execute("DELETE FROM snapshots WHERE snapshotter = 'o' AND id = 1"))

    async def main() -> None:
        async with await Database.open(tmp_path / "metadata.db", migrations=MIGRATIONS[:3]) as db:
            await check(db)

    asyncio.run(main())


def test_namespace_with_snapshots_cannot_be_deleted(tmp_path: Path) -> None:
    async def check(sn: NamespacedSnapshotter, db: Database) -> None:
        await sn.prepare("k")
        store = NamespaceStore(db)
        assert (await store.get("default")).name == "default"  # created implicitly by prepare
        with pytest.raises(errors.FailedPrecondition, match="snapshots"):
            await store.delete("default")
        await sn.remove("k")
        await store.delete("default")

    run(tmp_path, check)


def test_ids_are_per_snapshotter_and_never_reused(tmp_path: Path) -> None:
    async def check(sn: NamespacedSnapshotter, db: Database) -> list[str]:
        await sn.prepare("a")
        await sn.remove("a")
        await sn.prepare("a")
        other = NamespacedSnapshotter(db, NativeBackend(tmp_path / "other"))
        other.name = "other"
        await other.prepare("a")
        rows = await db.read(
            lambda c: c.execute("SELECT snapshotter, id FROM snapshots ORDER BY 1").fetchall()
        )
        assert [tuple(r) for r in rows] == [("native", 2), ("other", 1)]
        return sn.backend.entries()

    assert run(tmp_path, check) == ["2"]


CRASH = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from pathlib import Path
    from wharfd.runtime import namespaces
    from wharfd.runtime.metadata.db import Database
    from wharfd.runtime.snapshots.metadata import NamespacedSnapshotter
    from wharfd.runtime.snapshots.native import NativeBackend

    base, step = Path(sys.argv[1]), sys.argv[2]

    class Dies(NativeBackend):
        def create(self, sid, kind, parents):
            super().create(sid, kind, parents)
            if step == "create":
                os.kill(os.getpid(), signal.SIGKILL)

        def remove(self, sid):
            os.kill(os.getpid(), signal.SIGKILL)

    async def main():
        namespaces.current.set("default")
        async with await Database.open(base / "metadata.db") as db:
            sn = NamespacedSnapshotter(db, Dies(base / "native"))
            if step == "create":
                await sn.prepare("k")
            else:
                await sn.remove("k")

    asyncio.run(main())
    """
)


def kill_during(tmp_path: Path, step: str) -> None:
    proc = subprocess.run([sys.executable, "-c", CRASH, str(tmp_path), step], check=False, timeout=60)
    assert proc.returncode == -9


@pytest.mark.parametrize("step", ["create", "remove"])
def test_sigkill_leaves_a_directory_without_record_that_cleanup_removes(tmp_path: Path, step: str) -> None:
    if step == "remove":
        run(tmp_path, lambda sn, db: sn.prepare("k"))
    kill_during(tmp_path, step)

    async def check(sn: NamespacedSnapshotter, db: Database) -> Sequence[str]:
        # The directory exists, and no record points at it: never the other way round.
        assert sn.backend.entries() == ["1"]
        assert await sn.walk() == []
        await sn.cleanup()
        await sn.prepare("k")  # the key is free, and the id is new
        return sn.backend.entries()

    assert run(tmp_path, check) == ["2"]


def test_cleanup_spares_a_snapshot_being_created(tmp_path: Path) -> None:
    created, release = threading.Event(), threading.Event()

    class Slow(NativeBackend):
        def create(self, sid: int, kind: Kind, parents: Sequence[int]) -> None:
            super().create(sid, kind, parents)
            created.set()
            release.wait(10)

    async def check(sn: NamespacedSnapshotter, db: Database) -> None:
        slow = NamespacedSnapshotter(db, Slow(tmp_path / "native"))
        pending = asyncio.create_task(slow.prepare("k"))
        await asyncio.to_thread(created.wait, 10)
        await slow.cleanup()
        assert slow.backend.entries() == ["1"], "the directory of a prepare in flight survives cleanup"
        release.set()
        await pending
        assert (await slow.stat("k")).kind == Kind.ACTIVE
        await slow.cleanup()
        assert slow.backend.entries() == ["1"]

    run(tmp_path, check)


def test_failed_record_insert_removes_the_directory(tmp_path: Path) -> None:
    async def check(sn: NamespacedSnapshotter, db: Database) -> None:
        await sn.prepare("p")
        await sn.commit("p-done", "p")

        class RemovesParentFirst(NativeBackend):
            def create(self, sid: int, kind: Kind, parents: Sequence[int]) -> None:
                super().create(sid, kind, parents)
                # The parent disappears between the reservation and the record.
                with sqlite3.connect(tmp_path / "metadata.db") as conn:
                    conn.execute("DELETE FROM snapshots WHERE key = 'p-done'")

        racing = NamespacedSnapshotter(db, RemovesParentFirst(tmp_path / "native"))
        with pytest.raises(errors.NotFound, match='parent snapshot "p-done" does not exist'):
            await racing.prepare("child", "p-done")
        assert racing.backend.entries() == ["1"]  # only the parent's (now orphaned) directory

    run(tmp_path, check)


def test_operations_need_a_namespace(tmp_path: Path) -> None:
    async def check(sn: NamespacedSnapshotter, db: Database) -> None:
        token = namespaces.current.set(None)
        try:
            for call in (sn.prepare("k"), sn.stat("k"), sn.walk(), sn.remove("k")):
                with pytest.raises(errors.FailedPrecondition, match="namespace is required"):
                    await call
        finally:
            namespaces.current.reset(token)

    run(tmp_path, check)


def test_snapshots_directory_is_private(tmp_path: Path) -> None:
    run(tmp_path, lambda sn, db: sn.prepare("k"))
    assert oct(os.stat(tmp_path / "native" / "snapshots").st_mode & 0o777) == "0o700"


def test_cancelled_prepare_keeps_record_and_directory_together(tmp_path: Path) -> None:
    """Cancelled while its record is being written: the write still lands, and cleanup spares it."""
    created, go, blocking, hold = (threading.Event() for _ in range(4))

    class Gated(NativeBackend):
        def create(self, sid: int, kind: Kind, parents: Sequence[int]) -> None:
            super().create(sid, kind, parents)
            created.set()
            go.wait(10)

    def block_writer(conn: sqlite3.Connection) -> None:
        blocking.set()
        hold.wait(10)

    async def check(_sn: NamespacedSnapshotter, db: Database) -> None:
        sn = NamespacedSnapshotter(db, Gated(tmp_path / "native"))
        task = asyncio.create_task(sn.prepare("k"))
        await asyncio.to_thread(created.wait, 10)
        blocker = asyncio.ensure_future(db.write(block_writer))
        await asyncio.to_thread(blocking.wait, 10)
        go.set()  # create returns; the record's write queues behind the blocker
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        cleanup = asyncio.ensure_future(sn.cleanup())  # queued after the record's write
        hold.set()
        await blocker
        await cleanup
        assert (await sn.stat("k")).kind == Kind.ACTIVE
        assert sn.backend.entries() == ["1"]

    run(tmp_path, check)
