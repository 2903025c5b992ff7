"""Garbage collection: remove content and snapshots that nothing references any more.

Mark and sweep over the metadata, as containerd's collector does, in one write
transaction so that no reference can appear between the two phases:

roots (per namespace)
    images (their target), containers (their snapshot), unexpired leases (what
    they hold), and content or snapshots labelled ``containerd.io/gc.root``.
edges
    content labels ``containerd.io/gc.ref.content[.<x>]`` → content (same namespace),
    ``containerd.io/gc.ref.snapshot.<snapshotter>[/<x>]`` → snapshot;
    the same labels on images, snapshots and containers; a snapshot's parent.
    A lease labelled ``containerd.io/gc.flat`` holds its resources without
    following their references.

Sweep deletes the records of unmarked content and snapshots (children before
parents). The files go afterwards, outside the transaction: a blob is unlinked
only when no namespace records it (re-checked under the content store's digest
lock); snapshot directories without a record are removed by each snapshotter's
``cleanup``. Ingests are never collected here: an interrupted pull resumes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from wharfd.runtime import plugin
from wharfd.runtime.metadata.db import Database
from wharfd.runtime.prom import Counter, Histogram

log = logging.getLogger("wharfd.gc")

LABEL_ROOT = "containerd.io/gc.root"
LABEL_REF_CONTENT = "containerd.io/gc.ref.content"
LABEL_REF_SNAPSHOT = "containerd.io/gc.ref.snapshot."
LABEL_EXPIRE = "containerd.io/gc.expire"
LABEL_FLAT = "containerd.io/gc.flat"

GC_COLLECTIONS = Counter("containerd_gc_collections", "Garbage collections, by outcome.", ["status"])
GC_SECONDS = Histogram("containerd_gc_gc_seconds", "Time spent in garbage collection.")

Content = tuple[str, str]  # (namespace, digest)
Snapshot = tuple[str, str, str]  # (namespace, snapshotter, key)


class BlobRemover(Protocol):
    """What the content store offers the collector."""

    async def remove_unreferenced(self, digests: Iterable[str]) -> int:
        """Unlink blob files no namespace records any more; return how many went."""
        ...


class SnapshotCleaner(Protocol):
    """What each snapshotter offers the collector."""

    async def cleanup(self) -> None:
        """Remove backend directories without a record."""
        ...


@dataclass
class Result:
    """What one collection removed."""

    content: list[Content] = field(default_factory=list)
    snapshots: list[Snapshot] = field(default_factory=list)
    blobs_removed: int = 0
    seconds: float = 0.0


def _refs(labels: Mapping[str, str], ns: str) -> tuple[list[Content], list[Snapshot]]:
    content: list[Content] = []
    snaps: list[Snapshot] = []
    for key, value in labels.items():
        if key == LABEL_REF_CONTENT or key.startswith(LABEL_REF_CONTENT + "."):
            content.append((ns, value))
        elif key.startswith(LABEL_REF_SNAPSHOT):
            snapshotter = key[len(LABEL_REF_SNAPSHOT) :].split("/", 1)[0]
            if snapshotter:
                snaps.append((ns, snapshotter, value))
    return content, snaps


def _expired(labels: Mapping[str, str], now: datetime) -> bool:
    text = labels.get(LABEL_EXPIRE)
    if not text:
        return False
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")) <= now
    except ValueError:
        return False


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


class _Graph:
    """The objects of the database and their outgoing references."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.content: dict[Content, dict[str, str]] = {
            (r[0], r[1]): json.loads(r[2])
            for r in conn.execute("SELECT namespace, digest, labels FROM content_blobs")
        }
        self.snapshots: dict[Snapshot, tuple[dict[str, str], Snapshot | None]] = {}
        by_id: dict[tuple[str, int], Snapshot] = {}
        rows = conn.execute(
            "SELECT namespace, snapshotter, key, id, parent_id, labels FROM snapshots"
        ).fetchall()
        for ns, snapshotter, key, sid, _parent, _labels in rows:
            by_id[(snapshotter, sid)] = (ns, snapshotter, key)
        for ns, snapshotter, key, _sid, parent, labels in rows:
            parent_ref = by_id.get((snapshotter, parent)) if parent is not None else None
            self.snapshots[(ns, snapshotter, key)] = (json.loads(labels), parent_ref)
        self.flat: set[Content | Snapshot] = set()

    def roots(self, conn: sqlite3.Connection, now: datetime) -> tuple[list[Content], list[Snapshot]]:
        content: list[Content] = []
        snaps: list[Snapshot] = []
        for ns, digest, labels in conn.execute("SELECT namespace, target_digest, labels FROM images"):
            content.append((ns, digest))
            c, s = _refs(json.loads(labels), ns)
            content += c
            snaps += s
        if "containers" in _tables(conn):
            for ns, snapshotter, key, labels in conn.execute(
                "SELECT namespace, snapshotter, snapshot_key, labels FROM containers"
            ):
                if snapshotter and key:
                    snaps.append((ns, snapshotter, key))
                c, s = _refs(json.loads(labels), ns)
                content += c
                snaps += s
        leases = {
            (r[0], r[1]): json.loads(r[2]) for r in conn.execute("SELECT namespace, id, labels FROM leases")
        }
        for ns, lease_id, kind, rid in conn.execute(
            "SELECT namespace, lease_id, type, id FROM lease_resources"
        ):
            labels = leases.get((ns, lease_id), {})
            if _expired(labels, now):
                continue
            node: Content | Snapshot | None = None
            if kind == "content":
                node = (ns, rid)
            elif kind.startswith("snapshots/"):
                node = (ns, kind.split("/", 1)[1], rid)
            if node is None:
                continue
            if LABEL_FLAT in labels:
                self.flat.add(node)
            if len(node) == 2:
                content.append(node)
            else:
                snaps.append(node)
        content += [k for k, labels in self.content.items() if LABEL_ROOT in labels]
        snaps += [k for k, (labels, _p) in self.snapshots.items() if LABEL_ROOT in labels]
        return content, snaps

    def mark(self, roots: tuple[list[Content], list[Snapshot]]) -> tuple[set[Content], set[Snapshot]]:
        live_c: set[Content] = set()
        live_s: set[Snapshot] = set()
        todo: list[Content | Snapshot] = [*roots[0], *roots[1]]
        while todo:
            node = todo.pop()
            if len(node) == 2:
                if node in live_c or node not in self.content:
                    continue
                live_c.add(node)
                if node in self.flat:
                    continue
                c, s = _refs(self.content[node], node[0])
            else:
                if node in live_s or node not in self.snapshots:
                    continue
                live_s.add(node)
                labels, parent = self.snapshots[node]
                if parent is not None:
                    todo.append(parent)  # a parent is needed whatever the lease says
                if node in self.flat:
                    continue
                c, s = _refs(labels, node[0])
            todo += c
            todo += s
        return live_c, live_s


