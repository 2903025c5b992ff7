"""The files a pod shares with its containers: hostname, hosts, resolv.conf, and its /dev/shm.

Layout (containerd's)::

    <cri root>/sandboxes/<id>/hostname      "<hostname>\\n" (the node's name when the pod sets none)
    <cri root>/sandboxes/<id>/hosts         a copy of the node's /etc/hosts
    <cri root>/sandboxes/<id>/resolv.conf   from dns_config, else a copy of the node's /etc/resolv.conf
    <cri state>/sandboxes/<id>/shm          a 64 MiB tmpfs (not for IPC=NODE pods: they use /dev/shm)

The containers engineer bind-mounts these into every container of the pod
(:func:`hostname_path`, :func:`hosts_path`, :func:`resolv_path`, :func:`shm_path`).
Everything here blocks; callers run it in a thread.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
from pathlib import Path

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.runtime import errors, mount
from wharfd.runtime.snapshots.snapshotter import Mount

ETC_HOSTS = Path("/etc/hosts")
ETC_RESOLV = Path("/etc/resolv.conf")
DEV_SHM = "/dev/shm"
SHM_SIZE = 64 * 1024 * 1024


def hostname_path(root: Path) -> Path:
    """The pod's hostname file, given the pod's root dir."""
    return root / "hostname"


def hosts_path(root: Path) -> Path:
    """The pod's hosts file."""
    return root / "hosts"


def resolv_path(root: Path) -> Path:
    """The pod's resolv.conf."""
    return root / "resolv.conf"


def shm_path(state_dir: Path, config: cri.PodSandboxConfig) -> str:
    """The pod's /dev/shm source: its own tmpfs, or the node's for IPC=NODE pods."""
    if config.linux.security_context.namespace_options.ipc == cri.NODE:
        return DEV_SHM
    return str(state_dir / "shm")


def resolv_conf(dns: cri.DNSConfig) -> str:
    """resolv.conf content for a pod's dns_config (search, nameserver lines, options)."""
    lines = []
    if dns.searches:
        lines.append("search " + " ".join(dns.searches))
    lines += [f"nameserver {server}" for server in dns.servers]
    if dns.options:
        lines.append("options " + " ".join(dns.options))
    return "".join(line + "\n" for line in lines)


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    os.chmod(path, 0o644)


def _copy(src: Path, dst: Path) -> None:
    try:
        shutil.copyfile(src, dst)
    except FileNotFoundError:
        dst.write_text("")  # a node without the file: the containers get an empty one
    os.chmod(dst, 0o644)


def setup(root: Path, state_dir: Path, config: cri.PodSandboxConfig) -> None:
    """Create the pod's files and its /dev/shm; on failure nothing mounted is left behind."""
    root.mkdir(parents=True, exist_ok=True, mode=0o755)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
    _write(hostname_path(root), (config.hostname or socket.gethostname()) + "\n")
    _copy(ETC_HOSTS, hosts_path(root))
    if config.HasField("dns_config"):
        _write(resolv_path(root), resolv_conf(config.dns_config))
    else:
        _copy(ETC_RESOLV, resolv_path(root))
    shm = shm_path(state_dir, config)
    if shm == DEV_SHM:
        if not os.path.isdir(DEV_SHM):
            raise errors.FailedPrecondition(f"host {DEV_SHM} is not available for a pod with host IPC")
        return
    os.makedirs(shm, mode=0o700, exist_ok=True)
    options = ("nosuid", "nodev", "noexec", "mode=1777", f"size={SHM_SIZE}")
    try:
        mount.mount(Mount(type="tmpfs", source="shm", options=options), shm)
    except OSError as exc:
        raise errors.Unavailable(f"sandbox /dev/shm {shm}: mount: {exc.strerror}") from exc


def cleanup(state_dir: Path, config: cri.PodSandboxConfig) -> None:
    """Unmount the pod's /dev/shm (the directories go with :func:`remove`); absent is fine."""
    shm = shm_path(state_dir, config)
    if shm != DEV_SHM and os.path.exists(shm):
        try:
            mount.unmount_all(shm, mount.MNT_DETACH)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise errors.Unavailable(f"sandbox /dev/shm {shm}: unmount: {exc.strerror}") from exc


def remove(root: Path, state_dir: Path, config: cri.PodSandboxConfig) -> None:
    """Unmount and delete both pod directories."""
    cleanup(state_dir, config)
    for path in (state_dir, root):
        shutil.rmtree(path, ignore_errors=True)
