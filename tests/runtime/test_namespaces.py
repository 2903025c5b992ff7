"""Namespaces: the store's rules, and the gRPC service through a real channel."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.protobuf.message import Message

from wharfd.api.events import namespace_pb2 as events_pb2
from wharfd.api.services.namespaces.v1 import namespace_pb2 as pb
from wharfd.api.services.namespaces.v1 import namespace_pb2_grpc as pb_grpc
from wharfd.runtime import errors, namespaces
from wharfd.runtime.metadata.db import Database
from wharfd.runtime.metadata.namespaces import Namespace, NamespaceStore, create_if_missing
from wharfd.runtime.services import namespaces as service

T = TypeVar("T")


def with_store(tmp_path: Path, fn: Callable[[NamespaceStore, Database], Awaitable[T]]) -> T:
    """Run ``fn`` against a store over a fresh database."""

    async def main() -> T:
        async with await Database.open(tmp_path / "metadata.db") as db:
            return await fn(NamespaceStore(db), db)

    return asyncio.run(main())


async def add_table(db: Database, table: str, *rows: str) -> None:
    """Simulate a table a later migration adds: it has a ``namespace`` column."""

    def create(c: sqlite3.Connection) -> None:
        c.execute(f"CREATE TABLE {table} (id TEXT, namespace TEXT NOT NULL)")
        c.executemany(f"INSERT INTO {table} (id, namespace) VALUES ('x', ?)", [(r,) for r in rows])

    await db.write(create)


# --- store ------------------------------------------------------------------


def test_create_get_list(tmp_path: Path) -> None:
    async def check(store: NamespaceStore, db: Database) -> None:
        created = await store.create("k8s.io", {"a": "1", "dropped": ""})
        assert created == Namespace("k8s.io", {"a": "1"})
        await store.create("default")
        assert await store.get("k8s.io") == Namespace("k8s.io", {"a": "1"})
        assert await store.list() == [Namespace("default", {}), Namespace("k8s.io", {"a": "1"})]
        stamps = await db.read(
            lambda c: c.execute("SELECT created_at, updated_at FROM namespaces").fetchone()
        )
        assert stamps[0] == stamps[1]
        assert stamps[0].endswith("Z")

    with_store(tmp_path, check)


def test_create_existing_is_already_exists(tmp_path: Path) -> None:
    async def check(store: NamespaceStore, db: Database) -> None:
        await store.create("x", {"keep": "me"})
        with pytest.raises(errors.AlreadyExists, match=r'^namespace "x": already exists$'):
            await store.create("x", {"other": "1"})
        assert await store.get("x") == Namespace("x", {"keep": "me"})

    with_store(tmp_path, check)


@pytest.mark.parametrize("name", ["", "-bad", "bad-", "a..b", "has space", "ümlaut", "x" * 77])
def test_create_invalid_name(tmp_path: Path, name: str) -> None:
    async def check(store: NamespaceStore, db: Database) -> None:
        with pytest.raises(errors.InvalidArgument, match="namespace"):
            await store.create(name)
        assert await store.list() == []

    with_store(tmp_path, check)


def test_label_size_limit_counts_bytes_of_key_and_value(tmp_path: Path) -> None:
    async def check(store: NamespaceStore, db: Database) -> None:
        await store.create("fits", {"k": "v" * 4095})
        with pytest.raises(errors.InvalidArgument) as info:
            await store.create("big", {"k" * 100: "é" * 1999})  # 100 + 3998 bytes
        assert str(info.value) == (
            "namespace.Labels: label key and value length (4098 bytes) greater than maximum size "
            f"(4096 bytes), key: {'k' * 64}: invalid argument"
        )
        with pytest.raises(errors.InvalidArgument, match="4097 bytes"):
            await store.update("fits", {"k": "v" * 4096}, ["labels.k"])
        assert await store.labels("fits") == {"k": "v" * 4095}

    with_store(tmp_path, check)


def test_get_and_labels_of_missing_namespace(tmp_path: Path) -> None:
    async def check(store: NamespaceStore, db: Database) -> None:
        with pytest.raises(errors.NotFound, match=r'^namespace "nope": not found$'):
            await store.get("nope")
        assert await store.labels("nope") == {}

    with_store(tmp_path, check)


def test_update_field_paths(tmp_path: Path) -> None:
    async def check(store: NamespaceStore, db: Database) -> None:
        await store.create("ns", {"a": "1", "b": "2"})
        # labels.<key> sets or removes one key and leaves the others.
        assert (await store.update("ns", {"c": "3"}, ["labels.c"])).labels == {"a": "1", "b": "2", "c": "3"}
        assert (await store.update("ns", {}, ["labels.a"])).labels == {"b": "2", "c": "3"}
        assert (await store.update("ns", {"b": ""}, ["labels.b"])).labels == {"c": "3"}
        # Labels not named by a path are ignored.
        assert (await store.update("ns", {"c": "30", "z": "9"}, ["labels.c"])).labels == {"c": "30"}
        # No paths, or "labels", replaces them all.
        assert (await store.update("ns", {"x": "1", "y": ""}, [])).labels == {"x": "1"}
        assert (await store.update("ns", {"w": "2"}, ["labels"])).labels == {"w": "2"}
        assert await store.get("ns") == Namespace("ns", {"w": "2"})

    with_store(tmp_path, check)


@pytest.mark.parametrize("path", ["name", "labels.", "label.x", ""])
def test_update_unknown_path_changes_nothing(tmp_path: Path, path: str) -> None:
    async def check(store: NamespaceStore, db: Database) -> None:
        await store.create("ns", {"a": "1"})
        with pytest.raises(errors.InvalidArgument, match=f'^cannot update "{path}" field$'):
            await store.update("ns", {"b": "2"}, ["labels.b", path])
        assert await store.labels("ns") == {"a": "1"}

    with_store(tmp_path, check)


def test_update_creates_missing_namespace_like_containerd(tmp_path: Path) -> None:
    async def check(store: NamespaceStore, db: Database) -> None:
        # Replacing nothing with nothing writes no label, so nothing is created.
        assert await store.update("quiet", {}, []) == Namespace("quiet", {})
        assert await store.list() == []
        # Setting a label (as `ctr namespaces label` does) creates the namespace.
        assert await store.update("fresh", {"k": "v"}, ["labels.k"]) == Namespace("fresh", {"k": "v"})
        assert await store.get("fresh") == Namespace("fresh", {"k": "v"})
        with pytest.raises(errors.InvalidArgument):
            await store.update("bad name", {"k": "v"}, ["labels.k"])

    with_store(tmp_path, check)


def test_delete(tmp_path: Path) -> None:
    async def check(store: NamespaceStore, db: Database) -> None:
        await store.create("gone")
        await store.delete("gone")
        assert await store.list() == []
        with pytest.raises(errors.NotFound, match=r'^namespace "gone": not found$'):
            await store.delete("gone")

    with_store(tmp_path, check)


def test_delete_refuses_while_tables_hold_rows(tmp_path: Path) -> None:
    async def check(store: NamespaceStore, db: Database) -> None:
        await store.ensure("busy", "other")
        await add_table(db, "widgets", "busy", "other")
        await add_table(db, "gizmos", "other")
        await add_table(db, "doodads", "busy")
        await db.write(lambda c: c.execute("CREATE TABLE unrelated (name TEXT)"))
        with pytest.raises(errors.FailedPrecondition) as info:
            await store.delete("busy")
        assert str(info.value) == (
            'namespace "busy" must be empty, but it still has widgets, doodads: failed precondition'
        )
        assert await store.get("busy") == Namespace("busy", {})

        await db.write(lambda c: c.execute("DELETE FROM widgets WHERE namespace = 'busy'"))
        await db.write(lambda c: c.execute("DELETE FROM doodads"))
        await store.delete("busy")
        assert [ns.name for ns in await store.list()] == ["other"]

    with_store(tmp_path, check)


def test_ensure_and_create_if_missing(tmp_path: Path) -> None:
    async def check(store: NamespaceStore, db: Database) -> None:
        await store.create(namespaces.DEFAULT, {"keep": "1"})
        await store.ensure(namespaces.DEFAULT, namespaces.K8S)
        await store.ensure(namespaces.DEFAULT, namespaces.K8S)
        assert await store.list() == [Namespace("default", {"keep": "1"}), Namespace("k8s.io", {})]
        # Another store, creating its first object, brings the namespace into being.
        await db.write(lambda c: create_if_missing(c, "implicit"))
        assert await store.get("implicit") == Namespace("implicit", {})
        with pytest.raises(errors.InvalidArgument):
            await store.ensure("ok", "not ok")
        assert "ok" not in [ns.name for ns in await store.list()]  # one transaction

    with_store(tmp_path, check)


# --- gRPC service ------------------------------------------------------------

Event = tuple[str, str | None, Message]


def stub_on(channel: grpc.aio.Channel) -> Any:
    """A Namespaces client on ``channel`` (the generated stub has no annotations)."""
    return pb_grpc.NamespacesStub(channel)  # type: ignore[no-untyped-call]


@asynccontextmanager
async def serve(tmp_path: Path) -> AsyncIterator[tuple[Any, Database, list[Event]]]:
    """The real servicer on a unix socket, a stub on a real channel, and the events it published."""
    published: list[Event] = []

    async def publish(topic: str, event: Message) -> None:
        published.append((topic, namespaces.current.get(), event))

    async with await Database.open(tmp_path / "metadata.db") as db:
        server = grpc.aio.server()
        service.add_to_server(server, NamespaceStore(db), publish)
        address = f"unix:{tmp_path / 'wharfd.sock'}"
        server.add_insecure_port(address)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                yield stub_on(channel), db, published
        finally:
            await server.stop(None)


async def expect_status(call: Awaitable[object], code: grpc.StatusCode) -> str:
    """Await ``call``, which must fail with ``code``; return the status message."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    return info.value.details() or ""


