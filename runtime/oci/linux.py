"""Spec options for the ``linux`` section: namespaces, cgroups, resources, devices, privilege, seccomp.

Same contract as :mod:`wharfd.runtime.oci.spec`: each ``with_…`` validates its
arguments up front and returns an option that changes a spec in place.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from typing import Any

from wharfd.runtime import errors
from wharfd.runtime.oci import caps
from wharfd.runtime.oci.process import with_capabilities
from wharfd.runtime.oci.spec import Spec, SpecOpt, absolute_paths, linux_of, process_of, set_or_drop

NAMESPACE_KINDS = ("pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time")
DEFAULT_CPU_PERIOD = 100_000  # µs, the kernel's default CFS period (ctr --cpus uses it)
_CPU_LIST = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")

# containerd's WithDefaultUnixDevices: (major, minor) of the character devices a container
# may use besides the deny-all rule; minor None is a wildcard (the /dev/pts range, major 136).
DEFAULT_DEVICES: tuple[tuple[int, int | None], ...] = (
    (1, 3),  # /dev/null
    (1, 8),  # /dev/random
    (1, 7),  # /dev/full
    (5, 0),  # /dev/tty
    (1, 5),  # /dev/zero
    (1, 9),  # /dev/urandom
    (5, 1),  # /dev/console
    (136, None),  # /dev/pts/*
    (5, 2),  # /dev/ptmx
)


def _resources(spec: Spec) -> dict[str, Any]:
    resources: dict[str, Any] = linux_of(spec).setdefault("resources", {})
    return resources


def _cpu(spec: Spec) -> dict[str, Any]:
    cpu: dict[str, Any] = _resources(spec).setdefault("cpu", {})
    return cpu


def _check_kind(kind: str) -> None:
    if kind not in NAMESPACE_KINDS:
        known = ", ".join(NAMESPACE_KINDS)
        raise errors.InvalidArgument(f'linux.namespaces: unknown type "{kind}" (one of {known})')


# --- namespaces and cgroups ---------------------------------------------------------------------


def with_namespace_path(kind: str, path: str = "") -> SpecOpt:
    """Use namespace ``kind``: a new one, or with ``path`` join an existing one (a pod's netns)."""
    _check_kind(kind)
    if path and not path.startswith("/"):
        raise errors.InvalidArgument(f'linux.namespaces {kind}: path "{path}" must be absolute')
    entry = {"type": kind, "path": path} if path else {"type": kind}

    def opt(spec: Spec) -> None:
        entries: list[dict[str, str]] = linux_of(spec).setdefault("namespaces", [])
        for i, existing in enumerate(entries):
            if existing.get("type") == kind:
                entries[i] = dict(entry)
                return
        entries.append(dict(entry))

    return opt


def with_host_namespace(kind: str) -> SpecOpt:
    """Share the host's namespace of ``kind`` by leaving it out of the spec (ctr --net-host)."""
    _check_kind(kind)

    def opt(spec: Spec) -> None:
        linux = linux_of(spec)
        kept = [n for n in linux.get("namespaces", []) if n.get("type") != kind]
        if kept:
            linux["namespaces"] = kept
        else:
            linux.pop("namespaces", None)

    return opt


def with_cgroups_path(path: str) -> SpecOpt:
    """Set linux.cgroupsPath: ``/parent/name`` for cgroupfs, ``slice:prefix:name`` for systemd."""
    if not isinstance(path, str) or not path or "\0" in path or ".." in path.split("/"):
        raise errors.InvalidArgument(f'linux.cgroupsPath "{path}": must be non-empty without ".." components')

    def opt(spec: Spec) -> None:
        linux_of(spec)["cgroupsPath"] = path

    return opt


def with_masked_paths(paths: Iterable[str]) -> SpecOpt:
    """Replace linux.maskedPaths (an empty list unmasks everything, as for ProcMount Unmasked)."""
    checked = absolute_paths(paths, "linux.maskedPaths")

    def opt(spec: Spec) -> None:
        set_or_drop(linux_of(spec), "maskedPaths", list(checked))

    return opt


def with_readonly_paths(paths: Iterable[str]) -> SpecOpt:
    """Replace linux.readonlyPaths."""
    checked = absolute_paths(paths, "linux.readonlyPaths")

    def opt(spec: Spec) -> None:
        set_or_drop(linux_of(spec), "readonlyPaths", list(checked))

    return opt


# --- resources --------------------------------------------------------------------------------


def with_memory_limit(limit: int) -> SpecOpt:
    """Limit memory to ``limit`` bytes."""
    if not isinstance(limit, int) or limit <= 0:
        raise errors.InvalidArgument(f"linux.resources.memory.limit {limit!r}: must be a positive byte count")

    def opt(spec: Spec) -> None:
        _resources(spec).setdefault("memory", {})["limit"] = limit

    return opt


def with_cpu_cfs(quota: int, period: int = DEFAULT_CPU_PERIOD) -> SpecOpt:
    """Set the CFS quota and period in µs (quota -1 means unlimited)."""
    if not isinstance(period, int) or period <= 0:
        raise errors.InvalidArgument(f"linux.resources.cpu.period {period!r}: must be positive")
    if not isinstance(quota, int) or (quota <= 0 and quota != -1):
        raise errors.InvalidArgument(f"linux.resources.cpu.quota {quota!r}: must be positive or -1")

    def opt(spec: Spec) -> None:
        _cpu(spec).update(quota=quota, period=period)

    return opt


def with_cpus(cpus: float, period: int = DEFAULT_CPU_PERIOD) -> SpecOpt:
    """Allow ``cpus`` CPUs' worth of time, as ctr --cpus: quota = cpus * period."""
    if not cpus > 0:
        raise errors.InvalidArgument(f"cpus {cpus!r}: must be positive")
    return with_cpu_cfs(max(1, int(cpus * period)), period)


def with_cpu_shares(shares: int) -> SpecOpt:
    """Set the relative CPU weight (cgroup v1 cpu.shares; 1024 is the default weight)."""
    if not isinstance(shares, int) or shares <= 0:
        raise errors.InvalidArgument(f"linux.resources.cpu.shares {shares!r}: must be positive")

    def opt(spec: Spec) -> None:
        _cpu(spec)["shares"] = shares

    return opt


def with_cpuset(cpus: str = "", mems: str = "") -> SpecOpt:
    """Pin to CPUs and memory nodes given as lists like ``0-2,4``; an empty list leaves that part."""
    for what, value in (("cpus", cpus), ("mems", mems)):
        if value and not _CPU_LIST.match(value):
            raise errors.InvalidArgument(f'linux.resources.cpu.{what} "{value}": expected a list like 0-2,4')

    def opt(spec: Spec) -> None:
        cpu = _cpu(spec)
        if cpus:
            cpu["cpus"] = cpus
        if mems:
            cpu["mems"] = mems

    return opt


# --- devices and privilege -----------------------------------------------------------------------


def with_default_unix_devices() -> SpecOpt:
    """Allow the standard character devices after the deny-all rule (containerd's WithDefaultUnixDevices)."""

    def opt(spec: Spec) -> None:
        devices: list[dict[str, Any]] = _resources(spec).setdefault("devices", [])
        for major, minor in DEFAULT_DEVICES:
            rule: dict[str, Any] = {"allow": True, "type": "c", "major": major}
            if minor is not None:
                rule["minor"] = minor
            rule["access"] = "rwm"
            devices.append(rule)

    return opt


def with_all_devices_allowed() -> SpecOpt:
    """Replace the device rules with one allowing every device (privileged with host devices)."""

    def opt(spec: Spec) -> None:
        _resources(spec)["devices"] = [{"allow": True, "access": "rwm"}]

    return opt


def with_privileged() -> SpecOpt:
    """containerd's WithPrivileged: our own capabilities, nothing masked, rw sysfs/cgroupfs, no LSM/seccomp.

    Device access is separate, as in ctr: add :func:`with_all_devices_allowed`.
    """

    def opt(spec: Spec) -> None:
        with_capabilities(caps.current())(spec)
        linux = linux_of(spec)
        for key in ("maskedPaths", "readonlyPaths", "seccomp"):
            linux.pop(key, None)
        for mount in spec.get("mounts", []):
            if mount.get("type") in ("sysfs", "cgroup"):
                mount["options"] = ["rw" if o == "ro" else o for o in mount.get("options", [])]
        process = process_of(spec)
        process.pop("selinuxLabel", None)
        process.pop("apparmorProfile", None)

    return opt


def with_seccomp(profile: Mapping[str, Any] | None) -> SpecOpt:
    """Install a seccomp profile (a copy of the JSON object), or with None run unconfined."""
    if profile is not None and (
        not isinstance(profile, Mapping) or not isinstance(profile.get("defaultAction"), str)
    ):
        raise errors.InvalidArgument("linux.seccomp.defaultAction: expected a string")
    copied = copy.deepcopy(dict(profile)) if profile is not None else None

    def opt(spec: Spec) -> None:
        linux = linux_of(spec)
        if copied is None:
            linux.pop("seccomp", None)
        else:
            linux["seccomp"] = copy.deepcopy(copied)

    return opt
