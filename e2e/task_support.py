"""Helpers for task tests through the real daemon: a busybox snapshot, containers, FIFOs, clean-up.

A :class:`TaskRig` owns one daemon on a short base directory under /tmp (shim
sockets must fit in 106 bytes), one namespace named ``wharfd-test-…`` (so
cgroups ``/<ns>/<id>`` and runc state under ``<base>/runc/<ns>`` are easy to
find), and cleans up everything in :meth:`cleanup`: shims (stock ones by
their ``-address`` flag, ours through the zygote of ``<state>/s``), runc
containers, mounts under the base, cgroups, stock shim sockets in
/run/containerd/s, and the base itself. No tests live here.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import any_pb2

from e2e.daemon import Daemon
from wharfd.api.services.containers.v1 import containers_pb2 as cpb
from wharfd.api.services.containers.v1 import containers_pb2_grpc as cgrpc
from wharfd.api.services.snapshots.v1 import snapshots_pb2 as spb
from wharfd.api.services.snapshots.v1 import snapshots_pb2_grpc as sgrpc
from wharfd.api.services.tasks.v1 import tasks_pb2 as tpb
from wharfd.api.services.tasks.v1 import tasks_pb2_grpc as tgrpc
from wharfd.api.types.runc.options import oci_pb2
from wharfd.runtime import mount
from wharfd.runtime.oci import process
from wharfd.runtime.oci import spec as ocispec

BUSYBOX = Path("/bin/busybox")
RUNC = shutil.which("runc")
STOCK_SHIM = Path("/usr/bin/containerd-shim-runc-v2")
OUR_SHIM_SOURCE = Path(__file__).resolve().parent.parent / "runtime" / "shim" / "main.py"
STOCK, OURS = "io.containerd.runc.v2", "io.containerd.wharf.v2"
APPLETS = ("sh", "echo", "sleep", "cat", "stty", "dd", "true", "false", "head", "ls", "ps", "id", "env")
SNAPSHOTTER = "overlayfs"
BASE_SNAPSHOT = "busybox-base"
STOCK_SOCKET_DIR = Path("/run/containerd/s")
TIMEOUT = 30.0


class TaskRig:
    """A daemon, a namespace and a busybox base snapshot for task tests."""

    def __init__(self) -> None:
        self.ns = f"wharfd-test-{uuid.uuid4().hex[:8]}"
        self.base = Path("/tmp") / self.ns
        self.base.mkdir(mode=0o700)
        self.daemon = Daemon(self.base / "d")
        self.runc_root = self.base / "runc"
        self.ids: set[str] = set()
        self._channel: grpc.Channel | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> TaskRig:
        self.daemon.start()
        self._channel = grpc.insecure_channel(f"unix://{self.daemon.address}")
        self.make_base_snapshot()
        return self

    def crash(self) -> None:
        """SIGKILL the daemon, as a crash would (shims and tasks keep running)."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        self.daemon.kill()

    def restart(self) -> None:
        """Start the daemon again on the same root and state."""
        self.daemon.start()
        self._channel = grpc.insecure_channel(f"unix://{self.daemon.address}")

    def __enter__(self) -> TaskRig:
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    @property
    def md(self) -> list[tuple[str, str]]:
        return [("containerd-namespace", self.ns)]

    @property
    def tasks(self) -> Any:
        assert self._channel is not None
        return _Namespaced(tgrpc.TasksStub(self._channel), self.md)

    @property
    def containers(self) -> Any:
        assert self._channel is not None
        return _Namespaced(cgrpc.ContainersStub(self._channel), self.md)

    @property
    def snapshots(self) -> Any:
        assert self._channel is not None
        return _Namespaced(sgrpc.SnapshotsStub(self._channel), self.md)

    # -- images and containers ------------------------------------------------------------------

    def make_base_snapshot(self) -> None:
        """A committed snapshot holding static busybox, its applets and the usual directories."""
        key = f"{BASE_SNAPSHOT}-active"
        mounts = self.snapshots.Prepare(spb.PrepareSnapshotRequest(snapshotter=SNAPSHOTTER, key=key)).mounts
        fs = Path(mounts[0].source)  # a parentless snapshot is a bind of its fs directory
        populate_busybox(fs)
        self.snapshots.Commit(spb.CommitSnapshotRequest(snapshotter=SNAPSHOTTER, name=BASE_SNAPSHOT, key=key))

    def options(self, **fields: Any) -> any_pb2.Any:
        opts = oci_pb2.Options(root=str(self.runc_root), **fields)
        return any_pb2.Any(type_url="containerd.runc.v1.Options", value=opts.SerializeToString())

    def create_container(
        self,
        cid: str,
        args: Sequence[str],
        *,
        runtime: str = STOCK,
        opts: Sequence[ocispec.SpecOpt] = (),
        annotations: dict[str, str] | None = None,
        options: any_pb2.Any | None = None,
    ) -> None:
        """A container record over a fresh snapshot ``cid`` of the busybox base."""
        self.ids.add(cid)
        self.snapshots.Prepare(
            spb.PrepareSnapshotRequest(snapshotter=SNAPSHOTTER, key=cid, parent=BASE_SNAPSHOT)
        )
        spec = ocispec.generate(
            self.ns, cid, process.with_process_args(*args), process.with_env(["PATH=/bin"]), *opts
        )
        if annotations:
            spec["annotations"] = dict(annotations)
        container = cpb.Container(
            id=cid,
            runtime=cpb.Container.Runtime(name=runtime, options=options or self.options()),
            spec=ocispec.to_any(spec),
            snapshotter=SNAPSHOTTER,
            snapshot_key=cid,
        )
        self.containers.Create(cpb.CreateContainerRequest(container=container))

    def create_task(self, cid: str, *, stdio: Stdio | None = None, terminal: bool = False, **kw: Any) -> Any:
        mounts = self.snapshots.Mounts(spb.MountsRequest(snapshotter=SNAPSHOTTER, key=cid)).mounts
        request = tpb.CreateTaskRequest(container_id=cid, rootfs=mounts, terminal=terminal, **kw)
        if stdio is not None:  # else no stdio at all (the shim uses /dev/null)
            request.stdin, request.stdout, request.stderr = stdio.stdin, stdio.stdout, stdio.stderr
        return self.tasks.Create(request)

    def run(
        self, cid: str, args: Sequence[str], *, runtime: str = STOCK, **kw: Any
    ) -> tuple[int, bytes, bytes]:
        """Create, start and wait for a task; returns (exit status, stdout, stderr)."""
        self.create_container(cid, args, runtime=runtime, **kw)
        io = Stdio(self.base / "fifo", cid, stdin=False)
        with io.reading():
            self.create_task(cid, stdio=io)
            waiter = self.tasks.Wait.future(tpb.WaitRequest(container_id=cid), timeout=TIMEOUT)
            self.tasks.Start(tpb.StartRequest(container_id=cid))
            status = waiter.result().exit_status
        self.tasks.Delete(tpb.DeleteTaskRequest(container_id=cid))
        return status, io.out, io.err

    # -- clean-up -------------------------------------------------------------------------------

    def cleanup(self) -> None:
        if self._channel is not None:
            self._channel.close()
        if self.daemon.proc is not None and self.daemon.proc.poll() is None:
            with contextlib.suppress(AssertionError):
                self.daemon.stop(timeout=20)
        kill_shims(str(self.daemon.address), self.daemon.state / "s")
        # runc state: under our root (containerd's shim adds the namespace, ours may not),
        # and under the shims' defaults for containers made without a root.
        for state_dir in (
            self.runc_root / self.ns,
            self.runc_root,
            Path("/run/containerd/runc") / self.ns,
            Path("/run/wharfd/runc") / self.ns,
        ):
            if state_dir.is_dir() and RUNC:
                for entry in state_dir.iterdir():
                    if (entry / "state.json").exists():
                        subprocess.run(
                            [RUNC, "--root", str(state_dir), "delete", "--force", entry.name],
                            check=False,
                            capture_output=True,
                        )
        for state_dir in (Path("/run/containerd/runc") / self.ns, Path("/run/wharfd/runc") / self.ns):
            shutil.rmtree(state_dir, ignore_errors=True)
        kill_cgroup_processes(f"/{self.ns}")  # containers whose runc state was lost
        unmount_under(self.base)
        remove_cgroups(f"/{self.ns}")
        for cid in self.ids:
            stock_socket(str(self.daemon.address), self.ns, cid).unlink(missing_ok=True)
        shutil.rmtree(self.base, ignore_errors=True)