def test_grpc_create_get_list_update_delete(tmp_path: Path) -> None:
    async def main() -> None:
        async with serve(tmp_path) as (stub, _db, published):
            created = await stub.Create(
                pb.CreateNamespaceRequest(namespace=pb.Namespace(name="team", labels={"a": "1"}))
            )
            assert created.namespace == pb.Namespace(name="team", labels={"a": "1"})
            got = await stub.Get(pb.GetNamespaceRequest(name="team"))
            assert got.namespace == pb.Namespace(name="team", labels={"a": "1"})

            mask = field_mask_pb2.FieldMask(paths=["labels.b"])
            updated = await stub.Update(
                pb.UpdateNamespaceRequest(
                    namespace=pb.Namespace(name="team", labels={"b": "2"}), update_mask=mask
                )
            )
            assert dict(updated.namespace.labels) == {"a": "1", "b": "2"}
            replaced = await stub.Update(
                pb.UpdateNamespaceRequest(namespace=pb.Namespace(name="team", labels={"c": "3"}))
            )
            assert dict(replaced.namespace.labels) == {"c": "3"}

            await stub.Create(pb.CreateNamespaceRequest(namespace=pb.Namespace(name="alpha")))
            listed = await stub.List(pb.ListNamespacesRequest(filter="ignored"))
            assert [(n.name, dict(n.labels)) for n in listed.namespaces] == [
                ("alpha", {}),
                ("team", {"c": "3"}),
            ]

            await stub.Delete(pb.DeleteNamespaceRequest(name="alpha"))
            assert [n.name for n in (await stub.List(pb.ListNamespacesRequest())).namespaces] == ["team"]

            assert published == [
                ("/namespaces/create", "team", events_pb2.NamespaceCreate(name="team", labels={"a": "1"})),
                ("/namespaces/update", "team", events_pb2.NamespaceUpdate(name="team", labels={"b": "2"})),
                ("/namespaces/update", "team", events_pb2.NamespaceUpdate(name="team", labels={"c": "3"})),
                ("/namespaces/create", "alpha", events_pb2.NamespaceCreate(name="alpha")),
                ("/namespaces/delete", "alpha", events_pb2.NamespaceDelete(name="alpha")),
            ]

    asyncio.run(main())


