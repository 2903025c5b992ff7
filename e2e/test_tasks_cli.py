"""``wharf run`` and ``wharf tasks …`` against the real daemon, with real runc.

Tests that take the ``shim`` fixture run twice: with the CLI's default runtime
(wharfd's shim, no ``--runtime`` flag) and with ``--runtime io.containerd.runc.v2``
(containerd's stock shim, skipped when it is not installed), so both stay covered.

The image is made the way the pull pipeline leaves one: its blobs (layer,
config, manifest) in the content store, an image record naming the
manifest, and the unpacked rootfs committed as the chain-id snapshot.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from e2e.task_support import (
    OUR_SHIM_SOURCE,
    OURS,
    RUNC,
    SNAPSHOTTER,
    STOCK,
    STOCK_SHIM,
    TaskRig,
    populate_busybox,
    started_rig,
    zygote_pids,
)
from wharfd.api.services.images.v1 import images_pb2 as ipb
from wharfd.api.services.images.v1 import images_pb2_grpc as igrpc
from wharfd.api.services.snapshots.v1 import snapshots_pb2 as spb
from wharfd.api.types import descriptor_pb2

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="tasks need root (mounts, runc)"),
    pytest.mark.skipif(RUNC is None, reason="runc is not installed"),
    pytest.mark.timeout(180),
]

IMAGE = "docker.io/library/busybox:wharf-test"
WHARF = str(Path(sys.executable).parent / "wharf")
NO_STOCK_SHIM = pytest.mark.skipif(not STOCK_SHIM.exists(), reason=f"{STOCK_SHIM} is not installed")


@dataclass(frozen=True)
class Shim:
    """A runtime a test runs under: its name and the ``wharf`` flags that select it."""

    runtime: str
    flags: tuple[str, ...]


@pytest.fixture(
    params=[
        pytest.param(Shim(OURS, ()), id="default"),
        pytest.param(Shim(STOCK, ("--runtime", STOCK)), id="stock", marks=NO_STOCK_SHIM),
    ]
)
def shim(request: pytest.FixtureRequest) -> Shim:
    """The CLI's default runtime (wharfd's shim), then containerd's stock shim named explicitly."""
    shim: Shim = request.param
    return shim


@pytest.fixture
def rig() -> Iterator[TaskRig]:
    with started_rig() as r:
        add_image(r, IMAGE)
        yield r


def add_image(rig: TaskRig, name: str) -> None:
    """Blobs, image record and chain-id snapshot, as a pull with unpack leaves them."""
    from tests.support.images import build_image, build_layer, busybox_files
    from wharfd.runtime.client import Client
    from wharfd.runtime.ctr.content import write_blob

    layer = build_layer(busybox_files(("sh", "echo", "sleep", "true", "stty", "cat")))
    image = build_image([layer], cmd=["sh"])
    gc = "containerd.io/gc.ref."
    blobs: tuple[tuple[bytes, str, dict[str, str]], ...] = (
        (layer.blob, layer.descriptor.digest, {}),
        (image.config, image.config_desc.digest, {f"{gc}snapshot.{SNAPSHOTTER}": layer.diff_id}),
        (
            image.manifest,
            image.manifest_desc.digest,
            {f"{gc}content.config": image.config_desc.digest, f"{gc}content.l.0": layer.descriptor.digest},
        ),
    )
    with Client(str(rig.daemon.address), namespace=rig.ns) as client:
        for blob, digest, labels in blobs:
            write_blob(client, f"test-{digest}", io.BytesIO(blob), len(blob), digest, labels=labels)
    target = descriptor_pb2.Descriptor(
        media_type=image.manifest_desc.media_type,
        digest=image.manifest_desc.digest,
        size=image.manifest_desc.size,
    )
    stub = igrpc.ImagesStub(rig._channel)
    stub.Create(ipb.CreateImageRequest(image=ipb.Image(name=name, target=target)), metadata=rig.md)
    key = "unpack-busybox"
    mounts = rig.snapshots.Prepare(spb.PrepareSnapshotRequest(snapshotter=SNAPSHOTTER, key=key)).mounts
    populate_busybox(Path(mounts[0].source))
    # One layer: its chain id is its diff id.
    rig.snapshots.Commit(spb.CommitSnapshotRequest(snapshotter=SNAPSHOTTER, name=layer.diff_id, key=key))


