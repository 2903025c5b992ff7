"""The Diff service over a real grpc.aio server: Apply and Diff with real snapshots and real mounts."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import tarfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from isal import igzip

from tests.runtime.pull_rig import NS, Rig, needs_root, rig
from tests.support.images import File, build_layer, directory
from wharfd.api.services.diff.v1 import diff_pb2 as pb
from wharfd.api.services.diff.v1 import diff_pb2_grpc as pb_grpc
from wharfd.api.types import descriptor_pb2, mount_pb2
from wharfd.runtime import mount, plugin
from wharfd.runtime.content.store import Expected
from wharfd.runtime.images import labels as L
from wharfd.runtime.images import mediatypes
from wharfd.runtime.services import plugins as api
from wharfd.runtime.services.snapshots import mounts_to_proto
from wharfd.runtime.snapshots.snapshotter import Mount

pytestmark = [pytest.mark.root, needs_root]
MD = (("containerd-namespace", NS),)


@contextlib.asynccontextmanager
async def served(tmp_path: Path) -> AsyncIterator[tuple[Rig, pb_grpc.DiffStub]]:
    """The rig with the Diff gRPC plugin, served on a unix socket."""
    async with rig(tmp_path, extra=[api.DIFF_PLUGIN]) as r:
        server = grpc.aio.server()
        r.plugins.instance(plugin.GRPC, "diff").register(server)
        address = f"unix:{tmp_path / 'diff.sock'}"
        server.add_insecure_port(address)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                yield r, pb_grpc.DiffStub(channel)
        finally:
            await server.stop(None)


def run(tmp_path: Path, body: Callable[[Rig, pb_grpc.DiffStub], Any]) -> None:
    async def main() -> None:
        async with served(tmp_path) as (r, stub):
            await body(r, stub)
        assert not [p for p in mount_points() if p.startswith(str(tmp_path))], "mounts left behind"

    asyncio.run(main())


def mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split(" ")[4] for line in f]


async def store_blob(r: Rig, blob: bytes, media_type: str) -> descriptor_pb2.Descriptor:
    from wharfd.runtime.images.manifest import digest_of

    digest = digest_of(blob)
    async with r.content.writer(f"test-{digest}", Expected(digest, len(blob))) as w:
        await w.write(blob)
        await w.commit(len(blob), digest)
    return descriptor_pb2.Descriptor(media_type=media_type, digest=digest, size=len(blob))


async def read_tree(mounts: list[Mount], where: Path) -> dict[str, bytes | str]:
    """Mount, read every path, unmount."""
    await asyncio.to_thread(where.mkdir, exist_ok=True)
    await asyncio.to_thread(mount.mount_all, mounts, where)
    try:
        return await asyncio.to_thread(_walk, where)
    finally:
        await asyncio.to_thread(mount.unmount_all, where, mount.MNT_DETACH)


def _walk(root: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath, name)
            rel = str(full.relative_to(root))
            out[rel] = "dir" if full.is_dir() and not full.is_symlink() else full.read_bytes()
    return out


BASE = build_layer([directory("etc"), File("etc/keep", b"keep"), File("etc/drop", b"drop"), directory("opq")])
TOP = build_layer([directory("etc"), File("etc/.wh.drop"), File("etc/new", b"new")])


@pytest.mark.parametrize("snapshotter", ["overlayfs", "native"])
def test_apply_builds_a_rootfs_layer_by_layer(tmp_path: Path, snapshotter: str) -> None:
    async def body(r: Rig, stub: pb_grpc.DiffStub) -> None:
        sn = r.snapshotter(snapshotter)
        parent = ""
        for i, layer in enumerate((BASE, TOP)):
            desc = await store_blob(r, layer.blob, layer.media_type)
            mounts = await sn.prepare(f"active-{i}", parent)
            answer = await stub.Apply(
                pb.ApplyRequest(diff=desc, mounts=mounts_to_proto(mounts), sync_fs=True), metadata=MD
            )
            assert answer.applied.digest == layer.diff_id
            assert answer.applied.media_type == mediatypes.OCI_LAYER
            await sn.commit(f"layer-{i}", f"active-{i}")
            parent = f"layer-{i}"
        files = await read_tree(await sn.view("look", parent), tmp_path / "look")
        assert files["etc/keep"] == b"keep" and files["etc/new"] == b"new"
        assert "etc/drop" not in files

    run(tmp_path, body)


def test_apply_errors_are_typed(tmp_path: Path) -> None:
    async def body(r: Rig, stub: pb_grpc.DiffStub) -> None:
        mounts = mounts_to_proto(await r.snapshotter().prepare("a", ""))
        missing = descriptor_pb2.Descriptor(
            media_type=mediatypes.OCI_LAYER_GZIP, digest="sha256:" + "a" * 64, size=3
        )
        cases = [
            (pb.ApplyRequest(diff=missing, mounts=mounts), grpc.StatusCode.NOT_FOUND, "sha256:aaaa"),
            (pb.ApplyRequest(diff=missing), grpc.StatusCode.INVALID_ARGUMENT, "mounts"),
            (pb.ApplyRequest(mounts=mounts), grpc.StatusCode.INVALID_ARGUMENT, "diff.digest"),
        ]
        config = await store_blob(r, b"{}", mediatypes.OCI_CONFIG)
        cases.append(
            (pb.ApplyRequest(diff=config, mounts=mounts), grpc.StatusCode.INVALID_ARGUMENT, "not a layer")
        )
        hostile = build_layer([File("../../x", b"x")])
        bad = await store_blob(r, hostile.blob, hostile.media_type)
        cases.append((pb.ApplyRequest(diff=bad, mounts=mounts), grpc.StatusCode.INVALID_ARGUMENT, "../../x"))
        nowhere = mounts_to_proto([Mount("bind", str(r.root / "no-such-dir"), options=("rbind", "rw"))])
        layer = await store_blob(r, BASE.blob, BASE.media_type)
        cases.append(
            (pb.ApplyRequest(diff=layer, mounts=nowhere), grpc.StatusCode.INVALID_ARGUMENT, "cannot mount")
        )
        for request, code, words in cases:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Apply(request, metadata=MD)
            assert info.value.code() == code, info.value.details()
            assert words in (info.value.details() or ""), info.value.details()

    run(tmp_path, body)


def tar_names(blob: bytes, media_type: str) -> dict[str, tarfile.TarInfo]:
    raw = igzip.decompress(blob) if media_type.endswith("gzip") else blob
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        return {m.name: m for m in tf.getmembers()}


async def read_blob(r: Rig, digest: str) -> bytes:
    return await asyncio.to_thread((await r.content.open_blob(digest)).read_bytes)


@pytest.mark.parametrize("snapshotter", ["overlayfs", "native"])
def test_diff_of_a_container_change_and_back(tmp_path: Path, snapshotter: str) -> None:
    async def body(r: Rig, stub: pb_grpc.DiffStub) -> None:
        sn = r.snapshotter(snapshotter)
        base = await store_blob(r, BASE.blob, BASE.media_type)
        mounts = await sn.prepare("base-active", "")
        await stub.Apply(pb.ApplyRequest(diff=base, mounts=mounts_to_proto(mounts)), metadata=MD)
        await sn.commit("base", "base-active")
        # A container changes files in its active snapshot.
        work = await sn.prepare("work", "base")
        where = tmp_path / "work"
        await asyncio.to_thread(where.mkdir)
        await asyncio.to_thread(mount.mount_all, work, where)
        try:
            await asyncio.to_thread((where / "etc/drop").unlink)
            await asyncio.to_thread((where / "etc/added").write_bytes, b"added")
        finally:
            await asyncio.to_thread(mount.unmount_all, where, mount.MNT_DETACH)
        left = await sn.view("base-view", "base")
        request = pb.DiffRequest(
            left=mounts_to_proto(left), right=mounts_to_proto(work), ref="my-diff", labels={"x": "y"}
        )
        made = (await stub.Diff(request, metadata=MD)).diff
        assert made.media_type == mediatypes.OCI_LAYER_GZIP
        info = await r.content.info(made.digest)
        assert info.size == made.size and info.labels["x"] == "y"
        names = tar_names(await read_blob(r, made.digest), made.media_type)
        assert set(names) >= {"etc/added", "etc/.wh.drop"} and "etc/keep" not in names
        # Applying the diff onto the base again gives the container's tree.
        again = await sn.prepare("again", "base")
        applied = await stub.Apply(pb.ApplyRequest(diff=made, mounts=mounts_to_proto(again)), metadata=MD)
        assert applied.applied.digest == info.labels[L.UNCOMPRESSED]
        files = await read_tree(again, tmp_path / "again")
        assert files["etc/added"] == b"added" and "etc/drop" not in files and files["etc/keep"] == b"keep"

    run(tmp_path, body)


@pytest.mark.parametrize("snapshotter", ["overlayfs", "native"])
def test_diff_clamps_times_to_the_source_date_epoch(tmp_path: Path, snapshotter: str) -> None:
    epoch = 1_600_000_000  # after "old" below, before anything written now
    old = epoch - 86400

    async def body(r: Rig, stub: pb_grpc.DiffStub) -> None:
        sn = r.snapshotter(snapshotter)
        base = await store_blob(r, BASE.blob, BASE.media_type)
        mounts = await sn.prepare("base-active", "")
        await stub.Apply(pb.ApplyRequest(diff=base, mounts=mounts_to_proto(mounts)), metadata=MD)
        await sn.commit("base", "base-active")
        work = await sn.prepare("work", "base")
        where = tmp_path / "work"
        await asyncio.to_thread(where.mkdir)
        await asyncio.to_thread(mount.mount_all, work, where)
        try:
            await asyncio.to_thread((where / "etc/drop").unlink)
            await asyncio.to_thread((where / "etc/new").write_bytes, b"new")
            await asyncio.to_thread((where / "etc/old").write_bytes, b"old")
            await asyncio.to_thread(os.utime, where / "etc/old", (old, old))
        finally:
            await asyncio.to_thread(mount.unmount_all, where, mount.MNT_DETACH)
        left = mounts_to_proto(await sn.view("base-view", "base"))
        plain = (await stub.Diff(pb.DiffRequest(left=left, right=mounts_to_proto(work)), metadata=MD)).diff
        request = pb.DiffRequest(left=left, right=mounts_to_proto(work))
        request.source_date_epoch.FromSeconds(epoch)
        clamped = (await stub.Diff(request, metadata=MD)).diff
        before = tar_names(await read_blob(r, plain.digest), plain.media_type)
        after = tar_names(await read_blob(r, clamped.digest), clamped.media_type)
        assert set(before) == set(after) >= {"etc", "etc/new", "etc/old", "etc/.wh.drop"}
        assert before["etc/new"].mtime > epoch  # written just now: the epoch is what changes it
        assert after["etc/new"].mtime == after["etc"].mtime == epoch
        assert before["etc/old"].mtime == after["etc/old"].mtime == old
        assert all(m.mtime <= epoch for m in after.values())
        # Same trees, same epoch: the same layer.
        again = (await stub.Diff(request, metadata=MD)).diff
        assert again.digest == clamped.digest != plain.digest

    run(tmp_path, body)


def test_diff_media_types(tmp_path: Path) -> None:
    async def body(r: Rig, stub: pb_grpc.DiffStub) -> None:
        sn = r.snapshotter()
        mounts = await sn.prepare("one", "")
        where = tmp_path / "one"
        await asyncio.to_thread(where.mkdir)
        await asyncio.to_thread(mount.mount_all, mounts, where)
        try:
            await asyncio.to_thread((where / "f").write_bytes, b"f" * 1000)
        finally:
            await asyncio.to_thread(mount.unmount_all, where, mount.MNT_DETACH)
        right = mounts_to_proto(mounts)
        for media_type in (mediatypes.OCI_LAYER, mediatypes.OCI_LAYER_ZSTD):
            made = (await stub.Diff(pb.DiffRequest(right=right, media_type=media_type), metadata=MD)).diff
            assert made.media_type == media_type
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Diff(pb.DiffRequest(right=right, media_type="text/plain"), metadata=MD)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.aio.AioRpcError) as info:
            bad = [mount_pb2.Mount(type="bind", source=str(tmp_path / "absent"), options=["rbind"])]
            await stub.Diff(pb.DiffRequest(right=bad), metadata=MD)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    run(tmp_path, body)
