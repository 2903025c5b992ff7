"""The conformance suite every :class:`~wharfd.runtime.content.store.ContentStore` must pass.

Each check is an async function taking a *factory*: calling it returns an
async context manager that yields a store over persistent state. Calling the
factory again while or after the first store is open yields another store
over the same state, which is how a check simulates a daemon restart. Run
every check in :data:`CHECKS` against each implementation, e.g.::

    @pytest.mark.parametrize("check", testsuite.CHECKS.values(), ids=testsuite.CHECKS.keys())
    def test_conformance(check, factory): asyncio.run(check(factory))

The suite uses plain asserts and imports no test framework, so it can ship.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from typing import Any, TypeVar

from wharfd.runtime import errors, namespaces
from wharfd.runtime.content.store import ContentStore, Expected, Info

StoreFactory = Callable[[], AbstractAsyncContextManager[ContentStore]]
Check = Callable[[StoreFactory], Coroutine[Any, Any, None]]
E = TypeVar("E", bound=BaseException)

NS = "testsuite"
OTHER = "testsuite-other"


def blob(seed: str, size: int = 3 << 20) -> tuple[bytes, str]:
    """Deterministic test bytes of ``size`` and their digest."""
    unit = hashlib.sha256(seed.encode()).digest()
    data = (unit * (size // len(unit) + 1))[:size]
    return data, "sha256:" + hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def namespace(name: str | None) -> Iterator[None]:
    """Run the body in namespace ``name`` (None: no namespace)."""
    token = namespaces.current.set(name)
    try:
        yield
    finally:
        namespaces.current.reset(token)


async def raises(cls: type[E], awaitable: Awaitable[Any], match: str = "") -> E:
    """Await ``awaitable`` and return the ``cls`` it must raise (with ``match`` in its message)."""
    try:
        await awaitable
    except cls as exc:
        assert match in str(exc), f"{cls.__name__} message {str(exc)!r} lacks {match!r}"
        return exc
    raise AssertionError(f"expected {cls.__name__}")


async def write_all(store: ContentStore, ref: str, data: bytes, *, chunk: int = 1 << 20) -> None:
    """Write ``data`` into ingest ``ref`` from its current offset, then close the writer."""
    async with store.writer(ref) as w:
        for start in range(w.offset, len(data), chunk):
            await w.write(data[start : start + chunk])


async def read_all(store: ContentStore, digest: str) -> bytes:
    """Read a whole blob through ``reader_at``."""
    reader = await store.reader_at(digest)
    try:
        return await reader.read_at(0, reader.size)
    finally:
        await reader.close()


async def check_write_commit_read(factory: StoreFactory) -> None:
    """A committed blob is visible with its size and labels, readable, and its ingest is gone."""
    data, digest = blob("write")
    with namespace(NS):
        async with factory() as store:
            async with store.writer("ref-1", Expected(digest, len(data))) as w:
                assert w.offset == 0
                for start in range(0, len(data), 65536):
                    await w.write(data[start : start + 65536])
                assert w.offset == len(data) and w.digest() == digest
                info = await w.commit(len(data), digest, {"a": "1", "empty": ""})
            assert (info.digest, info.size, dict(info.labels)) == (digest, len(data), {"a": "1"})
            assert await store.info(digest) == info
            assert await read_all(store, digest) == data
            assert (await store.open_blob(digest)).read_bytes() == data
            assert [i.digest for i in await store.walk()] == [digest]
            await raises(errors.NotFound, store.status("ref-1"))
            assert await store.list_statuses() == []


async def check_empty_blob(factory: StoreFactory) -> None:
    """A zero-byte blob commits and reads back empty."""
    digest = "sha256:" + hashlib.sha256(b"").hexdigest()
    with namespace(NS):
        async with factory() as store:
            async with store.writer("empty") as w:
                info = await w.commit(0, digest)
            assert info.size == 0
            assert await read_all(store, digest) == b""


async def check_resume_after_restart(factory: StoreFactory) -> None:
    """An ingest survives its writer and the store; a new store resumes at the same offset."""
    data, digest = blob("resume")
    half = len(data) // 2 + 7
    with namespace(NS):
        async with factory() as store, store.writer("resume", Expected(digest, len(data))) as w:
            await w.write(data[:half])
        async with factory() as store:
            status = await store.status("resume")
            assert (status.offset, status.total, status.expected) == (half, len(data), digest)
            async with store.writer("resume", Expected(digest, len(data))) as w:
                assert w.offset == half
                await w.write(data[half:])
                info = await w.commit()
            assert info.digest == digest
            assert await read_all(store, digest) == data


async def check_digest_mismatch_keeps_ingest(factory: StoreFactory) -> None:
    """A wrong digest fails the commit with FailedPrecondition and keeps the data for a retry."""
    data, digest = blob("mismatch")
    _, wrong = blob("other")
    with namespace(NS):
        async with factory() as store:
            async with store.writer("mm") as w:
                await w.write(data)
                await raises(
                    errors.FailedPrecondition, w.commit(len(data), wrong), "unexpected commit digest"
                )
            assert (await store.status("mm")).offset == len(data)
            await raises(errors.NotFound, store.info(wrong))
            async with store.writer("mm") as w:
                assert w.offset == len(data)
                await w.commit(len(data), digest)
            assert (await store.info(digest)).size == len(data)


async def check_size_mismatch_keeps_ingest(factory: StoreFactory) -> None:
    """A wrong size fails the commit with FailedPrecondition; nothing becomes visible."""
    data, digest = blob("size")
    with namespace(NS):
        async with factory() as store:
            async with store.writer("sz") as w:
                await w.write(data)
                await raises(errors.FailedPrecondition, w.commit(len(data) + 1, digest), "size")
            await raises(errors.NotFound, store.info(digest))
            assert (await store.status("sz")).offset == len(data)


async def check_truncate_restarts(factory: StoreFactory) -> None:
    """``truncate(0)`` discards the bytes and the running digest."""
    data, digest = blob("truncate", 1000)
    with namespace(NS):
        async with factory() as store, store.writer("tr") as w:
            await w.write(b"garbage")
            await w.truncate(0)
            assert w.offset == 0
            await raises(errors.InvalidArgument, w.truncate(3))
            await w.write(data)
            assert (await w.commit(len(data), digest)).digest == digest


async def check_abort(factory: StoreFactory) -> None:
    """Abort removes an ingest; aborting an unknown ref is NotFound; the ref starts over after."""
    data, _ = blob("abort", 5000)
    with namespace(NS):
        async with factory() as store:
            await write_all(store, "ab", data[:100])
            await store.abort("ab")
            await raises(errors.NotFound, store.status("ab"))
            await raises(errors.NotFound, store.abort("ab"))
            async with store.writer("ab") as w:
                assert w.offset == 0


async def check_writer_lock(factory: StoreFactory) -> None:
    """A second writer on a held ref is Unavailable; other namespaces and released refs are free."""
    with namespace(NS):
        async with factory() as store:
            async with store.writer("locked"):
                await raises(errors.Unavailable, store.open_writer("locked"), "locked")
                with namespace(OTHER):
                    async with store.writer("locked"):
                        pass
            async with store.writer("locked"):
                pass
            await raises(errors.InvalidArgument, store.open_writer(""))


async def check_already_exists(factory: StoreFactory) -> None:
    """An existing digest fails the open (expected given) or the commit (found late), as AlreadyExists."""
    data, digest = blob("exists", 4096)
    with namespace(NS):
        async with factory() as store:
            await _commit(store, "first", data, digest)
            await raises(errors.AlreadyExists, store.open_writer("second", Expected(digest, len(data))))
            async with store.writer("third") as w:
                await w.write(data)
                await raises(errors.AlreadyExists, w.commit(len(data), digest))
            await raises(errors.NotFound, store.status("third"))


async def check_labels_update(factory: StoreFactory) -> None:
    """Update by ``labels.<key>`` paths, replace all without paths, refuse other fields and huge labels."""
    data, digest = blob("labels", 10)
    with namespace(NS):
        async with factory() as store:
            info = await _commit(store, "lb", data, digest, {"keep": "1", "drop": "2"})
            changed = await store.update(
                _with_labels(info, {"drop": "", "new": "3", "ignored": "x"}), ["labels.drop", "labels.new"]
            )
            assert dict(changed.labels) == {"keep": "1", "new": "3"}
            assert changed.updated_at >= info.updated_at and changed.created_at == info.created_at
            assert dict((await store.info(digest)).labels) == {"keep": "1", "new": "3"}
            assert dict((await store.update(_with_labels(info, {"only": "1"}))).labels) == {"only": "1"}
            await raises(errors.InvalidArgument, store.update(info, ["size"]), "size")
            await raises(
                errors.InvalidArgument, store.update(_with_labels(info, {"k": "v" * 5000}), ["labels.k"])
            )
            assert dict((await store.info(digest)).labels) == {"only": "1"}
            _, missing = blob("missing")
            await raises(errors.NotFound, store.update(replace(info, digest=missing)), "not found")


async def check_walk_filters(factory: StoreFactory) -> None:
    """Walk filters on digest, size and labels; bad filters are InvalidArgument."""
    a, da = blob("walk-a", 10)
    b, db = blob("walk-b", 20)
    with namespace(NS):
        async with factory() as store:
            await _commit(store, "wa", a, da, {"kind": "x", "dotted.key": "y"})
            await _commit(store, "wb", b, db, {"kind": "z"})
            assert {i.digest for i in await store.walk()} == {da, db}
            assert [i.digest for i in await store.walk([f"digest=={db}"])] == [db]
            assert [i.digest for i in await store.walk(["size==10"])] == [da]
            assert [i.digest for i in await store.walk(["labels.kind==z"])] == [db]
            assert [i.digest for i in await store.walk(['labels."dotted.key"==y'])] == [da]
            assert {i.digest for i in await store.walk(["labels.kind==x", "size==20"])} == {da, db}
            await raises(errors.InvalidArgument, store.walk(["labels.kind=="]))


async def check_list_statuses(factory: StoreFactory) -> None:
    """Statuses list the namespace's ingests, filtered by ref."""
    with namespace(NS):
        async with factory() as store:
            await write_all(store, "layer-1", b"abc")
            await write_all(store, "config-1", b"de")
            with namespace(OTHER):
                await write_all(store, "layer-2", b"x")
            found = {s.ref: s.offset for s in await store.list_statuses()}
            assert found == {"layer-1": 3, "config-1": 2}
            assert [s.ref for s in await store.list_statuses(["ref~=^layer"])] == ["layer-1"]


