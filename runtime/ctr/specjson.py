"""An OCI runtime spec laid out as ctr prints it: Go's struct field order, map keys sorted.

ctr decodes a container's spec into runtime-spec's ``specs.Spec`` and prints
it again, so its keys come out in the order of that struct's fields, whatever
order the stored JSON had. :func:`go_order` reproduces this for the fields of
the Linux spec. Keys the struct does not know are kept, after the known ones
(Go would drop them; losing data silently is worse than a different order).
"""

from __future__ import annotations

from typing import Any

# A schema is an ordered tuple of (key, child): child is None for a scalar or a
# list of scalars, a schema name for an object (or a list of such objects), or
# MAP for a map whose keys Go sorts.
MAP = "map"
_SCHEMAS: dict[str, tuple[tuple[str, str | None], ...]] = {
    "spec": (
        ("ociVersion", None), ("process", "process"), ("root", "root"), ("hostname", None),
        ("domainname", None), ("mounts", "mount"), ("hooks", "hooks"), ("annotations", MAP),
        ("linux", "linux"), ("solaris", None), ("windows", None), ("vm", None), ("zos", None),
        ("freebsd", None),
    ),
    "process": (
        ("terminal", None), ("consoleSize", "box"), ("user", "user"), ("args", None), ("commandLine", None),
        ("env", None), ("cwd", None), ("capabilities", "capabilities"), ("rlimits", "rlimit"),
        ("noNewPrivileges", None), ("apparmorProfile", None), ("oomScoreAdj", None), ("scheduler", None),
        ("selinuxLabel", None), ("ioPriority", "ioPriority"), ("execCPUAffinity", None),
    ),
    "box": (("height", None), ("width", None)),
    "user": (("uid", None), ("gid", None), ("umask", None), ("additionalGids", None), ("username", None)),
    "capabilities": (
        ("bounding", None), ("effective", None), ("inheritable", None), ("permitted", None), ("ambient", None),
    ),
    "rlimit": (("type", None), ("hard", None), ("soft", None)),
    "ioPriority": (("class", None), ("priority", None)),
    "root": (("path", None), ("readonly", None)),
    "mount": (
        ("destination", None), ("type", None), ("source", None), ("options", None),
        ("uidMappings", "idMapping"), ("gidMappings", "idMapping"),
    ),
    "idMapping": (("containerID", None), ("hostID", None), ("size", None)),
    "hooks": tuple(
        (name, "hook")
        for name in ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")
    ),
    "hook": (("path", None), ("args", None), ("env", None), ("timeout", None)),
    "linux": (
        ("uidMappings", "idMapping"), ("gidMappings", "idMapping"), ("sysctl", MAP), ("resources", "resources"),
        ("cgroupsPath", None), ("namespaces", "namespace"), ("devices", "device"), ("netDevices", MAP),
        ("seccomp", "seccomp"), ("rootfsPropagation", None), ("maskedPaths", None), ("readonlyPaths", None),
        ("mountLabel", None), ("intelRdt", None), ("memoryPolicy", None), ("personality", None),
        ("timeOffsets", MAP),
    ),
    "namespace": (("type", None), ("path", None)),
    "device": (
        ("path", None), ("type", None), ("major", None), ("minor", None), ("fileMode", None), ("uid", None),
        ("gid", None),
    ),
    "resources": (
        ("devices", "deviceCgroup"), ("memory", "memory"), ("cpu", "cpu"), ("pids", None), ("blockIO", None),
        ("hugepageLimits", "hugepageLimit"), ("network", None), ("rdma", MAP), ("unified", MAP),
    ),
    "deviceCgroup": (("allow", None), ("type", None), ("major", None), ("minor", None), ("access", None)),
    "memory": (
        ("limit", None), ("reservation", None), ("swap", None), ("kernel", None), ("kernelTCP", None),
        ("swappiness", None), ("disableOOMKiller", None), ("useHierarchy", None), ("checkBeforeUpdate", None),
    ),
    "cpu": (
        ("shares", None), ("quota", None), ("burst", None), ("period", None), ("realtimeRuntime", None),
        ("realtimePeriod", None), ("cpus", None), ("mems", None), ("idle", None),
    ),
    "hugepageLimit": (("pageSize", None), ("limit", None)),
    "seccomp": (
        ("defaultAction", None), ("defaultErrnoRet", None), ("architectures", None), ("flags", None),
        ("listenerPath", None), ("listenerMetadata", None), ("syscalls", "syscall"),
    ),
    "syscall": (("names", None), ("action", None), ("errnoRet", None), ("args", "seccompArg")),
    "seccompArg": (("index", None), ("value", None), ("valueTwo", None), ("op", None)),
}  # fmt: skip


def go_order(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with its keys (recursively) in the order ctr prints them."""
    return _object(spec, "spec")


def _object(obj: dict[str, Any], schema: str) -> dict[str, Any]:
    fields = _SCHEMAS[schema]
    out: dict[str, Any] = {}
    for key, child in fields:
        if key in obj:
            out[key] = _value(obj[key], child)
    known = {key for key, _ in fields}
    out.update((k, v) for k, v in obj.items() if k not in known)
    return out


def _value(value: Any, child: str | None) -> Any:
    if child is None:
        return value
    if child == MAP:
        return dict(sorted(value.items())) if isinstance(value, dict) else value
    if isinstance(value, list):
        return [_object(v, child) if isinstance(v, dict) else v for v in value]
    if isinstance(value, dict):
        return _object(value, child)
    return value