def wharf(
    rig: TaskRig, *args: str, check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    cmd = [WHARF, "--address", str(rig.daemon.address), "--namespace", rig.ns, *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise AssertionError(f"wharf {' '.join(args)} exited {result.returncode}: {result.stderr}")
    return result


def runc_root(rig: TaskRig, shim: Shim) -> list[str]:
    return [*shim.flags, "--runc-root", str(rig.runc_root)]  # the shim adds /<namespace>


def shim_kind(rig: TaskRig, task_pid: int) -> str:
    """The runtime whose shim is the parent of ``task_pid``: the stock binary, or a child of our zygote."""
    shim_pid = _ppid(task_pid)
    if Path(f"/proc/{shim_pid}/exe").resolve() == STOCK_SHIM.resolve():
        return STOCK
    assert _ppid(shim_pid) in zygote_pids(rig.daemon.state / "s"), f"unknown shim {shim_pid}"
    return OURS


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def test_run_rm_prints_hi_with_no_flags(rig: TaskRig) -> None:
    """Issue #4's check: with no containerd package, ``run`` works with the default runtime."""
    rig.ids.update({"t0", "t1"})
    result = wharf(rig, "run", "--rm", IMAGE, "t1", "echo", "hi")
    assert result.stdout == "hi\n", result.stderr
    wharf(rig, "containers", "create", IMAGE, "t0", "true")
    runtime = json.loads(wharf(rig, "containers", "info", "t0").stdout)["Runtime"]
    assert runtime == {"Name": OURS, "Options": {"type_url": "containerd.runc.v1.Options"}}
    wharf(rig, "containers", "rm", "t0")


def test_run_rm_prints_hi(rig: TaskRig, shim: Shim) -> None:
    rig.ids.add("t1")
    result = wharf(rig, "run", "--rm", *runc_root(rig, shim), IMAGE, "t1", "echo", "hi")
    assert result.stdout == "hi\n"
    assert wharf(rig, "containers", "ls", "-q").stdout == ""
    assert wharf(rig, "tasks", "ls", "-q").stdout == ""
    keys = wharf(rig, "snapshots", "ls").stdout
    assert "t1" not in keys.split()


@pytest.mark.skipif(not OUR_SHIM_SOURCE.exists(), reason="runtime/shim/main.py is missing")
def test_run_with_our_shim_and_exit_code(rig: TaskRig) -> None:
    rig.ids.add("t2")
    result = wharf(
        rig, "run", "--rm", "--runtime", OURS, IMAGE, "t2", "sh", "-c", "echo out; exit 4", check=False
    )
    assert (result.returncode, result.stdout) == (4, "out\n"), result.stderr


def test_task_commands(rig: TaskRig, shim: Shim) -> None:
    rig.ids.add("t3")
    wharf(rig, "run", "-d", *runc_root(rig, shim), IMAGE, "t3", "sleep", "1000")
    lines = wharf(rig, "tasks", "ls").stdout.splitlines()
    assert re.fullmatch(r"TASK {4,}PID {4,}STATUS {4}", lines[0]), lines[0]
    name, pid, status = lines[1].split()
    assert (name, status) == ("t3", "RUNNING") and int(pid) > 0
    assert shim_kind(rig, int(pid)) == shim.runtime
    assert wharf(rig, "tasks", "ls", "-q").stdout == "t3\n"
    assert pid in wharf(rig, "tasks", "ps", "t3").stdout.split()
    assert wharf(rig, "tasks", "exec", "--exec-id", "e1", "t3", "echo", "in-exec").stdout == "in-exec\n"
    assert (
        wharf(rig, "tasks", "exec", "--exec-id", "e2", "t3", "sh", "-c", "exit 6", check=False).returncode
        == 6
    )
    wharf(rig, "tasks", "pause", "t3")
    assert wharf(rig, "tasks", "ls").stdout.splitlines()[1].split()[2] == "PAUSED"
    wharf(rig, "tasks", "resume", "t3")
    table = wharf(rig, "tasks", "metrics", "t3").stdout
    assert table.startswith("ID") and "pids.current" in table and "memory.usage_in_bytes" in table
    data = json.loads(wharf(rig, "tasks", "metrics", "--format", "json", "t3").stdout)
    assert data["pids"]["current"] >= 1
    failed = wharf(rig, "containers", "rm", "t3", check=False)
    assert failed.returncode == 1 and "cannot delete a non stopped container" in failed.stderr
    wharf(rig, "tasks", "kill", "-s", "SIGKILL", "t3")
    deadline = time.monotonic() + 10
    while "STOPPED" not in wharf(rig, "tasks", "ls").stdout:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert wharf(rig, "tasks", "rm", "t3", check=False).returncode == 137
    wharf(rig, "containers", "rm", "t3")


def test_start_attached_and_force_delete(rig: TaskRig, shim: Shim) -> None:
    rig.ids.update({"t4", "t5"})
    wharf(rig, "containers", "create", *runc_root(rig, shim), IMAGE, "t4", "sh", "-c", "echo started; exit 2")
    result = wharf(rig, "tasks", "start", "t4", check=False)
    assert (result.returncode, result.stdout) == (2, "started\n")
    assert wharf(rig, "tasks", "rm", "t4", check=False).returncode == 2
    wharf(rig, "containers", "create", *runc_root(rig, shim), IMAGE, "t5", "sleep", "1000")
    wharf(rig, "tasks", "start", "-d", "t5")
    assert wharf(rig, "tasks", "rm", "-f", "t5", check=False).returncode == 137
    wharf(rig, "containers", "rm", "t4", "t5")


def test_run_tty_raw_and_resized(rig: TaskRig, shim: Shim) -> None:
    """``run -t`` under a pseudo terminal of 33x77: the task's terminal gets that size."""
    rig.ids.add("t6")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 77, 0, 0))
    cmd = [WHARF, "--address", str(rig.daemon.address), "--namespace", rig.ns]
    cmd += ["run", "--rm", "-t", *runc_root(rig, shim), IMAGE, "t6", "stty", "size"]
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    output = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                output += os.read(master, 4096)
            except OSError:
                break
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(10) == 0, output
    assert b"33 77" in output


