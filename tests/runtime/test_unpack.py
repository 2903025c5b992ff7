"""Unpacking stored layers into snapshots: order, reuse, failures, growing sources, adopting staged trees."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from tests.runtime.pull_rig import NS, Rig, needs_root, rig
from tests.support.images import File, Layer, build_layer, directory
from wharfd.runtime import errors
from wharfd.runtime.content.store import Expected
from wharfd.runtime.images import extract as extract_module
from wharfd.runtime.images import labels as L
from wharfd.runtime.images.chainid import chain_ids
from wharfd.runtime.images.extract import UNSET_ROOT_MODE, ExtractJob, Growing, Workers, extract
from wharfd.runtime.images.unpack import STAGING, Source
from wharfd.runtime.images.unpack import Layer as UnpackLayer
from wharfd.runtime.metadata.leases import LeaseStore
from wharfd.runtime.snapshots.layout import disk_usage
from wharfd.runtime.snapshots.overlay import OverlayBackend
from wharfd.runtime.snapshots.snapshotter import Kind

pytestmark = [pytest.mark.root, needs_root]


# --- the growing source and the worker function, in this process --------------------------------


def test_growing_reads_while_the_file_is_written(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    path = tmp_path / "data"
    path.write_bytes(b"")

    def writer() -> None:
        with open(path, "ab") as f:
            for i in range(0, len(data), 300_000):
                f.write(data[i : i + 300_000])
                f.flush()
                time.sleep(0.005)

    thread = threading.Thread(target=writer)
    thread.start()
    fd = os.open(path, os.O_RDONLY)
    try:
        src = Growing(fd, len(data), str(tmp_path / "abort"), 5.0, "layer x")
        got = bytearray()
        while chunk := src.read(1 << 20):
            got += chunk
    finally:
        os.close(fd)
        thread.join()
    assert bytes(got) == data


def test_growing_stops_on_abort_and_on_stall(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"12345")
    fd = os.open(path, os.O_RDONLY)
    try:
        (tmp_path / "abort").touch()
        src = Growing(fd, 100, str(tmp_path / "abort"), 5.0, "layer x")
        assert src.read(10) == b"12345"
        with pytest.raises(errors.Canceled, match="layer x: extraction stopped at byte 5 of 100"):
            src.read(10)
        stalled = Growing(fd, 100, str(tmp_path / "no-abort"), 0.05, "layer y")
        stalled.read()
        with pytest.raises(errors.DeadlineExceeded, match=r"layer y: no new bytes for 0\.05s at byte 5"):
            stalled.read()
    finally:
        os.close(fd)


def _job(layer: Layer, blob: Path, target: Path, **kw: object) -> ExtractJob:
    return ExtractJob(
        sources=(str(tmp_missing(blob)), str(blob)),
        size=len(layer.blob),
        digest=layer.descriptor.digest,
        media_type=layer.media_type,
        diff_id=layer.diff_id,
        target=str(target),
        **kw,  # type: ignore[arg-type]
    )


def tmp_missing(blob: Path) -> Path:
    return blob.with_name("never-there")


def test_extract_reports_whether_the_layer_described_its_root(tmp_path: Path) -> None:
    bare = build_layer([File("a", b"a")])
    rooted = build_layer([File(".", mode=0o750, kind="dir", uid=7), File("a", b"a")])
    for name, layer, unset in (("bare", bare, True), ("rooted", rooted, False)):
        blob = tmp_path / f"{name}.blob"
        blob.write_bytes(layer.blob)
        out = extract(_job(layer, blob, tmp_path / name / "fs"))
        assert out.root_unset is unset
        assert out.applied.diff_id == layer.diff_id
        mode = stat.S_IMODE(os.stat(tmp_path / name / "fs").st_mode)
        assert mode == (UNSET_ROOT_MODE if unset else 0o750)


def test_extract_checks_digest_size_and_diff_id(tmp_path: Path) -> None:
    layer = build_layer([File("a", b"a" * 1000)])
    blob = tmp_path / "blob"
    blob.write_bytes(layer.blob)
    with pytest.raises(errors.DataLoss, match="diff id is"):
        extract(_job(Layer(layer.blob, "sha256:" + "0" * 64, layer.media_type), blob, tmp_path / "x" / "fs"))
    blob.write_bytes(layer.blob[:-1] + bytes([layer.blob[-1] ^ 1]))
    with pytest.raises(errors.DataLoss, match=layer.descriptor.digest):
        extract(_job(layer, blob, tmp_path / "y" / "fs"))


# --- adopting a staged tree ------------------------------------------------------------------------


def test_overlay_backend_adopt_keeps_or_takes_the_root(tmp_path: Path) -> None:
    backend = OverlayBackend(tmp_path / "sn")
    backend.create(1, Kind.ACTIVE, [])
    os.chmod(backend.upper(1), 0o705)
    backend.create(2, Kind.ACTIVE, [1])  # takes its parent's root mode
    for sid, keep, want in ((2, True, 0o705), (3, False, 0o711)):
        if sid == 3:
            backend.create(3, Kind.ACTIVE, [1])
        staged = tmp_path / f"staged{sid}"
        staged.mkdir(mode=0o711)
        (staged / "f").write_text("f")
        backend.adopt(sid, staged, keep_root=keep)
        assert (backend.upper(sid) / "f").read_text() == "f"
        assert stat.S_IMODE(os.stat(backend.upper(sid)).st_mode) == want
        assert not staged.exists()
    (backend.upper(1) / "x").write_text("x")
    with pytest.raises(OSError):
        backend.adopt(1, tmp_path / "staged-none")


def test_namespaced_adopt_refuses_committed_and_native(tmp_path: Path) -> None:
    async def main() -> None:
        async with rig(tmp_path) as r:
            sn = r.snapshotter()
            await sn.prepare("a")
            await sn.commit("a-done", "a")
            with pytest.raises(errors.FailedPrecondition, match="not active"):
                await sn.adopt("a-done", tmp_path)
            native = r.snapshotter("native")
            await native.prepare("b")
            with pytest.raises(errors.NotImplemented, match="native"):
                await native.adopt("b", tmp_path)

    asyncio.run(main())


# --- the unpacker over stored blobs ----------------------------------------------------------------


async def store(r: Rig, layer: Layer) -> Source:
    desc = layer.descriptor
    try:
        async with r.content.writer(f"test-{os.urandom(4).hex()}", Expected(desc.digest, desc.size)) as w:
            await w.write(layer.blob)
            await w.commit(desc.size, desc.digest)
    except errors.AlreadyExists:
        pass
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    done.set_result(None)
    return Source((str(r.content.blob_path(desc.digest)),), done)


async def unpack_layers(
    r: Rig, layers: list[Layer], snapshotter: str = "overlayfs", lease: str = ""
) -> list[str]:
    chain = chain_ids([x.diff_id for x in layers])
    leases: LeaseStore = r.plugins.instance("io.containerd.metadata.v1").leases
    lease = lease or (await leases.create()).id
    todo = []
    for i, layer in enumerate(layers):
        source: asyncio.Future[Source] = asyncio.get_running_loop().create_future()
        source.set_result(await store(r, layer))
        todo.append(UnpackLayer(layer.descriptor, layer.diff_id, chain[i], chain[i - 1] if i else "", source))
    await r.puller.unpacker.unpack(todo, snapshotter, lease)
    return chain


def test_layers_commit_in_order_on_their_parents(tmp_path: Path) -> None:
    layers = [build_layer([File(f"l{i}", str(i).encode())]) for i in range(6)]

    async def main() -> None:
        async with rig(tmp_path) as r:
            chain = await unpack_layers(r, layers)
            sn = r.snapshotter()
            for i, name in enumerate(chain):
                info = await sn.stat(name)
                assert info.kind == Kind.COMMITTED and info.parent == (chain[i - 1] if i else "")
                assert info.labels == {L.SNAPSHOT_REF: name}
            for layer in layers:
                labels = (await r.content.info(layer.descriptor.digest)).labels
                assert labels[L.UNCOMPRESSED] == layer.diff_id
            assert await r.puller.unpacker.existing(chain, "overlayfs") == 6
            # The usage the worker measured is the layer's, as the snapshotter would measure it.
            top = sn.backend.upper(int(sorted(os.listdir(r.overlay_root / "snapshots"), key=int)[-1]))  # type: ignore[attr-defined]
            assert await sn.usage(chain[-1]) == await asyncio.to_thread(disk_usage, top)
            assert await r.puller.unpacker.existing([*chain[:3], "sha256:" + "1" * 64], "overlayfs") == 3
            assert r.staging_left() == []

    asyncio.run(main())


def test_a_failing_layer_commits_nothing_of_its_own(tmp_path: Path) -> None:
    good = build_layer([File("good", b"g")])
    bad = build_layer([File("../../escape", b"x")])
    later = build_layer([File("later", b"l")])

    async def main() -> None:
        async with rig(tmp_path) as r:
            with pytest.raises(errors.InvalidArgument, match="escape"):
                await unpack_layers(r, [good, bad, later])
            assert [i.name for i in await r.snapshotter().walk()] == [good.diff_id]
            assert r.staging_left() == []
            # nothing half-adopted: the snapshot directories are those of records only
            assert len(list((r.overlay_root / "snapshots").iterdir())) == 1

    asyncio.run(main())


def test_racing_unpacks_of_one_chain_both_succeed(tmp_path: Path) -> None:
    layers = [build_layer([directory("d"), File(f"d/{i}", os.urandom(50_000))]) for i in range(3)]

    async def main() -> None:
        async with rig(tmp_path) as r:
            first, second = await asyncio.gather(unpack_layers(r, layers), unpack_layers(r, layers))
            assert first == second
            names = sorted(i.name for i in await r.snapshotter().walk())
            assert names == sorted(first)
            assert r.staging_left() == []
            assert sorted(os.listdir(r.overlay_root / STAGING)) == []

    asyncio.run(main())


def test_native_unpack_applies_whiteouts_in_full_mode(tmp_path: Path) -> None:
    lower = build_layer([directory("d"), File("d/keep", b"k"), File("d/drop", b"d")])
    upper = build_layer([directory("d"), File("d/.wh.drop")])

    async def main() -> None:
        async with rig(tmp_path) as r:
            chain = await unpack_layers(r, [lower, upper], "native")
            sn = r.snapshotter("native")
            key = "look"
            mounts = await sn.view(key, chain[-1])
            tree = Path(mounts[0].source)
            assert sorted(os.listdir(tree / "d")) == ["keep"]
            await sn.remove(key)

    asyncio.run(main())


def test_namespace_is_required(tmp_path: Path) -> None:
    from wharfd.runtime import namespaces

    async def main() -> None:
        async with rig(tmp_path) as r:
            token = namespaces.current.set(None)
            try:
                with pytest.raises(errors.FailedPrecondition, match="namespace is required"):
                    await r.puller.pull("127.0.0.1:1/x:1")
            finally:
                namespaces.current.reset(token)
            assert namespaces.current.get() == NS

    asyncio.run(main())


def test_staging_left_by_a_dead_daemon_is_removed_at_start(tmp_path: Path) -> None:
    async def main() -> None:
        async with rig(tmp_path) as r:
            leftover = r.overlay_root / STAGING / "deadbeef" / "fs"
        await asyncio.to_thread(leftover.mkdir, parents=True)
        await asyncio.to_thread((leftover / "half").write_bytes, b"half")
        async with rig(tmp_path) as r:
            assert r.staging_left() == []

    asyncio.run(main())


@pytest.mark.parametrize(("cpus", "workers"), [(None, 1), (1, 1), (2, 1), (8, 7)])
def test_workers_by_default_leave_one_cpu_free(
    monkeypatch: pytest.MonkeyPatch, cpus: int | None, workers: int
) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    assert extract_module.default_size() == workers
    assert Workers().size == workers
    assert Workers(3).size == 3


def test_workers_warm_up_in_the_background() -> None:
    async def main() -> None:
        workers = Workers(2)
        workers.warm()
        workers.warm()  # a second call while warming does nothing
        pids = await asyncio.gather(*(workers.run(os.getpid) for _ in range(4)))
        assert os.getpid() not in pids and 1 <= len(set(pids)) <= 2
        await workers.close()

    asyncio.run(main())


def _slice_of_this_thread() -> int:
    """The calling thread's time slice in ns, as the kernel reports it (0 when it does not)."""
    with open(f"/proc/self/task/{threading.get_native_id()}/sched") as f:
        for line in f:
            if line.startswith("se.slice"):
                return int(line.split()[-1])
    return 0


def _session_nice_slice() -> tuple[int, int, int]:
    return os.getsid(0), os.getpriority(os.PRIO_PROCESS, 0), _slice_of_this_thread()


def test_workers_run_in_their_own_session_niced_with_a_long_slice() -> None:
    from wharfd.runtime import cpu
    from wharfd.runtime.images.extract import WORKER_NICE

    async def main() -> tuple[int, int, int]:
        workers = Workers(1)
        try:
            return await workers.run(_session_nice_slice)
        finally:
            await workers.close()

    session, nice, slice_ns = asyncio.run(main())
    # Its own session: where the kernel shares the CPU between sessions (autogroup), extraction
    # is not charged to the daemon's share.
    assert session not in (os.getsid(0), 0)
    assert nice == min(os.getpriority(os.PRIO_PROCESS, 0) + WORKER_NICE, 19)
    if cpu.set_slice(cpu.BULK_SLICE_NS) and _slice_of_this_thread() == cpu.BULK_SLICE_NS:
        cpu.set_slice(0)
        assert slice_ns == cpu.BULK_SLICE_NS
