"""A rig for driving ``containerd-shim-wharf-v2`` as a daemon would (used by test_shim_tasks.py).

It launches the shim binary with the runtime v2 ``start`` protocol, records the
events the shim forwards to a ttrpc server standing in for the daemon, and
cleans up — shims, zygote, runc containers, rootfs mounts, cgroups named
``wharfd-test-…`` — even when a test fails. No tests live here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf import any_pb2
from google.protobuf.message import Message

from wharfd.api.events import task_pb2 as ev
from wharfd.api.runtime.bootstrap.v1 import bootstrap_pb2
from wharfd.api.runtime.task.v3 import shim_pb2 as api
from wharfd.api.services.ttrpc.events.v1 import events_pb2
from wharfd.api.types import mount_pb2
from wharfd.api.types.runc.options import oci_pb2
from wharfd.runtime import mount
from wharfd.runtime.shim.launch import DEFAULT_SOCKET_DIR
from wharfd.runtime.ttrpc.client import TtrpcClient
from wharfd.runtime.ttrpc.server import TtrpcServer

SHIM = Path(sys.executable).parent / "containerd-shim-wharf-v2"
BUSYBOX = Path("/bin/busybox")
RUNC = shutil.which("runc")
TASK = "containerd.task.v3.Task"
NAMESPACE = "wharfd-test"
APPLETS = ("sh", "echo", "sleep", "cat", "stty", "dd", "true", "false", "head", "ls")
M = TypeVar("M", bound=Message)
TIMEOUT = 10.0


def build_busybox(root: Path) -> Path:
    """A read-only lower layer: static busybox and the directories runc mounts onto."""
    (root / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    for name in ("proc", "dev", "sys", "tmp", "etc", "run"):
        (root / name).mkdir()
    return root


def base_spec() -> dict[str, Any]:
    """``runc spec`` output: the defaults runc itself proposes."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([str(RUNC), "spec", "--bundle", tmp], check=True)
        return json.loads((Path(tmp) / "config.json").read_text())  # type: ignore[no-any-return]


