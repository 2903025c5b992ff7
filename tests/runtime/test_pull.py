"""Pulling from a real registry into the real stores: what the rootfs shows, what is recorded, what is reused."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runtime.pull_rig import Rig, needs_root, proxy, push, rig
from tests.support.images import (
    File,
    Image,
    Layer,
    build_image,
    build_index,
    build_layer,
    busybox_files,
    directory,
    hardlink,
    push_image,
    symlink,
)
from tests.support.registry import RegistryServer, run_registry
from wharfd.runtime import errors, mount
from wharfd.runtime.images import labels as L
from wharfd.runtime.images.chainid import chain_ids
from wharfd.runtime.images.platforms import Platform, host
from wharfd.runtime.images.pull import PullOptions, PullProgress
from wharfd.runtime.metadata import leases
from wharfd.runtime.registry import HostsConfig, Resolver, Transport, auth

pytestmark = [pytest.mark.root, needs_root]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    with run_registry(tmp_path_factory.mktemp("registry")) as server:
        yield server


def layered_image(tag: str = "") -> Image:
    base = build_layer(
        [
            *busybox_files(),
            directory("data"),
            File("data/keep", b"keep"),
            File("data/gone", b"gone"),
            directory("opaque"),
            File("opaque/old", b"old"),
            directory("etc/conf.d"),
            File("etc/conf.d/a", b"a"),
        ]
    )
    top = build_layer(
        [
            directory("data"),
            File("data/.wh.gone"),
            directory("opaque"),
            File("opaque/.wh..wh..opq"),
            File("opaque/new", b"new"),
            File("etc/conf.d/b", b"b", mode=0o600, uid=1000, gid=1000),
            symlink("bin/link", "/etc/passwd"),
        ],
        compression="zstd",
    )
    return build_image([base, top], labels={"tag": tag} if tag else None)


def rootfs(mounts_dir: Path) -> dict[str, bytes | str]:
    """Files under the mounted view: path -> content (or "dir"/"link:<target>")."""
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(mounts_dir):
        for name in dirnames + filenames:
            full = Path(dirpath, name)
            rel = str(full.relative_to(mounts_dir))
            if full.is_symlink():
                out[rel] = f"link:{os.readlink(full)}"
            elif full.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = full.read_bytes()[:16]
                st = full.stat()
                out[f"stat:{rel}"] = f"{st.st_uid}:{st.st_gid}:{st.st_mode & 0o7777:o}"
    return out


async def view(r: Rig, chain: str, where: Path, snapshotter: str = "overlayfs") -> dict[str, bytes | str]:
    """Mount a view of ``chain`` on ``where`` and read it (unmounted in finally)."""
    sn = r.snapshotter(snapshotter)
    key = f"view-{os.urandom(4).hex()}"
    await asyncio.to_thread(where.mkdir, exist_ok=True)
    mounts = await sn.view(key, chain)
    await asyncio.to_thread(mount.mount_all, mounts, where)
    try:
        files = await asyncio.to_thread(rootfs, where)
        # The layers do not describe their root: it is root's 0755, as an overlay upper is made.
        root = await asyncio.to_thread(os.stat, where)
        assert (root.st_uid, root.st_mode & 0o7777) == (0, 0o755)
        return files
    finally:
        await asyncio.to_thread(mount.unmount_all, where, mount.MNT_DETACH)
        await sn.remove(key)


def test_pull_multilayer_whiteouts_and_record(tmp_path: Path, registry: RegistryServer) -> None:
    image = layered_image()

    async def main() -> None:
        ref = await push(registry.host, "test/layered:1", image)
        seen: list[PullProgress] = []
        async with rig(tmp_path) as r:
            result = await r.puller.pull(ref, PullOptions(progress=seen.append))
            assert result.name == f"{registry.host}/test/layered:1"
            assert result.target.digest == image.manifest_desc.digest
            assert result.config.digest == image.config_desc.digest
            diff_ids = [layer.diff_id for layer in image.layers]
            assert result.chain_id == chain_ids(diff_ids)[-1]
            files = await view(r, result.chain_id, tmp_path / "view")
            assert files["data/keep"] == b"keep"
            assert "data/gone" not in files
            assert "opaque/old" not in files and files["opaque/new"] == b"new"
            assert files["etc/conf.d/a"] == b"a" and files["etc/conf.d/b"] == b"b"
            assert files["bin/link"] == "link:/etc/passwd"
            assert files["stat:etc/conf.d/b"] == "1000:1000:600"
            # The record holds everything; the pull's lease is gone.
            record = await r.images.get(result.name)
            assert record.target.digest == result.target.digest
            assert await r.plugins.instance("io.containerd.metadata.v1").leases.list() == []
            config = await r.content.info(result.config.digest)
            assert config.labels[L.snapshot_label("overlayfs")] == result.chain_id
            manifest = await r.content.info(result.manifest.digest)
            assert manifest.labels[f"{L.GC_REF_CONTENT}.config"] == result.config.digest
            for i, layer in enumerate(image.layers):
                blob = await r.content.info(layer.descriptor.digest)
                assert manifest.labels[f"{L.GC_REF_CONTENT}.l.{i}"] == layer.descriptor.digest
                assert blob.labels[L.UNCOMPRESSED] == layer.diff_id
                assert blob.labels[f"{L.DISTRIBUTION_SOURCE}{registry.host}"] == "test/layered"
            kinds = {(p.kind, p.status) for p in seen}
            assert ("layer", "done") in kinds and ("manifest", "done") in kinds
            assert r.staging_left() == []

    asyncio.run(main())


def random_layer(size: int = 4 << 20) -> Layer:
    """A layer of one incompressible file (unique per call)."""
    return build_layer([File("blob.bin", os.urandom(size))])


def storage_file(registry: RegistryServer, digest: str) -> Path:
    hexa = digest.removeprefix("sha256:")
    return registry.root / "storage/docker/registry/v2/blobs/sha256" / hexa[:2] / hexa / "data"


async def snapshots_of(r: Rig) -> list[str]:
    return [i.name for i in await r.snapshotter().walk()]


def test_index_picks_the_host_platform(tmp_path: Path, registry: RegistryServer) -> None:
    me = host()
    other = Platform("linux", "arm64" if me.architecture != "arm64" else "amd64")
    mine = build_image([build_layer([File("which", b"host")])], platform=Platform(me.os, me.architecture))
    theirs = build_image([build_layer([File("which", b"other")])], platform=other)
    index = build_index([theirs, mine])

    async def main() -> None:
        ref = await push(registry.host, "test/multi:1", index)
        async with rig(tmp_path) as r:
            result = await r.puller.pull(ref)
            assert result.target.digest == index.desc.digest
            assert result.manifest.digest == mine.manifest_desc.digest
            assert result.platform == f"{me.os}/{me.architecture}"
            files = await view(r, result.chain_id or "", tmp_path / "view")
            assert files["which"] == b"host"
            with pytest.raises(errors.NotFound):
                await r.content.info(theirs.manifest_desc.digest)
            labels = (await r.content.info(index.desc.digest)).labels
            assert labels == {
                f"{L.GC_REF_CONTENT}.m.1": mine.manifest_desc.digest,
                f"{L.DISTRIBUTION_SOURCE}{registry.host}": "test/multi",
            }
            with pytest.raises(errors.NotFound, match="no match for platform windows/amd64"):
                await r.puller.pull(ref, PullOptions(platforms=["windows/amd64"]))

    asyncio.run(main())


def test_all_platforms_fetches_everything_and_unpacks_nothing(
    tmp_path: Path, registry: RegistryServer
) -> None:
    images = [
        build_image([build_layer([File("p", name.encode())])], platform=Platform("linux", name))
        for name in ("amd64", "arm64", "s390x")
    ]
    index = build_index(images)

    async def main() -> None:
        ref = await push(registry.host, "test/all:1", index)
        async with rig(tmp_path) as r:
            result = await r.puller.pull(ref, PullOptions(all_platforms=True))
            assert result.chain_id is None
            for image in images:
                for desc in (image.manifest_desc, image.config_desc, image.layers[0].descriptor):
                    await r.content.info(desc.digest)
            assert await snapshots_of(r) == []
            labels = (await r.content.info(index.desc.digest)).labels
            assert sorted(k for k in labels if k.startswith(L.GC_REF_CONTENT)) == [
                f"{L.GC_REF_CONTENT}.m.{i}" for i in range(3)
            ]

    asyncio.run(main())


def test_second_pull_reuses_everything(tmp_path: Path, registry: RegistryServer) -> None:
    image = build_image([random_layer(1 << 20), random_layer(1 << 20)])

    async def main() -> None:
        await push(registry.host, "test/again:1", image)
        async with proxy(registry.host) as px, rig(tmp_path) as r:
            ref = f"{px.host}/test/again:1"
            first = await r.puller.pull(ref)
            assert len(px.blob_gets) == 3  # config and two layers
            px.reset()
            seen: list[PullProgress] = []
            second = await r.puller.pull(ref, PullOptions(progress=seen.append))
            assert px.blob_gets == [] and px.blob_bytes == 0
            assert second == first
            assert {p.status for p in seen} == {"exists"}

    asyncio.run(main())


def test_concurrent_pulls_share_one_download(tmp_path: Path, registry: RegistryServer) -> None:
    image = build_image([random_layer(2 << 20), random_layer(2 << 20)])

    async def main() -> None:
        await push(registry.host, "test/together:1", image)
        async with proxy(registry.host) as px, rig(tmp_path) as r:
            ref = f"{px.host}/test/together:1"
            calls: list[list[PullProgress]] = [[], [], []]
            results = await asyncio.gather(
                *(r.puller.pull(ref, PullOptions(progress=seen.append)) for seen in calls)
            )
            assert results[0] == results[1] == results[2]
            blobs = [image.config_desc, *(x.descriptor for x in image.layers)]
            assert sorted(px.blob_gets) == sorted(d.digest for d in blobs)
            assert all(any(p.status == "done" for p in seen) for seen in calls)

    asyncio.run(main())


def test_dropped_connection_resumes_from_the_ingest_offset(tmp_path: Path, registry: RegistryServer) -> None:
    layer = random_layer(6 << 20)
    image = build_image([layer])
    digest = layer.descriptor.digest

    async def main() -> None:
        await push(registry.host, "test/drop:1", image)
        async with proxy(registry.host) as px, rig(tmp_path) as r:
            ref = f"{px.host}/test/drop:1"
            px.drop_after, px.then_refuse = 2 << 20, True
            with pytest.raises(errors.Unavailable, match=digest):
                await r.puller.pull(ref)
            offset = (await r.content.status(f"layer-{digest}")).offset
            assert 0 < offset <= 2 << 20  # what arrived before the connection died is kept
            assert await snapshots_of(r) == [] and r.staging_left() == []
            px.reset()
            result = await r.puller.pull(ref)
            assert f"bytes={offset}-" in px.ranges
            assert px.blob_bytes == layer.descriptor.size - offset  # the config was stored by the first pull
            files = await view(r, result.chain_id or "", tmp_path / "view")
            assert len(files["blob.bin"]) == 16
            assert await r.content.list_statuses() == []

    asyncio.run(main())


def test_stalled_registry_is_a_deadline_naming_the_blob(tmp_path: Path, registry: RegistryServer) -> None:
    layer = random_layer(2 << 20)
    image = build_image([layer])

    async def main() -> None:
        await push(registry.host, "test/stall:1", image)
        async with proxy(registry.host) as px, rig(tmp_path) as r:
            px.stall_after = 100_000
            started = time.monotonic()
            with pytest.raises(errors.DeadlineExceeded, match=layer.descriptor.digest):
                await r.puller.pull(f"{px.host}/test/stall:1", PullOptions(progress_timeout=0.5))
            assert time.monotonic() - started < 5
            assert await snapshots_of(r) == []
            await asyncio.sleep(0.1)
            assert r.staging_left() == []

    asyncio.run(main())


async def assert_clean_after_gc(r: Rig) -> None:
    """Nothing committed survives a collection once the failed pull's lease is gone."""
    await r.collector.collect()
    assert await r.content.walk() == []
    assert await snapshots_of(r) == []
    assert r.staging_left() == []
    assert await r.plugins.instance("io.containerd.metadata.v1").leases.list() == []