async def check_namespace_visibility(factory: StoreFactory) -> None:
    """A blob is seen only where committed; under "shared" another namespace commits it without data."""
    data, digest = blob("visible")
    with namespace(NS):
        async with factory() as store:
            await _commit(store, "v", data, digest)
            with namespace(OTHER):
                await raises(errors.NotFound, store.info(digest))
                await raises(errors.NotFound, store.reader_at(digest))
                await raises(errors.NotFound, store.delete(digest))
                assert await store.walk() == []
                async with store.writer("v2", Expected(digest, len(data))) as w:
                    assert w.offset == len(data)
                    assert (await store.status("v2")).offset == len(data)
                    info = await w.commit(len(data), digest, {"here": "1"})
                assert dict(info.labels) == {"here": "1"}
                assert await read_all(store, digest) == data
            assert dict((await store.info(digest)).labels) == {}
            await store.delete(digest)
            with namespace(OTHER):
                assert await read_all(store, digest) == data


async def check_delete(factory: StoreFactory) -> None:
    """Delete hides the blob; a second delete is NotFound; once gone everywhere it is no longer shared."""
    data, digest = blob("delete", 2048)
    with namespace(NS):
        async with factory() as store:
            await _commit(store, "d", data, digest)
            await store.delete(digest)
            await raises(errors.NotFound, store.info(digest))
            await raises(errors.NotFound, store.delete(digest))
            assert await store.walk() == []
            async with store.writer("d-again", Expected(digest, len(data))) as w:
                assert w.offset == 0
                await w.write(data)
                await w.commit()
            assert await read_all(store, digest) == data


