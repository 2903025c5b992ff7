"""The shim's runc shortcuts with real files, FIFOs and mounts: the sealed copy, the exec FIFO start,
and unmounting a stacked rootfs without reading the mount table."""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import subprocess
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import pytest

from wharfd.runtime import mount
from wharfd.runtime.shim import container, runc
from wharfd.runtime.shim.reaper import Exit, Reaper
from wharfd.runtime.snapshots.snapshotter import Mount

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="mounts tmpfs: needs root")


def run(coro: Awaitable[Any]) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(30):
            return await coro

    return asyncio.run(bounded())


@pytest.fixture
def no_sealed_copy() -> Iterator[None]:
    """Whatever a test seals is dropped afterwards (the copy is process-wide)."""
    yield
    runc.seal("true", {runc.SEAL_ENV: "0"})


# -- the sealed copy -----------------------------------------------------------------------------


def test_sealed_copy_is_runnable_fully_sealed_and_follows_the_file(
    tmp_path: Path, no_sealed_copy: None
) -> None:
    binary = tmp_path / "runc"
    shutil.copy2(shutil.which("true") or "/bin/true", binary)
    env = {"PATH": str(tmp_path)}
    assert runc.seal("runc", env)
    program = runc.sealed_program(str(binary))
    assert program is not None and program.startswith("/proc/self/fd/")
    fd = int(program.rsplit("/", 1)[1])
    # What runc's nsexec checks before skipping its own copy: exactly these four seals.
    assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) == runc.SEALS
    assert os.readlink(program).startswith("/memfd:runc")
    with open(program, "rb") as copy:
        assert copy.read() == binary.read_bytes()
    with pytest.raises(OSError):
        os.write(fd, b"x")
    assert subprocess.run([program], close_fds=False, check=False).returncode == 0
    # Another file is not the one copied.
    other = tmp_path / "other"
    shutil.copy2(binary, other)
    assert runc.sealed_program(str(other)) is None
    # Changed on disk (an upgrade): exec'd from its path again until sealed anew.
    binary.write_bytes(binary.read_bytes())
    assert runc.sealed_program(str(binary)) is None
    assert runc.seal("runc", env)
    fresh = runc.sealed_program(str(binary))
    assert fresh is not None
    if fresh != program:
        with pytest.raises(OSError):  # the old copy was closed
            os.fstat(fd)


def test_sealed_copy_can_be_turned_off_or_missing(tmp_path: Path, no_sealed_copy: None) -> None:
    binary = tmp_path / "runc"
    shutil.copy2(shutil.which("true") or "/bin/true", binary)
    assert runc.seal("runc", {"PATH": str(tmp_path)})
    assert not runc.seal("runc", {"PATH": str(tmp_path), runc.SEAL_ENV: "0"})
    assert runc.sealed_program(str(binary)) is None
    assert not runc.seal("runc", {"PATH": str(tmp_path / "nowhere")})
    assert runc.sealed_program(str(binary)) is None


# -- start through the exec FIFO -----------------------------------------------------------------


def state_dir(tmp_path: Path, cid: str = "c1") -> Path:
    """A runc-like state directory: state.json and the exec FIFO."""
    folder = tmp_path / cid
    folder.mkdir()
    (folder / "state.json").write_text("{}")
    os.mkfifo(folder / runc.EXEC_FIFO, 0o622)
    return folder


def test_start_created_reads_the_byte_then_end_of_file_and_removes_the_fifo(tmp_path: Path) -> None:
    folder = state_dir(tmp_path)

    async def body() -> bool:
        loop = asyncio.get_running_loop()
        init_exited: asyncio.Future[Exit] = loop.create_future()
        started = asyncio.ensure_future(
            runc.Runc(Reaper({}), root=str(tmp_path)).start_created("c1", init_exited)
        )
        # runc init: its blocking open returns once the shim holds the read end; it writes
        # "0", and the end of file comes when it execs the user's program.
        writer = await asyncio.to_thread(os.open, folder / runc.EXEC_FIFO, os.O_WRONLY)
        os.write(writer, b"0")
        await asyncio.sleep(0.05)
        assert not started.done()  # still waiting for the exec
        os.close(writer)
        return await started

    assert run(body()) is True
    assert not (folder / runc.EXEC_FIFO).exists()  # what makes runc report "running"


def test_start_created_fails_when_init_died_without_writing(tmp_path: Path) -> None:
    folder = state_dir(tmp_path)

    async def body() -> None:
        init_exited: asyncio.Future[Exit] = asyncio.get_running_loop().create_future()
        init_exited.set_result(Exit(1234, 137, 0))
        with pytest.raises(runc.RuncError, match="container process is already dead"):
            await runc.Runc(Reaper({}), root=str(tmp_path)).start_created("c1", init_exited)

    run(body())
    assert (folder / runc.EXEC_FIFO).exists()


def test_start_created_leaves_other_layouts_to_runc_start(tmp_path: Path) -> None:
    async def body(root: Path, cid: str, env: dict[str, str] | None = None) -> bool:
        init_exited: asyncio.Future[Exit] = asyncio.get_running_loop().create_future()
        return await runc.Runc(Reaper(env or {}), root=str(root)).start_created(cid, init_exited)

    # No state.json (crun keeps an exec.fifo too, but writes to it from `start`).
    (tmp_path / "crun").mkdir()
    os.mkfifo(tmp_path / "crun" / runc.EXEC_FIFO)
    assert run(body(tmp_path, "crun")) is False
    # Started already: no FIFO.
    (tmp_path / "gone").mkdir()
    (tmp_path / "gone" / "state.json").write_text("{}")
    assert run(body(tmp_path, "gone")) is False
    # Not a FIFO.
    (tmp_path / "file").mkdir()
    (tmp_path / "file" / "state.json").write_text("{}")
    (tmp_path / "file" / runc.EXEC_FIFO).write_text("0")
    assert run(body(tmp_path, "file")) is False
    # runc start relays the container's readiness to NOTIFY_SOCKET: leave it to runc.
    state_dir(tmp_path, "notify")
    assert run(body(tmp_path, "notify", {"NOTIFY_SOCKET": "/run/systemd/notify"})) is False
    assert (tmp_path / "notify" / runc.EXEC_FIFO).exists()


# -- unmounting the rootfs -----------------------------------------------------------------------


@root_only
def test_unmount_stack_peels_stacked_mounts_and_refuses_mounts_below(tmp_path: Path) -> None:
    target = tmp_path / "rootfs"
    target.mkdir()
    tmpfs = Mount("tmpfs", "tmpfs", "", ())
    try:
        mount.mount(tmpfs, target)
        mount.mount(tmpfs, target)
        assert container._unmount_stack(str(target))
        assert not mount.is_mount_point(target)
        # A mount below the stacked one: EBUSY, left for the mount-table walk.
        mount.mount(tmpfs, target)
        (target / "sub").mkdir()
        mount.mount(tmpfs, target / "sub")
        assert not container._unmount_stack(str(target))
        assert mount.is_mount_point(target / "sub")
    finally:
        mount.unmount_all(target, mount.MNT_DETACH)
    assert not mount.is_mount_point(target)
