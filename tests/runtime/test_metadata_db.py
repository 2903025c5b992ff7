"""The metadata database: migrations, transactions and the thread discipline.

Every migration MUST get a ``test_migration_<N>`` here that applies it to an
empty database and checks the schema it leaves.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from wharfd.runtime import errors
from wharfd.runtime.metadata import db as metadata_db
from wharfd.runtime.metadata.db import MIGRATIONS, Database, Migration, SchemaTooNew

T = TypeVar("T")


def run(fn: Callable[[Database], Awaitable[T]], path: Path, **kwargs: object) -> T:
    """Open the database at ``path``, run ``fn`` on it and close it, in a fresh event loop."""

    async def main() -> T:
        async with await Database.open(path, **kwargs) as db:  # type: ignore[arg-type]
            return await fn(db)

    return asyncio.run(main())


def columns(conn: sqlite3.Connection, table: str) -> list[tuple[str, str, int, str | None, int]]:
    """(name, type, notnull, default, pk) of each column of ``table``."""
    return [(r[1], r[2], r[3], r[4], r[5]) for r in conn.execute(f"PRAGMA table_info({table})")]


def schema(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    """Every table and index with its normalised SQL."""
    rows = conn.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name")
    return [(r[0], " ".join(r[1].split())) for r in rows]


# --- migrations -------------------------------------------------------------


def test_migrations_are_numbered_in_order() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert all(m.description for m in MIGRATIONS)


def test_empty_database_is_migrated_to_latest(tmp_path: Path) -> None:
    path = tmp_path / "metadata.db"

    async def check(db: Database) -> list[int]:
        assert db.schema_version == len(MIGRATIONS)
        return await db.read(lambda c: [r[0] for r in c.execute("SELECT version FROM schema_version")])

    assert run(check, path) == list(range(1, len(MIGRATIONS) + 1))


def test_migration_1(tmp_path: Path) -> None:
    async def check(db: Database) -> None:
        assert db.schema_version == 1
        cols = await db.read(lambda c: columns(c, "namespaces"))
        assert cols == [
            ("name", "TEXT", 1, None, 1),
            ("labels", "TEXT", 1, "'{}'", 0),
            ("created_at", "TEXT", 0, None, 0),
            ("updated_at", "TEXT", 0, None, 0),
        ]
        assert await db.read(lambda c: columns(c, "schema_version")) == [
            ("version", "INTEGER", 1, None, 0),
            ("applied_at", "TEXT", 0, None, 0),
        ]

        def insert_default(c: sqlite3.Connection) -> str:
            c.execute("INSERT INTO namespaces (name) VALUES ('default')")
            return str(c.execute("SELECT labels FROM namespaces").fetchone()[0])

        assert await db.write(insert_default) == "{}"

    run(check, tmp_path / "metadata.db", migrations=MIGRATIONS[:1])


@pytest.mark.parametrize("target", range(1, len(MIGRATIONS) + 1))
def test_upgrade_from_previous_version(tmp_path: Path, target: int) -> None:
    """A database at N-1 upgraded to N has exactly the schema of one created at N."""

    async def dump(db: Database) -> list[tuple[str, str]]:
        return await db.read(schema)

    upgraded = tmp_path / "upgraded.db"
    run(dump, upgraded, migrations=MIGRATIONS[: target - 1])
    after = run(dump, upgraded, migrations=MIGRATIONS[:target])
    fresh = run(dump, tmp_path / "fresh.db", migrations=MIGRATIONS[:target])
    assert after == fresh

    async def versions(db: Database) -> list[int]:
        return await db.read(lambda c: [r[0] for r in c.execute("SELECT version FROM schema_version")])

    assert run(versions, upgraded, migrations=MIGRATIONS[:target]) == list(range(1, target + 1))


def test_upgrade_keeps_data_and_applies_each_step_once(tmp_path: Path) -> None:
    path = tmp_path / "metadata.db"
    applied: list[int] = []

    def make(version: int) -> Migration:
        def apply(conn: sqlite3.Connection) -> None:
            applied.append(version)
            conn.execute(f"CREATE TABLE t{version} (namespace TEXT NOT NULL)")

        return Migration(version, f"table t{version}", apply)

    steps = (*MIGRATIONS, make(len(MIGRATIONS) + 1), make(len(MIGRATIONS) + 2))

    async def add_namespace(db: Database) -> None:
        await db.write(lambda c: c.execute("INSERT INTO namespaces (name) VALUES ('kept')"))

    run(add_namespace, path, migrations=steps[:-1])

    async def check(db: Database) -> list[str]:
        assert db.schema_version == len(steps)
        return await db.read(lambda c: [r[0] for r in c.execute("SELECT name FROM namespaces")])

    assert run(check, path, migrations=steps) == ["kept"]
    assert run(check, path, migrations=steps) == ["kept"]
    assert applied == [len(MIGRATIONS) + 1, len(MIGRATIONS) + 2]


def test_failed_migration_leaves_previous_version(tmp_path: Path) -> None:
    path = tmp_path / "metadata.db"

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half (x)")
        raise RuntimeError("migration bug")

    with pytest.raises(RuntimeError, match="migration bug"):
        run(
            lambda db: db.read(lambda c: None),
            path,
            migrations=(*MIGRATIONS, Migration(len(MIGRATIONS) + 1, "x", broken)),
        )

    async def check(db: Database) -> list[str]:
        assert db.schema_version == len(MIGRATIONS)
        return await db.read(
            lambda c: [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE name = 'half'")]
        )

    assert run(check, path) == []


def test_refuses_database_newer_than_code(tmp_path: Path) -> None:
    path = tmp_path / "metadata.db"
    newer = len(MIGRATIONS) + 3

    async def bump(db: Database) -> None:
        await db.write(lambda c: c.execute("INSERT INTO schema_version VALUES (?, 'future')", (newer,)))

    run(bump, path)
    with pytest.raises(SchemaTooNew) as info:
        run(lambda db: db.read(lambda c: None), path)
    message = str(info.value)
    assert str(path) in message
    assert f"schema version {newer}" in message
    assert f"the {len(MIGRATIONS)} this wharfd knows" in message
    assert isinstance(info.value, errors.FailedPrecondition)


def test_migrations_out_of_order_are_a_bug(tmp_path: Path) -> None:
    skipping = (Migration(1, "a", lambda c: None), Migration(3, "b", lambda c: None))
    with pytest.raises(ValueError, match=r"numbered 1\.\.2"):
        run(lambda db: db.read(lambda c: None), tmp_path / "x.db", migrations=skipping)


# --- connections and transactions ------------------------------------------


def test_pragmas_on_writer_and_readers(tmp_path: Path) -> None:
    def pragmas(c: sqlite3.Connection) -> tuple[str, int, int, int]:
        return (
            c.execute("PRAGMA journal_mode").fetchone()[0],
            c.execute("PRAGMA synchronous").fetchone()[0],
            c.execute("PRAGMA foreign_keys").fetchone()[0],
            c.execute("PRAGMA busy_timeout").fetchone()[0],
        )

    async def check(db: Database) -> None:
        expected = ("wal", 1, 1, metadata_db.BUSY_TIMEOUT_MS)  # synchronous 1 = NORMAL
        assert await db.read(pragmas) == expected
        assert await db.write(pragmas) == expected

    run(check, tmp_path / "metadata.db")
    assert (tmp_path / "metadata.db").exists()


def test_write_commits_and_returns_result(tmp_path: Path) -> None:
    async def check(db: Database) -> None:
        def insert(c: sqlite3.Connection) -> int:
            c.execute("INSERT INTO namespaces (name) VALUES ('a')")
            return 42

        assert await db.write(insert) == 42
        assert await db.read(lambda c: c.execute("SELECT COUNT(*) FROM namespaces").fetchone()[0]) == 1

    run(check, tmp_path / "metadata.db")


def test_write_rolls_back_and_reraises(tmp_path: Path) -> None:
    class Boom(Exception):
        pass

    boom = Boom("after insert")

    async def check(db: Database) -> None:
        def insert_then_fail(c: sqlite3.Connection) -> None:
            c.execute("INSERT INTO namespaces (name) VALUES ('doomed')")
            raise boom

        with pytest.raises(Boom) as info:
            await db.write(insert_then_fail)
        assert info.value is boom
        assert await db.read(lambda c: c.execute("SELECT COUNT(*) FROM namespaces").fetchone()[0]) == 0
        # The writer is usable again: no transaction was left open.
        await db.write(lambda c: c.execute("INSERT INTO namespaces (name) VALUES ('fine')"))
        assert await db.read(lambda c: c.execute("SELECT name FROM namespaces").fetchone()[0]) == "fine"

    run(check, tmp_path / "metadata.db")


def test_sqlite_errors_roll_back_too(tmp_path: Path) -> None:
    async def check(db: Database) -> None:
        def duplicate(c: sqlite3.Connection) -> None:
            c.execute("INSERT INTO namespaces (name) VALUES ('x')")
            c.execute("INSERT INTO namespaces (name) VALUES ('x')")

        with pytest.raises(sqlite3.IntegrityError):
            await db.write(duplicate)
        assert await db.read(lambda c: c.execute("SELECT COUNT(*) FROM namespaces").fetchone()[0]) == 0

    run(check, tmp_path / "metadata.db")


def test_reads_cannot_write(tmp_path: Path) -> None:
    async def check(db: Database) -> None:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            await db.read(lambda c: c.execute("INSERT INTO namespaces (name) VALUES ('sneaky')"))

    run(check, tmp_path / "metadata.db")


def test_readers_see_committed_state_during_a_write(tmp_path: Path) -> None:
    """While a write is open, reads proceed, see the last commit only, and the loop keeps running."""
    inside = threading.Event()
    release = threading.Event()

    def slow_insert(c: sqlite3.Connection) -> None:
        c.execute("INSERT INTO namespaces (name) VALUES ('pending')")
        inside.set()
        release.wait(10)

    def names(c: sqlite3.Connection) -> list[str]:
        return [r[0] for r in c.execute("SELECT name FROM namespaces ORDER BY name")]

    async def check(db: Database) -> None:
        await db.write(lambda c: c.execute("INSERT INTO namespaces (name) VALUES ('committed')"))
        write = asyncio.create_task(db.write(slow_insert))
        await asyncio.to_thread(inside.wait, 10)
        ticks = 0
        for _ in range(5):  # the event loop is not blocked by the open write
            await asyncio.sleep(0.01)
            ticks += 1
        assert ticks == 5
        assert await asyncio.wait_for(db.read(names), 5) == ["committed"]
        release.set()
        await write
        assert await db.read(names) == ["committed", "pending"]

    run(check, tmp_path / "metadata.db")


def test_writes_are_serialized_on_one_thread(tmp_path: Path) -> None:
    threads: set[int] = set()
    loop_thread = threading.get_ident()

    def increment(c: sqlite3.Connection) -> None:
        threads.add(threading.get_ident())
        (value,) = c.execute("SELECT COUNT(*) FROM namespaces").fetchone()
        time.sleep(0.001)  # widen the read-modify-write window
        c.execute("INSERT INTO namespaces (name) VALUES (?)", (f"n{value}",))

    async def check(db: Database) -> None:
        await asyncio.gather(*(db.write(increment) for _ in range(40)))
        names = await db.read(lambda c: {r[0] for r in c.execute("SELECT name FROM namespaces")})
        assert names == {f"n{i}" for i in range(40)}

    run(check, tmp_path / "metadata.db")
    assert len(threads) == 1
    assert loop_thread not in threads


def test_concurrent_reads_use_the_pool(tmp_path: Path) -> None:
    barrier = threading.Barrier(3, timeout=5)

    def meet(c: sqlite3.Connection) -> int:
        barrier.wait()  # only returns if three reads run at the same time
        return int(c.execute("SELECT COUNT(*) FROM namespaces").fetchone()[0])

    async def check(db: Database) -> None:
        assert await asyncio.gather(*(db.read(meet) for _ in range(3))) == [0, 0, 0]

    run(check, tmp_path / "metadata.db", readers=3)


def test_closed_database_is_unavailable(tmp_path: Path) -> None:
    async def main() -> None:
        db = await Database.open(tmp_path / "metadata.db")
        pending = db.write(lambda c: c.execute("INSERT INTO namespaces (name) VALUES ('last')"))
        task = asyncio.ensure_future(pending)
        await asyncio.sleep(0)
        await db.close()
        await task  # queued before close, so it committed
        await db.close()  # idempotent
        with pytest.raises(errors.Unavailable, match="closed"):
            await db.read(lambda c: None)
        async with await Database.open(tmp_path / "metadata.db") as again:
            assert (
                await again.read(lambda c: c.execute("SELECT name FROM namespaces").fetchone()[0]) == "last"
            )

    asyncio.run(main())


def test_creates_parent_directory(tmp_path: Path) -> None:
    path = tmp_path / "root" / "metadata" / metadata_db.FILENAME
    run(lambda db: db.read(lambda c: None), path)
    assert path.is_file()