def test_oci_spec_prints_default() -> None:
    result = subprocess.run([WHARF, "oci", "spec"], capture_output=True, text=True, check=True)
    spec = json.loads(result.stdout)
    assert spec["linux"]["cgroupsPath"] == "/default/"
    assert spec["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]


def test_attach_to_fifos(rig: TaskRig, shim: Shim) -> None:
    """``tasks attach`` copies stdio through the FIFOs another client created the task with."""
    from e2e.task_support import Stdio
    from wharfd.api.services.tasks.v1 import tasks_pb2 as tpb

    rig.create_container("t7", ["sh", "-c", "read x; echo got $x"], runtime=shim.runtime)
    stdio = Stdio(rig.base / "fifo", "t7")
    # The creating client's read ends: the shim can open its write ends; the pipes keep the data.
    holders = [os.open(path, os.O_RDONLY | os.O_NONBLOCK) for path in (stdio.stdout, stdio.stderr)]
    try:
        rig.create_task("t7", stdio=stdio)
        rig.tasks.Start(tpb.StartRequest(container_id="t7"))
        cmd = [WHARF, "--address", str(rig.daemon.address), "--namespace", rig.ns, "tasks", "attach", "t7"]
        result = subprocess.run(cmd, input="hello\n", capture_output=True, text=True, timeout=60)
    finally:
        for fd in holders:
            os.close(fd)
    assert (result.returncode, result.stdout) == (0, "got hello\n"), result.stderr
    wharf(rig, "tasks", "rm", "t7")
    wharf(rig, "containers", "rm", "t7")
