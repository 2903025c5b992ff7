"""Shim memory merging (KSM) through the real daemon: ksmd on, the zygote's pages marked, merged.

The daemon turns ksmd on (``merge_shim_memory``, default true); the zygote
marks its private writable memory mergeable before forking, so every shim
inherits the marks and ksmd shares again the pages a shim copied unchanged.
Nothing a shim executes (runc, the container) is marked.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.task_support import OURS, RUNC, TaskRig, started_rig
from wharfd.api.services.tasks.v1 import tasks_pb2 as tpb
from wharfd.runtime.tasks.memory_merge import KSM_DIR

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="tasks need root (mounts, runc)"),
    pytest.mark.skipif(RUNC is None, reason="runc is not installed"),
    pytest.mark.skipif(not (KSM_DIR / "run").exists(), reason="the kernel has no KSM (CONFIG_KSM)"),
    pytest.mark.skipif(
        not Path("/proc/self/ksm_merging_pages").exists(),
        reason="the kernel reports no KSM pages per process (< 6.1)",
    ),
    pytest.mark.timeout(180),
]


@pytest.fixture
def rig() -> Iterator[TaskRig]:
    with started_rig() as r:
        yield r


@pytest.fixture
def fast_ksmd() -> Iterator[None]:
    """ksmd at a higher scan rate for the test (the kernel's default takes ~25 s a scan here); restored."""
    saved = {name: (KSM_DIR / name).read_text() for name in ("pages_to_scan", "sleep_millisecs")}
    (KSM_DIR / "pages_to_scan").write_text("5000")
    (KSM_DIR / "sleep_millisecs").write_text("10")
    try:
        yield
    finally:
        for name, value in saved.items():
            (KSM_DIR / name).write_text(value)


def mergeable_kinds(pid: int) -> set[str]:
    """The kinds of mapping of ``pid`` ([heap], anonymous, a file's name) that carry the mergeable flag."""
    kinds, kind = set(), ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and not head[0].endswith(":"):
            kind = os.path.basename(head[5]) if len(head) > 5 else "anonymous"
        elif head[0] == "VmFlags:" and "mg" in head[1:]:
            kinds.add(kind)
    return kinds


def merging_pages(pid: int) -> int:
    return int(Path(f"/proc/{pid}/ksm_merging_pages").read_text())


def test_our_shims_pages_are_merged_and_their_children_are_not_marked(rig: TaskRig, fast_ksmd: None) -> None:
    assert (KSM_DIR / "run").read_text().strip() == "1"  # the daemon turned ksmd on
    shims = []
    for cid in ("merge-a", "merge-b"):  # two containers, no sandbox: a shim each
        rig.create_container(cid, ["sleep", "1000"], runtime=OURS)
        rig.create_task(cid)
        rig.tasks.Start(tpb.StartRequest(container_id=cid))
        pid = rig.tasks.Get(tpb.GetRequest(container_id=cid)).process.pid
        shim = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
        assert {"[heap]", "anonymous"} <= mergeable_kinds(shim)
        assert not mergeable_kinds(pid), "the container's own memory must never be merged"
        shims.append(shim)
    assert shims[0] != shims[1]
    deadline = time.monotonic() + 90
    while not all(merging_pages(shim) > 0 for shim in shims):
        assert time.monotonic() < deadline, f"ksmd merged nothing of the shims {shims}"
        time.sleep(0.5)
    for cid in ("merge-a", "merge-b"):
        rig.tasks.Kill(tpb.KillRequest(container_id=cid, signal=signal.SIGKILL, all=True))
        rig.tasks.Wait(tpb.WaitRequest(container_id=cid))
        rig.tasks.Delete(tpb.DeleteTaskRequest(container_id=cid))
