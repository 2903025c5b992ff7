"""Garbage collection's mark and sweep over real metadata tables."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from wharfd.runtime.gc import Collector
from wharfd.runtime.metadata.db import Database


def d(n: int) -> str:
    return "sha256:" + f"{n:02x}" * 32


class FakeBlobs:
    def __init__(self) -> None:
        self.asked: set[str] = set()

    async def remove_unreferenced(self, digests: Iterable[str]) -> int:
        self.asked |= set(digests)
        return len(self.asked)


class FakeCleaner:
    def __init__(self) -> None:
        self.calls = 0

    async def cleanup(self) -> None:
        self.calls += 1


NOW = "2026-01-01T00:00:00+00:00"


def blob(conn: sqlite3.Connection, ns: str, digest: str, labels: dict[str, str] | None = None) -> None:
    conn.execute(
        "INSERT INTO content_blobs (namespace, digest, size, labels, created_at, updated_at) VALUES (?,?,?,?,?,?)",
        (ns, digest, 1, json.dumps(labels or {}), NOW, NOW),
    )


def snap(
    conn: sqlite3.Connection,
    ns: str,
    sid: int,
    key: str,
    parent: int | None,
    labels: dict[str, str] | None = None,
) -> None:
    conn.execute(
        "INSERT INTO snapshots (snapshotter, id, namespace, key, kind, parent_id, labels, created_at, updated_at)"
        " VALUES ('overlayfs', ?, ?, ?, 3, ?, ?, ?, ?)",
        (sid, ns, key, parent, json.dumps(labels or {}), NOW, NOW),
    )


def image(conn: sqlite3.Connection, ns: str, name: str, digest: str) -> None:
    conn.execute(
        "INSERT INTO images (namespace, name, target_media_type, target_digest, target_size, created_at, updated_at)"
        " VALUES (?, ?, 'application/vnd.oci.image.manifest.v1+json', ?, 1, ?, ?)",
        (ns, name, digest, NOW, NOW),
    )


def populate(conn: sqlite3.Connection) -> None:
    for ns in ("a", "b"):
        conn.execute("INSERT INTO namespaces (name) VALUES (?)", (ns,))
    # An image: manifest -> config + layer, and the layer's unpacked snapshot chain.
    blob(
        conn,
        "a",
        d(1),
        {"containerd.io/gc.ref.content.config": d(2), "containerd.io/gc.ref.content.l.0": d(3)},
    )
    blob(conn, "a", d(2), {"containerd.io/gc.ref.snapshot.overlayfs": "chain-2"})
    blob(conn, "a", d(3))
    snap(conn, "a", 1, "chain-1", None)
    snap(conn, "a", 2, "chain-2", 1)
    image(conn, "a", "img", d(1))
    # Garbage: an unreferenced blob and a snapshot chain nothing points at.
    blob(conn, "a", d(4))
    snap(conn, "a", 3, "orphan-base", None)
    snap(conn, "a", 4, "orphan-top", 3)
    # The same digest in another namespace is not kept alive by namespace a's image.
    blob(conn, "b", d(2))
    # A gc.root blob stays; a leased one stays; an expired lease holds nothing.
    blob(conn, "b", d(5), {"containerd.io/gc.root": "2026"})
    blob(conn, "b", d(6))
    blob(conn, "b", d(7))
    conn.execute(
        "INSERT INTO leases (namespace, id, labels, created_at) VALUES ('b', 'live', '{}', ?)", (NOW,)
    )
    conn.execute(
        "INSERT INTO leases (namespace, id, labels, created_at) VALUES ('b', 'old', ?, ?)",
        (json.dumps({"containerd.io/gc.expire": "2000-01-01T00:00:00Z"}), NOW),
    )
    conn.execute("INSERT INTO lease_resources VALUES ('b', 'live', 'content', ?)", (d(6),))
    conn.execute("INSERT INTO lease_resources VALUES ('b', 'old', 'content', ?)", (d(7),))


def test_mark_and_sweep(tmp_path: Path) -> None:
    async def main() -> None:
        async with await Database.open(tmp_path / "metadata.db") as db:
            await db.write(populate)
            blobs, cleaner = FakeBlobs(), FakeCleaner()
            result = await Collector(db, blobs, {"overlayfs": cleaner}).collect()
            assert sorted(result.content) == sorted([("a", d(4)), ("b", d(2)), ("b", d(7))])
            # Children are removed before their parents.
            assert result.snapshots == [("a", "overlayfs", "orphan-top"), ("a", "overlayfs", "orphan-base")]
            assert blobs.asked == {d(2), d(4), d(7)}
            assert cleaner.calls == 1
            left = await db.read(
                lambda c: sorted(tuple(r) for r in c.execute("SELECT namespace, digest FROM content_blobs"))
            )
            assert left == sorted([("a", d(1)), ("a", d(2)), ("a", d(3)), ("b", d(5)), ("b", d(6))])
            keys = await db.read(lambda c: sorted(r[0] for r in c.execute("SELECT key FROM snapshots")))
            assert keys == ["chain-1", "chain-2"]
            # Deleting the image releases the whole tree.
            await db.write(lambda c: c.execute("DELETE FROM images"))
            again = await Collector(db, blobs, {"overlayfs": cleaner}).collect()
            assert {digest for _ns, digest in again.content} == {d(1), d(2), d(3)}
            assert [k for _n, _s, k in again.snapshots] == ["chain-2", "chain-1"]

    asyncio.run(main())


def test_flat_lease_does_not_follow_references(tmp_path: Path) -> None:
    def setup(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO namespaces (name) VALUES ('a')")
        blob(conn, "a", d(1), {"containerd.io/gc.ref.content": d(2)})
        blob(conn, "a", d(2))
        conn.execute(
            "INSERT INTO leases (namespace, id, labels, created_at) VALUES ('a', 'f', ?, ?)",
            (json.dumps({"containerd.io/gc.flat": "1"}), NOW),
        )
        conn.execute("INSERT INTO lease_resources VALUES ('a', 'f', 'content', ?)", (d(1),))

    async def main() -> None:
        async with await Database.open(tmp_path / "metadata.db") as db:
            await db.write(setup)
            result = await Collector(db, None, {}).collect()
            assert result.content == [("a", d(2))]

    asyncio.run(main())


def test_schedule_coalesces(tmp_path: Path) -> None:
    async def main() -> None:
        async with await Database.open(tmp_path / "metadata.db") as db:
            collector = Collector(db, None, {}, delay=0.05)
            runs = 0
            original = collector.collect

            async def counting() -> object:
                nonlocal runs
                runs += 1
                return await original()

            collector.collect = counting  # type: ignore[method-assign]
            for _ in range(5):
                collector.schedule()
            await asyncio.sleep(0.2)
            assert runs == 1
            await collector.close()

    asyncio.run(main())
