"""What a pull leaves in the daemon, through its socket: its workers, their cpu cgroup, the heap trim.

The workers (``unpack_workers``, by default one per CPU but one) extract
layers side by side during a pull. They run in a cpu cgroup of their own under
the daemon's (``worker_cpu_shares``; both keys in
``[plugins."io.containerd.differ.v1.walking"]``), so that the daemon's threads,
serving the CRI, come first whenever they wake. Once image events go quiet
the daemon gives the pull's freed heap back to the kernel (``malloc_trim``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.daemon import Daemon, running
from tests.support.images import build_image, build_layer, busybox_files
from tests.support.registry import RegistryServer, point_hosts, push, run_registry
from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.api.cri.v1 import api_pb2_grpc as cri_grpc
from wharfd.runtime import cpu
from wharfd.runtime.images import platforms
from wharfd.runtime.images.extract import WORKER_NICE
from wharfd.runtime.shim import cgroups

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="unpacks into overlayfs: needs root"),
    pytest.mark.skipif(cgroups.UNIFIED, reason="the workers' cgroup is made on cgroup v1 only"),
]

DOMAIN = "workers.wharf.test"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RegistryServer, Path]]:
    base = tmp_path_factory.mktemp("pull-workers")
    image = build_image([build_layer(busybox_files())], platform=platforms.host())
    with run_registry(base / "registry") as server:
        push(server, "e2e/busybox:1", image)
        yield server, point_hosts(base / "certs.d", DOMAIN, server)


def _config(hosts: Path, extra: str = "") -> str:
    return f'[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "{hosts}"\n' + extra


def _pull(daemon: Daemon) -> None:
    with daemon.channel() as ch:
        req = cri.PullImageRequest(image=cri.ImageSpec(image=f"{DOMAIN}/e2e/busybox:1"))
        cri_grpc.ImageServiceStub(ch).PullImage(req, timeout=60)


def _descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _workers(daemon: Daemon) -> list[int]:
    """The processes the workers' fork server (a child of the daemon) has forked."""
    assert daemon.proc is not None
    servers = [
        pid
        for pid in _descendants(daemon.proc.pid)
        if _ppid(pid) == daemon.proc.pid
        and b"multiprocessing.forkserver" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert len(servers) == 1, servers
    return _descendants(servers[0])


def _thread_slice() -> int:
    with open("/proc/thread-self/sched") as f:
        return next((int(line.split()[-1]) for line in f if line.startswith("se.slice")), 0)


def _custom_slices() -> bool:
    """Whether this kernel gives a thread the slice it asks for (Linux 6.12+), tried on a thread of its own."""
    got: list[bool] = []

    def probe() -> None:
        got.append(cpu.set_slice(cpu.BULK_SLICE_NS) and _thread_slice() == cpu.BULK_SLICE_NS)

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    return got[0]


def _cpu_dir(pid: int) -> str:
    return cgroups.of_pid(pid).dir("cpu")


def _worker_dirs(daemon: Daemon) -> set[str]:
    assert daemon.proc is not None
    procs = _descendants(daemon.proc.pid)
    assert procs, "the pull started no fork server or workers"
    return {_cpu_dir(p) for p in procs}


def test_workers_run_in_their_own_cpu_cgroup_under_the_daemons(
    tmp_path: Path, registry: tuple[RegistryServer, Path]
) -> None:
    _, hosts = registry
    extra = '[plugins."io.containerd.differ.v1.walking"]\n  worker_cpu_shares = 5\n  unpack_workers = 3\n'
    with running(tmp_path / "d", extra_config=_config(hosts, extra)) as daemon:
        _pull(daemon)
        assert len(_workers(daemon)) == 3
        assert daemon.proc is not None
        home = Path(_cpu_dir(daemon.proc.pid))
        group = home / cpu.BULK_GROUP
        assert _worker_dirs(daemon) == {str(group)}  # the fork server and every worker
        assert (group / "cpu.shares").read_text().strip() == "5"
        # Each worker: a session of its own, niced, with the long time slice where the kernel has one
        # (set by the worker's start-up, which the last one started may still be running).
        nice = min(os.getpriority(os.PRIO_PROCESS, 0) + WORKER_NICE, 19)

        def started(pid: int) -> bool:  # setsid, then nice, then the slice (a moment later)
            return os.getsid(pid) == pid and os.getpriority(os.PRIO_PROCESS, pid) == nice

        deadline = time.monotonic() + 10
        while not all(started(pid) for pid in _workers(daemon)) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.05)
        for pid in _workers(daemon):
            assert os.getsid(pid) == pid
            assert os.getpriority(os.PRIO_PROCESS, pid) == nice
            with open(f"/proc/{pid}/sched") as f:
                slices = [int(line.split()[-1]) for line in f if line.startswith("se.slice")]
            if _custom_slices():
                assert slices == [cpu.BULK_SLICE_NS]
        # The daemon's own threads stayed home (the one that started the fork server came back).
        for tid in os.listdir(f"/proc/{daemon.proc.pid}/task"):
            with open(f"/proc/{daemon.proc.pid}/task/{tid}/cgroup") as f:
                line = next(x for x in f if "cpu" in x.split(":")[1].split(","))
            assert not line.strip().endswith("/" + cpu.BULK_GROUP), tid


def test_zero_shares_keeps_the_workers_in_the_daemons_cgroup(
    tmp_path: Path, registry: tuple[RegistryServer, Path]
) -> None:
    _, hosts = registry
    extra = '[plugins."io.containerd.differ.v1.walking"]\n  worker_cpu_shares = 0\n'
    with running(tmp_path / "d", extra_config=_config(hosts, extra)) as daemon:
        _pull(daemon)
        assert daemon.proc is not None
        assert _worker_dirs(daemon) == {_cpu_dir(daemon.proc.pid)}
        # unpack_workers = 0 (the default): one per CPU but one, at least one.
        assert len(_workers(daemon)) == max(1, (os.cpu_count() or 1) - 1)


TRIMMED = "heap trimmed after image changes"


def test_the_heap_is_trimmed_once_image_events_go_quiet(
    tmp_path: Path, registry: tuple[RegistryServer, Path]
) -> None:
    _, hosts = registry
    with running(tmp_path / "d", extra_config=_config(hosts)) as daemon:
        time.sleep(1.5)  # longer than the quiet time: start-up's own events are settled
        assert TRIMMED not in daemon.log()  # no image event yet, no trim
        _pull(daemon)
        deadline = time.monotonic() + 20
        while TRIMMED not in daemon.log():
            assert time.monotonic() < deadline, "no heap trim after the pull's image events"
            time.sleep(0.1)
        assert daemon.log().count(TRIMMED) == 1  # one pull's burst of events, one trim
