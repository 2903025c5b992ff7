"""The local store beyond the conformance suite: layout, crash leftovers, policy, events, migration."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from google.protobuf.message import Message

from wharfd.api.events import content_pb2 as events_pb2
from wharfd.runtime import errors, namespaces, plugin
from wharfd.runtime.content import ingest
from wharfd.runtime.content import plugin as content_plugin
from wharfd.runtime.content.local import LocalStore
from wharfd.runtime.content.store import Expected
from wharfd.runtime.content.testsuite import blob, namespace, read_all
from wharfd.runtime.metadata import db as dbmod
from wharfd.runtime.metadata import leases
from wharfd.runtime.metadata import plugin as metadata_plugin
from wharfd.runtime.metadata.db import Database
from wharfd.runtime.metadata.namespaces import NamespaceStore
from wharfd.runtime.services import plugins as api
from wharfd.runtime.services.lazy import LazyService

T = TypeVar("T")


def run(tmp_path: Path, fn: Callable[[LocalStore], Awaitable[T]], **kwargs: Any) -> T:
    """Run ``fn`` in namespace "ns" with a store over a fresh database."""

    async def main() -> T:
        async with await Database.open(tmp_path / "metadata.db") as db:
            with namespace("ns"):
                return await fn(LocalStore(tmp_path / "content", db, **kwargs))

    return asyncio.run(main())


async def commit(store: LocalStore, ref: str, data: bytes, digest: str) -> None:
    async with store.writer(ref) as w:
        await w.write(data)
        await w.commit(len(data), digest)


def test_layout_on_disk(tmp_path: Path) -> None:
    data, digest = blob("layout", 1000)

    async def check(store: LocalStore) -> None:
        async with store.writer("my-ref", Expected(digest, len(data))) as w:
            await w.write(data[:10])
        path = tmp_path / "content" / "ingest" / hashlib.sha256(b"ns/my-ref").hexdigest()
        assert store.ingest_path("ns", "my-ref") == path
        assert sorted(p.name for p in path.iterdir()) == [
            "data",
            "expected",
            "namespace",
            "ref",
            "startedat",
            "total",
            "updatedat",
        ]
        assert (path / "ref").read_text() == "my-ref"
        assert (path / "total").read_text() == "1000"
        assert (path / "expected").read_text() == digest
        assert (path / "data").read_bytes() == data[:10]
        async with store.writer("my-ref") as w:
            await w.write(data[10:])
            await w.commit()
        target = tmp_path / "content" / "blobs" / "sha256" / digest.removeprefix("sha256:")
        assert await store.open_blob(digest) == target
        assert stat.S_IMODE(target.stat().st_mode) == 0o444
        assert not path.exists()

    run(tmp_path, check)


def test_file_removed_only_when_unreferenced(tmp_path: Path) -> None:
    data, digest = blob("refs", 100)

    async def check(store: LocalStore) -> None:
        await commit(store, "a", data, digest)
        with namespace("other"):
            await commit(store, "b", data, digest)
        await store.delete(digest)
        assert store.blob_path(digest).exists()
        with namespace("third"):
            shared = await store.open_writer("c", Expected(digest, len(data)))
            assert shared.offset == len(data)
        with namespace("other"):
            await store.delete(digest)
        # The shared ingest in "third" still needs the file.
        assert store.blob_path(digest).exists()
        await shared.commit()
        with namespace("third"):
            assert await read_all(store, digest) == data
            await store.delete(digest)
        assert not store.blob_path(digest).exists()

    run(tmp_path, check)


def test_blob_left_on_disk_by_a_crash_is_reused(tmp_path: Path) -> None:
    """A crash between rename and record leaves an unrecorded file; commits then just record it."""
    data, digest = blob("orphan", 500)

    async def check(store: LocalStore) -> None:
        target = store.blob_path(digest)
        target.parent.mkdir(parents=True)
        target.write_bytes(data)
        async with store.writer("w") as w:
            await w.write(data)
            info = await w.commit(len(data), digest)
        assert info.size == len(data)
        with namespace("other"):
            async with store.writer("shared", Expected(digest, 0)) as w:
                assert w.offset == len(data)
                await w.commit()

    run(tmp_path, check)


def test_ingest_record_without_data_shows_and_aborts(tmp_path: Path) -> None:
    async def check(store: LocalStore) -> None:
        async with store.writer("lost") as w:
            await w.write(b"abc")
        ingest.remove(store.ingest_path("ns", "lost"))
        status = await store.status("lost")
        assert (status.ref, status.offset) == ("lost", 0)
        await store.abort("lost")
        with pytest.raises(errors.NotFound):
            await store.status("lost")

    run(tmp_path, check)


def test_stale_ingest_directory_starts_over(tmp_path: Path) -> None:
    async def check(store: LocalStore) -> None:
        async with store.writer("x", Expected("", 10)) as w:
            await w.write(b"12345")
        # A different total means the old bytes belong to something else.
        async with store.writer("x", Expected("", 20)) as w:
            assert w.offset == 0
        (store.ingest_path("ns", "x") / "ref").write_text("someone-else")
        async with store.writer("x") as w:
            assert w.offset == 0

    run(tmp_path, check)


def test_isolated_policy_shares_only_shareable_namespaces(tmp_path: Path) -> None:
    data, digest = blob("isolated", 64)

    async def check(store: LocalStore) -> None:
        await commit(store, "a", data, digest)
        with namespace("other"):
            async with store.writer("b", Expected(digest, len(data))) as w:
                assert w.offset == 0
        await NamespaceStore(store.db).update("ns", {"containerd.io/namespace.shareable": "true"})
        with namespace("other"):
            async with store.writer("b", Expected(digest, len(data))) as w:
                assert w.offset == len(data)
                await w.commit()

    run(tmp_path, check, policy="isolated")


def test_unknown_policy(tmp_path: Path) -> None:
    with pytest.raises(errors.InvalidArgument, match="content_sharing_policy"):
        run(tmp_path, lambda s: asyncio.sleep(0), policy="open")


def test_events(tmp_path: Path) -> None:
    data, digest = blob("events", 10)
    seen: list[tuple[str, str | None, Message]] = []

    async def publish(topic: str, event: Message) -> None:
        seen.append((topic, namespaces.current.get(), event))

    async def check(store: LocalStore) -> None:
        async with store.writer("e", Expected(digest, len(data), "application/x-test")) as w:
            await w.write(data)
            await w.commit()
        with namespace("other"), pytest.raises(errors.NotFound):
            await store.delete(digest)
        await store.delete(digest)

    run(tmp_path, check, publish=publish)
    assert seen == [
        (
            "/content/create",
            "ns",
            events_pb2.ContentCreate(digest=digest, size=10, mediaType="application/x-test"),
        ),
        ("/content/delete", "ns", events_pb2.ContentDelete(digest=digest)),
    ]


def test_failing_publisher_does_not_fail_the_commit(tmp_path: Path) -> None:
    data, digest = blob("pub", 10)

    async def publish(topic: str, event: Message) -> None:
        raise RuntimeError("exchange down")

    async def check(store: LocalStore) -> None:
        await commit(store, "p", data, digest)
        assert (await store.info(digest)).size == 10

    run(tmp_path, check, publish=publish)


def test_cancelled_write_releases_the_ref_consistently(tmp_path: Path) -> None:
    data, digest = blob("cancel", 8 << 20)

    async def check(store: LocalStore) -> None:
        started = asyncio.Event()

        async def slow_writer() -> None:
            async with store.writer("c") as w:
                for start in range(0, len(data), 1 << 20):
                    await w.write(data[start : start + (1 << 20)])
                    started.set()

        task = asyncio.create_task(slow_writer())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with store.writer("c") as w:
            # The write in flight at the cancel may or may not have landed; either way it is whole.
            offset = w.offset
            assert 0 < offset < len(data) and offset % (1 << 20) == 0
            assert w.digest() == "sha256:" + hashlib.sha256(data[:offset]).hexdigest()
            await w.write(data[offset:])
            await w.commit(len(data), digest)

    run(tmp_path, check)


def test_small_writes_are_buffered_and_flushed(tmp_path: Path) -> None:
    data, digest = blob("small", (1 << 20) + 100)

    async def check(store: LocalStore) -> None:
        async with store.writer("small") as w:
            for start in range(0, 1000, 10):
                await w.write(data[start : start + 10])
            assert w.offset == 1000
            assert w.digest() == "sha256:" + hashlib.sha256(data[:1000]).hexdigest()
            assert (await store.status("small")).offset == 0
            await w.flush()
            assert (await store.status("small")).offset == 1000
            await w.write(data[1000:2000])
        assert (await store.status("small")).offset == 2000
        async with store.writer("small") as w:
            await w.write(data[2000:])
            assert (await w.commit(len(data), digest)).size == len(data)

    run(tmp_path, check)


def test_abort_under_a_live_writer_fails_its_commit(tmp_path: Path) -> None:
    async def check(store: LocalStore) -> None:
        w = await store.open_writer("live")
        await w.write(b"abc")
        await store.abort("live")
        with pytest.raises(errors.FailedPrecondition, match="aborted"):
            await w.commit()
        with pytest.raises(errors.NotFound):
            await store.status("live")

    run(tmp_path, check)


def test_closed_writer_refuses_writes(tmp_path: Path) -> None:
    async def check(store: LocalStore) -> None:
        w = await store.open_writer("closed")
        await w.close()
        await w.close()
        with pytest.raises(errors.FailedPrecondition, match="closed"):
            await w.write(b"x")

    run(tmp_path, check)


def test_namespace_with_content_cannot_be_deleted(tmp_path: Path) -> None:
    data, digest = blob("nsdel", 10)

    async def check(store: LocalStore) -> None:
        names = NamespaceStore(store.db)
        await commit(store, "n", data, digest)
        async with store.writer("pending") as w:
            await w.write(b"x")
        with pytest.raises(errors.FailedPrecondition, match="content_blobs, content_ingests"):
            await names.delete("ns")
        await store.delete(digest)
        await store.abort("pending")
        await names.delete("ns")

    run(tmp_path, check)


def test_writes_attach_to_the_current_lease(tmp_path: Path) -> None:
    data, digest = blob("lease", 100)
    _, other = blob("lease-other", 100)

    async def check(store: LocalStore) -> list[leases.Resource]:
        lease_store = leases.LeaseStore(store.db)
        await lease_store.create("pull")
        with namespace("other"):
            await commit(store, "elsewhere", *blob("lease-other", 100))
        token = leases.current.set("pull")
        try:
            async with store.writer("layer", Expected(digest, len(data))) as w:
                await w.write(data)
                await w.commit()
            # Already present: not written again, but the lease must still hold it.
            await commit(store, "pre", *blob("lease-pre", 10))
            with pytest.raises(errors.AlreadyExists):
                await store.open_writer("again", Expected(blob("lease-pre", 10)[1], 10))
            # Leases live in a namespace: "pull" does not exist in "other".
            with namespace("other"), pytest.raises(errors.NotFound, match="lease"):
                await store.open_writer("x", Expected(other, 100))
            token2 = leases.current.set("missing")
            with pytest.raises(errors.NotFound, match="lease"):
                await store.open_writer("nolease")
            leases.current.reset(token2)
        finally:
            leases.current.reset(token)
        return await lease_store.list_resources("pull")

    held = run(tmp_path, check)
    assert {(r.type, r.id) for r in held} == {
        ("ingests", "layer"),
        ("content", digest),
        ("ingests", "pre"),
        ("content", blob("lease-pre", 10)[1]),
    }


def test_migration_2(tmp_path: Path) -> None:
    """Version 1 databases gain the two content tables, empty, with a namespace column each."""

    async def main() -> None:
        path = tmp_path / "metadata.db"
        async with await Database.open(path, migrations=dbmod.MIGRATIONS[:1]) as db:
            await NamespaceStore(db).create("kept")
        async with await Database.open(path) as db:
            assert db.schema_version >= 2

            def columns(conn: sqlite3.Connection, table: str) -> list[str]:
                return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]

            blobs = await db.read(lambda c: columns(c, "content_blobs"))
            ingests = await db.read(lambda c: columns(c, "content_ingests"))
            indexes = await db.read(lambda c: [r[1] for r in c.execute("PRAGMA index_list(content_blobs)")])
            assert await NamespaceStore(db).get("kept")
        assert blobs == ["namespace", "digest", "size", "labels", "created_at", "updated_at"]
        assert ingests == ["namespace", "ref", "expected", "total", "created_at"]
        assert "content_blobs_by_digest" in indexes

    asyncio.run(main())


def test_plugins_start_over_the_metadata_plugin(tmp_path: Path) -> None:
    async def main() -> None:
        plugins = plugin.PluginSet([api.CONTENT_PLUGIN, content_plugin.PLUGIN, metadata_plugin.PLUGIN])
        stale = tmp_path / "io.containerd.content.v1.content" / "ingest" / "abc.123.tmp"
        stale.mkdir(parents=True)

        def context(reg: plugin.Registration) -> plugin.InitContext:
            return plugin.InitContext(
                registration=reg,
                config=None,
                plugin_config={},
                root=tmp_path / reg.uri,
                state=tmp_path / "state" / reg.uri,
                plugins=plugins,
            )

        await plugins.start(context)
        try:
            assert [p.status for p in plugins.plugins] == ["ok", "ok", "ok"]
            store = plugins.instance(plugin.CONTENT, "content")
            assert isinstance(store, LocalStore)
            assert isinstance(plugins.instance(plugin.GRPC, "content"), LazyService)
            assert not stale.exists()
            assert plugins.started(plugin.CONTENT)[0].exports == {"root": str(store.root)}
        finally:
            await plugins.close()

    asyncio.run(main())
    assert os.path.isdir(tmp_path / "io.containerd.content.v1.content")
