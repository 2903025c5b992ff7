"""What the daemon reads from the host itself for pod stats: pod cgroups, netns links, open files.

Every function here blocks (files under /sys and /proc, a netlink socket in
another namespace) and is meant for ``asyncio.to_thread``.

A pod's cgroup is its ``linux.cgroup_parent``: a path under each hierarchy for
the cgroupfs driver (``/kubepods/besteffort/pod<uid>``), or a systemd slice
name (``kubepods-besteffort-pod<uid>.slice``) that expands to
``/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid>.slice``.

Network figures come from the pod's netns over rtnetlink (pyroute2), the
64-bit link counters (``IFLA_STATS64``) of every interface but ``lo``. The
netlink socket is opened from a short-lived thread that enters the netns with
``setns`` and leaves it again: pyroute2's own ``netns=`` argument forks a child
process, and a fork of the daemon shares its signal wake-up socket, so the
child's SIGTERM reached the daemon's loop as its own.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf import any_pb2

from wharfd.runtime import errors
from wharfd.runtime.shim import cgroups


def expand_slice(name: str) -> str:
    """The cgroup path of a systemd slice name (``a-b.slice`` → ``/a.slice/a-b.slice``)."""
    if name == "-.slice":
        return "/"
    if not name.endswith(".slice") or "/" in name:
        raise errors.InvalidArgument(f'linux.cgroup_parent "{name}": not a systemd slice name')
    stem = name.removesuffix(".slice")
    parts = stem.split("-")
    if not all(parts):
        raise errors.InvalidArgument(f'linux.cgroup_parent "{name}": empty component in slice name')
    return "/" + "/".join("-".join(parts[: i + 1]) + ".slice" for i in range(len(parts)))


def cgroup_at(path: str) -> cgroups.Cgroup:
    """The :class:`Cgroup` whose hierarchy-relative path is ``path`` (cgroupfs path or systemd slice)."""
    if not path.startswith("/"):
        path = expand_slice(path)
    dirs: dict[str, str] = {}
    for controller, (root, mount_point) in cgroups.mount_points().items():
        if (controller == "") != cgroups.UNIFIED:
            continue  # a v1 host's stray cgroup2 mount (or a v2 host's v1 one) is not the hierarchy we use
        relative = os.path.relpath(path, root) if path.startswith(root) and root != "/" else path.lstrip("/")
        dirs[controller] = os.path.normpath(os.path.join(mount_point, relative))
    return cgroups.Cgroup(dirs)


def pod_metrics(cgroup_parent: str) -> any_pb2.Any:
    """The metrics of a pod's cgroup, in the shape a shim's Stats has; NotFound if it does not exist."""
    cg = cgroup_at(cgroup_parent)
    probe = cg.dir("cpuacct") or cg.dir("memory") or cg.dir("")
    if not probe or not os.path.isdir(probe):
        raise errors.NotFound(f'pod cgroup "{cgroup_parent}": not found')
    return cgroups.metrics(cg)


def cpu_usage_ns(cg: cgroups.Cgroup) -> int | None:
    """Cumulative CPU ns of one cgroup, read straight from the file (the collector's cheap path)."""
    try:
        if cg.unified:
            with open(os.path.join(cg.dir(""), "cpu.stat"), encoding="ascii") as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "usage_usec":
                        return int(value) * 1000
            return None
        with open(os.path.join(cg.dir("cpuacct"), "cpuacct.usage"), encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class LinkStats:
    """The counters of one network interface."""

    name: str
    rx_bytes: int = 0
    rx_packets: int = 0
    rx_errors: int = 0
    rx_dropped: int = 0
    tx_bytes: int = 0
    tx_packets: int = 0
    tx_errors: int = 0
    tx_dropped: int = 0


_CLONE_NEWNET = 0x40000000
T = TypeVar("T")


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc().setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _in_netns(netns_path: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` on a fresh thread that has entered the netns pinned at ``netns_path`` (never created)."""
    result: dict[str, Any] = {}

    def enter_run_leave() -> None:
        # setns changes only this thread; it is a fresh one, so a failed return harms nothing else.
        # Everything runs here: pyroute2 opens its netlink socket per thread, on first use.
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            target = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            os.close(own)
            result["error"] = exc
            return
        try:
            _setns(target)
            try:
                result["value"] = fn()
            finally:
                _setns(own)
        except BaseException as exc:
            result["error"] = exc
        finally:
            os.close(own)
            os.close(target)

    worker = threading.Thread(target=enter_run_leave, name="netns-stats")
    worker.start()
    worker.join()
    if "error" in result:
        error = result["error"]
        if isinstance(error, FileNotFoundError):
            raise errors.NotFound(f'network namespace "{netns_path}": not found') from None
        raise errors.Unavailable(f'network namespace "{netns_path}": {error}') from error
    value: T = result["value"]
    return value


def _links_here() -> list[LinkStats]:
    from pyroute2 import IPRoute  # imported here: only pod stats need netlink

    out: list[LinkStats] = []
    with IPRoute() as ipr:
        for link in ipr.get_links():
            name = link.get("IFLA_IFNAME")
            if not name or name == "lo":
                continue
            s = link.get("IFLA_STATS64") or link.get("IFLA_STATS") or {}
            out.append(
                LinkStats(
                    name=name,
                    rx_bytes=s.get("rx_bytes", 0),
                    rx_packets=s.get("rx_packets", 0),
                    rx_errors=s.get("rx_errors", 0),
                    rx_dropped=s.get("rx_dropped", 0),
                    tx_bytes=s.get("tx_bytes", 0),
                    tx_packets=s.get("tx_packets", 0),
                    tx_errors=s.get("tx_errors", 0),
                    tx_dropped=s.get("tx_dropped", 0),
                )
            )
    return out


def netns_links(netns_path: str) -> list[LinkStats]:
    """Counters of every interface but ``lo`` in the netns pinned at ``netns_path``."""
    return _in_netns(netns_path, _links_here)


def open_files(pids: list[int]) -> tuple[int, int]:
    """(file descriptors, sockets) open in the processes ``pids`` (gone processes count 0)."""
    fds = sockets = 0
    for pid in pids:
        directory = f"/proc/{pid}/fd"
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        fds += len(names)
        for name in names:
            try:
                if os.readlink(os.path.join(directory, name)).startswith("socket:"):
                    sockets += 1
            except OSError:
                continue
    return fds, sockets


def filesystem(path: str) -> tuple[int, int, int]:
    """(capacity bytes, inodes, free inodes) of the filesystem holding ``path``; zeros if unreadable."""
    try:
        st = os.statvfs(path)
    except OSError:
        return 0, 0, 0
    return st.f_blocks * st.f_frsize, st.f_files, st.f_ffree


def block_devices(pairs: set[tuple[int, int]]) -> dict[tuple[int, int], str]:
    """``/dev/<name>`` of block devices by (major, minor), from /sys/dev/block; unknown ones are left out."""
    out: dict[tuple[int, int], str] = {}
    for major, minor in pairs:
        try:
            target = os.readlink(f"/sys/dev/block/{major}:{minor}")
        except OSError:
            continue
        out[(major, minor)] = "/dev/" + os.path.basename(target)
    return out
