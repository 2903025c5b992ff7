"""The OCI runtime spec as containerd builds it: the default, the options that change it, its wire forms.

A spec is a JSON-shaped ``dict`` (:data:`Spec`) with the keys and omissions
Go's ``encoding/json`` gives containerd's ``specs.Spec``: empty optional
fields are absent, so :func:`to_json` of :func:`default_spec` is the document
``oci.populateDefaultUnixSpec`` produces (with our ``ociVersion``).

Options are small functions: each ``with_…(args)`` validates its arguments
(InvalidArgument naming the field) and returns a :data:`SpecOpt` that changes
a spec in place. :func:`generate` is containerd's ``GenerateSpec``::

    spec = generate("default", "c1", process.with_process_args("sh"), seccomp.with_default_profile())

Options that depend on others read the spec when they run, so order matters
as in containerd: the default seccomp profile follows the capabilities.
Options live beside the section they change: hostname, root, mounts and
annotations here, the process (argv, env, user, capabilities, ...) in
:mod:`wharfd.runtime.oci.process`, namespaces, cgroups, resources, devices,
masked paths and seccomp in :mod:`wharfd.runtime.oci.linux`.

On the wire (containers' ``spec`` field) the spec is a ``google.protobuf.Any``
with :data:`SPEC_TYPE_URL` and the JSON bytes as value (:func:`to_any`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from google.protobuf import any_pb2

from wharfd.runtime import errors, namespaces
from wharfd.runtime.oci import caps

Spec = dict[str, Any]
SpecOpt = Callable[[Spec], None]

# runc 1.1.5 (spec 1.0.2-dev) runs specs marked 1.1.0 (test_oci_runc); containerd main writes 1.3.0.
OCI_VERSION = "1.1.0"
SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
PROCESS_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"
LINUX_RESOURCES_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"

# containerd's defaultUnixEnv: not in the default spec (removed in containerd 1.3) but used
# when an image has no Env, and by with_default_path_env (the CRI adds it to every container).
DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_ROOTFS = "rootfs"
DEFAULT_NAMESPACES = ("pid", "ipc", "uts", "mount", "network")
MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
MAX_ID = 2**31 - 1  # runc's limit for uids and gids (containerd follows it)
_HOST_NAME_MAX = 64


def default_mounts() -> list[dict[str, Any]]:
    """containerd's defaultMounts (pkg/oci/mounts.go), a fresh copy."""

    def mount(dest: str, kind: str, source: str, options: str) -> dict[str, Any]:
        return {"destination": dest, "type": kind, "source": source, "options": options.split(",")}

    return [
        mount("/proc", "proc", "proc", "nosuid,noexec,nodev"),
        mount("/dev", "tmpfs", "tmpfs", "nosuid,strictatime,mode=755,size=65536k"),
        mount("/dev/pts", "devpts", "devpts", "nosuid,noexec,newinstance,ptmxmode=0666,mode=0620,gid=5"),
        mount("/dev/shm", "tmpfs", "shm", "nosuid,noexec,nodev,mode=1777,size=65536k"),
        mount("/dev/mqueue", "mqueue", "mqueue", "nosuid,noexec,nodev"),
        mount("/sys", "sysfs", "sysfs", "nosuid,noexec,nodev,ro"),
        mount("/run", "tmpfs", "tmpfs", "nosuid,strictatime,mode=755,size=65536k"),
    ]


def default_spec(namespace: str, container_id: str) -> Spec:
    """containerd's default Linux spec for container ``container_id`` in ``namespace``.

    Both names are checked as identifiers because they become the cgroup path
    ``/<namespace>/<id>``: a ``..`` in either would point outside it.
    """
    namespaces.validate_identifier(namespace, what="namespace")
    namespaces.validate_identifier(container_id, what="container id")
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "user": {"uid": 0, "gid": 0},
            "cwd": "/",
            "capabilities": {
                "bounding": list(caps.DEFAULT),
                "effective": list(caps.DEFAULT),
                "permitted": list(caps.DEFAULT),
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": DEFAULT_ROOTFS},
        "mounts": default_mounts(),
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "cgroupsPath": f"/{namespace}/{container_id}",
            "namespaces": [{"type": kind} for kind in DEFAULT_NAMESPACES],
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }


def apply(spec: Spec, *opts: SpecOpt) -> Spec:
    """Run ``opts`` over ``spec`` in order; returns the same (changed) dict."""
    for opt in opts:
        opt(spec)
    return spec


def generate(namespace: str, container_id: str, *opts: SpecOpt) -> Spec:
    """The default spec with ``opts`` applied (containerd's GenerateSpec)."""
    return apply(default_spec(namespace, container_id), *opts)


# --- wire forms -----------------------------------------------------------------------------


def to_json(spec: Spec, *, indent: int | None = None) -> bytes:
    """The spec as UTF-8 JSON: compact like Go's json.Marshal, or indented for people."""
    separators = (",", ":") if indent is None else (",", ": ")
    return json.dumps(spec, indent=indent, separators=separators, ensure_ascii=False).encode()