class _Namespaced:
    """A stub whose unary methods carry the namespace metadata (and ``.future`` for async waits)."""

    def __init__(self, stub: Any, md: list[tuple[str, str]]) -> None:
        self._stub = stub
        self._md = md

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)
        md = self._md

        class _Bound:
            def __call__(self, request: Any, timeout: float = TIMEOUT) -> Any:
                return method(request, metadata=md, timeout=timeout)

            def future(self, request: Any, timeout: float = TIMEOUT) -> Any:
                return method.future(request, metadata=md, timeout=timeout)

        return _Bound()


class Stdio:
    """FIFOs ``<dir>/<id>-stdin|stdout|stderr`` and threads that read them (as ctr lays them out)."""

    def __init__(self, folder: Path, cid: str, *, stdin: bool = True, terminal: bool = False) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.stdin = str(folder / f"{cid}-stdin") if stdin else ""
        self.stdout = str(folder / f"{cid}-stdout")
        self.stderr = "" if terminal else str(folder / f"{cid}-stderr")
        for path in (self.stdin, self.stdout, self.stderr):
            if path and not os.path.exists(path):
                os.mkfifo(path)
        self.out = b""
        self.err = b""
        self._threads: list[threading.Thread] = []

    @contextlib.contextmanager
    def reading(self) -> Iterator[Stdio]:
        """Read stdout and stderr in threads until EOF; on exit, wait for both."""
        self.start_reading()
        try:
            yield self
        finally:
            self.join()

    def start_reading(self) -> None:
        def drain(path: str, setter: Callable[[bytes], None]) -> None:
            with open(path, "rb") as f:  # blocks until the shim opens the write end
                setter(f.read())

        for path, setter in ((self.stdout, self._set_out), (self.stderr, self._set_err)):
            if path:
                thread = threading.Thread(target=drain, args=(path, setter), daemon=True)
                thread.start()
                self._threads.append(thread)

    def join(self, timeout: float = TIMEOUT) -> None:
        for thread in self._threads:
            thread.join(timeout)
            if thread.is_alive():
                for path in (self.stdout, self.stderr):  # unblock a reader whose writer never came
                    with contextlib.suppress(OSError):
                        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))

    def _set_out(self, data: bytes) -> None:
        self.out = data

    def _set_err(self, data: bytes) -> None:
        self.err = data


