"""The Content gRPC service through a real grpc.aio server on a unix socket and the generated stub."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf import field_mask_pb2

from wharfd.api.services.content.v1 import content_pb2 as pb
from wharfd.api.services.content.v1 import content_pb2_grpc as pb_grpc
from wharfd.runtime.content.local import LocalStore
from wharfd.runtime.content.testsuite import blob, namespace
from wharfd.runtime.metadata import leases
from wharfd.runtime.metadata.db import Database
from wharfd.runtime.services.content import ContentService

T = TypeVar("T")
NS = (("containerd-namespace", "ns"),)
OTHER = (("containerd-namespace", "other"),)
# grpc-stubs does not know the end-of-stream sentinel.
EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]
EMPTY = "sha256:" + hashlib.sha256(b"").hexdigest()


@asynccontextmanager
async def serve(tmp_path: Path) -> AsyncIterator[tuple[Any, LocalStore]]:
    """The servicer on a unix socket and a stub on a real channel."""
    async with await Database.open(tmp_path / "metadata.db") as db:
        store = LocalStore(tmp_path / "content", db)
        server = grpc.aio.server()
        ContentService(store).register(server)
        address = f"unix:{tmp_path / 'wharfd.sock'}"
        server.add_insecure_port(address)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                yield pb_grpc.ContentStub(channel), store
        finally:
            await server.stop(None)


def run(tmp_path: Path, fn: Callable[[Any, LocalStore], Awaitable[T]]) -> T:
    async def main() -> T:
        async with serve(tmp_path) as (stub, store):
            return await fn(stub, store)

    return asyncio.run(main())


async def fails(call: Awaitable[Any], code: grpc.StatusCode, match: str = "") -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    details = info.value.details() or ""
    assert match in details
    return details


def req(action: int, ref: str = "", **kw: Any) -> pb.WriteContentRequest:
    return pb.WriteContentRequest(action=action, ref=ref, **kw)  # type: ignore[arg-type]


async def exchange(call: Any, request: pb.WriteContentRequest) -> pb.WriteContentResponse:
    await call.write(request)
    response: pb.WriteContentResponse = await call.read()
    return response


async def read_all(stub: Any, digest: str, offset: int = 0, size: int = 0) -> list[pb.ReadContentResponse]:
    call = stub.Read(pb.ReadContentRequest(digest=digest, offset=offset, size=size), metadata=NS)
    return [msg async for msg in call]


async def upload(
    stub: Any, ref: str, data: bytes, digest: str, metadata: Any = NS
) -> pb.WriteContentResponse:
    call = stub.Write(metadata=metadata)
    await exchange(call, req(pb.STAT, ref, total=len(data), expected=digest))
    await exchange(call, req(pb.WRITE, ref, offset=0, data=data))
    return await exchange(call, req(pb.COMMIT, ref, offset=len(data), total=len(data), expected=digest))


def test_write_stat_write_commit(tmp_path: Path) -> None:
    data, digest = blob("grpc", (2 << 20) + 5)

    async def check(stub: Any, store: LocalStore) -> None:
        call = stub.Write(metadata=NS)
        stat = await exchange(call, req(pb.STAT, "r1", total=len(data), expected=digest))
        assert (stat.action, stat.offset, stat.total, stat.digest) == (pb.STAT, 0, len(data), EMPTY)
        assert stat.started_at.seconds > 0
        offset = 0
        for start in range(0, len(data), 1 << 20):
            chunk = data[start : start + (1 << 20)]
            got = await exchange(call, req(pb.WRITE, "r1", offset=offset, data=chunk))
            offset += len(chunk)
            assert (got.action, got.offset) == (pb.WRITE, offset)
            assert got.digest == "sha256:" + hashlib.sha256(data[:offset]).hexdigest()
        done = await exchange(call, req(pb.COMMIT, "r1", offset=offset, total=len(data), labels={"k": "v"}))
        # containerd reuses one response message, so what STAT set is still there.
        assert (done.action, done.offset, done.digest, done.total) == (
            pb.COMMIT,
            len(data),
            digest,
            len(data),
        )
        assert done.started_at == stat.started_at
        assert await call.read() == EOF
        assert await call.code() == grpc.StatusCode.OK
        info = (await stub.Info(pb.InfoRequest(digest=digest), metadata=NS)).info
        assert (info.size, dict(info.labels)) == (len(data), {"k": "v"})
        assert b"".join(m.data for m in await read_all(stub, digest)) == data

    run(tmp_path, check)


def test_write_resumes_after_a_dropped_stream(tmp_path: Path) -> None:
    data, digest = blob("dropped", 3 << 20)
    half = (1 << 20) + 3

    async def check(stub: Any, store: LocalStore) -> None:
        call = stub.Write(metadata=NS)
        await exchange(call, req(pb.STAT, "resume", total=len(data), expected=digest))
        await exchange(call, req(pb.WRITE, "resume", offset=0, data=data[:half]))
        call.cancel()
        # The server notices the cancel asynchronously; until then the ref is still locked.
        for _ in range(200):
            call = stub.Write(metadata=NS)
            try:
                stat = await exchange(call, req(pb.STAT, "resume", total=len(data), expected=digest))
                break
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE
                await asyncio.sleep(0.01)
        assert stat.offset == half
        status = (await stub.Status(pb.StatusRequest(ref="resume"), metadata=NS)).status
        assert (status.offset, status.total, status.expected) == (half, len(data), digest)
        await exchange(call, req(pb.WRITE, "resume", offset=half, data=data[half:]))
        done = await exchange(call, req(pb.COMMIT, "resume", offset=len(data), expected=digest))
        assert done.digest == digest

    run(tmp_path, check)


def test_write_errors(tmp_path: Path) -> None:
    data, digest = blob("errors", 100)
    _, wrong = blob("wrong", 100)

    async def check(stub: Any, store: LocalStore) -> None:
        await fails(
            exchange(stub.Write(metadata=NS), req(pb.STAT)), grpc.StatusCode.INVALID_ARGUMENT, "reference"
        )
        await fails(
            exchange(stub.Write(), req(pb.STAT, "x")),
            grpc.StatusCode.FAILED_PRECONDITION,
            "namespace is required",
        )
        await fails(
            exchange(stub.Write(metadata=NS), req(pb.STAT, "x", expected="sha256:nope")),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        call = stub.Write(metadata=NS)
        await exchange(call, req(pb.WRITE, "bad", offset=0, data=data[:10]))
        await fails(
            exchange(stub.Write(metadata=NS), req(pb.STAT, "bad")), grpc.StatusCode.UNAVAILABLE, "locked"
        )
        await fails(
            exchange(call, req(pb.WRITE, "bad", offset=5, data=b"x")), grpc.StatusCode.OUT_OF_RANGE, "@5"
        )
        call = await _reopen(stub, "bad")
        await exchange(call, req(pb.WRITE, "bad", offset=10, data=data[10:]))
        await fails(
            exchange(call, req(pb.COMMIT, "bad", offset=100, expected=wrong)),
            grpc.StatusCode.FAILED_PRECONDITION,
            "unexpected commit digest",
        )
        status = (await stub.Status(pb.StatusRequest(ref="bad"), metadata=NS)).status
        assert status.offset == 100
        call = await _reopen(stub, "bad")
        assert (await exchange(call, req(pb.COMMIT, "bad", offset=100, expected=digest))).digest == digest
        await fails(
            exchange(stub.Write(metadata=NS), req(pb.STAT, "again", expected=digest)),
            grpc.StatusCode.ALREADY_EXISTS,
        )
        # Expected digest learnt late (on the commit message): containerd's answer and an abort.
        call = stub.Write(metadata=NS)
        await exchange(call, req(pb.WRITE, "late", data=data))
        await fails(
            exchange(call, req(pb.COMMIT, "late", offset=100, expected=digest)),
            grpc.StatusCode.ALREADY_EXISTS,
            "blob with expected digest",
        )
        await fails(stub.Status(pb.StatusRequest(ref="late"), metadata=NS), grpc.StatusCode.NOT_FOUND)

    run(tmp_path, check)


async def _reopen(stub: Any, ref: str) -> Any:
    for _ in range(200):
        call = stub.Write(metadata=NS)
        try:
            await exchange(call, req(pb.STAT, ref))
            return call
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE
            await asyncio.sleep(0.01)
    raise AssertionError(f"ref {ref} stayed locked")


def test_write_at_offset_zero_truncates(tmp_path: Path) -> None:
    data, digest = blob("trunc", 50)

    async def check(stub: Any, store: LocalStore) -> None:
        call = stub.Write(metadata=NS)
        await exchange(call, req(pb.WRITE, "t", data=b"junk"))
        got = await exchange(call, req(pb.WRITE, "t", offset=0, data=data))
        assert got.offset == len(data)
        assert (await exchange(call, req(pb.COMMIT, "t", offset=len(data), expected=digest))).digest == digest

    run(tmp_path, check)


def test_shared_blob_commits_without_data(tmp_path: Path) -> None:
    data, digest = blob("shared", 4096)

    async def check(stub: Any, store: LocalStore) -> None:
        await upload(stub, "a", data, digest)
        await fails(stub.Info(pb.InfoRequest(digest=digest), metadata=OTHER), grpc.StatusCode.NOT_FOUND)
        call = stub.Write(metadata=OTHER)
        stat = await exchange(call, req(pb.STAT, "b", total=len(data), expected=digest))
        assert (stat.offset, stat.digest) == (len(data), digest)
        done = await exchange(call, req(pb.COMMIT, "b", offset=len(data), total=len(data), expected=digest))
        assert done.digest == digest
        assert (await stub.Info(pb.InfoRequest(digest=digest), metadata=OTHER)).info.size == len(data)

    run(tmp_path, check)


def test_read_offsets_and_sizes(tmp_path: Path) -> None:
    data, digest = blob("read", (2 << 20) + (1 << 19))

    async def check(stub: Any, store: LocalStore) -> None:
        await upload(stub, "r", data, digest)
        whole = await read_all(stub, digest)
        assert [(m.offset, len(m.data)) for m in whole] == [
            (0, 1 << 20),
            (1 << 20, 1 << 20),
            (2 << 20, 1 << 19),
        ]
        part = await read_all(stub, digest, offset=100, size=10)
        assert [(m.offset, m.data) for m in part] == [(100, data[100:110])]
        tail = await read_all(stub, digest, offset=len(data) - 5, size=1000)
        assert b"".join(m.data for m in tail) == data[-5:]
        assert await read_all(stub, digest, offset=len(data)) == []
        await fails(read_all(stub, digest, offset=len(data) + 1), grpc.StatusCode.OUT_OF_RANGE, "read past")
        await fails(read_all(stub, blob("absent")[1]), grpc.StatusCode.NOT_FOUND)
        await fails(read_all(stub, "sha256:xyz"), grpc.StatusCode.INVALID_ARGUMENT)

    run(tmp_path, check)


def test_list_update_delete(tmp_path: Path) -> None:
    async def check(stub: Any, store: LocalStore) -> None:
        with namespace("ns"):
            for i in range(101):
                data, digest = blob(f"list-{i}", 8)
                async with store.writer(f"l{i}") as w:
                    await w.write(data)
                    await w.commit(8, digest, {"i": str(i), "parity": "odd" if i % 2 else "even"})
        batches = [len(m.info) async for m in stub.List(pb.ListContentRequest(), metadata=NS)]
        assert batches == [100, 1]
        odd = [
            i
            async for m in stub.List(pb.ListContentRequest(filters=["labels.parity==odd"]), metadata=NS)
            for i in m.info
        ]
        assert len(odd) == 50
        _, digest = blob("list-7", 8)
        by_digest = [
            i
            async for m in stub.List(pb.ListContentRequest(filters=[f"digest=={digest}"]), metadata=NS)
            for i in m.info
        ]
        assert [i.labels["i"] for i in by_digest] == ["7"]
        assert [m async for m in stub.List(pb.ListContentRequest(), metadata=OTHER)] == []
        await fails(
            _drain(stub.List(pb.ListContentRequest(filters=["labels.x=="]), metadata=NS)),
            grpc.StatusCode.INVALID_ARGUMENT,
        )

        update = pb.UpdateRequest(
            info=pb.Info(digest=digest, labels={"new": "1", "parity": ""}),
            update_mask=field_mask_pb2.FieldMask(paths=["labels.new", "labels.parity"]),
        )
        updated = (await stub.Update(update, metadata=NS)).info
        assert dict(updated.labels) == {"i": "7", "new": "1"}
        assert updated.size == 8 and updated.created_at.seconds > 0
        bad = pb.UpdateRequest(
            info=pb.Info(digest=digest), update_mask=field_mask_pb2.FieldMask(paths=["size"])
        )
        await fails(stub.Update(bad, metadata=NS), grpc.StatusCode.INVALID_ARGUMENT, "size")

        await stub.Delete(pb.DeleteContentRequest(digest=digest), metadata=NS)
        await fails(stub.Info(pb.InfoRequest(digest=digest), metadata=NS), grpc.StatusCode.NOT_FOUND, digest)
        await fails(
            stub.Delete(pb.DeleteContentRequest(digest=digest), metadata=NS), grpc.StatusCode.NOT_FOUND
        )

    run(tmp_path, check)


async def _drain(call: Any) -> None:
    async for _ in call:
        pass


def test_status_list_statuses_abort(tmp_path: Path) -> None:
    async def check(stub: Any, store: LocalStore) -> None:
        for ref, payload in (("layer-a", b"abc"), ("config-b", b"de")):
            call = stub.Write(metadata=NS)
            await exchange(call, req(pb.WRITE, ref, total=10, data=payload))
            await call.done_writing()
            assert await call.read() == EOF
        status = (await stub.Status(pb.StatusRequest(ref="layer-a"), metadata=NS)).status
        assert (status.ref, status.offset, status.total) == ("layer-a", 3, 10)
        assert status.updated_at.ToDatetime() >= status.started_at.ToDatetime()
        listed = (
            await stub.ListStatuses(pb.ListStatusesRequest(filters=["ref~=^layer"]), metadata=NS)
        ).statuses
        assert [s.ref for s in listed] == ["layer-a"]
        assert len((await stub.ListStatuses(pb.ListStatusesRequest(), metadata=NS)).statuses) == 2
        assert not (await stub.ListStatuses(pb.ListStatusesRequest(), metadata=OTHER)).statuses
        await stub.Abort(pb.AbortRequest(ref="layer-a"), metadata=NS)
        await fails(
            stub.Status(pb.StatusRequest(ref="layer-a"), metadata=NS), grpc.StatusCode.NOT_FOUND, "layer-a"
        )
        await fails(stub.Abort(pb.AbortRequest(ref="layer-a"), metadata=NS), grpc.StatusCode.NOT_FOUND)

    run(tmp_path, check)


def test_namespace_required_everywhere(tmp_path: Path) -> None:
    _, digest = blob("ns")

    async def check(stub: Any, store: LocalStore) -> None:
        calls = [
            stub.Info(pb.InfoRequest(digest=digest)),
            stub.Update(pb.UpdateRequest(info=pb.Info(digest=digest))),
            _drain(stub.List(pb.ListContentRequest())),
            stub.Delete(pb.DeleteContentRequest(digest=digest)),
            _drain(stub.Read(pb.ReadContentRequest(digest=digest))),
            stub.Status(pb.StatusRequest(ref="r")),
            stub.ListStatuses(pb.ListStatusesRequest()),
            stub.Abort(pb.AbortRequest(ref="r")),
        ]
        for call in calls:
            await fails(call, grpc.StatusCode.FAILED_PRECONDITION, "namespace is required")

    run(tmp_path, check)


def test_write_under_a_lease(tmp_path: Path) -> None:
    data, digest = blob("lease", 64)

    async def check(stub: Any, store: LocalStore) -> list[leases.Resource]:
        with namespace("ns"):
            await leases.LeaseStore(store.db).create("l1")
        await upload(stub, "with-lease", data, digest, metadata=(*NS, ("containerd-lease", "l1")))
        with namespace("ns"):
            return await leases.LeaseStore(store.db).list_resources("l1")

    held = run(tmp_path, check)
    assert {(r.type, r.id) for r in held} == {("ingests", "with-lease"), ("content", digest)}