def test_wrong_bytes_are_dropped_when_the_extractor_stops_the_pull_first(
    tmp_path: Path, registry: RegistryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The extracting worker reads the ingest as it grows and may find the digest wrong before the
    # download's own commit does; the pull then stops the download with a cancellation. Simulated:
    # the commit is cancelled after every byte arrived.
    from wharfd.runtime.images import fetch

    layer = random_layer(1 << 20)
    image = build_image([layer])

    async def cancelled_commit(*args: object) -> None:
        raise asyncio.CancelledError

    async def main() -> None:
        ref = await push(registry.host, "test/corrupt-first:1", image)
        path = storage_file(registry, layer.descriptor.digest)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        monkeypatch.setattr(fetch.Session, "_commit", cancelled_commit)
        async with rig(tmp_path) as r:
            with pytest.raises((asyncio.CancelledError, errors.DataLoss, errors.Canceled)):
                await r.puller.pull(ref)
            assert await r.content.list_statuses() == []  # complete and wrong: not kept

    asyncio.run(main())


def test_corrupt_blob_is_data_loss_and_leaves_nothing(tmp_path: Path, registry: RegistryServer) -> None:
    layer = random_layer(1 << 20)
    image = build_image([layer])

    async def main() -> None:
        ref = await push(registry.host, "test/corrupt:1", image)
        path = storage_file(registry, layer.descriptor.digest)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        async with rig(tmp_path) as r:
            with pytest.raises(errors.DataLoss, match=f"layer {layer.descriptor.digest}"):
                await r.puller.pull(ref)
            assert await r.content.list_statuses() == []  # the wrong bytes are not kept for a resume
            with pytest.raises(errors.NotFound):
                await r.images.get(ref)
            await assert_clean_after_gc(r)

    asyncio.run(main())


def test_truncated_blob_is_data_loss(tmp_path: Path, registry: RegistryServer) -> None:
    layer = random_layer(1 << 20)
    image = build_image([layer])

    async def main() -> None:
        ref = await push(registry.host, "test/short:1", image)
        path = storage_file(registry, layer.descriptor.digest)
        path.write_bytes(path.read_bytes()[: layer.descriptor.size // 2])
        async with rig(tmp_path) as r:
            with pytest.raises((errors.DataLoss, errors.Unavailable), match=layer.descriptor.digest) as info:
                await r.puller.pull(ref)
            assert isinstance(info.value, errors.DataLoss), info.value
            await assert_clean_after_gc(r)

    asyncio.run(main())


def test_diff_id_mismatch_is_refused(tmp_path: Path, registry: RegistryServer) -> None:
    real, other = random_layer(100_000), random_layer(100_000)
    lying = Layer(blob=real.blob, diff_id=other.diff_id, media_type=real.media_type)
    image = build_image([lying])

    async def main() -> None:
        ref = await push(registry.host, "test/lying:1", image)
        async with rig(tmp_path) as r:
            with pytest.raises(
                errors.DataLoss, match=f"layer {real.descriptor.digest}: diff id is {real.diff_id}"
            ):
                await r.puller.pull(ref)
            await asyncio.sleep(0.1)
            await assert_clean_after_gc(r)

    asyncio.run(main())


@pytest.mark.parametrize("snapshotter", ["overlayfs", "native"])
def test_hostile_layers_touch_nothing_outside(
    tmp_path: Path, registry: RegistryServer, snapshotter: str
) -> None:
    host_dir = tmp_path / "host"
    host_dir.mkdir()
    (host_dir / "secret").write_bytes(b"secret")
    before = sorted(p.name for p in host_dir.iterdir())
    inside = str(host_dir).lstrip("/")
    parts = inside.split("/")
    dirs = [directory("/".join(parts[: i + 1])) for i in range(len(parts))]
    cases: dict[str, tuple[list[File], type[errors.WharfError] | None]] = {
        # Refused: a name climbing out, a hardlink to a host file, a path through a link to the host.
        "climb": ([File("../../../../../../../../tmp/escaped", b"x")], errors.InvalidArgument),
        "hardlink": ([File("a", b"a"), hardlink("stolen", str(host_dir / "secret"))], errors.InvalidArgument),
        "abs-symlink": ([symlink("evil", str(host_dir)), File("evil/pwned", b"x")], errors.InvalidArgument),
        # Contained: links are re-rooted, so these write inside the snapshot.
        "rerooted": ([*dirs, symlink("evil", str(host_dir)), File("evil/pwned", b"x")], None),
        "dotdot-link": ([*dirs, symlink("up", "../../.."), File(f"up/{inside}/pwned", b"x")], None),
    }

    async def main() -> None:
        async with rig(tmp_path) as r:
            for name, (files, error) in cases.items():
                ref = await push(
                    registry.host, f"test/hostile-{name}:{snapshotter}", build_image([build_layer(files)])
                )
                opts = PullOptions(snapshotter=snapshotter)
                if error is not None:
                    with pytest.raises(error):
                        await r.puller.pull(ref, opts)
                    assert [i.name for i in await r.snapshotter(snapshotter).walk()] == [], name
                else:
                    result = await r.puller.pull(ref, opts)
                    files = await view(r, result.chain_id or "", tmp_path / "view", snapshotter)
                    assert files[f"{inside}/pwned"] == b"x", name
                assert sorted(p.name for p in host_dir.iterdir()) == before, name
                assert (host_dir / "secret").read_bytes() == b"secret"

    asyncio.run(main())
    assert not Path("/tmp/escaped").exists()


def test_images_with_a_common_base_share_its_snapshots(tmp_path: Path, registry: RegistryServer) -> None:
    base = random_layer(1 << 20)
    one = build_image([base, build_layer([File("one", b"1")])])
    two = build_image([base, build_layer([File("two", b"2")])])

    async def main() -> None:
        await push(registry.host, "test/one:1", one)
        await push(registry.host, "test/two:1", two)
        async with proxy(registry.host) as px, rig(tmp_path) as r:
            a = await r.puller.pull(f"{px.host}/test/one:1")
            px.reset()
            b = await r.puller.pull(f"{px.host}/test/two:1")
            assert base.descriptor.digest not in px.blob_gets and len(px.blob_gets) == 2
            base_chain = base.diff_id
            names = await snapshots_of(r)
            assert sorted(names) == sorted({base_chain, a.chain_id, b.chain_id})
            sn = r.snapshotter()
            assert (await sn.stat(a.chain_id or "")).parent == base_chain
            assert (await sn.stat(b.chain_id or "")).parent == base_chain
            assert (await sn.stat(base_chain)).labels == {L.SNAPSHOT_REF: base_chain}

    asyncio.run(main())


def test_gc_after_deleting_the_image_removes_content_and_snapshots(
    tmp_path: Path, registry: RegistryServer
) -> None:
    image = layered_image("gc")

    async def main() -> None:
        ref = await push(registry.host, "test/gc:1", image)
        async with rig(tmp_path) as r:
            result = await r.puller.pull(ref)
            await r.collector.collect()  # the record keeps everything
            assert len(await r.content.walk()) == 4
            assert len(await snapshots_of(r)) == 2
            await r.images.delete(result.name)
            await r.collector.collect()
            assert await r.content.walk() == []
            assert await snapshots_of(r) == []
            assert list((r.overlay_root / "snapshots").iterdir()) == []
            assert list(r.content.root.glob("blobs/sha256/*")) == []

    asyncio.run(main())


def test_native_snapshotter_applies_layers_in_full_mode(tmp_path: Path, registry: RegistryServer) -> None:
    image = layered_image("native")

    async def main() -> None:
        ref = await push(registry.host, "test/native:1", image)
        async with rig(tmp_path) as r:
            result = await r.puller.pull(ref, PullOptions(snapshotter="native"))
            sn = r.snapshotter("native")
            files = await asyncio.to_thread(rootfs, sn.backend.root / "snapshots" / "2")
            assert files["data/keep"] == b"keep" and "data/gone" not in files
            assert "opaque/old" not in files and files["opaque/new"] == b"new"
            assert (await sn.stat(result.chain_id or "")).kind.name == "COMMITTED"

    asyncio.run(main())


def test_unpack_stored_content_and_is_unpacked(tmp_path: Path, registry: RegistryServer) -> None:
    image = build_image([random_layer(100_000), random_layer(100_000)])

    async def main() -> None:
        ref = await push(registry.host, "test/later:1", image)
        async with rig(tmp_path) as r:
            result = await r.puller.pull(ref, PullOptions(unpack=False))
            assert result.chain_id is None
            assert not await r.puller.is_unpacked(result.target)
            chain = await r.puller.unpack(result.target)
            assert chain == chain_ids([x.diff_id for x in image.layers])[-1]
            assert await r.puller.is_unpacked(result.target)
            assert (await r.content.info(result.config.digest)).labels[L.snapshot_label("overlayfs")] == chain
            with pytest.raises(errors.NotFound, match="snapshotter 'zfs'"):
                await r.puller.unpack(result.target, snapshotter="zfs")

    asyncio.run(main())


def test_bad_requests_are_typed(tmp_path: Path, registry: RegistryServer) -> None:
    async def main() -> None:
        async with rig(tmp_path) as r:
            with pytest.raises(errors.InvalidArgument):
                await r.puller.pull(f"{registry.host}/repo@sha256:abc")
            with pytest.raises(errors.InvalidArgument):
                await r.puller.pull("not a reference")
            with pytest.raises(errors.InvalidArgument):
                await r.puller.pull(f"{registry.host}/x:1", PullOptions(platforms=["a/b/c/d"]))
            with pytest.raises(errors.NotFound):
                await r.puller.pull(f"{registry.host}/test/absent:1")

    asyncio.run(main())


def test_a_caller_lease_is_used_and_kept(tmp_path: Path, registry: RegistryServer) -> None:
    image = build_image([random_layer(10_000)])

    async def main() -> None:
        ref = await push(registry.host, "test/leased:1", image)
        async with rig(tmp_path) as r:
            store = r.plugins.instance("io.containerd.metadata.v1").leases
            lease = await store.create("mine")
            token = leases.current.set(lease.id)
            try:
                result = await r.puller.pull(ref, PullOptions(record_image=False))
            finally:
                leases.current.reset(token)
            held = {res.id for res in await store.list_resources("mine")}
            assert {result.manifest.digest, result.config.digest, result.chain_id} <= held
            await r.collector.collect()
            await r.content.info(result.config.digest)

    asyncio.run(main())


def test_a_shared_pull_stops_only_when_every_caller_left(tmp_path: Path, registry: RegistryServer) -> None:
    layer = random_layer(2 << 20)
    image = build_image([layer])

    async def main() -> None:
        await push(registry.host, "test/leave:1", image)
        async with proxy(registry.host) as px, rig(tmp_path) as r:
            ref = f"{px.host}/test/leave:1"
            px.stall_after = 500_000
            one = asyncio.create_task(r.puller.pull(ref))
            two = asyncio.create_task(r.puller.pull(ref))
            await asyncio.sleep(0.5)
            one.cancel()
            await asyncio.sleep(0.1)
            assert not two.done()  # the pull goes on for the caller still there
            two.cancel()
            for task in (one, two):
                with pytest.raises(asyncio.CancelledError):
                    await task
            await asyncio.sleep(0.2)
            store = r.plugins.instance("io.containerd.metadata.v1").leases
            assert await store.list() == [] and r.staging_left() == []
            assert await snapshots_of(r) == []
            px.release.set()
            px.reset()
            result = await r.puller.pull(ref)  # resumes what the cancelled pull had written
            assert result.chain_id and px.ranges[-1].startswith("bytes=")

    asyncio.run(main())


def test_a_layer_repeated_in_one_image_is_fetched_once(tmp_path: Path, registry: RegistryServer) -> None:
    empty = build_layer([], compression="none")
    image = build_image([build_layer([File("a", b"a")]), empty, build_layer([File("b", b"b")]), empty])

    async def main() -> None:
        await push(registry.host, "test/repeat:1", image)
        async with proxy(registry.host) as px, rig(tmp_path) as r:
            result = await r.puller.pull(f"{px.host}/test/repeat:1")
            assert px.blob_gets.count(empty.descriptor.digest) == 1
            assert len(await snapshots_of(r)) == 4
            files = await view(r, result.chain_id or "", tmp_path / "view")
            assert files["a"] == b"a" and files["b"] == b"b"

    asyncio.run(main())


USER, PASSWORD = "puller", "right-pw"


@pytest.fixture(scope="module")
def locked_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    with run_registry(tmp_path_factory.mktemp("locked"), htpasswd={USER: PASSWORD}) as server:
        yield server


async def _push_locked(server: RegistryServer, repo_tag: str, image: Image) -> str:
    repo, _, tag = repo_tag.partition(":")
    creds = auth.static(auth.Credentials(USER, PASSWORD))
    async with Transport(HostsConfig(plain_http=True), creds) as transport:
        await push_image(Resolver(transport).pusher(f"{server.host}/{repo}"), image, tag=tag)
    return f"{server.host}/{repo_tag}"


def test_pulls_with_other_credentials_are_not_shared(tmp_path: Path, locked_registry: RegistryServer) -> None:
    image = build_image([random_layer(1 << 20)])

    async def main() -> None:
        ref = await _push_locked(locked_registry, "test/private:1", image)
        good = auth.static(auth.Credentials(USER, PASSWORD))
        wrong = auth.static(auth.Credentials(USER, "wrong-pw"))
        async with rig(tmp_path) as r:
            opts = {"plain_http": True}
            # Started together: the second would join the first's pull if credentials were ignored.
            results = await asyncio.gather(
                r.puller.pull(ref, PullOptions(credentials=good, **opts)),
                r.puller.pull(ref, PullOptions(credentials=wrong, **opts)),
                r.puller.pull(ref, PullOptions(**opts)),
                r.puller.pull(ref, PullOptions(credentials=auth.static(None), **opts)),  # another object
                return_exceptions=True,
            )
            ok, refused, anonymous, other = results
            assert not isinstance(ok, BaseException) and ok.config.digest == image.config_desc.digest
            for failed in (refused, anonymous, other):
                assert isinstance(failed, errors.PermissionDenied), failed

    asyncio.run(main())


def test_pulls_with_the_same_credentials_share_one(tmp_path: Path, locked_registry: RegistryServer) -> None:
    image = build_image([random_layer(1 << 20), random_layer(1 << 20)])

    async def main() -> None:
        await _push_locked(locked_registry, "test/shared:1", image)
        async with proxy(locked_registry.host) as px, rig(tmp_path) as r:
            ref = f"{px.host}/test/shared:1"
            # Two callers with one credentials callback (the CRI shares equal AuthConfigs itself).
            creds = auth.static(auth.Credentials(USER, PASSWORD))
            opts = [PullOptions(credentials=creds) for _ in range(2)]
            first, second = await asyncio.gather(*(r.puller.pull(ref, o) for o in opts))
            assert first == second
            blobs = [image.config_desc, *(x.descriptor for x in image.layers)]
            assert sorted(px.blob_gets) == sorted(d.digest for d in blobs)

    asyncio.run(main())
