"""Watching the kernel's same-page merging (KSM) from the benchmarks: is it on, how far, at what cost.

The daemon turns ksmd on (runtime/tasks/memory_merge.py) and our zygote marks
its memory mergeable; what the shims' PSS is once ksmd has shared their
copied pages again is only known after it has scanned them, at the kernel's
own rate. These helpers wait for that and read ksmd's counters and CPU time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

from wharfd.runtime.tasks.memory_merge import KSM_DIR, enable_ksmd

__all__ = [
    "enable_ksmd",
    "ksm_counter",
    "ksm_running",
    "ksm_settings",
    "ksmd_cpu_seconds",
    "wait_for_merging",
]


async def wait_for_merging(limit: float) -> int:
    """Wait until a full scan of ksmd adds under 1% to the pages it shares (or ``limit`` s); return the scans."""
    began, start = time.monotonic(), ksm_counter("full_scans")
    last_scan, last_sharing = start, ksm_counter("pages_sharing")
    while time.monotonic() - began < limit:
        await asyncio.sleep(1.0)
        scan = ksm_counter("full_scans")
        if scan == last_scan:
            continue
        sharing = ksm_counter("pages_sharing")
        # Two scans at least: the first only notes which pages stay unchanged, the second merges.
        if scan - start >= 2 and sharing - last_sharing < max(last_sharing // 100, 1):
            break
        last_scan, last_sharing = scan, sharing
    return ksm_counter("full_scans") - start


def ksm_running() -> bool:
    """Whether ksmd is on (it merges only memory marked mergeable: our zygote's)."""
    return ksm_counter("run") == 1


def ksm_counter(name: str) -> int:
    try:
        return int((KSM_DIR / name).read_text())
    except (OSError, ValueError):
        return -1


def ksm_settings() -> str:
    names = ("run", "pages_to_scan", "sleep_millisecs", "smart_scan", "advisor_mode")
    values = {}
    for name in names:
        with contextlib.suppress(OSError):
            values[name] = (KSM_DIR / name).read_text().strip()
    return ", ".join(f"{k}={v}" for k, v in values.items()) or "unavailable"


def ksmd_cpu_seconds() -> float:
    """CPU time of the kernel's ksmd thread so far (0 if not found)."""
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if comm.read_text().strip() == "ksmd":
                fields = (comm.parent / "stat").read_text().rsplit(")", 1)[1].split()
                return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def wait_for_merging_blocking(limit: float) -> int:
    """:func:`wait_for_merging` for scripts without an event loop."""
    return asyncio.run(wait_for_merging(limit))
