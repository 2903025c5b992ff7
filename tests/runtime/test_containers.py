"""The container store (migration 6) and the Containers gRPC service, on a real SQLite database."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from google.protobuf import any_pb2, field_mask_pb2

from wharfd.api.events import container_pb2 as events_pb2
from wharfd.api.services.containers.v1 import containers_pb2 as pb
from wharfd.api.services.containers.v1 import containers_pb2_grpc as pb_grpc
from wharfd.runtime import errors, namespaces
from wharfd.runtime.events import Exchange
from wharfd.runtime.metadata.containers import Container, ContainerStore
from wharfd.runtime.metadata.db import MIGRATIONS, Database
from wharfd.runtime.metadata.namespaces import NamespaceStore
from wharfd.runtime.services.containers import ContainersService

T = TypeVar("T")
SPEC = any_pb2.Any(
    type_url="types.containerd.io/opencontainers/runtime-spec/1/Spec", value=b'{"ociVersion":"1.1.0"}'
)
OPTIONS = any_pb2.Any(type_url="containerd.runc.v1.Options", value=b"\x32\x04runc")
RUNC = "io.containerd.runc.v2"


def run(tmp: Path, fn: Callable[[Database], Awaitable[T]], ns: str = "default") -> T:
    async def main() -> T:
        namespaces.current.set(ns)
        async with await Database.open(tmp / "metadata.db") as db:
            return await fn(db)

    return asyncio.run(main())


def make(cid: str, **fields: object) -> Container:
    base: dict[str, object] = {"runtime_name": RUNC, "spec": SPEC}
    return Container(cid, **(base | fields))  # type: ignore[arg-type]


def test_migration_6(tmp_path: Path) -> None:
    def columns(conn: sqlite3.Connection) -> list[tuple[str, str, int]]:
        return [(r[1], r[2], r[3]) for r in conn.execute("PRAGMA table_info(containers)")]

    async def check(db: Database) -> list[tuple[str, str, int]]:
        assert db.schema_version >= 6
        return await db.read(columns)

    cols = run(tmp_path, check)
    assert [c[0] for c in cols] == [
        "namespace", "id", "labels", "image", "runtime_name", "runtime_options", "spec",
        "snapshotter", "snapshot_key", "sandbox_id", "extensions", "created_at", "updated_at",
    ]  # fmt: skip
    types = {name: kind for name, kind, _ in cols}
    assert types["runtime_options"] == types["spec"] == "BLOB"
    assert MIGRATIONS[5].version == 6


def test_create_get_round_trip(tmp_path: Path) -> None:
    ext = any_pb2.Any(type_url="example.com/Ext", value=b"\x00\x01binary")

    async def scenario(db: Database) -> None:
        store = ContainerStore(db)
        c = make(
            "c1",
            image="docker.io/library/busybox:latest",
            labels={"a": "1", "empty": ""},
            runtime_options=OPTIONS,
            snapshotter="overlayfs",
            snapshot_key="c1",
            sandbox_id="pod-1",
            extensions={"ext": ext},
        )
        created = await store.create(c)
        assert created.labels == {"a": "1"}  # empty values are never stored
        assert created.created_at is not None and created.created_at == created.updated_at
        got = await store.get("c1")
        assert got == created
        assert got.spec == SPEC and got.runtime_options == OPTIONS and got.extensions == {"ext": ext}
        assert (got.image, got.snapshotter, got.snapshot_key, got.sandbox_id) == (
            "docker.io/library/busybox:latest",
            "overlayfs",
            "c1",
            "pod-1",
        )
        plain = await store.create(make("c2"))
        assert plain.runtime_options is None and plain.extensions == {} and plain.labels == {}

    run(tmp_path, scenario)


@pytest.mark.parametrize(
    ("container", "message"),
    [
        (
            make("bad/id"),
            r'create container failed validation: container\.ID: identifier "bad/id" must match',
        ),
        (make(""), r"container\.ID: identifier must not be empty"),
        (make("c", runtime_name=""), r"container\.Runtime\.Name must be set"),
        (make("c", spec=None), r"container\.Spec must be set"),
        (make("c", snapshot_key="k"), r"container\.Snapshotter must be set if container\.SnapshotKey is set"),
        (make("c", extensions={"": SPEC}), r"container\.Extension keys must not be zero-length"),
        (make("c", labels={"k": "v" * 5000}), r"containers\.Labels: label key and value length"),
    ],
)
def test_create_validation(tmp_path: Path, container: Container, message: str) -> None:
    async def scenario(db: Database) -> None:
        with pytest.raises(errors.InvalidArgument, match=message):
            await ContainerStore(db).create(container)
        assert await ContainerStore(db).list() == []

    run(tmp_path, scenario)


def test_errors_name_the_container(tmp_path: Path) -> None:
    async def scenario(db: Database) -> None:
        store = ContainerStore(db)
        await store.create(make("c1"))
        with pytest.raises(errors.AlreadyExists, match='container "c1": already exists'):
            await store.create(make("c1"))
        with pytest.raises(errors.NotFound, match='container "nope" in namespace "default": not found'):
            await store.get("nope")
        with pytest.raises(errors.NotFound, match='container "nope": not found'):
            await store.update(make("nope"), ["image"])
        with pytest.raises(errors.NotFound, match="container nope: not found"):
            await store.delete("nope")
        with pytest.raises(errors.InvalidArgument, match="must specify a container id"):
            await store.update(make(""), ["image"])
        namespaces.current.set(None)
        with pytest.raises(errors.FailedPrecondition, match="namespace is required"):
            await store.get("c1")

    run(tmp_path, scenario)


def test_namespaces_are_separate_and_hold_their_containers(tmp_path: Path) -> None:
    async def scenario(db: Database) -> None:
        store = ContainerStore(db)
        await store.create(make("same", image="a"))
        namespaces.current.set("other")
        await store.create(make("same", image="b"))  # the same id elsewhere is another container
        assert [c.image for c in await store.list()] == ["b"]
        with pytest.raises(errors.FailedPrecondition, match="containers"):
            await NamespaceStore(db).delete("other")
        await store.delete("same")
        await NamespaceStore(db).delete("other")
        namespaces.current.set("default")
        assert (await store.get("same")).image == "a"

    run(tmp_path, scenario)


def test_list_filters(tmp_path: Path) -> None:
    async def scenario(db: Database) -> list[list[str]]:
        store = ContainerStore(db)
        await store.create(make("b", image="img-1", labels={"app": "web", "tier": "x"}, snapshotter="native"))
        await store.create(make("a", image="img-2", labels={"app": "db"}))
        await store.create(make("c", runtime_name="io.containerd.wharf.v2"))
        queries: list[list[str]] = [
            [],
            ["id==b"],
            ["image==img-2"],
            ["image"],  # presence: an empty image counts as absent
            ["runtime.name==io.containerd.wharf.v2"],
            ["snapshotter==native"],
            ["labels.app==web"],
            ["labels.app"],
            ["labels.app==db", "id==c"],  # any filter may match
            ["labels.app==web,image==img-2"],  # all selectors of one filter must match
            ['id~="^[ab]$"'],
        ]
        return [[c.id for c in await store.list(q)] for q in queries]

    got = run(tmp_path, scenario)
    assert got == [
        ["a", "b", "c"],
        ["b"],
        ["a"],
        ["a", "b"],
        ["c"],
        ["b"],
        ["b"],
        ["a", "b"],
        ["a", "c"],
        [],
        ["a", "b"],
    ]


def test_list_rejects_a_bad_filter(tmp_path: Path) -> None:
    async def scenario(db: Database) -> None:
        with pytest.raises(errors.InvalidArgument):
            await ContainerStore(db).list(["labels.=="])

    run(tmp_path, scenario)


def test_update_by_field_paths(tmp_path: Path) -> None:
    new_spec = any_pb2.Any(type_url=SPEC.type_url, value=b'{"ociVersion":"1.2.0"}')
    ext_a = any_pb2.Any(type_url="x/A", value=b"a")
    ext_b = any_pb2.Any(type_url="x/B", value=b"b")

    async def scenario(db: Database) -> None:
        store = ContainerStore(db)
        created = await store.create(
            make(
                "c",
                labels={"keep": "1", "drop": "2"},
                extensions={"a": ext_a},
                snapshotter="s",
                snapshot_key="k",
            )
        )
        await asyncio.sleep(0.001)
        # labels.<k>: set one, clear one (empty or absent value), leave the rest.
        u = await store.update(make("c", labels={"new": "3", "drop": ""}), ["labels.new", "labels.drop"])
        assert u.labels == {"keep": "1", "new": "3"}
        assert u.created_at == created.created_at and u.updated_at is not None
        assert created.updated_at is not None and u.updated_at > created.updated_at
        u = await store.update(make("c", labels={"only": "x"}), ["labels"])
        assert u.labels == {"only": "x"}
        u = await store.update(
            make("c", spec=new_spec, image="img", snapshot_key="k2"), ["spec", "image", "snapshotkey"]
        )
        assert (u.spec, u.image, u.snapshot_key) == (new_spec, "img", "k2")
        u = await store.update(make("c", extensions={"b": ext_b}), ["extensions.b"])
        assert u.extensions == {"a": ext_a, "b": ext_b}
        u = await store.update(make("c"), ["extensions.a"])
        assert u.extensions == {"b": ext_b}
        u = await store.update(make("c", extensions={}), ["extensions"])
        assert u.extensions == {}
        # Fields no path names are untouched, even if the request carries others.
        u = await store.update(make("c", image="ignored", runtime_name="other"), ["labels.z"])
        assert (u.image, u.runtime_name, u.snapshotter) == ("img", RUNC, "s")
        assert await store.get("c") == u

    run(tmp_path, scenario)


def test_full_replace_and_immutable_fields(tmp_path: Path) -> None:
    async def scenario(db: Database) -> None:
        store = ContainerStore(db)
        await store.create(make("c", labels={"a": "1"}, image="i", snapshotter="s", snapshot_key="k"))
        with pytest.raises(errors.InvalidArgument, match=r"container\.Snapshotter field is immutable"):
            await store.update(make("c", snapshotter="other", snapshot_key="k"))
        with pytest.raises(errors.InvalidArgument, match=r"container\.Runtime\.Name field is immutable"):
            await store.update(make("c", runtime_name="other", snapshotter="s"))
        # Without paths: labels, spec, extensions, image and snapshot key are replaced.
        u = await store.update(make("c", snapshotter="s", sandbox_id="ignored"))
        assert (u.labels, u.image, u.snapshot_key, u.sandbox_id) == ({}, "", "", "")
        with pytest.raises(errors.InvalidArgument, match='cannot update "runtime" field on "c"'):
            await store.update(make("c"), ["runtime"])
        with pytest.raises(
            errors.InvalidArgument, match=r"update failed validation: container\.Spec must be set"
        ):
            await store.update(make("c", spec=None), ["spec"])
        await store.create(make("d"))
        with pytest.raises(
            errors.InvalidArgument, match=r"update failed validation: container\.Snapshotter must"
        ):
            await store.update(make("d", snapshot_key="k"), ["snapshotkey"])
        assert (await store.get("c")).spec == SPEC  # failed updates changed nothing
        assert (await store.get("d")).snapshot_key == ""

    run(tmp_path, scenario)


def test_delete_returns_the_record(tmp_path: Path) -> None:
    async def scenario(db: Database) -> None:
        store = ContainerStore(db)
        created = await store.create(make("c", image="i"))
        assert await store.delete("c") == created
        with pytest.raises(errors.NotFound):
            await store.get("c")
        assert await store.list() == []

    run(tmp_path, scenario)


def test_concurrent_creates_of_one_id(tmp_path: Path) -> None:
    async def scenario(db: Database) -> list[str]:
        store = ContainerStore(db)
        results = await asyncio.gather(
            *(store.create(make("c", image=str(i))) for i in range(8)), return_exceptions=True
        )
        assert sum(isinstance(r, Container) for r in results) == 1
        assert all(isinstance(r, errors.AlreadyExists) for r in results if not isinstance(r, Container))
        return [c.id for c in await store.list()]

    assert run(tmp_path, scenario) == ["c"]


# --- the gRPC service --------------------------------------------------------------------------


def test_service_over_grpc(tmp_path: Path) -> None:
    md = (("containerd-namespace", "default"),)
    sock = tmp_path / "c.sock"

    async def main() -> None:
        exchange = Exchange()
        async with await Database.open(tmp_path / "metadata.db") as db:
            server = grpc.aio.server()
            ContainersService(ContainerStore(db), exchange.publish).register(server)
            server.add_insecure_port(f"unix:{sock}")
            await server.start()
            try:
                async with grpc.aio.insecure_channel(f"unix:{sock}") as ch, exchange.subscribe() as sub:
                    await _exercise(pb_grpc.ContainersStub(ch), md)
                    topics = []
                    while not sub.queue.empty():
                        topics.append(sub.queue.get_nowait())
                    _check_events(topics)
            finally:
                await server.stop(None)

    asyncio.run(main())


async def _exercise(stub: pb_grpc.ContainersStub, md: tuple[tuple[str, str], ...]) -> None:
    msg = pb.Container(
        id="c1",
        image="img",
        labels={"a": "1"},
        runtime=pb.Container.Runtime(name=RUNC, options=OPTIONS),
        spec=SPEC,
        snapshotter="overlayfs",
        snapshot_key="c1",
        extensions={"e": OPTIONS},
        sandbox="pod",
    )
    created = (await stub.Create(pb.CreateContainerRequest(container=msg), metadata=md)).container
    assert created.HasField("created_at") and created.runtime.options == OPTIONS and created.sandbox == "pod"
    other = pb.Container(id="c2", runtime=pb.Container.Runtime(name=RUNC), spec=SPEC)
    await stub.Create(pb.CreateContainerRequest(container=other), metadata=md)
    got = (await stub.Get(pb.GetContainerRequest(id="c1"), metadata=md)).container
    assert got == created
    listed = (await stub.List(pb.ListContainersRequest(filters=["labels.a==1"]), metadata=md)).containers
    assert [c.id for c in listed] == ["c1"]
    streamed = [m.container.id async for m in stub.ListStream(pb.ListContainersRequest(), metadata=md)]
    assert streamed == ["c1", "c2"]
    mask = field_mask_pb2.FieldMask(paths=["labels.b"])
    request = pb.UpdateContainerRequest(container=pb.Container(id="c1", labels={"b": "2"}), update_mask=mask)
    updated = (await stub.Update(request, metadata=md)).container
    assert dict(updated.labels) == {"a": "1", "b": "2"} and updated.spec == SPEC
    assert not (await stub.Get(pb.GetContainerRequest(id="c2"), metadata=md)).container.runtime.HasField(
        "options"
    )
    await stub.Delete(pb.DeleteContainerRequest(id="c2"), metadata=md)
    for call, code in (
        (stub.Get(pb.GetContainerRequest(id="c2"), metadata=md), grpc.StatusCode.NOT_FOUND),
        (stub.Create(pb.CreateContainerRequest(container=msg), metadata=md), grpc.StatusCode.ALREADY_EXISTS),
        (
            stub.Create(pb.CreateContainerRequest(container=pb.Container(id="x")), metadata=md),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            stub.Update(pb.UpdateContainerRequest(container=pb.Container()), metadata=md),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (stub.Delete(pb.DeleteContainerRequest(id="c2"), metadata=md), grpc.StatusCode.NOT_FOUND),
        (stub.Get(pb.GetContainerRequest(id="c1")), grpc.StatusCode.FAILED_PRECONDITION),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == code, info.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Create(pb.CreateContainerRequest(container=pb.Container(id="x")), metadata=md)
    assert info.value.details() == "create container failed validation: container.Runtime.Name must be set"


def _check_events(envelopes: list[object]) -> None:
    seen = [(e.topic, e.namespace, e.event.type_url) for e in envelopes]  # type: ignore[attr-defined]
    assert seen == [
        ("/containers/create", "default", "containerd.events.ContainerCreate"),
        ("/containers/create", "default", "containerd.events.ContainerCreate"),
        ("/containers/update", "default", "containerd.events.ContainerUpdate"),
        ("/containers/delete", "default", "containerd.events.ContainerDelete"),
    ]
    create = events_pb2.ContainerCreate.FromString(envelopes[0].event.value)  # type: ignore[attr-defined]
    assert (create.id, create.image, create.runtime.name, create.runtime.options) == (
        "c1",
        "img",
        RUNC,
        OPTIONS,
    )
    update = events_pb2.ContainerUpdate.FromString(envelopes[2].event.value)  # type: ignore[attr-defined]
    assert (update.id, dict(update.labels), update.snapshot_key) == ("c1", {"a": "1", "b": "2"}, "c1")
    assert events_pb2.ContainerDelete.FromString(envelopes[3].event.value).id == "c2"  # type: ignore[attr-defined]