class Rig:
    """One test's shims, containers and event recorder; use as ``async with Rig(busybox) as rig``."""

    def __init__(self, busybox: Path) -> None:
        self.busybox = busybox
        # Short: the shim socket is <root>/s/<64 hex> and must stay under 106 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="wharfd-test-", dir="/tmp"))
        self.tag = self.root.name
        self.socket_dir = self.root / "s"
        self.runc_root = self.root / "runc"
        self.events: list[tuple[str, str, Message]] = []
        self.server = TtrpcServer()
        self.clients: list[TtrpcClient] = []
        self.shim_pids: set[int] = set()
        self.bundles: list[Path] = []
        self.addresses: set[str] = set()
        # Socket dirs whose zygote this rig may have started, and zygotes that were there before it.
        self.socket_dirs = {self.socket_dir}
        self.foreign_zygotes: set[int] = set()
        self._spec: dict[str, Any] | None = None

    @property
    def ttrpc_address(self) -> str:
        return str(self.root / "daemon.sock.ttrpc")

    @property
    def grpc_address(self) -> str:
        return str(self.root / "daemon.sock")

    async def __aenter__(self) -> Rig:
        self.server.register("containerd.services.events.ttrpc.v1.Events", "Forward", self._forward)
        await self.server.listen(self.ttrpc_address)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for client in self.clients:
            with contextlib.suppress(Exception):
                await client.close()
        with contextlib.suppress(Exception):
            await self.server.close()
        await asyncio.to_thread(self.cleanup)

    async def _forward(self, payload: bytes, metadata: Mapping[str, list[str]]) -> bytes:
        request = events_pb2.ForwardRequest()
        request.ParseFromString(payload)
        envelope = request.envelope
        name = envelope.event.type_url.rpartition(".")[2]
        message = getattr(ev, name)()
        message.ParseFromString(envelope.event.value)
        self.events.append((envelope.topic, envelope.namespace, message))
        return b""

    # -- bundles and stdio ------------------------------------------------------------------

    def bundle(
        self,
        cid: str,
        args: Sequence[str],
        *,
        annotations: Mapping[str, str] | None = None,
        terminal: bool = False,
        memory_limit: int = 0,
        pid_namespace: bool = True,
    ) -> Path:
        """A bundle directory with a config.json adapted from ``runc spec``."""
        bundle = self.root / cid
        (bundle / "rootfs").mkdir(parents=True)
        if self._spec is None:
            self._spec = base_spec()
        spec = json.loads(json.dumps(self._spec))
        spec["process"]["args"] = list(args)
        spec["process"]["terminal"] = terminal
        spec["root"] = {"path": "rootfs", "readonly": False}
        spec["hostname"] = cid
        spec["annotations"] = dict(annotations or {})
        spec["linux"]["cgroupsPath"] = f"/{self.tag}/{cid}"
        if memory_limit:
            spec["linux"]["resources"]["memory"] = {"limit": memory_limit, "swap": memory_limit}
        if not pid_namespace:
            spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "pid"]
        (bundle / "config.json").write_text(json.dumps(spec))
        self.bundles.append(bundle)
        return bundle

    def overlay(self, bundle: Path) -> mount_pb2.Mount:
        """An overlay rootfs mount: busybox below, a fresh upper directory in the rig."""
        upper, work = self.root / f"{bundle.name}-upper", self.root / f"{bundle.name}-work"
        upper.mkdir()
        work.mkdir()
        return mount_pb2.Mount(
            type="overlay",
            source="overlay",
            options=[f"lowerdir={self.busybox}", f"upperdir={upper}", f"workdir={work}"],
        )

    def bind(self) -> mount_pb2.Mount:
        """A read-only bind rootfs mount of busybox."""
        return mount_pb2.Mount(type="bind", source=str(self.busybox), options=["rbind", "ro"])

    @staticmethod
    def fifo(bundle: Path, name: str) -> tuple[str, int]:
        """A FIFO in the bundle and our end of it (read end, opened first as the daemon does)."""
        path = bundle / name
        os.mkfifo(path)
        return str(path), os.open(path, os.O_RDONLY | os.O_NONBLOCK)

    @staticmethod
    def writer(path: str) -> int:
        """The write end of a stdin FIFO (the shim holds its read end)."""
        return os.open(path, os.O_WRONLY | os.O_NONBLOCK)

    # -- the shim -------------------------------------------------------------------------------

    def options(self) -> oci_pb2.Options:
        return oci_pb2.Options(root=str(self.runc_root))

    def options_any(self) -> any_pb2.Any:
        return any_pb2.Any(type_url="containerd.runc.v1.Options", value=self.options().SerializeToString())

    async def start(self, cid: str, bundle: Path, *, legacy: bool = False) -> str:
        """Run ``start`` like containerd; return the address (BootstrapResult parsed unless legacy)."""
        stdin = b""
        if legacy:  # no socket_dir from a legacy daemon: the shim uses its default
            default = Path(DEFAULT_SOCKET_DIR)
            if default not in self.socket_dirs:
                self.socket_dirs.add(default)
                self.foreign_zygotes.add(zygote(default)[0])
        else:
            params = bootstrap_pb2.BootstrapParams(
                instance_id=cid,
                namespace=NAMESPACE,
                containerd_ttrpc_address=self.ttrpc_address,
                containerd_grpc_address=self.grpc_address,
                socket_dir=str(self.socket_dir),
            )
            params.extensions.add().value.CopyFrom(self.options_any())
            stdin = params.SerializeToString()
        out = await self.run_shim(bundle, "-id", cid, "start", stdin=stdin)
        if legacy:
            address = out.decode()
        else:
            result = bootstrap_pb2.BootstrapResult()
            result.ParseFromString(out)
            assert (result.version, result.protocol) == (3, "ttrpc")
            address = result.address
        self.addresses.add(address)
        return address

    async def run_shim(self, bundle: Path, *args: str, stdin: bytes = b"", check: bool = True) -> bytes:
        env = {**os.environ, "TTRPC_ADDRESS": self.ttrpc_address, "GRPC_ADDRESS": self.grpc_address}
        proc = await asyncio.create_subprocess_exec(
            str(SHIM),
            "-namespace",
            NAMESPACE,
            "-address",
            self.grpc_address,
            "-publish-binary",
            "/bin/true",
            *args,
            cwd=bundle,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
        if check:
            assert proc.returncode == 0, err.decode()
        return out

    async def connect(self, address: str) -> TtrpcClient:
        client = await TtrpcClient.connect(address, timeout=10)
        self.clients.append(client)
        connected = await self.call(client, "Connect", api.ConnectRequest(), api.ConnectResponse)
        self.shim_pids.add(connected.shim_pid)
        return client

    @staticmethod
    async def call(
        client: TtrpcClient,
        method: str,
        request: Message,
        response_type: type[M],
        *,
        service: str = TASK,
        timeout: float = 30,
    ) -> M:
        metadata = {"containerd-namespace-ttrpc": NAMESPACE}
        return await client.call(service, method, request, response_type, timeout=timeout, metadata=metadata)

    async def wait_events(self, count: int) -> list[tuple[str, str, Message]]:
        await until(lambda: len(self.events) >= count)
        return list(self.events)

    def topics(self) -> list[str]:
        return [topic for topic, _, _ in self.events]

    # -- cleanup --------------------------------------------------------------------------------

    def cleanup(self) -> None:
        found = [zygote(d) for d in self.socket_dirs]
        zygotes = {pid: path for pid, path in found if pid and pid not in self.foreign_zygotes}
        killed = self.shim_pids.union(*(children_of(z) for z in zygotes)) | set(zygotes)
        for pid in killed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_gone(killed)  # a dying shim still holds its cgroup
        for path in zygotes.values():
            for suffix in ("", ".lock", ".log"):
                with contextlib.suppress(OSError):
                    os.unlink(f"{path}{suffix}")
        for address in self.addresses:
            with contextlib.suppress(OSError):
                os.unlink(address.removeprefix("unix://"))
        state = self.runc_root / NAMESPACE  # the shim runs runc with --root <Root>/<namespace>
        for cid in runc_containers(state):
            subprocess.run([str(RUNC), "--root", str(state), "delete", "--force", cid], check=False)
        for bundle in self.bundles:
            with contextlib.suppress(OSError):
                mount.unmount_all(str(bundle / "rootfs"))
        for _ in range(50):  # runc delete returns before the kernel has let go of every cgroup
            if remove_cgroups(f"/{self.tag}"):
                break
            time.sleep(0.1)
        shutil.rmtree(self.root, ignore_errors=True)


def zygote(socket_dir: Path) -> tuple[int, str]:
    """(pid, control socket) of the zygote serving ``socket_dir`` (pid by SO_PEERCRED); (0, "") if none."""
    for path in socket_dir.glob("wharf-zygote-*.sock"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            try:
                sock.connect(str(path))
            except OSError:
                continue
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            return int(struct.unpack("3i", creds)[0]), str(path)
    return 0, ""


def children_of(parent: int, *, spares: bool = False) -> set[int]:
    """The children of ``parent``: without the zygote's pre-forked spare, or (``spares``) only it."""
    if not parent:
        return set()
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                is_spare = stat.partition("(")[2].rpartition(")")[0].startswith("wharf-spare")
                if int(stat.rpartition(")")[2].split()[1]) == parent and is_spare == spares:
                    found.add(int(entry.name))
    return found


def runc_containers(root: Path) -> list[str]:
    if not root.exists():
        return []
    return [entry.name for entry in root.iterdir() if entry.is_dir()]


def remove_cgroups(parent: str) -> bool:
    """rmdir every cgroup under ``parent`` in every hierarchy, deepest first; True once none is left."""
    left = False
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / parent.lstrip("/")
        if top.is_dir():
            for dirpath, _, _ in sorted(os.walk(top), key=lambda entry: -len(entry[0])):
                with contextlib.suppress(OSError):
                    Path(dirpath).rmdir()
            left = left or top.is_dir()
    return not left


def wait_gone(pids: set[int]) -> None:
    """Wait (a few seconds at most) until ``pids`` have exited."""
    for _ in range(100):
        if not any(pid_alive(pid) for pid in pids):
            return
        time.sleep(0.05)


async def _readable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def read_to_eof(fd: int) -> bytes:
    """Read a FIFO's read end until its writers are gone.

    A non-blocking read of a FIFO no writer has opened yet also returns b"", so
    wait for epoll to report it readable first: it reports a hang-up only after
    a writer came and went.
    """
    chunks: list[bytes] = []
    async with asyncio.timeout(TIMEOUT):
        while True:
            await _readable(fd)
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not data:
                return b"".join(chunks)
            chunks.append(data)


async def read_until(fd: int, needle: bytes) -> bytes:
    """Read a FIFO's read end until ``needle`` has appeared."""
    buffer = b""
    async with asyncio.timeout(TIMEOUT):
        while needle not in buffer:
            await _readable(fd)
            with contextlib.suppress(BlockingIOError):
                buffer += os.read(fd, 65536)
    return buffer


async def until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (state of other processes: nothing to wait on) until true, at most TIMEOUT."""
    async with asyncio.timeout(TIMEOUT):
        while not condition():  # noqa: ASYNC110 - the state lives in other processes
            await asyncio.sleep(0.02)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"