def populate_busybox(root: Path) -> None:
    """Static busybox, applet links, and the directories runc mounts onto."""
    (root / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    for name in ("proc", "dev", "sys", "tmp", "etc", "run"):
        (root / name).mkdir(exist_ok=True)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\n")


def stock_socket(address: str, namespace: str, group: str) -> Path:
    """Where containerd 1.6's shim listens for this group (sha256 of the joined path)."""
    digest = hashlib.sha256(os.path.join(address, namespace, group).encode()).hexdigest()
    return STOCK_SOCKET_DIR / digest


def _processes() -> Iterator[tuple[int, int, list[str]]]:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            yield int(entry.name), ppid, [a.decode(errors="replace") for a in argv if a]


def zygote_pids(socket_dir: Path) -> set[int]:
    """Our shim's zygotes serving ``socket_dir``."""
    prefix = str(socket_dir) + "/"
    return {pid for pid, _, argv in _processes() if any(a.startswith(prefix) and "zygote" in a for a in argv)}


def shim_pids(address: str, socket_dir: Path) -> set[int]:
    """Shims serving the daemon at ``address``: stock ones by flag, ours as children of our zygote.

    Not the zygote's pre-forked spare (named ``wharf-spare``): it serves nothing yet.
    """
    zygotes = zygote_pids(socket_dir)
    found: set[int] = set()
    for pid, ppid, argv in _processes():
        stock = "-address" in argv and address in argv and "containerd-shim" in (argv[0] if argv else "")
        if stock or (ppid in zygotes and not _is_spare(pid)):
            found.add(pid)
    return found


def _is_spare(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().startswith("wharf-spare")  # warming up too
    except OSError:
        return False


def kill_shims(address: str, socket_dir: Path) -> None:
    for pid in shim_pids(address, socket_dir) | zygote_pids(socket_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def unmount_under(base: Path) -> None:
    prefix = str(base.resolve()) + "/"
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        points = [line.split(" ")[4] for line in f]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        with contextlib.suppress(OSError):
            mount.unmount(point, mount.MNT_DETACH)


def kill_cgroup_processes(parent: str) -> None:
    """SIGKILL every process in a cgroup under ``parent`` (this test's namespace), and wait a little."""
    pids: set[int] = set()
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        for procs in (hierarchy / parent.lstrip("/")).glob("**/cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(line) for line in procs.read_text().split())
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pids and time.monotonic() < deadline:
        pids = {pid for pid in pids if Path(f"/proc/{pid}").exists()}
        time.sleep(0.02)


def remove_cgroups(parent: str) -> None:
    """rmdir every cgroup under ``parent`` in every hierarchy, deepest first."""
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / parent.lstrip("/")
        if top.is_dir():
            for dirpath, _, _ in sorted(os.walk(top), key=lambda entry: -len(entry[0])):
                for _ in range(20):
                    try:
                        Path(dirpath).rmdir()
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        time.sleep(0.05)  # processes still leaving the cgroup


def leftovers(base: Path, ns: str) -> list[str]:
    """What the daemon left behind: mounts under ``base`` and task cgroups ``/<ns>/<id>``."""
    found = []
    prefix = str(base.resolve()) + "/"
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        found += [f"mount {line.split(' ')[4]}" for line in f if line.split(" ")[4].startswith(prefix)]
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        if (hierarchy / ns).is_dir():
            found += [f"cgroup {child}" for child in (hierarchy / ns).iterdir() if child.is_dir()]
    return found


@contextlib.contextmanager
def started_rig() -> Iterator[TaskRig]:
    """A started :class:`TaskRig`, cleaned up afterwards; fails if the daemon left mounts or cgroups."""
    rig = TaskRig()
    try:
        rig.start()
        yield rig
        found = leftovers(rig.base, rig.ns)  # what the daemon itself failed to clean up
    finally:
        rig.cleanup()
    assert not found, found
