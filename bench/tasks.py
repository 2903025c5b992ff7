"""Task start latency: create + start + wait of ``true`` through wharfd, beside plain runc.

    sudo .venv/bin/python bench/tasks.py [--runs 50]

One daemon on a temporary root (see e2e/task_support.py), one busybox
snapshot per run, no stdio. The daemon's state directory (bundles, shim
sockets) and the runc roots are on tmpfs, as /run is on a node. For each shim (Debian's containerd-shim-runc-v2
and containerd-shim-wharf-v2) a run is, timed from the client:

    Tasks.Create → Tasks.Wait (in flight) → Tasks.Start → the Wait answers

and, timed separately, the Tasks.Delete that follows, from a grpc.aio client.
The snapshot's mounts are fetched before the clock starts. Our shim is measured twice: as the
daemon starts it (``start`` done in-process, runtime/tasks/shim.py) and,
through a symlink under another name, with its ``start`` action exec'd as
for any other shim (what the stock containerd does).

Baselines on an equivalent bundle (the same spec, the rootfs bind-mounted from
the same snapshot's mounts): ``runc run`` (create, start, wait and delete in
one process), and ``runc create`` then ``runc start`` as separate commands
(create timed alone, and once more exec'd from a sealed memfd copy of runc, as
our shim runs it: see runtime/shim/runc.py).

The paths are sampled in turn, one run of each per round, so that load from
other work on the machine falls on all of them alike. Reported: median and
p90 in milliseconds, and the median over ``runc run``'s median.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from e2e.task_support import OURS, RUNC, SNAPSHOTTER, STOCK, TaskRig
from wharfd.api.services.snapshots.v1 import snapshots_pb2 as spb
from wharfd.api.services.tasks.v1 import tasks_pb2 as tpb
from wharfd.api.services.tasks.v1 import tasks_pb2_grpc as tgrpc
from wharfd.runtime import mount
from wharfd.runtime.oci import process
from wharfd.runtime.oci import spec as ocispec
from wharfd.runtime.shim import runc as shim_runc
from wharfd.runtime.snapshots.snapshotter import Mount

WARM_UP = 2  # rounds not counted: first shim start (the zygote), first runc exec


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


Sample = Callable[[int], tuple[float, float | None]]


class Measured:
    """One measured path: ``sample(i)`` returns (start ms, delete ms or None)."""

    def __init__(self, name: str, sample: Sample) -> None:
        self.name = name
        self.sample = sample
        self.starts: list[float] = []
        self.deletes: list[float] = []


class Client:
    """A grpc.aio Tasks client on a loop of its own: the cheapest client this bench can be.

    The sync stubs' futures (a Wait in flight beside a blocking Start) cost a
    few ms of thread hand-offs per run under load, which are not the daemon's.
    """

    def __init__(self, rig: TaskRig) -> None:
        self.loop = asyncio.new_event_loop()
        self.md = rig.md
        self.channel = self.loop.run_until_complete(self._open(f"unix://{rig.daemon.address}"))
        self.tasks = tgrpc.TasksStub(self.channel)

    @staticmethod
    async def _open(target: str) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(target)

    def close(self) -> None:
        self.loop.run_until_complete(self.channel.close(None))
        self.loop.close()


def through_wharfd(rig: TaskRig, client: Client, runtime: str, tag: str) -> Sample:
    async def timed(cid: str, mounts: Any) -> tuple[float, float]:
        tasks, md = client.tasks, client.md
        t0 = time.perf_counter()
        await tasks.Create(tpb.CreateTaskRequest(container_id=cid, rootfs=mounts), metadata=md)
        waiter = tasks.Wait(tpb.WaitRequest(container_id=cid), metadata=md)  # sent before Start
        await tasks.Start(tpb.StartRequest(container_id=cid), metadata=md)
        status = (await waiter).exit_status
        t1 = time.perf_counter()
        await tasks.Delete(tpb.DeleteTaskRequest(container_id=cid), metadata=md)
        t2 = time.perf_counter()
        assert status == 0, status
        return (t1 - t0) * 1000, (t2 - t1) * 1000

    def sample(i: int) -> tuple[float, float | None]:
        cid = f"{tag}-{i}"
        rig.create_container(cid, ["true"], runtime=runtime)
        mounts = rig.snapshots.Mounts(spb.MountsRequest(snapshotter=SNAPSHOTTER, key=cid)).mounts
        return client.loop.run_until_complete(timed(cid, mounts))

    return sample


class RuncBundle:
    """The baselines' bundle: the rig's spec for ``true``, the rootfs mounted from a snapshot."""

    def __init__(self, rig: TaskRig) -> None:
        assert RUNC is not None
        cid = "runc-baseline"
        rig.create_container(cid, ["true"])
        mounts = rig.snapshots.Mounts(spb.MountsRequest(snapshotter=SNAPSHOTTER, key=cid)).mounts
        self.path = rig.base / "runc-bundle"
        (self.path / "rootfs").mkdir(parents=True)
        spec = ocispec.generate(
            rig.ns, cid, process.with_process_args("true"), process.with_env(["PATH=/bin"])
        )
        (self.path / "config.json").write_text(json.dumps(spec))
        mount.mount_all(
            [Mount(m.type, m.source, m.target, tuple(m.options)) for m in mounts], self.path / "rootfs"
        )
        self.root = rig.runc_root / "baseline"
        self.n = 0
        # The sealed copy our shims exec runc from (the zygote holds one for all of them).
        self.sealed = shim_runc.sealed_program(RUNC) if shim_runc.seal(RUNC) else None

    def close(self) -> None:
        mount.unmount_all(self.path / "rootfs")
        shutil.rmtree(self.root, ignore_errors=True)

    def _runc(self, *args: str, program: str | None = None) -> None:
        assert RUNC is not None
        subprocess.run(
            [RUNC, "--root", str(self.root), *args],
            executable=program or RUNC,
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            close_fds=program is None,  # the sealed copy's fd must reach the child
        )

    def run(self, i: int) -> tuple[float, float | None]:
        t0 = time.perf_counter()
        self._runc("run", "--bundle", str(self.path), f"run-{i}")
        return (time.perf_counter() - t0) * 1000, None

    def create_start(self, i: int, sealed: bool = False) -> tuple[float, float]:
        """(create ms, start ms) of separate ``runc create`` and ``runc start``; then deleted."""
        self.n += 1
        cid = f"cs-{i}-{self.n}"
        t0 = time.perf_counter()
        self._runc("create", "--bundle", str(self.path), cid, program=self.sealed if sealed else None)
        t1 = time.perf_counter()
        self._runc("start", cid)
        t2 = time.perf_counter()
        self._runc("delete", "--force", cid)
        return (t1 - t0) * 1000, (t2 - t1) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    load_before = os.getloadavg()
    # Our shim under another name: the daemon then execs its `start` (no in-process fast path).
    exec_dir = Path(tempfile.mkdtemp(prefix="wharf-bench-"))
    exec_shim = exec_dir / "containerd-shim-wharfexec-v2"
    exec_shim.symlink_to(Path(sys.executable).parent / "containerd-shim-wharf-v2")
    rig = TaskRig()
    for folder in (rig.daemon.state, rig.runc_root):
        # As on a node, where both live under /run: tmpfs (the rig's cleanup unmounts them).
        folder.mkdir(parents=True)
        mount.mount(Mount("tmpfs", "tmpfs", "", ("mode=0711",)), folder)
    try:
        with rig:
            bundle = RuncBundle(rig)
            client = Client(rig)
            try:
                paths = [
                    Measured("runc run (baseline)", bundle.run),
                    Measured("runc create + runc start", lambda i: (sum(bundle.create_start(i)), None)),
                    Measured("wharfd + containerd-shim-runc-v2", through_wharfd(rig, client, STOCK, "stock")),
                    Measured(
                        "wharfd + wharf shim, start exec'd",
                        through_wharfd(rig, client, str(exec_shim), "wexec"),
                    ),
                    Measured(
                        "wharfd + wharf shim, start in-process", through_wharfd(rig, client, OURS, "ours")
                    ),
                    Measured("  runc start alone", lambda i: (bundle.create_start(i)[1], None)),
                    Measured("  runc create alone", lambda i: (bundle.create_start(i)[0], None)),
                ]
                if bundle.sealed is not None:
                    paths.append(
                        Measured(
                            "  runc create alone, sealed copy",
                            lambda i: (bundle.create_start(i, True)[0], None),
                        )
                    )
                for i in range(args.runs + WARM_UP):
                    for path in paths[i % len(paths) :] + paths[: i % len(paths)]:
                        start, delete = path.sample(i)
                        if i >= WARM_UP:
                            path.starts.append(start)
                            if delete is not None:
                                path.deletes.append(delete)
            finally:
                client.close()
                bundle.close()
    finally:
        shutil.rmtree(exec_dir, ignore_errors=True)
    load_after = os.getloadavg()
    base = statistics.median(paths[0].starts)
    print(f"create+start+wait of `true`, {args.runs} runs each, sampled in turn (ms)")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    print(f"{'path':<40} {'median':>8} {'p90':>8} {'x run':>6} {'delete med':>11} {'delete p90':>11}")
    for path in paths:
        extra = (
            f"{statistics.median(path.deletes):>11.1f} {percentile(path.deletes, 0.9):>11.1f}"
            if path.deletes
            else f"{'-':>11} {'-':>11}"
        )
        median = statistics.median(path.starts)
        print(
            f"{path.name:<40} {median:>8.1f} {percentile(path.starts, 0.9):>8.1f} {median / base:>6.2f} {extra}"
        )


if __name__ == "__main__":
    main()
