"""The mounts and devices of a CRI container's spec (containerd's CRI WithMounts and WithDevices).

Mounts: the pod's files (``/etc/hostname``, ``/etc/hosts``,
``/etc/resolv.conf``, ``/dev/shm``) unless the config mounts those paths
itself, then the config's mounts, sorted by depth so a parent never hides a
child. Each is an ``rbind`` of the host path (created as a directory when
missing, symlinks resolved) with its propagation and ``ro``/``rw``:

    PRIVATE            rprivate
    HOST_TO_CONTAINER  rslave   (the host mount must be shared or a slave; rootfs becomes rslave)
    BIDIRECTIONAL      rshared  (the host mount must be shared; rootfs becomes rshared)

Propagation is checked, not changed: making a host mount shared affects the
whole node, which is kubelet's (or the admin's) decision
(``mount --make-rshared <mountpoint>``). Recursive read-only mounts need
``rro`` (runc ≥ 1.1 on kernels with mount_setattr). Image volumes arrive here
already mounted and turned into read-only binds (:mod:`wharfd.cri.image_volumes`).

Devices: each host device (or every device under a host directory) is added
to ``linux.devices`` at its container path with a cgroup rule allowing the
requested access.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.runtime import errors
from wharfd.runtime.oci.spec import Spec, SpecOpt, linux_of

ETC_HOSTNAME = "/etc/hostname"
ETC_HOSTS = "/etc/hosts"
RESOLV_CONF = "/etc/resolv.conf"
DEV_SHM = "/dev/shm"
# runc ≥ 1.1 applies the "rro" mount option (mount_setattr, kernel ≥ 5.12); Status reports the
# feature per handler from `runc features` and the kernel, so kubelet only asks where it works.
RECURSIVE_READ_ONLY_SUPPORTED = True
_PROPAGATION = {
    cri.PROPAGATION_PRIVATE: "rprivate",
    cri.PROPAGATION_HOST_TO_CONTAINER: "rslave",
    cri.PROPAGATION_BIDIRECTIONAL: "rshared",
}
# Under /dev, what containerd's HostDevices skips.
_SKIPPED_DEV_DIRS = frozenset({"pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"})


@dataclass(frozen=True)
class PodFiles:
    """The pod's files a container gets (empty path: the pod has none)."""

    hostname: str = ""
    hosts: str = ""
    resolv_conf: str = ""
    shm: str = ""


def pod_mounts(files: PodFiles, config: cri.ContainerConfig) -> list[cri.Mount]:
    """The pod-file mounts the config does not override (containerd's linuxContainerMounts)."""
    security = config.linux.security_context
    readonly = security.readonly_rootfs
    shm = DEV_SHM if security.namespace_options.ipc == cri.NODE else files.shm
    wanted = (
        (ETC_HOSTNAME, files.hostname, readonly),
        (ETC_HOSTS, files.hosts, readonly),
        (RESOLV_CONF, files.resolv_conf, readonly),
        (DEV_SHM, shm, False),
    )
    taken = {os.path.normpath(m.container_path) for m in config.mounts}
    return [
        cri.Mount(container_path=dest, host_path=src, readonly=ro)
        for dest, src, ro in wanted
        if src and dest not in taken and os.path.exists(src)
    ]


def _depth(mount: cri.Mount) -> int:
    return os.path.normpath(mount.container_path).count("/")


def with_mounts(
    config: cri.ContainerConfig, extra: Sequence[cri.Mount], *, cgroup_rw: bool = False
) -> SpecOpt:
    """Add the config's and the pod's mounts to the spec (blocking: stats and creates host paths)."""

    def opt(spec: Spec) -> None:
        taken = {os.path.normpath(m.container_path) for m in config.mounts}
        mounts = [*config.mounts, *(e for e in extra if os.path.normpath(e.container_path) not in taken)]
        mounts.sort(key=_depth)  # stable: equal depths keep their order
        defaults = [
            *spec.get("mounts", []),
            {
                "destination": "/sys/fs/cgroup",
                "type": "cgroup",
                "source": "cgroup",
                "options": ["nosuid", "noexec", "nodev", "relatime", "rw" if cgroup_rw else "ro"],
            },
        ]
        wanted = {os.path.normpath(m.container_path) for m in mounts}
        kept = [
            m
            for m in defaults
            if os.path.normpath(m["destination"]) not in wanted
            and not ("/dev" in wanted and m["destination"].startswith("/dev/"))
        ]
        spec["mounts"] = kept + [_bind(spec, m, i) for i, m in enumerate(mounts)]

    return opt


def _bind(spec: Spec, mount: cri.Mount, index: int) -> dict[str, Any]:
    what = f"mounts[{index}] (container_path {mount.container_path!r})"
    if mount.HasField("image") and mount.image.image:
        # CreateContainer turns image volumes into host binds first (wharfd.cri.image_volumes).
        raise errors.InvalidArgument(f"{what}: image volume was not prepared")
    if not mount.container_path.startswith("/"):
        raise errors.InvalidArgument(f"{what}: container_path must be absolute")
    if not mount.host_path.startswith("/"):
        raise errors.InvalidArgument(f"{what}: host_path {mount.host_path!r} must be an absolute path")
    if mount.uidMappings or mount.gidMappings:
        raise errors.InvalidArgument(f"{what}: idmapped mounts are not supported")
    source = _host_path(mount.host_path, what)
    propagation = _PROPAGATION.get(mount.propagation, "rprivate")
    linux = linux_of(spec)
    if propagation == "rshared":
        require_propagation(source, ("shared:",), "shared")
        linux["rootfsPropagation"] = "rshared"
    elif propagation == "rslave":
        require_propagation(source, ("shared:", "master:"), "shared or slave")
        if linux.get("rootfsPropagation") not in ("rshared", "rslave"):
            linux["rootfsPropagation"] = "rslave"
    return {"destination": mount.container_path, "type": "bind", "source": source,
            "options": ["rbind", propagation, _access(mount, what)]}  # fmt: skip