def from_json(data: bytes | str, *, what: str = "spec") -> Spec:
    """Parse a spec document; InvalidArgument unless it is an object with a string ``ociVersion``."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.InvalidArgument(f"{what}: not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise errors.InvalidArgument(f"{what}: expected a JSON object")
    if not isinstance(obj.get("ociVersion"), str):
        raise errors.InvalidArgument(f"{what}.ociVersion: expected a string")
    return obj


def to_any(spec: Spec) -> any_pb2.Any:
    """The spec as containerd puts it on the wire: typeurl of specs.Spec, JSON value."""
    return any_pb2.Any(type_url=SPEC_TYPE_URL, value=to_json(spec))


def from_any(value: any_pb2.Any, *, what: str = "spec") -> Spec:
    """The spec inside an Any written by :func:`to_any` or by containerd's client."""
    if value.type_url != SPEC_TYPE_URL:
        raise errors.InvalidArgument(f'{what}: type_url "{value.type_url}" is not "{SPEC_TYPE_URL}"')
    return from_json(value.value, what=what)


# --- the parts options write into -----------------------------------------------------------


def process_of(spec: Spec) -> dict[str, Any]:
    """``spec["process"]``, created empty (as Go's setProcess does) when missing."""
    process: dict[str, Any] = spec.setdefault("process", {"user": {"uid": 0, "gid": 0}, "cwd": ""})
    return process


def linux_of(spec: Spec) -> dict[str, Any]:
    """``spec["linux"]``, created empty when missing."""
    linux: dict[str, Any] = spec.setdefault("linux", {})
    return linux


def set_or_drop(obj: dict[str, Any], key: str, value: Any) -> None:
    """Set ``obj[key]``, or drop the key when ``value`` is empty."""
    # Go's omitempty: an empty list, string or False leaves the key out of the JSON.
    if value:
        obj[key] = value
    else:
        obj.pop(key, None)


# --- hostname, root, mounts, annotations -----------------------------------------------------------


def with_hostname(name: str) -> SpecOpt:
    """Set the UTS hostname (an empty name leaves it unset, as containerd's default)."""
    if not isinstance(name, str) or len(name) > _HOST_NAME_MAX or "\0" in name:
        raise errors.InvalidArgument(f'hostname "{name}": must be at most {_HOST_NAME_MAX} characters')

    def opt(spec: Spec) -> None:
        set_or_drop(spec, "hostname", name)

    return opt


def with_root_path(path: str) -> SpecOpt:
    """Set root.path (relative paths are relative to the bundle)."""
    if not isinstance(path, str) or not path:
        raise errors.InvalidArgument("root.path: must not be empty")

    def opt(spec: Spec) -> None:
        spec.setdefault("root", {})["path"] = path

    return opt


def with_readonly_rootfs(readonly: bool = True) -> SpecOpt:
    """Mount the root filesystem read-only (runc remounts it after creating mount points)."""

    def opt(spec: Spec) -> None:
        set_or_drop(spec.setdefault("root", {"path": DEFAULT_ROOTFS}), "readonly", readonly)

    return opt


def with_mounts(mounts: Iterable[Mapping[str, Any]]) -> SpecOpt:
    """Append mounts given as ``{"destination", "type", "source", "options"}`` (other keys are dropped)."""
    checked = [_mount(m, f"with_mounts[{i}]") for i, m in enumerate(mounts)]

    def opt(spec: Spec) -> None:
        spec.setdefault("mounts", []).extend(copy.deepcopy(checked))

    return opt


def without_mounts(*destinations: str) -> SpecOpt:
    """Remove the mounts at these destinations (e.g. ``/run`` for containerd's WithoutRunMount)."""
    drop = {d.rstrip("/") or "/" for d in destinations}

    def opt(spec: Spec) -> None:
        kept = [m for m in spec.get("mounts", []) if (m["destination"].rstrip("/") or "/") not in drop]
        set_or_drop(spec, "mounts", kept)

    return opt


def _mount(mount: Mapping[str, Any], what: str) -> dict[str, Any]:
    if not isinstance(mount, Mapping):
        raise errors.InvalidArgument(f"{what}: expected an object")
    dest = mount.get("destination")
    if not isinstance(dest, str) or not dest.startswith("/"):
        raise errors.InvalidArgument(f'{what}.destination "{dest}": must be an absolute path')
    out: dict[str, Any] = {"destination": dest}
    for key in ("type", "source"):
        value = mount.get(key, "")
        if not isinstance(value, str):
            raise errors.InvalidArgument(f"{what}.{key}: expected a string")
        if value:
            out[key] = value
    options = strings(mount.get("options") or [], f"{what}.options")
    if options:
        out["options"] = list(options)
    return out


def with_annotations(annotations: Mapping[str, str]) -> SpecOpt:
    """Add or replace annotations."""
    for key, value in annotations.items():
        if not isinstance(key, str) or not key or not isinstance(value, str):
            raise errors.InvalidArgument(f"annotations[{key!r}]: keys and values must be strings")
    copied = dict(annotations)

    def opt(spec: Spec) -> None:
        if copied:
            spec.setdefault("annotations", {}).update(copied)

    return opt


def strings(values: Iterable[str], what: str) -> list[str]:
    """``values`` as a list of strings without NUL bytes, or InvalidArgument naming the index."""
    out = list(values)
    for i, value in enumerate(out):
        if not isinstance(value, str) or "\0" in value:
            raise errors.InvalidArgument(f"{what}[{i}]: expected a string without NUL bytes")
    return out


def absolute_paths(paths: Iterable[str], what: str) -> list[str]:
    """Like :func:`strings`, and each must be an absolute path."""
    out = strings(paths, what)
    for i, path in enumerate(out):
        if not path.startswith("/"):
            raise errors.InvalidArgument(f'{what}[{i}] "{path}": must be an absolute path')
    return out
