"""overlayfs specifics: containerd's layout and mount shapes, whiteouts, long chains, the init check."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import pytest

from wharfd.runtime import mount, namespaces, plugin
from wharfd.runtime.metadata.db import Database
from wharfd.runtime.snapshots import overlay, testsuite
from wharfd.runtime.snapshots.metadata import NamespacedSnapshotter
from wharfd.runtime.snapshots.overlay import OverlayBackend
from wharfd.runtime.snapshots.snapshotter import Kind, Mount

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounts overlayfs: needs root"),
]
T = TypeVar("T")


@asynccontextmanager
async def snapshotter(tmp_path: Path) -> AsyncIterator[NamespacedSnapshotter]:
    token = namespaces.current.set("default")
    try:
        async with await Database.open(tmp_path / "metadata.db") as db:
            yield NamespacedSnapshotter(db, OverlayBackend(tmp_path / "root"))
    finally:
        namespaces.current.reset(token)
        mount.unmount_all(tmp_path, mount.MNT_DETACH)


def run(tmp_path: Path, fn: Callable[[NamespacedSnapshotter], Awaitable[T]]) -> T:
    async def main() -> T:
        async with snapshotter(tmp_path) as sn:
            return await fn(sn)

    return asyncio.run(main())


def test_mount_shapes_follow_containerd(tmp_path: Path) -> None:
    backend = OverlayBackend(tmp_path, options=("index=off",))
    fs = f"{tmp_path}/snapshots/{{}}/fs".format
    assert backend.mounts(7, Kind.ACTIVE, []) == [Mount("bind", fs(7), options=("rw", "rbind"))]
    assert backend.mounts(7, Kind.VIEW, []) == [Mount("bind", fs(7), options=("ro", "rbind"))]
    assert backend.mounts(7, Kind.VIEW, [3]) == [Mount("bind", fs(3), options=("ro", "rbind"))]
    assert backend.mounts(7, Kind.ACTIVE, [3, 1]) == [
        Mount(
            "overlay",
            "overlay",
            options=(
                f"workdir={tmp_path}/snapshots/7/work",
                f"upperdir={fs(7)}",
                f"lowerdir={fs(3)}:{fs(1)}",
                "index=off",
            ),
        )
    ]
    assert backend.mounts(7, Kind.VIEW, [3, 1]) == [
        Mount("overlay", "overlay", options=(f"lowerdir={fs(3)}:{fs(1)}", "index=off"))
    ]


def test_layout_on_disk(tmp_path: Path) -> None:
    async def check(sn: NamespacedSnapshotter) -> None:
        await sn.prepare("base")
        await sn.commit("base-done", "base")
        await sn.prepare("active", "base-done")
        await sn.view("view", "base-done")

    run(tmp_path, check)
    snapshots = tmp_path / "root" / "snapshots"
    assert sorted(os.listdir(snapshots)) == ["1", "2", "3"]
    assert sorted(os.listdir(snapshots / "1")) == ["fs", "work"]
    assert sorted(os.listdir(snapshots / "2")) == ["fs", "work"]
    assert sorted(os.listdir(snapshots / "3")) == ["fs"]  # a view has nothing to write to
    assert stat.S_IMODE(os.stat(snapshots).st_mode) == 0o700


def test_whiteout_in_upper_layer_hides_lower_file(tmp_path: Path) -> None:
    """What the unpacker writes for an OCI ``.wh.`` entry: a 0/0 character device in the layer."""
    scratch = tmp_path / "mnt"

    async def check(sn: NamespacedSnapshotter) -> None:
        await testsuite.commit_layer(sn, scratch, "lower", "", {"gone": "x", "kept": "y"})
        mounts = await sn.prepare("upper-active", "lower")
        upper = Path(next(o for o in mounts[0].options if o.startswith("upperdir=")).split("=", 1)[1])
        os.mknod(upper / "gone", stat.S_IFCHR | 0o000, os.makedev(0, 0))
        await sn.commit("upper", "upper-active")
        for key, make in (("view", sn.view), ("container", sn.prepare)):
            async with testsuite.mounted(await make(key, "upper"), scratch / key) as root:
                assert sorted(os.listdir(root)) == ["kept"]
                assert not (root / "gone").exists()

    run(tmp_path, check)


def test_deleting_through_the_mount_writes_a_whiteout(tmp_path: Path) -> None:
    scratch = tmp_path / "mnt"

    async def check(sn: NamespacedSnapshotter) -> Path:
        await testsuite.commit_layer(sn, scratch, "lower", "", {"f": "x"})
        mounts = await sn.prepare("c", "lower")
        async with testsuite.mounted(mounts, scratch / "c") as root:
            (root / "f").unlink()
        return Path(next(o for o in mounts[0].options if o.startswith("upperdir=")).split("=", 1)[1])

    upper = run(tmp_path, check)
    st = os.lstat(upper / "f")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)


def touch_in_layer(mounts: list[Mount], name: str) -> None:
    """Create ``name`` in the layer a prepare returned: its upperdir, or the bind source of a base."""
    upper = [o.split("=", 1)[1] for o in mounts[0].options if o.startswith("upperdir=")]
    Path(upper[0] if upper else mounts[0].source, name).touch()


def mountinfo_of(point: Path) -> str:
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return next(line for line in lines if f" {point} " in line)


def test_128_layers_need_more_than_a_page_and_still_mount(tmp_path: Path) -> None:
    scratch = tmp_path / "mnt"

    async def check(sn: NamespacedSnapshotter) -> None:
        parent = ""
        for i in range(128):
            mounts = await sn.prepare(f"l{i}-a", parent)
            touch_in_layer(mounts, f"f{i}")
            await sn.commit(f"l{i}", f"l{i}-a")
            parent = f"l{i}"
        mounts = await sn.prepare("top", parent)
        data = ",".join(mounts[0].options)
        assert len(data) > mount.PAGE_SIZE, "the test must exercise the long-options path"
        async with testsuite.mounted(mounts, scratch / "top") as root:
            assert len(os.listdir(root)) == 128
            assert "lowerdir=/proc/self/fd/" in mountinfo_of(root)

    run(tmp_path, check)


def test_new_layer_root_inherits_owner_and_mode_of_parent_root(tmp_path: Path) -> None:
    async def check(sn: NamespacedSnapshotter) -> None:
        mounts = await sn.prepare("base")
        os.chown(mounts[0].source, 1000, 1001)
        os.chmod(mounts[0].source, 0o750)
        await sn.commit("base-done", "base")
        mounts = await sn.prepare("child", "base-done")
        upper = mounts[0].options[1].split("=", 1)[1]
        st = os.stat(upper)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1001, 0o750)

    run(tmp_path, check)


def test_supported_on_ext4_root(tmp_path: Path) -> None:
    assert overlay.check_supported(tmp_path / "root") is None
    assert os.listdir(tmp_path / "root") == []  # the probe cleans up after itself


def test_unsupported_root_gives_a_reason_and_the_plugin_skips(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    mount.mount(Mount("tmpfs", "tmpfs", options=("ro", "size=1m")), ro)
    try:
        reason = overlay.check_supported(ro / "overlayfs")
        assert reason is not None and str(ro) in reason and "Read-only" in reason

        from wharfd.runtime.snapshots import plugin as snapshots_plugin

        ctx = plugin.InitContext(
            registration=snapshots_plugin.OVERLAYFS_PLUGIN,
            config=None,
            plugin_config={"root_path": str(ro / "overlayfs")},
            root=tmp_path / "unused",
            state=tmp_path / "state",
            plugins=plugin.PluginSet([]),
        )

        async def init() -> object:
            return await snapshots_plugin.OVERLAYFS_PLUGIN.init(ctx)

        with pytest.raises(plugin.SkipPlugin, match="Read-only"):
            asyncio.run(init())
    finally:
        mount.unmount_all(ro)
