"""mount.py: option parsing and call sequences through the recording fake, then real mounts as root."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest

from wharfd.runtime import errors, mount
from wharfd.runtime.mount import Recorder
from wharfd.runtime.snapshots.snapshotter import Mount

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="performs real mounts")


def test_parse_options_splits_flags_propagation_and_data() -> None:
    opts = mount.parse_options(["ro", "nosuid", "nodev", "rbind", "rprivate", "size=1m", "mode=755"])
    assert opts.flags == mount.MS_RDONLY | mount.MS_NOSUID | mount.MS_NODEV | mount.MS_BIND | mount.MS_REC
    assert opts.propagation == mount.MS_PRIVATE | mount.MS_REC
    assert opts.data == ("size=1m", "mode=755")


def test_later_words_override_earlier_ones() -> None:
    assert mount.parse_options(["ro", "rw"]).flags == 0
    assert mount.parse_options(["rw", "ro"]).flags == mount.MS_RDONLY
    assert mount.parse_options(["noexec", "exec", "defaults"]).flags == 0


def test_read_only_bind_is_a_bind_then_a_remount() -> None:
    rec = Recorder()
    mount.mount(Mount("bind", "/src", options=("ro", "rbind")), "/dst", syscalls=rec)
    bind = mount.MS_BIND | mount.MS_REC | mount.MS_RDONLY
    remount = mount.MS_BIND | mount.MS_RDONLY | mount.MS_REMOUNT
    assert rec.calls == [
        ("mount", "/src", "/dst", "bind", hex(bind), ""),
        ("mount", "", "/dst", "", hex(remount), ""),
    ]


def test_propagation_is_a_separate_call_and_target_is_joined() -> None:
    rec = Recorder()
    mount.mount(
        Mount("tmpfs", "tmpfs", target="/dev/shm", options=("nosuid", "rslave", "size=64k")),
        "/r",
        syscalls=rec,
    )
    assert rec.calls == [
        ("mount", "tmpfs", "/r/dev/shm", "tmpfs", hex(mount.MS_NOSUID), "size=64k"),
        ("mount", "", "/r/dev/shm", "", hex(mount.MS_SLAVE | mount.MS_REC), ""),
    ]


def test_short_overlay_data_is_passed_as_is() -> None:
    rec = Recorder()
    options = ("workdir=/w", "upperdir=/u", "lowerdir=/a:/b")
    mount.mount(Mount("overlay", "overlay", options=options), "/m", syscalls=rec)
    assert rec.calls == [
        ("mount", "overlay", "/m", "overlay", "0x0", "workdir=/w,upperdir=/u,lowerdir=/a:/b")
    ]


def test_long_lowerdir_is_named_by_file_descriptor(tmp_path: Path) -> None:
    layers = []
    for i in range(150):
        layer = tmp_path / ("long-directory-name-" * 3) / str(i)
        layer.mkdir(parents=True)
        layers.append(str(layer))
    rec = Recorder()
    options = ("upperdir=/u", "lowerdir=" + ":".join(layers), "index=off")
    assert len(",".join(options)) > mount.PAGE_SIZE
    mount.mount(Mount("overlay", "overlay", options=options), "/m", syscalls=rec)
    data = rec.calls[0][5]
    upper, lower, index = data.split(",")
    assert (upper, index) == ("upperdir=/u", "index=off")
    assert len(lower.split(":")) == 150 and lower.startswith("lowerdir=/proc/self/fd/")
    assert len(data) < mount.PAGE_SIZE
    for fd in (int(entry.rsplit("/", 1)[1]) for entry in lower.removeprefix("lowerdir=").split(":")):
        try:
            still = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:
            continue
        assert still not in layers, "the layer fds are closed after the mount"


def test_too_many_layers_even_for_fds_is_a_clear_error(tmp_path: Path) -> None:
    layer = tmp_path / "l"
    layer.mkdir()
    options = ("lowerdir=" + ":".join([str(layer)] * 400),)
    with pytest.raises(errors.InvalidArgument, match=r"overlay mount on /m: options need \d+ bytes"):
        mount.mount(Mount("overlay", "overlay", options=options), "/m", syscalls=Recorder())


def test_unmount_ignores_not_mounted_and_retries_busy() -> None:
    rec = Recorder(fail={"/none": errno.EINVAL})
    mount.unmount("/none", syscalls=rec)
    assert rec.calls == []
    busy = Recorder(fail={"/busy": errno.EBUSY})
    with pytest.raises(OSError) as exc:
        mount.unmount("/busy", syscalls=busy, attempts=2)
    assert exc.value.errno == errno.EBUSY


def test_mount_all_undoes_earlier_mounts_when_one_fails() -> None:
    rec = Recorder(fail={"/r/b": errno.ENOENT})
    with pytest.raises(OSError):
        mount.mount_all(
            [Mount("tmpfs", "a", target="a"), Mount("tmpfs", "b", target="b")], "/r", syscalls=rec
        )
    assert rec.calls[-1] == ("umount2", "/r/a", hex(mount.MNT_DETACH))


@needs_root
def test_real_read_only_bind_and_unmount_all(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "sub").mkdir(parents=True)
    dst.mkdir()
    (src / "f").write_text("x")
    try:
        mount.mount(Mount("bind", str(src), options=("ro", "rbind")), dst)
        mount.mount(Mount("tmpfs", "tmpfs", target="sub", options=("size=1m",)), tmp_path / "src")
        assert mount.is_mount_point(dst)
        assert (dst / "f").read_text() == "x"
        with pytest.raises(OSError) as exc:
            (dst / "g").write_text("y")
        assert exc.value.errno == errno.EROFS
        # Stack a second mount on the same point: unmount_all must peel both.
        mount.mount(Mount("tmpfs", "tmpfs", options=("size=1m",)), dst)
    finally:
        mount.unmount_all(tmp_path)
    assert not mount.is_mount_point(dst)
    assert not [
        line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(tmp_path) in line
    ]


def test_readonly_turns_an_upper_into_a_lower() -> None:
    m = Mount("overlay", "overlay", "", ("workdir=/w", "upperdir=/u", "lowerdir=/a:/b", "index=off"))
    assert mount.readonly(m).options == ("index=off", "lowerdir=/u:/a:/b", "ro")
    alone = Mount("overlay", "overlay", "", ("upperdir=/u", "workdir=/w"))
    assert mount.readonly(alone).options == ("lowerdir=/u", "ro")
    view = Mount("overlay", "overlay", "", ("lowerdir=/a:/b", "rw"))
    assert mount.readonly(view).options == ("lowerdir=/a:/b", "ro")
    b = Mount("bind", "/x", "", ("rw", "rbind"))
    assert mount.readonly(b).options == ("rbind", "ro")


@needs_root
def test_temporary_blocking_mount_point_is_made_and_removed(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    tmpfs = [Mount("tmpfs", "tmpfs", options=("size=1m",))]
    with mount.temporary_blocking(tmpfs, scratch, "wharfd-test-view-") as point:
        assert Path(point).parent == scratch and Path(point).name.startswith("wharfd-test-view-")
        assert mount.is_mount_point(point)
    with pytest.raises(RuntimeError), mount.temporary_blocking(tmpfs, scratch) as point:
        raise RuntimeError("the block failed")
    assert not mount.is_mount_point(point)
    missing = [Mount("bind", str(tmp_path / "missing"), options=("rbind",))]
    with pytest.raises(FileNotFoundError), mount.temporary_blocking(missing, scratch):  # the kernel's error
        pass
    assert list(scratch.iterdir()) == []


@needs_root
def test_temporary_mount_point_is_made_and_removed(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"  # made by the first use
    tmpfs = [Mount("tmpfs", "tmpfs", options=("size=1m",))]

    async def main() -> None:
        async with mount.temporary(tmpfs, scratch) as point:
            assert Path(point).parent == scratch and mount.is_mount_point(point)
        with pytest.raises(RuntimeError):
            async with mount.temporary(tmpfs, scratch) as point:
                raise RuntimeError("the block failed")
        assert not mount.is_mount_point(point)
        with pytest.raises(FileNotFoundError):  # the kernel's error, as it is
            async with mount.temporary(
                [Mount("bind", str(tmp_path / "missing"), options=("rbind",))], scratch
            ):
                pass

    asyncio.run(main())
    assert list(scratch.iterdir()) == []  # every mount point removed
    assert str(scratch) not in Path("/proc/self/mountinfo").read_text()
