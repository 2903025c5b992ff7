"""Value rules: what a key accepts beyond the type its default gives it, and the keys containerd retired.

A rule sees a value that already has the right type and returns the problem
(the last part of the one-line error) or None. ``"*"`` in a rule's key path
stands for a name the user chose (a runtime's, say).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

from wharfd.cri.config_schema import (
    CRI,
    DEBUG_FORMATS,
    DEBUG_LEVELS,
    DIFFER,
    GC_SCHEDULER,
    METADATA,
    OTLP,
    TASK_RUNTIME,
    TRACING,
    TRANSFER,
)
from wharfd.cri.config_toml import KeyPath, quote
from wharfd.cri.config_values import ConfigError, parse_duration

Rule = Callable[[Any, KeyPath], str | None]


def _between(low: float | None, high: float | None) -> Rule:
    def check(value: Any, _: KeyPath) -> str | None:
        if (low is not None and value < low) or (high is not None and value > high):
            if high is None:
                return f"must be at least {low}, got {value}"
            return f"must be between {low} and {high}, got {value}"
        return None

    return check


def _one_of(*choices: str) -> Rule:
    def check(value: Any, _: KeyPath) -> str | None:
        if value not in choices:
            return f"must be one of {', '.join(quote(c) for c in choices)}; got {quote(value)}"
        return None

    return check


def duration_rule(allow_empty: bool) -> Rule:
    """A Go duration, not negative; ``allow_empty``: ``""`` is fine too (off)."""

    def check(value: Any, _: KeyPath) -> str | None:
        if value == "" and allow_empty:
            return None
        try:
            seconds = parse_duration(value, "")
        except ConfigError as e:
            return e.problem
        return "must not be negative" if seconds < 0 else None

    return check


def _absolute(required: bool) -> Rule:
    def check(value: Any, _: KeyPath) -> str | None:
        if not value:
            return "must not be empty" if required else None
        return None if os.path.isabs(value) else f"must be an absolute path, got {quote(value)}"

    return check


def _non_empty(value: Any, _: KeyPath) -> str | None:
    return "must not be empty" if not value else None


def _plugin_uris(value: Any, _: KeyPath) -> str | None:
    for uri in value:
        if "." not in uri:
            return f'{quote(uri)} is not a plugin URI: use a full name like "io.containerd.gc.v1.scheduler"'
    return None


def _platforms(value: Any, _: KeyPath) -> str | None:
    for item in value:
        parts = item.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            return f'invalid platform {quote(item)}: expected "os/arch" or "os/arch/variant"'
    return None


def _port(value: Any, _: KeyPath) -> str | None:
    if not value.isdigit() or int(value) > 65535:
        return f'must be a port number from "0" (any free port) to "65535", got {quote(value)}'
    return None


_RUNTIME_TYPE = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.v[0-9]+")


def _runtime_type(value: Any, path: KeyPath) -> str | None:
    if _RUNTIME_TYPE.fullmatch(value):
        return None
    name = quote(str(path[-2]))
    return (
        f"unknown runtime type {quote(value)} for runtime {name}: "
        'expected a dotted name ending in a version, such as "io.containerd.runc.v2"'
    )


_UID = _between(0, 4294967294)
_MSG_SIZE = _between(1, 2**31 - 1)  # gRPC keeps message sizes in an int32
RUNTIMES: KeyPath = ("plugins", CRI, "containerd", "runtimes")

RULES: list[tuple[KeyPath, Rule]] = [
    (("root",), _absolute(required=True)),
    (("state",), _absolute(required=True)),
    (("temp",), _absolute(required=False)),
    (("plugin_dir",), _absolute(required=False)),
    (("oom_score",), _between(-1000, 1000)),
    (("disabled_plugins",), _plugin_uris),
    (("required_plugins",), _plugin_uris),
    (("grpc", "address"), _non_empty),
    (("grpc", "uid"), _UID),
    (("grpc", "gid"), _UID),
    (("grpc", "max_recv_message_size"), _MSG_SIZE),
    (("grpc", "max_send_message_size"), _MSG_SIZE),
    (("ttrpc", "uid"), _UID),
    (("ttrpc", "gid"), _UID),
    (("debug", "uid"), _UID),
    (("debug", "gid"), _UID),
    (("debug", "level"), _one_of(*DEBUG_LEVELS)),
    (("debug", "format"), _one_of(*DEBUG_FORMATS)),
    (("plugins", CRI, "stream_server_port"), _port),
    (("plugins", CRI, "stream_idle_timeout"), duration_rule(allow_empty=True)),
    (("plugins", CRI, "image_pull_progress_timeout"), duration_rule(allow_empty=True)),
    (("plugins", CRI, "drain_exec_sync_io_timeout"), duration_rule(allow_empty=True)),
    (("plugins", CRI, "max_concurrent_downloads"), _between(0, None)),  # 0: no limit
    (("plugins", CRI, "selinux_category_range"), _between(0, None)),
    (("plugins", CRI, "stats_collect_period"), _between(1, None)),  # seconds between samples
    (("plugins", CRI, "containerd", "snapshotter"), _non_empty),
    (("plugins", CRI, "containerd", "default_runtime_name"), _non_empty),
    ((*RUNTIMES, "*", "runtime_type"), _runtime_type),
    ((*RUNTIMES, "*", "runtime_path"), _absolute(required=False)),
    ((*RUNTIMES, "*", "cni_max_conf_num"), _between(0, None)),
    ((*RUNTIMES, "*", "sandbox_mode"), _one_of("podsandbox", "shim")),
    ((*RUNTIMES, "*", "options", "IoUid"), _UID),
    ((*RUNTIMES, "*", "options", "IoGid"), _UID),
    (("plugins", CRI, "cni", "max_conf_num"), _between(0, None)),
    (("plugins", CRI, "cni", "ip_pref"), _one_of("", "ipv4", "ipv6", "cni")),
    (("plugins", CRI, "image_decryption", "key_model"), _one_of("node", "")),
    (("plugins", GC_SCHEDULER, "pause_threshold"), _between(0, 0.5)),
    (("plugins", GC_SCHEDULER, "deletion_threshold"), _between(0, None)),
    (("plugins", GC_SCHEDULER, "mutation_threshold"), _between(0, None)),
    (("plugins", GC_SCHEDULER, "schedule_delay"), duration_rule(allow_empty=False)),
    (("plugins", GC_SCHEDULER, "startup_delay"), duration_rule(allow_empty=False)),
    (("plugins", METADATA, "content_sharing_policy"), _one_of("shared", "isolated")),
    (("plugins", TASK_RUNTIME, "platforms"), _platforms),
    (("plugins", TRANSFER, "max_concurrent_downloads"), _between(0, None)),
    (("plugins", TRANSFER, "max_concurrent_uploaded_layers"), _between(0, None)),
    (("plugins", DIFFER, "unpack_workers"), _between(0, 1024)),  # 0: one per CPU but one
    (("plugins", DIFFER, "worker_cpu_shares"), _between(0, 262144)),  # 0: no cgroup; else cpu.shares' range
    (("plugins", OTLP, "protocol"), _one_of("http/protobuf", "grpc")),
    (("plugins", TRACING, "sampling_ratio"), _between(0, 1)),
]

# Keys containerd once had, with what to use instead.
_IN_OPTIONS = "in containerd.runtimes.<name>.options"
RETIRED: dict[KeyPath, str] = {
    ("plugins", CRI, "systemd_cgroup"): f"set SystemdCgroup = true {_IN_OPTIONS}",
    ("plugins", CRI, "containerd", "no_pivot"): f"set NoPivotRoot = true {_IN_OPTIONS}",
    ("plugins", CRI, "containerd", "default_runtime"): "use default_runtime_name and containerd.runtimes",
    ("plugins", CRI, "containerd", "untrusted_workload_runtime"): "add a runtime under containerd.runtimes",
    ("plugins", CRI, "registry", "mirrors"): "use config_path with a hosts.toml per registry",
    ("plugins", CRI, "registry", "configs"): "use config_path with a hosts.toml per registry",
    ("plugins", CRI, "registry", "auths"): "use config_path, or image pull secrets",
}


def matches(pattern: KeyPath, path: KeyPath) -> bool:
    """Whether ``path`` fits ``pattern``, where ``"*"`` stands for any one key."""
    return len(pattern) == len(path) and all(p in ("*", q) for p, q in zip(pattern, path, strict=True))


def problem_with(value: Any, path: KeyPath) -> str | None:
    """What is wrong with ``value`` at ``path`` by the first rule it breaks; None when it breaks none."""
    for pattern, rule in RULES:
        if matches(pattern, path):
            problem = rule(value, path)
            if problem:
                return problem
    return None