def _access(mount: cri.Mount, what: str) -> str:
    if not mount.recursive_read_only:
        return "ro" if mount.readonly else "rw"
    if not mount.readonly:
        raise errors.InvalidArgument(f"{what}: recursive read-only conflicts with a read-write mount")
    if mount.propagation != cri.PROPAGATION_PRIVATE:
        raise errors.InvalidArgument(f"{what}: recursive read-only needs private propagation")
    if not RECURSIVE_READ_ONLY_SUPPORTED:
        raise errors.InvalidArgument(
            f"{what}: recursive read-only mounts are not supported by this runtime; "
            f"host_path {mount.host_path!r}"
        )
    return "rro"


def _host_path(path: str, what: str) -> str:
    """The host path with symlinks resolved, created as a directory when missing (as containerd does)."""
    try:
        if not os.path.lexists(path):
            os.makedirs(path, mode=0o755, exist_ok=True)
        return os.path.realpath(path, strict=True)
    except OSError as exc:
        raise errors.InvalidArgument(f"{what}: host_path {path!r}: {exc.strerror or exc}") from exc


def mount_of(path: str, mountinfo: str = "/proc/self/mountinfo") -> tuple[str, list[str]]:
    """(mount point, optional fields) of the mount holding ``path``: the longest mount point prefix."""
    best: tuple[str, list[str]] = ("", [])
    with open(mountinfo, encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            before, _, _ = line.partition(" - ")
            point = fields[4].replace("\\040", " ")
            optional = before.split()[6:]
            inside = path == point or path.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best[0]):
                best = (point, optional)
    return best


def require_propagation(path: str, prefixes: tuple[str, ...], want: str) -> None:
    """FailedPrecondition unless the mount holding ``path`` has one of the propagation ``prefixes``."""
    point, optional = mount_of(path)
    if not any(o.startswith(prefixes) for o in optional):
        raise errors.FailedPrecondition(
            f'host path "{path}" is on mount "{point}", which is not {want} '
            f"(make it so with: mount --make-rshared {point})"
        )


# --- devices ---------------------------------------------------------------------------------------


def _device_entry(
    host: str, container: str, permissions: str
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    info = os.stat(host)
    if stat.S_ISCHR(info.st_mode):
        kind = "c"
    elif stat.S_ISBLK(info.st_mode):
        kind = "b"
    elif stat.S_ISFIFO(info.st_mode):
        kind = "p"
    else:
        return None
    major, minor = os.major(info.st_rdev), os.minor(info.st_rdev)
    device = {"path": container, "type": kind, "major": major, "minor": minor,
              "fileMode": stat.S_IMODE(info.st_mode), "uid": info.st_uid, "gid": info.st_gid}  # fmt: skip
    rule = {"allow": True, "type": kind, "major": major, "minor": minor, "access": permissions}
    return device, rule


def _walk_devices(host: str, container: str) -> Iterable[tuple[str, str]]:
    for root, dirs, files in os.walk(host):
        dirs[:] = sorted(d for d in dirs if not (root == "/dev" and d in _SKIPPED_DEV_DIRS))
        for name in sorted(files):
            path = os.path.join(root, name)
            yield path, os.path.join(container, os.path.relpath(path, host))


def with_devices(devices: Sequence[cri.Device]) -> SpecOpt:
    """Add the config's devices (a host directory adds every device under it); blocking."""
    checked: list[tuple[str, str, str]] = []
    for i, device in enumerate(devices):
        permissions = device.permissions or "rwm"
        if not set(permissions) <= set("rwm"):
            raise errors.InvalidArgument(
                f'devices[{i}].permissions "{device.permissions}": letters of "rwm" only'
            )
        if not device.host_path.startswith("/") or not device.container_path.startswith("/"):
            raise errors.InvalidArgument(f"devices[{i}]: host_path and container_path must be absolute")
        checked.append((device.host_path, device.container_path, permissions))

    def opt(spec: Spec) -> None:
        for i, (host, container, permissions) in enumerate(checked):
            try:
                resolved = os.path.realpath(host, strict=True)
                pairs = (
                    _walk_devices(resolved, container) if os.path.isdir(resolved) else [(resolved, container)]
                )
                for path, dest in pairs:
                    _add_device(spec, _device_entry(path, dest, permissions))
            except OSError as exc:
                raise errors.InvalidArgument(
                    f'devices[{i}].host_path "{host}": {exc.strerror or exc}'
                ) from exc

    return opt


def _add_device(spec: Spec, entry: tuple[dict[str, Any], dict[str, Any]] | None) -> None:
    if entry is None:
        return
    linux = linux_of(spec)
    linux.setdefault("devices", []).append(entry[0])
    linux.setdefault("resources", {}).setdefault("devices", []).append(entry[1])


def with_host_devices() -> SpecOpt:
    """Every device node of the host's /dev (a privileged container with host devices); blocking."""

    def opt(spec: Spec) -> None:
        taken = {d["path"] for d in linux_of(spec).get("devices", [])}
        for path, _ in _walk_devices("/dev", "/dev"):
            if path in taken or path == "/dev/console":
                continue
            try:
                entry = _device_entry(path, path, "rwm")
            except OSError:
                continue  # vanished or unreadable: skip, as a racing udev would make it
            if entry is not None:
                linux_of(spec).setdefault("devices", []).append(entry[0])

    return opt
