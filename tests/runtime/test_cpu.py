"""Scheduling hints for bulk work (wharfd.runtime.cpu)."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from wharfd.runtime import cpu
from wharfd.runtime.shim import cgroups


def _slice() -> int:
    with open(f"/proc/self/task/{threading.get_native_id()}/sched") as f:
        for line in f:
            if line.startswith("se.slice"):
                return int(line.split()[-1])
    return 0


def _in_thread() -> dict[str, int]:
    """Run the checks on a thread of their own: the test runner's main thread keeps its slice."""
    out: dict[str, int] = {}

    def body() -> None:
        os.setpriority(os.PRIO_PROCESS, 0, 5)  # this thread only, on Linux
        out["default"] = _slice()
        out["set"] = int(cpu.set_slice(cpu.BULK_SLICE_NS))
        out["long"] = _slice()
        out["nice"] = os.getpriority(os.PRIO_PROCESS, 0)
        threading_child: dict[str, int] = {}
        child = threading.Thread(target=lambda: threading_child.setdefault("slice", _slice()))
        child.start()
        child.join()
        out["child"] = threading_child["slice"]
        cpu.set_slice(0)
        out["reset"] = _slice()

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    return out


def test_bulk_threads_get_the_long_slice_and_keep_their_nice() -> None:
    got = _in_thread()
    if not got["set"] or got["long"] != cpu.BULK_SLICE_NS:
        pytest.skip("this kernel has no custom time slices (Linux < 6.12)")
    assert got["nice"] == 5  # sched_setattr was given the thread's own nice value
    assert got["child"] == cpu.BULK_SLICE_NS  # threads it starts inherit it
    assert got["reset"] == got["default"] != cpu.BULK_SLICE_NS


def _cpu_cgroup(tid: int | str = "self") -> str:
    where = f"/proc/self/task/{tid}/cgroup" if tid != "self" else "/proc/thread-self/cgroup"
    with open(where) as f:
        for line in f:
            _, controllers, path = line.strip().split(":", 2)
            if "cpu" in controllers.split(","):
                return path
    return ""


@pytest.fixture
def group() -> Iterator[cpu.BulkGroup]:
    if cgroups.UNIFIED or not cgroups.of_pid(os.getpid()).dir("cpu"):
        pytest.skip("needs the cgroup v1 cpu controller")
    made = cpu.BulkGroup.make(7, name=f"wharfd-test-bulk-{os.getpid()}")
    assert made is not None
    yield made
    made.remove()
    assert not made.path.exists()


def test_bulk_group_is_a_child_of_the_daemons_cgroup_with_its_shares(group: cpu.BulkGroup) -> None:
    assert group.home == Path(cgroups.of_pid(os.getpid()).dir("cpu"))
    assert group.path.parent == group.home
    assert (group.path / "cpu.shares").read_text().strip() == "7"
    # Made again (a restarted daemon): the same group, the new weight.
    again = cpu.BulkGroup.make(9, name=group.path.name)
    assert again is not None and again.path == group.path
    assert (group.path / "cpu.shares").read_text().strip() == "9"


def test_a_process_started_inside_the_group_runs_in_it_and_the_thread_goes_home(
    group: cpu.BulkGroup,
) -> None:
    home = _cpu_cgroup()
    with group.entered():
        inside = _cpu_cgroup()
        child = subprocess.Popen(["sleep", "30"])
    try:
        assert inside.endswith("/" + group.path.name)
        assert _cpu_cgroup() == home  # this thread is back
        with open(f"/proc/{child.pid}/cgroup") as f:
            assert any(line.split(":", 2)[2].strip() == inside for line in f if "cpu" in line.split(":")[1])
        group.remove()  # busy: kept, and no error
        assert group.path.exists()
    finally:
        child.kill()
        child.wait()
    # An empty group removed meanwhile is made again on entering.
    group.remove()
    assert not group.path.exists()
    with group.entered():
        assert _cpu_cgroup().endswith("/" + group.path.name)
    assert _cpu_cgroup() == home
    # Other threads of this process never moved.
    assert all(_cpu_cgroup(t) == home for t in os.listdir("/proc/self/task"))


def test_no_group_where_the_cpu_controller_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if cgroups.UNIFIED:
        assert cpu.BulkGroup.make(2) is None
        return
    # A daemon whose cgroup directory is not writable (here: a regular file stands in for it).
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setattr(cgroups, "of_pid", lambda pid: cgroups.Cgroup({"cpu": str(blocker)}))
    assert cpu.BulkGroup.make(2) is None
