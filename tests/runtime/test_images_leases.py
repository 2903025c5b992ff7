"""The image and lease stores (migrations 4 and 5) and their gRPC services."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from google.protobuf import field_mask_pb2

from wharfd.api.services.images.v1 import images_pb2 as ipb
from wharfd.api.services.images.v1 import images_pb2_grpc as ipb_grpc
from wharfd.api.services.leases.v1 import leases_pb2 as lpb
from wharfd.api.services.leases.v1 import leases_pb2_grpc as lpb_grpc
from wharfd.api.types import descriptor_pb2
from wharfd.runtime import errors, namespaces
from wharfd.runtime.events import Exchange
from wharfd.runtime.metadata.db import MIGRATIONS, Database
from wharfd.runtime.metadata.images import Descriptor, Image, ImageStore
from wharfd.runtime.metadata.leases import LeaseStore, Resource
from wharfd.runtime.services.images import ImagesService
from wharfd.runtime.services.leases import LeasesService

T = TypeVar("T")
DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32
INDEX = "application/vnd.oci.image.index.v1+json"


def run(tmp: Path, fn: Callable[[Database], Awaitable[T]], ns: str = "default") -> T:
    async def main() -> T:
        namespaces.current.set(ns)
        async with await Database.open(tmp / "metadata.db") as db:
            return await fn(db)

    return asyncio.run(main())


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def test_migration_4(tmp_path: Path) -> None:
    async def check(db: Database) -> list[str]:
        return await db.read(lambda c: _columns(c, "images"))

    cols = run(tmp_path, check)
    assert cols[:2] == ["namespace", "name"] and "target_digest" in cols and "labels" in cols
    assert MIGRATIONS[3].version == 4


def test_migration_5(tmp_path: Path) -> None:
    async def check(db: Database) -> tuple[list[str], list[str]]:
        return await db.read(lambda c: (_columns(c, "leases"), _columns(c, "lease_resources")))

    leases, resources = run(tmp_path, check)
    assert leases == ["namespace", "id", "labels", "created_at"]
    assert resources == ["namespace", "lease_id", "type", "id"]


def test_image_store(tmp_path: Path) -> None:
    async def scenario(db: Database) -> None:
        store = ImageStore(db)
        img = Image(
            "docker.io/library/busybox:latest", Descriptor(INDEX, DIGEST, 123), {"a": "1", "empty": ""}
        )
        created = await store.create(img)
        assert created.labels == {"a": "1"} and created.created_at is not None
        with pytest.raises(errors.AlreadyExists, match="busybox:latest"):
            await store.create(img)
        with pytest.raises(errors.InvalidArgument, match=r"target\.digest"):
            await store.create(Image("x", Descriptor(INDEX, "sha256:nope", 1)))
        with pytest.raises(errors.InvalidArgument, match="media_type"):
            await store.create(Image("x", Descriptor("", DIGEST, 1)))
        await store.create(Image("other", Descriptor(INDEX, OTHER, 5), {"b": "2"}))
        assert [i.name for i in await store.list(["labels.b==2"])] == ["other"]
        assert [i.name for i in await store.list([f"target.digest=={DIGEST}"])] == [img.name]
        updated = await store.update(Image(img.name, Descriptor(INDEX, OTHER, 5), {"c": "3"}), ["labels.c"])
        assert updated.labels == {"a": "1", "c": "3"} and updated.target.digest == DIGEST
        updated = await store.update(Image(img.name, Descriptor(INDEX, OTHER, 5)), ["target"])
        assert updated.target.digest == OTHER
        with pytest.raises(errors.InvalidArgument, match="cannot update"):
            await store.update(Image(img.name, Descriptor(INDEX, OTHER, 5)), ["name"])
        with pytest.raises(errors.FailedPrecondition):
            await store.delete(img.name, target_digest=DIGEST)
        await store.delete(img.name)
        with pytest.raises(errors.NotFound, match="busybox"):
            await store.get(img.name)
        namespaces.current.set("elsewhere")
        assert await store.list() == []

    run(tmp_path, scenario)


def test_lease_store(tmp_path: Path) -> None:
    async def scenario(db: Database) -> None:
        store = LeaseStore(db)
        lease = await store.create("pull-1", {"containerd.io/gc.expire": "2030-01-01T00:00:00Z"})
        generated = await store.create()
        assert generated.id.startswith("wharfd-")
        with pytest.raises(errors.AlreadyExists):
            await store.create("pull-1")
        with pytest.raises(errors.InvalidArgument, match="RFC 3339"):
            await store.create("bad", {"containerd.io/gc.expire": "tomorrow"})
        await store.add_resource(lease.id, Resource(DIGEST, "content"))
        await store.add_resource(lease.id, Resource("layer-1", "snapshots/overlayfs"))
        await store.add_resource(lease.id, Resource(DIGEST, "content"))  # idempotent
        with pytest.raises(errors.InvalidArgument, match="unsupported type"):
            await store.add_resource(lease.id, Resource("x", "bogus"))
        assert await store.list_resources(lease.id) == [
            Resource(DIGEST, "content"),
            Resource("layer-1", "snapshots/overlayfs"),
        ]
        await store.delete_resource(lease.id, Resource(DIGEST, "content"))
        assert len(await store.list_resources(lease.id)) == 1
        assert [x.id for x in await store.list(["id==pull-1"])] == ["pull-1"]
        await store.delete(lease.id)
        with pytest.raises(errors.NotFound):
            await store.list_resources(lease.id)
        with pytest.raises(errors.NotFound, match="pull-1"):
            await store.delete(lease.id)

    run(tmp_path, scenario)


def test_services_over_grpc(tmp_path: Path) -> None:
    async def main() -> None:
        async with await Database.open(tmp_path / "metadata.db") as db:
            exchange = Exchange()
            server = grpc.aio.server()
            ImagesService(ImageStore(db), exchange.publish).register(server)
            LeasesService(LeaseStore(db)).register(server)
            sock = tmp_path / "s.sock"
            server.add_insecure_port(f"unix:{sock}")
            await server.start()
            md = (("containerd-namespace", "test"),)
            try:
                async with grpc.aio.insecure_channel(f"unix:{sock}") as ch, exchange.subscribe() as sub:
                    images = ipb_grpc.ImagesStub(ch)
                    target = descriptor_pb2.Descriptor(media_type=INDEX, digest=DIGEST, size=9)
                    await images.Create(
                        ipb.CreateImageRequest(image=ipb.Image(name="img", target=target)), metadata=md
                    )
                    got = await images.Get(ipb.GetImageRequest(name="img"), metadata=md)
                    assert got.image.target.digest == DIGEST and got.image.created_at.seconds > 0
                    await images.Update(
                        ipb.UpdateImageRequest(
                            image=ipb.Image(name="img", labels={"k": "v"}),
                            update_mask=field_mask_pb2.FieldMask(paths=["labels.k"]),
                        ),
                        metadata=md,
                    )
                    listed = await images.List(ipb.ListImagesRequest(filters=["labels.k==v"]), metadata=md)
                    assert [i.name for i in listed.images] == ["img"]
                    await images.Delete(ipb.DeleteImageRequest(name="img"), metadata=md)
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await images.Get(ipb.GetImageRequest(name="img"), metadata=md)
                    assert info.value.code() == grpc.StatusCode.NOT_FOUND
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await images.List(ipb.ListImagesRequest())
                    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                    topics = [sub.queue.get_nowait().topic for _ in range(sub.queue.qsize())]
                    assert topics == ["/images/create", "/images/update", "/images/delete"]

                    leases = lpb_grpc.LeasesStub(ch)
                    lease = (await leases.Create(lpb.CreateRequest(id="l1"), metadata=md)).lease
                    assert lease.id == "l1"
                    await leases.AddResource(
                        lpb.AddResourceRequest(id="l1", resource=lpb.Resource(id=DIGEST, type="content")),
                        metadata=md,
                    )
                    res = await leases.ListResources(lpb.ListResourcesRequest(id="l1"), metadata=md)
                    assert [(r.id, r.type) for r in res.resources] == [(DIGEST, "content")]
                    await leases.Delete(lpb.DeleteRequest(id="l1"), metadata=md)
                    assert not (await leases.List(lpb.ListRequest(), metadata=md)).leases
            finally:
                await server.stop(None)

    asyncio.run(main())


def test_image_list_is_answered_from_memory_until_a_write(tmp_path: Path) -> None:
    async def scenario(db: Database) -> None:
        store = ImageStore(db)
        await store.create(Image("a", Descriptor(INDEX, DIGEST, 1), {"k": "1"}))
        first = await store.list()
        # A changed label of an answer is the caller's: the next answer still has the stored one.
        first[0].labels["k"] = "changed"
        assert [i.labels for i in await store.list()] == [{"k": "1"}]
        # Rows written behind the store's back (it owns the database, so nobody does) are not
        # seen until the store's own next write: proof that the answer came from memory.
        await db.write(lambda c: c.execute("UPDATE images SET labels = ? WHERE name = 'a'", ('{"k": "2"}',)))
        assert [i.labels for i in await store.list()] == [{"k": "1"}]
        await store.create(Image("b", Descriptor(INDEX, OTHER, 1)))
        assert [(i.name, i.labels) for i in await store.list()] == [("a", {"k": "2"}), ("b", {})]
        await store.update(Image("b", Descriptor(INDEX, OTHER, 1), {"x": "y"}), ["labels.x"])
        assert [i.labels for i in await store.list(["name==b"])] == [{"x": "y"}]
        await store.delete("a")
        assert [i.name for i in await store.list()] == ["b"]
        # Per namespace.
        namespaces.current.set("other")
        assert await store.list() == []
        await store.create(Image("c", Descriptor(INDEX, DIGEST, 1)))
        assert [i.name for i in await store.list()] == ["c"]
        namespaces.current.set("default")
        assert [i.name for i in await store.list()] == ["b"]

    run(tmp_path, scenario)