def _sweep(conn: sqlite3.Connection) -> Result:
    graph = _Graph(conn)
    live_c, live_s = graph.mark(graph.roots(conn, datetime.now(UTC)))
    result = Result()
    for ns, digest in graph.content.keys() - live_c:
        conn.execute("DELETE FROM content_blobs WHERE namespace=? AND digest=?", (ns, digest))
        result.content.append((ns, digest))
    dead = graph.snapshots.keys() - live_s
    # Children first: a live snapshot's parent is live, so the dead set is closed downwards.
    depth: dict[Snapshot, int] = {}

    def level(node: Snapshot) -> int:
        if node not in depth:
            parent = graph.snapshots[node][1]
            depth[node] = 0 if parent is None else level(parent) + 1
        return depth[node]

    for ns, snapshotter, key in sorted(dead, key=level, reverse=True):
        conn.execute(
            "DELETE FROM snapshots WHERE namespace=? AND snapshotter=? AND key=?", (ns, snapshotter, key)
        )
        result.snapshots.append((ns, snapshotter, key))
    return result


class Collector:
    """Runs collections one at a time, on request or shortly after deletions."""

    def __init__(
        self,
        db: Database,
        content: BlobRemover | None,
        snapshotters: Mapping[str, SnapshotCleaner],
        *,
        delay: float = 0.1,
    ) -> None:
        self._db = db
        self._content = content
        self._snapshotters = snapshotters
        self._delay = delay
        self._lock = asyncio.Lock()
        self._scheduled: asyncio.Task[Any] | None = None

    async def collect(self) -> Result:
        """Collect now (waiting for a collection in progress to finish first)."""
        async with self._lock:
            started = time.monotonic()
            try:
                result = await self._db.write(_sweep)
                digests = {d for _ns, d in result.content}
                if digests and self._content is not None:
                    result.blobs_removed = await self._content.remove_unreferenced(digests)
                if result.snapshots:
                    for name in {s for _ns, s, _k in result.snapshots}:
                        cleaner = self._snapshotters.get(name)
                        if cleaner is not None:
                            await cleaner.cleanup()
            except Exception:
                GC_COLLECTIONS.labels("error").inc()
                raise
            result.seconds = time.monotonic() - started
            GC_SECONDS.observe(result.seconds)
            GC_COLLECTIONS.labels("success").inc()
            if result.content or result.snapshots:
                log.info(
                    "gc removed %d content records (%d blobs) and %d snapshots in %.3fs",
                    len(result.content),
                    result.blobs_removed,
                    len(result.snapshots),
                    result.seconds,
                )
            return result

    def schedule(self) -> None:
        """Ask for a collection soon; requests in the same moment share one run."""
        if self._scheduled is not None and not self._scheduled.done():
            return
        self._scheduled = asyncio.get_running_loop().create_task(self._later())

    async def _later(self) -> None:
        await asyncio.sleep(self._delay)
        try:
            await self.collect()
        except Exception:
            log.exception("scheduled garbage collection failed")

    async def close(self) -> None:
        """Cancel a scheduled collection."""
        if self._scheduled is not None:
            self._scheduled.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scheduled


async def _init(ctx: plugin.InitContext) -> Collector:
    meta = ctx.get(plugin.METADATA)
    content = ctx.plugins.instances(plugin.CONTENT).get("content")
    # schedule_delay: how long after a deletion the collection runs (deletions nearby share it).
    delay = ctx.config.duration(ctx.registration.uri, "schedule_delay") if ctx.config is not None else 0.0
    return Collector(meta.db, content, ctx.get_all(plugin.SNAPSHOTTER), delay=delay)


async def _close(collector: Collector) -> None:
    await collector.close()


PLUGIN = plugin.Registration(
    type=plugin.GC,
    id="scheduler",
    init=_init,
    close=_close,
    requires=(plugin.METADATA, plugin.CONTENT, plugin.SNAPSHOTTER),
)
