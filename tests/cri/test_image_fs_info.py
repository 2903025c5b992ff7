"""ImageFsInfo over a real snapshotter: sums per snapshotter, sampling period, shared samples."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from wharfd.cri.image_fs_info import SnapshotUsage, image_fs_info
from wharfd.runtime import namespaces
from wharfd.runtime.metadata.db import Database
from wharfd.runtime.snapshots.metadata import NamespacedSnapshotter
from wharfd.runtime.snapshots.native import NativeBackend
from wharfd.runtime.snapshots.snapshotter import Usage

T = TypeVar("T")


class Counting(NamespacedSnapshotter):
    """The real snapshotter, counting the usage calls a sample makes."""

    calls: list[str]

    async def usage(self, key: str) -> Usage:
        self.calls.append(key)
        return await super().usage(key)


def run(tmp_path: Path, body: Callable[[Counting], Awaitable[T]]) -> T:
    async def main() -> T:
        token = namespaces.current.set(namespaces.K8S)
        try:
            async with await Database.open(tmp_path / "metadata.db") as db:
                sn = Counting(db, NativeBackend(tmp_path / "native"))
                sn.calls = []
                return await body(sn)
        finally:
            namespaces.current.reset(token)

    return asyncio.run(main())


async def fill(sn: NamespacedSnapshotter, key: str, name: str, size: int) -> None:
    """Write a file of ``size`` bytes into active snapshot ``key``."""
    (mount,) = await sn.mounts(key)
    await asyncio.to_thread(Path(mount.source, name).write_bytes, os.urandom(size))


async def layers(sn: NamespacedSnapshotter) -> None:
    """A committed layer and a container's active layer on it, in k8s.io; noise in another namespace."""
    await sn.prepare("extract", "")
    await fill(sn, "extract", "base", 64 * 1024)
    await sn.commit("layer-1", "extract")
    await sn.prepare("container", "layer-1")
    await fill(sn, "container", "written", 16 * 1024)
    token = namespaces.current.set("default")
    try:
        await sn.prepare("elsewhere", "")
        await fill(sn, "elsewhere", "big", 1024 * 1024)
    finally:
        namespaces.current.reset(token)


def test_sums_the_snapshots_of_k8s_io(tmp_path: Path) -> None:
    async def body(sn: Counting) -> None:
        await layers(sn)
        expected = [await sn.usage("layer-1"), await sn.usage("container")]
        sampler = SnapshotUsage({"native": sn}, period=60)
        totals = await sampler.totals()
        assert totals["native"].used_bytes == sum(u.size for u in expected)
        assert totals["native"].inodes_used == sum(u.inodes for u in expected)
        assert totals["native"].snapshots == 2
        assert totals["native"].used_bytes < 1024 * 1024  # the other namespace's snapshot is not counted
        assert sampler.usage_of("native", "container") == expected[1]

    run(tmp_path, body)


def test_cached_for_the_period_and_committed_layers_measured_once(tmp_path: Path) -> None:
    async def body(sn: Counting) -> None:
        await layers(sn)
        cached = SnapshotUsage({"native": sn}, period=60)
        first = await cached.totals()
        await fill(sn, "container", "more", 256 * 1024)
        assert await cached.totals() == first  # within the period: the same sample

        live = SnapshotUsage({"native": sn}, period=0)
        before = (await live.totals())["native"].used_bytes
        sn.calls.clear()
        await fill(sn, "container", "even-more", 256 * 1024)
        after = (await live.totals())["native"].used_bytes
        assert after >= before + 256 * 1024
        assert sn.calls == ["container"]  # the committed layer was not asked again

    run(tmp_path, body)


def test_concurrent_callers_share_one_sample(tmp_path: Path) -> None:
    async def body(sn: Counting) -> None:
        await layers(sn)
        sampler = SnapshotUsage({"native": sn}, period=60)
        sn.calls.clear()
        a, b, c = await asyncio.gather(sampler.totals(), sampler.totals(), sampler.totals())
        assert a == b == c
        assert sorted(sn.calls) == ["container", "layer-1"]

    run(tmp_path, body)


def test_response_lists_the_default_snapshotter_first_for_images_and_containers(tmp_path: Path) -> None:
    async def body(sn: Counting) -> None:
        await layers(sn)
        sampler = SnapshotUsage({"native": sn}, period=60)
        roots = {"native": "/var/lib/wharfd/native", "overlayfs": "/var/lib/wharfd/overlay"}

        resp = await image_fs_info(sampler, roots, "native")
        (image_fs,) = resp.image_filesystems
        assert image_fs.fs_id.mountpoint == "/var/lib/wharfd/native"
        assert image_fs.used_bytes.value > 64 * 1024 and image_fs.inodes_used.value >= 4
        assert image_fs.timestamp > 0
        assert list(resp.container_filesystems) == [image_fs]

        # A default snapshotter without snapshots still comes first, at zero.
        other = await image_fs_info(sampler, roots, "overlayfs")
        assert [f.fs_id.mountpoint for f in other.image_filesystems] == [
            "/var/lib/wharfd/overlay",
            "/var/lib/wharfd/native",
        ]
        assert other.image_filesystems[0].used_bytes.value == 0
        assert other.image_filesystems[0].HasField("inodes_used")

    run(tmp_path, body)


def test_invalidate_forces_a_fresh_sample(tmp_path: Path) -> None:
    async def body(sn: Counting) -> None:
        sampler = SnapshotUsage({"native": sn}, period=3600)
        assert (await sampler.totals())["native"].snapshots == 0
        await layers(sn)  # a pull unpacked layers, a container started
        assert (await sampler.totals())["native"].snapshots == 0  # still the cached sample
        sampler.invalidate()
        assert (await sampler.totals())["native"].snapshots == 2

    run(tmp_path, body)
