"""Task start latency: create + start + wait of ``true`` through wharfd, beside plain ``runc run``.

    sudo .venv/bin/python bench/tasks.py [--runs 50]

Our shim is measured twice: as the daemon starts it (``start`` done in-process,
runtime/tasks/shim.py) and, through a symlink under another name, with its
``start`` action exec'd as for any other shim (what the stock containerd does).

One daemon on a temporary root (see e2e/task_support.py), one busybox
snapshot per run, no stdio. For each shim (Debian's containerd-shim-runc-v2
and containerd-shim-wharf-v2) a run is, timed from the client:

    Tasks.Create → Tasks.Wait (in flight) → Tasks.Start → the Wait answers

and, timed separately, the Tasks.Delete that follows. The baseline, measured
in the same run, is ``runc run`` of an equivalent bundle (the same spec, the
rootfs bind-mounted from the same snapshot), which creates, starts, waits
and deletes in one process. Reported: median and p90 in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from e2e.task_support import OURS, RUNC, SNAPSHOTTER, STOCK, TaskRig
from wharfd.api.services.snapshots.v1 import snapshots_pb2 as spb
from wharfd.api.services.tasks.v1 import tasks_pb2 as tpb
from wharfd.runtime import mount
from wharfd.runtime.oci import process
from wharfd.runtime.oci import spec as ocispec
from wharfd.runtime.snapshots.snapshotter import Mount


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def through_wharfd(rig: TaskRig, runtime: str, runs: int) -> tuple[list[float], list[float]]:
    starts, deletes = [], []
    tag = runtime.split(".")[-2] if "/" not in runtime else Path(runtime).name.split("-")[2]
    for i in range(runs + 2):  # two warm-up runs: first shim start, first runc exec
        cid = f"{tag}-{i}"
        rig.create_container(cid, ["true"], runtime=runtime)
        t0 = time.perf_counter()
        rig.create_task(cid)
        waiter = rig.tasks.Wait.future(tpb.WaitRequest(container_id=cid))
        rig.tasks.Start(tpb.StartRequest(container_id=cid))
        status = waiter.result().exit_status
        t1 = time.perf_counter()
        rig.tasks.Delete(tpb.DeleteTaskRequest(container_id=cid))
        t2 = time.perf_counter()
        assert status == 0, status
        if i >= 2:
            starts.append((t1 - t0) * 1000)
            deletes.append((t2 - t1) * 1000)
    return starts, deletes


def runc_run(rig: TaskRig, runs: int) -> list[float]:
    assert RUNC is not None
    cid = "runc-baseline"
    rig.create_container(cid, ["true"])
    mounts = rig.snapshots.Mounts(spb.MountsRequest(snapshotter=SNAPSHOTTER, key=cid)).mounts
    bundle = rig.base / "runc-bundle"
    (bundle / "rootfs").mkdir(parents=True)
    spec = ocispec.generate(rig.ns, cid, process.with_process_args("true"), process.with_env(["PATH=/bin"]))
    (bundle / "config.json").write_text(json.dumps(spec))
    mount.mount_all([Mount(m.type, m.source, m.target, tuple(m.options)) for m in mounts], bundle / "rootfs")
    root = rig.runc_root / "baseline"
    times = []
    try:
        for i in range(runs + 2):
            t0 = time.perf_counter()
            subprocess.run(
                [RUNC, "--root", str(root), "run", "--bundle", str(bundle), f"{cid}-{i}"],
                check=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
            if i >= 2:
                times.append((time.perf_counter() - t0) * 1000)
    finally:
        mount.unmount_all(bundle / "rootfs")
        shutil.rmtree(root, ignore_errors=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    rows: list[tuple[str, list[float], list[float] | None]] = []
    # Our shim under another name: the daemon then execs its `start` (no in-process fast path).
    exec_dir = Path(tempfile.mkdtemp(prefix="wharf-bench-"))
    exec_shim = exec_dir / "containerd-shim-wharfexec-v2"
    exec_shim.symlink_to(Path(sys.executable).parent / "containerd-shim-wharf-v2")
    try:
        with TaskRig() as rig:
            rows.append(("runc run (baseline)", runc_run(rig, args.runs), None))
            for name, runtime in (
                ("wharfd + containerd-shim-runc-v2", STOCK),
                ("wharfd + wharf shim, start exec'd", str(exec_shim)),
                ("wharfd + wharf shim, start in-process", OURS),
            ):
                starts, deletes = through_wharfd(rig, runtime, args.runs)
                rows.append((name, starts, deletes))
    finally:
        shutil.rmtree(exec_dir, ignore_errors=True)
    print(f"create+start+wait of `true`, {args.runs} runs each (ms)")
    print(f"{'path':<40} {'median':>8} {'p90':>8} {'delete med':>11} {'delete p90':>11}")
    for name, values, timed_deletes in rows:
        extra = (
            f"{statistics.median(timed_deletes):>11.1f} {percentile(timed_deletes, 0.9):>11.1f}"
            if timed_deletes
            else f"{'-':>11} {'-':>11}"
        )
        print(f"{name:<40} {statistics.median(values):>8.1f} {percentile(values, 0.9):>8.1f} {extra}")


if __name__ == "__main__":
    main()
