"""A container's cgroups: where they are, their metrics, and OOM notifications.

The cgroup of a container is read from ``/proc/<init pid>/cgroup`` right after
``runc create``, so it is right whatever cgroupsPath, cgroup driver or
parent the spec used; controller mount points come from
``/proc/self/mountinfo``. Metrics are the ``io.containerd.cgroups.v1.Metrics``
or ``…v2.Metrics`` messages containerd's shim returns from ``Stats``.

OOM kills are noticed without polling: on cgroup v1 through an eventfd
registered on ``memory.oom_control`` via ``cgroup.event_control``; on v2 through
inotify on ``memory.events``, comparing its ``oom_kill`` counter.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf import any_pb2

from wharfd.api.types.cgroups.v1 import metrics_pb2 as v1
from wharfd.api.types.cgroups.v2 import metrics_pb2 as v2

UNIFIED = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
_USER_HZ = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Cgroup:
    """Filesystem directories of one process's cgroups: per v1 controller, or the v2 one."""

    dirs: dict[str, str]
    unified: bool = UNIFIED

    def dir(self, controller: str) -> str:
        """The directory of ``controller`` (v2: the unified one); "" if unknown."""
        return self.dirs.get("" if self.unified else controller, "")


def of_pid(pid: int) -> Cgroup:
    """The cgroups ``pid`` is in; empty if it is gone."""
    mounts = mount_points()
    dirs: dict[str, str] = {}
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return Cgroup({})
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            if controller in mounts:
                root, mount_point = mounts[controller]
                relative = os.path.relpath(path, root) if path.startswith(root) else path.lstrip("/")
                dirs[controller] = os.path.normpath(os.path.join(mount_point, relative))
    return Cgroup(dirs)


@functools.cache
def mount_points() -> dict[str, tuple[str, str]]:
    """controller ("" for v2) -> (root inside the hierarchy, mount point).

    Read once per process (the zygote's warm-up reads it for every shim):
    cgroup hierarchies are mounted at boot and stay put.
    """
    found: dict[str, tuple[str, str]] = {}
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if not tail or tail[0] not in ("cgroup", "cgroup2"):
                continue
            if tail[0] == "cgroup2":
                found.setdefault("", (fields[3], fields[4]))
                continue
            for option in tail[2].split(","):
                if option not in ("rw", "ro"):  # super options also carry the mount's access mode
                    found.setdefault(option, (fields[3], fields[4]))
    return found


# -- metrics -------------------------------------------------------------------------------


def metrics(cgroup: Cgroup) -> any_pb2.Any:
    """The cgroup's metrics as containerd's Any (bare type URL)."""
    if cgroup.unified:
        return any_pb2.Any(
            type_url="io.containerd.cgroups.v2.Metrics", value=_v2(cgroup.dir("")).SerializeToString()
        )
    return any_pb2.Any(type_url="io.containerd.cgroups.v1.Metrics", value=_v1(cgroup).SerializeToString())


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return ""


def _int(path: str) -> int:
    text = _read(path)
    return int(text) if text.isdigit() else 0


def _flat(path: str) -> dict[str, int]:
    pairs = (line.split() for line in _read(path).splitlines())
    return {p[0]: int(p[1]) for p in pairs if len(p) == 2 and p[1].isdigit()}


_V1_MEMORY_NAMES = {
    "pgpgin": "pg_pg_in",
    "pgpgout": "pg_pg_out",
    "pgfault": "pg_fault",
    "pgmajfault": "pg_maj_fault",
}


def _v1(cg: Cgroup) -> v1.Metrics:
    m = v1.Metrics()
    pids = cg.dir("pids")
    m.pids.current, m.pids.limit = _int(f"{pids}/pids.current"), _int(f"{pids}/pids.max")
    acct, cpu = cg.dir("cpuacct"), cg.dir("cpu")
    m.cpu.usage.total = _int(f"{acct}/cpuacct.usage")
    m.cpu.usage.per_cpu.extend(int(v) for v in _read(f"{acct}/cpuacct.usage_percpu").split())
    ticks = _flat(f"{acct}/cpuacct.stat")
    m.cpu.usage.user = ticks.get("user", 0) * 1_000_000_000 // _USER_HZ
    m.cpu.usage.kernel = ticks.get("system", 0) * 1_000_000_000 // _USER_HZ
    throttle = _flat(f"{cpu}/cpu.stat")
    m.cpu.throttling.periods = throttle.get("nr_periods", 0)
    m.cpu.throttling.throttled_periods = throttle.get("nr_throttled", 0)
    m.cpu.throttling.throttled_time = throttle.get("throttled_time", 0)
    _v1_memory(m, cg.dir("memory"))
    _v1_blkio(m, cg.dir("blkio"))
    return m


