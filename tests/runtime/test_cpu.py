"""Scheduling hints for bulk work (wharfd.runtime.cpu)."""

from __future__ import annotations

import os
import threading

import pytest

from wharfd.runtime import cpu


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
        with cpu.bulk():
            out["bulk"] = _slice()
        out["after"] = _slice()

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
    assert got["bulk"] == cpu.BULK_SLICE_NS and got["after"] == got["default"]