async def check_shared_writer_rewrites(factory: StoreFactory) -> None:
    """A shared writer that truncates becomes an ordinary ingest."""
    data, digest = blob("unshare", 3000)
    with namespace(NS):
        async with factory() as store:
            await _commit(store, "u", data, digest)
            with namespace(OTHER):
                async with store.writer("u2", Expected(digest, len(data))) as w:
                    await w.truncate(0)
                    assert w.offset == 0
                    await w.write(data)
                    await w.commit(len(data), digest)
                assert await read_all(store, digest) == data


async def check_namespace_and_digest_required(factory: StoreFactory) -> None:
    """No namespace is FailedPrecondition; a malformed digest is InvalidArgument."""
    async with factory() as store:
        with namespace(None):
            await raises(errors.FailedPrecondition, store.info(blob("x")[1]), "namespace is required")
            await raises(errors.FailedPrecondition, store.open_writer("r"), "namespace is required")
            await raises(errors.FailedPrecondition, store.list_statuses(), "namespace is required")
        with namespace(NS):
            for bad in ("", "sha256:abc", "sha256:" + "A" * 64, "md5:" + "0" * 32, "sha512:" + "0" * 128):
                await raises(errors.InvalidArgument, store.info(bad))
            await raises(errors.InvalidArgument, store.open_writer("r", Expected("nope", 1)))


def _with_labels(info: Info, labels: dict[str, str]) -> Info:
    return replace(info, labels=labels)


async def _commit(
    store: ContentStore, ref: str, data: bytes, digest: str, labels: dict[str, str] | None = None
) -> Info:
    async with store.writer(ref) as w:
        await w.write(data)
        return await w.commit(len(data), digest, labels)


CHECKS: dict[str, Check] = {
    name.removeprefix("check_"): fn
    for name, fn in sorted(globals().items())
    if name.startswith("check_") and callable(fn)
}
