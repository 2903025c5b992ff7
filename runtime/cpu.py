"""Scheduling hints for the threads that do bulk work (downloads, extraction).

Linux's EEVDF scheduler (6.6+) lets a task that wakes preempt the running one
only when the woken task is due first; a running task is otherwise protected
for its time slice. A thread that hashes and writes a blob for a second at a
time therefore holds its core for whole slices while the event loop, woken by
a CRI call, waits behind it. Since 6.12 a task may ask for a slice of its own
(``sched_setattr``'s ``sched_runtime`` under SCHED_OTHER) and one with a
shorter slice than the running task preempts it when it wakes. Bulk work asks
for a long slice: it keeps its share of the CPU (its weight is unchanged) but
yields at once to anything with the default slice that wakes. Older kernels
ignore the field; other systems lack the call; both are a no-op here.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator

BULK_SLICE_NS = 20_000_000  # the kernel accepts 0.1 to 100 ms; the default is ~3 ms
_SCHED_OTHER = 0
_SYSCALLS = {"x86_64": 314, "aarch64": 274}  # __NR_sched_setattr


class _SchedAttr(ctypes.Structure):
    # struct sched_attr, SCHED_ATTR_SIZE_VER0 (48 bytes): the fields up to sched_period.
    _fields_ = [  # ctypes reads it from the class
        ("size", ctypes.c_uint32),
        ("sched_policy", ctypes.c_uint32),
        ("sched_flags", ctypes.c_uint64),
        ("sched_nice", ctypes.c_int32),
        ("sched_priority", ctypes.c_uint32),
        ("sched_runtime", ctypes.c_uint64),
        ("sched_deadline", ctypes.c_uint64),
        ("sched_period", ctypes.c_uint64),
    ]


def set_slice(ns: int) -> bool:
    """Give the calling thread a time slice of ``ns`` (0: the default); whether the call succeeded.

    The thread keeps its nice value. Only for SCHED_OTHER threads (what every
    thread of the daemon and its workers is).
    """
    number = _SYSCALLS.get(os.uname().machine)
    if number is None or os.sched_getscheduler(0) != _SCHED_OTHER:
        return False
    attr = _SchedAttr(
        size=ctypes.sizeof(_SchedAttr),
        sched_policy=_SCHED_OTHER,
        sched_nice=os.getpriority(os.PRIO_PROCESS, 0),  # 0: this thread, on Linux
        sched_runtime=ns,
    )
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return False
    return int(libc.syscall(number, 0, ctypes.byref(attr), 0)) == 0


@contextlib.contextmanager
def bulk() -> Iterator[None]:
    """Run the body on this thread with the long slice, then give the thread the default back."""
    changed = set_slice(BULK_SLICE_NS)
    try:
        yield
    finally:
        if changed:
            set_slice(0)