def _v1_memory(m: v1.Metrics, mem: str) -> None:
    fields = m.memory.DESCRIPTOR.fields_by_name
    for key, value in _flat(f"{mem}/memory.stat").items():
        total = key.startswith("total_")
        base = _V1_MEMORY_NAMES.get(key.removeprefix("total_"), key.removeprefix("total_"))
        name = ("total_" + base if total else base).replace(
            "hierarchical_memsw_limit", "hierarchical_swap_limit"
        )
        if name in fields and fields[name].message_type is None:  # memory.stat's "swap" is not MemoryEntry
            setattr(m.memory, name, value)
    for entry, prefix in (
        (m.memory.usage, "memory"),
        (m.memory.swap, "memory.memsw"),
        (m.memory.kernel, "memory.kmem"),
        (m.memory.kernel_tcp, "memory.kmem.tcp"),
    ):
        entry.usage = _int(f"{mem}/{prefix}.usage_in_bytes")
        entry.limit = _int(f"{mem}/{prefix}.limit_in_bytes")
        entry.max = _int(f"{mem}/{prefix}.max_usage_in_bytes")
        entry.failcnt = _int(f"{mem}/{prefix}.failcnt")
    oom = _flat(f"{mem}/memory.oom_control")
    m.memory_oom_control.oom_kill_disable = oom.get("oom_kill_disable", 0)
    m.memory_oom_control.under_oom = oom.get("under_oom", 0)
    m.memory_oom_control.oom_kill = oom.get("oom_kill", 0)


def _v1_blkio(m: v1.Metrics, blkio: str) -> None:
    for field, name in (
        ("io_service_bytes_recursive", "io_service_bytes_recursive"),
        ("io_serviced_recursive", "io_serviced_recursive"),
    ):
        text = _read(f"{blkio}/blkio.{name}") or _read(f"{blkio}/blkio.throttle.{name}")
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 3 and ":" in parts[0]:
                major, minor = parts[0].split(":")
                getattr(m.blkio, field).add(
                    op=parts[1], major=int(major), minor=int(minor), value=int(parts[2])
                )


def _v2(d: str) -> v2.Metrics:
    m = v2.Metrics()
    m.pids.current, m.pids.limit = _int(f"{d}/pids.current"), _int(f"{d}/pids.max")
    cpu_fields = m.cpu.DESCRIPTOR.fields_by_name
    for key, value in _flat(f"{d}/cpu.stat").items():
        if key in cpu_fields and cpu_fields[key].message_type is None:
            setattr(m.cpu, key, value)
    mem_fields = m.memory.DESCRIPTOR.fields_by_name
    for key, value in _flat(f"{d}/memory.stat").items():
        if key in mem_fields and mem_fields[key].message_type is None:
            setattr(m.memory, key, value)
    m.memory.usage = _int(f"{d}/memory.current")
    m.memory.usage_limit = _int(f"{d}/memory.max")
    m.memory.swap_usage = _int(f"{d}/memory.swap.current")
    m.memory.swap_limit = _int(f"{d}/memory.swap.max")
    m.memory.max_usage = _int(f"{d}/memory.peak")
    event_fields = m.memory_events.DESCRIPTOR.fields_by_name
    for key, value in _flat(f"{d}/memory.events").items():
        if key in event_fields:
            setattr(m.memory_events, key, value)
    for line in _read(f"{d}/io.stat").splitlines():
        device, *pairs = line.split()
        major, _, minor = device.partition(":")
        values = dict(p.split("=", 1) for p in pairs if "=" in p)
        m.io.usage.add(
            major=int(major),
            minor=int(minor or 0),
            **{k: int(values.get(k, 0)) for k in ("rbytes", "wbytes", "rios", "wios")},
        )
    return m


# -- OOM -----------------------------------------------------------------------------------

_IN_MODIFY = 0x2
_IN_NONBLOCK_CLOEXEC = os.O_NONBLOCK | os.O_CLOEXEC