def test_grpc_get_missing_answers_without_labels(tmp_path: Path) -> None:
    """A containerd client reads default labels of a namespace before anything creates it."""

    async def main() -> None:
        async with serve(tmp_path) as (stub, _db, _published):
            got = await stub.Get(pb.GetNamespaceRequest(name="not-yet"))
            assert got.namespace == pb.Namespace(name="not-yet")

    asyncio.run(main())


def test_grpc_error_codes_and_messages(tmp_path: Path) -> None:
    async def main() -> None:
        async with serve(tmp_path) as (stub, db, published):
            message = await expect_status(
                stub.Create(pb.CreateNamespaceRequest(namespace=pb.Namespace(name="no good"))),
                grpc.StatusCode.INVALID_ARGUMENT,
            )
            assert "namespace" in message
            assert "no good" in message
            await expect_status(stub.Create(pb.CreateNamespaceRequest()), grpc.StatusCode.INVALID_ARGUMENT)
            message = await expect_status(
                stub.Create(
                    pb.CreateNamespaceRequest(namespace=pb.Namespace(name="l", labels={"k": "v" * 5000}))
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
            )
            assert message.startswith("namespace.Labels: label key and value length (5001 bytes)")

            await stub.Create(pb.CreateNamespaceRequest(namespace=pb.Namespace(name="dup")))
            message = await expect_status(
                stub.Create(pb.CreateNamespaceRequest(namespace=pb.Namespace(name="dup"))),
                grpc.StatusCode.ALREADY_EXISTS,
            )
            assert message == 'namespace "dup": already exists'

            mask = field_mask_pb2.FieldMask(paths=["name"])
            message = await expect_status(
                stub.Update(pb.UpdateNamespaceRequest(namespace=pb.Namespace(name="dup"), update_mask=mask)),
                grpc.StatusCode.INVALID_ARGUMENT,
            )
            assert message == 'cannot update "name" field'

            message = await expect_status(
                stub.Delete(pb.DeleteNamespaceRequest(name="missing")), grpc.StatusCode.NOT_FOUND
            )
            assert message == 'namespace "missing": not found'

            await add_table(db, "widgets", "dup")
            message = await expect_status(
                stub.Delete(pb.DeleteNamespaceRequest(name="dup")), grpc.StatusCode.FAILED_PRECONDITION
            )
            assert message == 'namespace "dup" must be empty, but it still has widgets: failed precondition'
            # Only the one successful change was published; failures publish nothing.
            assert [topic for topic, _ns, _event in published] == ["/namespaces/create"]
            # The client side maps the status back to the typed error, minus errdefs' suffix.
            rebuilt = errors.from_status(grpc.StatusCode.FAILED_PRECONDITION, message)
            assert isinstance(rebuilt, errors.FailedPrecondition)
            assert str(rebuilt) == 'namespace "dup" must be empty, but it still has widgets'

    asyncio.run(main())


def test_grpc_without_publisher(tmp_path: Path) -> None:
    async def main() -> None:
        async with await Database.open(tmp_path / "metadata.db") as db:
            server = grpc.aio.server()
            service.add_to_server(server, NamespaceStore(db))
            address = f"unix:{tmp_path / 'plain.sock'}"
            server.add_insecure_port(address)
            await server.start()
            try:
                async with grpc.aio.insecure_channel(address) as channel:
                    stub = stub_on(channel)
                    await stub.Create(pb.CreateNamespaceRequest(namespace=pb.Namespace(name="solo")))
                    await stub.Delete(pb.DeleteNamespaceRequest(name="solo"))
            finally:
                await server.stop(None)

    asyncio.run(main())
