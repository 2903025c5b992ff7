"""Scheduling hints for the threads and processes that do bulk work (downloads, extraction).

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

A slice only orders tasks that compete inside one group, and a node groups
them: by cgroup, and in the root cgroup by session (autogroup). The layer
workers therefore also run in a cpu cgroup of their own, a child of the
daemon's (:class:`BulkGroup`, cgroup v1): with a low ``cpu.shares`` the group
yields to the daemon's threads whenever they wake, and still gets the CPU the
daemon leaves idle, so a pull on a quiet node runs at full speed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

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


BULK_GROUP = "wharfd-bulk"  # the name of the workers' cgroup under the daemon's own
WORKER_SHARES = 64  # its default cpu.shares: 1/16 of a cgroup's default weight (1024)


@dataclass(frozen=True)
class BulkGroup:
    """A cpu cgroup (v1) for bulk work, made a child of the daemon's own cpu cgroup.

    On cgroup v1 each thread may sit in its own cgroup, and a child process
    starts in its parent *thread's* cgroup: :meth:`entered` moves the calling
    thread in for the length of a block, so that a process it starts (the
    workers' fork server, and so every worker) runs in the group.
    """

    path: Path
    home: Path  # the daemon's cpu cgroup, where an entered thread goes back to
    shares: int

    @classmethod
    def make(cls, shares: int, name: str = BULK_GROUP) -> BulkGroup | None:
        """The group with ``cpu.shares`` = ``shares`` (made, or updated); None where there is none.

        None on cgroup v2 (a process's threads share a domain cgroup there) and
        where the cpu controller is not mounted or cannot be written; the
        reason is logged, and bulk work then shares the daemon's cgroup.
        """
        from wharfd.runtime.shim import cgroups  # the mount table: not needed unless a group is made

        if cgroups.UNIFIED:
            log.info("cgroup v2: layer workers share the daemon's cgroup (no per-thread cpu cgroups)")
            return None
        home = cgroups.of_pid(os.getpid()).dir("cpu")
        if not home:
            log.info("no cpu cgroup controller: layer workers share the daemon's cgroup")
            return None
        group = cls(Path(home, name), Path(home), shares)
        try:
            group._ensure()
        except OSError as exc:
            log.warning("cannot make the layer workers' cpu cgroup %s: %s", group.path, exc)
            return None
        return group

    def _ensure(self) -> None:
        self.path.mkdir(exist_ok=True)
        (self.path / "cpu.shares").write_text(str(self.shares))

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Run the body with the calling thread in the group; then move it back home.

        The group is made again if it went away meanwhile (an empty group may
        be removed by anyone). If it cannot be entered, the body runs where
        the thread is, and the reason is logged: the work is done either way.
        """
        tid = str(threading.get_native_id())
        try:
            self._ensure()
            (self.path / "tasks").write_text(tid)
        except OSError as exc:
            log.warning("cannot enter the cpu cgroup %s: %s", self.path, exc)
            yield
            return
        try:
            yield
        finally:
            (self.home / "tasks").write_text(tid)

    def remove(self) -> None:
        """Remove the group if nothing runs in it (another daemon's workers may)."""
        try:
            self.path.rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                log.warning("cannot remove %s: %s", self.path, exc)