class OomWatcher:
    """Calls ``on_oom(container_id)`` when the kernel OOM-kills in a watched cgroup."""

    def __init__(self, on_oom: Callable[[str], None]) -> None:
        """Watch nothing yet; :meth:`add` containers once they are started."""
        self._on_oom = on_oom
        self._fds: dict[str, int] = {}
        self._kills: dict[str, int] = {}
        self._memory: dict[str, tuple[str, bool]] = {}  # memory cgroup dir, unified?

    def add(self, container_id: str, cgroup: Cgroup) -> None:
        """Start watching the memory cgroup of ``container_id`` (no-op if it has none)."""
        memory = cgroup.dir("memory")
        if not memory or container_id in self._fds:
            return
        fd = self._register_v2(memory) if cgroup.unified else self._register_v1(memory)
        self._fds[container_id] = fd
        self._memory[container_id] = (memory, cgroup.unified)
        self._kills[container_id] = _oom_kills(memory, cgroup.unified) or 0
        loop = asyncio.get_running_loop()
        loop.add_reader(fd, self._fired, container_id, memory, fd, cgroup.unified)

    def flush(self, container_id: str) -> None:
        """Report an OOM kill the kernel signalled but the event loop has not dispatched yet.

        Called before a process's exit is published, so TaskOOM comes first (as
        containerd orders them) even when the exit is handled, and the watcher
        removed, before the eventfd's wake-up reaches the loop; on v1 the kill
        counter also catches kills the eventfd was never signalled for.
        """
        fd = self._fds.get(container_id)
        if fd is None:
            return
        memory, unified = self._memory[container_id]
        if unified:
            self._fired(container_id, memory, fd, unified)
            return
        try:
            signalled = int.from_bytes(os.read(fd, 8), "little") > 0
        except BlockingIOError:
            signalled = False
        kills = _oom_kills(memory, unified)
        if kills is not None:  # the kernel counts kills (4.13+): trust the counter
            signalled = kills > self._kills.get(container_id, 0)
            self._kills[container_id] = max(kills, self._kills.get(container_id, 0))
        if signalled:
            self._on_oom(container_id)

    def remove(self, container_id: str) -> None:
        """Stop watching ``container_id``."""
        fd = self._fds.pop(container_id, None)
        self._kills.pop(container_id, None)
        self._memory.pop(container_id, None)
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)

    def close(self) -> None:
        """Stop watching everything."""
        for container_id in list(self._fds):
            self.remove(container_id)

    @staticmethod
    def _register_v1(memory: str) -> int:
        efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        control = os.open(f"{memory}/memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
        try:
            with open(f"{memory}/cgroup.event_control", "w", encoding="ascii") as f:
                f.write(f"{efd} {control}")
        except BaseException:
            os.close(efd)
            raise
        finally:
            os.close(control)
        return efd

    @staticmethod
    def _register_v2(memory: str) -> int:
        fd = int(_libc().inotify_init1(_IN_NONBLOCK_CLOEXEC))
        if fd < 0 or _libc().inotify_add_watch(fd, f"{memory}/memory.events".encode(), _IN_MODIFY) < 0:
            err = ctypes.get_errno()
            if fd >= 0:
                os.close(fd)
            raise OSError(err, f"inotify on {memory}/memory.events: {os.strerror(err)}")
        return fd

    def _fired(self, container_id: str, memory: str, fd: int, unified: bool) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(fd, 4096)  # an eventfd counter, or inotify records: only the wake-up matters
        if not os.path.exists(memory):  # the cgroup went away (that wakes the eventfd too)
            self.remove(container_id)
            return
        kills = _oom_kills(memory, unified)
        # v2 always, v1 where the kernel counts kills: no new kill, no event (this also drops
        # the late wake-up of an OOM flush() already reported). A v1 cgroup with the OOM
        # killer disabled counts none but sits under_oom.
        stale = kills is not None and kills <= self._kills.get(container_id, 0)
        if stale and (unified or not _flat(f"{memory}/memory.oom_control").get("under_oom")):
            return
        if kills is not None:
            self._kills[container_id] = max(kills, self._kills.get(container_id, 0))
        self._on_oom(container_id)


def _oom_kills(memory: str, unified: bool) -> int | None:
    """The cgroup's OOM kill counter; None where the kernel keeps none (v1 before 4.13)."""
    values = _flat(f"{memory}/memory.events" if unified else f"{memory}/memory.oom_control")
    kills = values.get("oom_kill")
    return None if kills is None and not unified else int(kills or 0)


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    return libc
