"""The daemon configuration: every key wharfd reads, its default, and how files become a :class:`Config`.

The file is containerd's TOML in the ``version = 2`` layout: the same key names,
the same plugin section names (``plugins."io.containerd.grpc.v1.cri"`` and so on),
so a node's existing ``config.toml`` keeps its meaning. Older and newer files are
accepted where they can be read faithfully:

* no ``version`` or ``version = 1``: read as version 2 (short version 1 plugin
  names such as ``plugins.cri`` are renamed), with a warning;
* ``version = 3``: the split CRI sections (``io.containerd.cri.v1.images`` and
  ``io.containerd.cri.v1.runtime``) are folded back into the version 2 CRI section;
* anything else is refused.

``imports`` (paths or globs, relative to the file that names them) are read
after that file, breadth first, and each file read later overrides the ones
before it, as containerd does: a drop-in in ``conf.d/`` wins over the main file.
Tables merge key by key (so two drop-ins may each set part of the CRI section),
other values are replaced; ``disabled_plugins``, ``required_plugins`` and
``imports`` accumulate. The merged files then override the defaults, and a
runtime that only a file defines starts from the runtime defaults.

Every problem is a :class:`ConfigError` whose text is one line,
``<file>: <key.path>: <problem>``. Keys wharfd does not know are not errors: they
are ignored and reported in :attr:`Config.warnings`.
"""

from __future__ import annotations

import copy
import datetime
import glob
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any

from wharfd.runtime.plugin import HOST_PLATFORM

DEFAULT_CONFIG_PATH = "/etc/wharfd/config.toml"

# Plugin sections, by the names containerd gives them in the version 2 layout.
CRI = "io.containerd.grpc.v1.cri"
GC_SCHEDULER = "io.containerd.gc.v1.scheduler"
OVERLAYFS = "io.containerd.snapshotter.v1.overlayfs"
NATIVE = "io.containerd.snapshotter.v1.native"
METADATA = "io.containerd.metadata.v1.bolt"  # served by the SQLite store; the name keeps configs portable
TASK_RUNTIME = "io.containerd.runtime.v2.task"
TASKS_SERVICE = "io.containerd.service.v1.tasks-service"
CGROUPS_MONITOR = "io.containerd.monitor.v1.cgroups"
OTLP = "io.containerd.tracing.processor.v1.otlp"
TRACING = "io.containerd.internal.v1.tracing"
TRANSFER = "io.containerd.transfer.v1.local"

# Version 3 names that are folded back into the sections above.
CRI_IMAGES_V3 = "io.containerd.cri.v1.images"
CRI_RUNTIME_V3 = "io.containerd.cri.v1.runtime"
SHIM_MANAGER_V3 = "io.containerd.shim.v1.manager"
CGROUPS_MONITOR_V3 = "io.containerd.monitor.task.v1.cgroups"

# wharfd plugins whose config lives in a section named as containerd names its counterpart.
PLUGIN_SECTION_ALIASES = {"io.containerd.metadata.v1.sqlite": METADATA}

DEBUG_LEVELS = ("trace", "debug", "info", "warn", "warning", "error", "fatal", "panic")
DEBUG_FORMATS = ("text", "json")

DEFAULT_TIMEOUTS = {
    "io.containerd.timeout.shim.cleanup": "5s",
    "io.containerd.timeout.shim.load": "5s",
    "io.containerd.timeout.shim.shutdown": "3s",
    "io.containerd.timeout.task.state": "2s",
}

# The runc v2 shim options; our own shim (io.containerd.wharf.v2) takes the same.
RUNC_OPTIONS: dict[str, Any] = {
    "BinaryName": "",
    "Root": "",
    "SystemdCgroup": False,
    "NoPivotRoot": False,
    "NoNewKeyring": False,
    "ShimCgroup": "",
    "IoUid": 0,
    "IoGid": 0,
    "CriuImagePath": "",
    "CriuWorkPath": "",
}
RUNC_LIKE_TYPES = ("io.containerd.runc.v2", "io.containerd.wharf.v2")

KeyPath = tuple[str | int, ...]


class ConfigError(Exception):
    """A configuration that cannot be used; ``str(e)`` is ``<file>: <key.path>: <problem>`` on one line."""

    def __init__(self, problem: str, key: str = "", file: str = "") -> None:
        self.problem = " ".join(problem.split("\n"))
        self.key = key
        self.file = file
        super().__init__(str(self))

    def __str__(self) -> str:
        return ": ".join(part for part in (self.file, self.key, self.problem) if part)


# --------------------------------------------------------------------------------------------
# Defaults


def _runtime_defaults(runtime_type: str) -> dict[str, Any]:
    options = copy.deepcopy(RUNC_OPTIONS) if runtime_type in RUNC_LIKE_TYPES else {}
    return {
        "runtime_type": runtime_type,
        "runtime_path": "",
        "pod_annotations": [],
        "container_annotations": [],
        "privileged_without_host_devices": False,
        "base_runtime_spec": "",
        "cni_conf_dir": "",
        "cni_max_conf_num": 0,
        "snapshotter": "",
        "sandbox_mode": "podsandbox",
        "options": options,
    }


def _cri_defaults() -> dict[str, Any]:
    return {
        "sandbox_image": "registry.k8s.io/pause:3.10",
        "stream_server_address": "127.0.0.1",
        "stream_server_port": "0",
        "stream_idle_timeout": "4h0m0s",
        "enable_tls_streaming": False,
        "max_container_log_line_size": 16384,
        "max_concurrent_downloads": 3,
        "image_pull_progress_timeout": "5m0s",
        "disable_cgroup": False,
        "disable_apparmor": False,
        "disable_proc_mount": False,
        "unset_seccomp_profile": "",
        "restrict_oom_score_adj": False,
        "enable_unprivileged_ports": True,
        "enable_unprivileged_icmp": True,
        "device_ownership_from_security_context": False,
        "enable_selinux": False,
        "selinux_category_range": 1024,
        "tolerate_missing_hugetlb_controller": True,
        "disable_hugetlb_controller": True,
        "ignore_image_defined_volumes": False,
        "netns_mounts_under_state_dir": False,
        "stats_collect_period": 10,
        "drain_exec_sync_io_timeout": "0s",
        "enable_cdi": True,
        "cdi_spec_dirs": ["/etc/cdi", "/var/run/cdi"],
        "x509_key_pair_streaming": {"tls_cert_file": "", "tls_key_file": ""},
        "containerd": {
            "snapshotter": "overlayfs",
            "default_runtime_name": "runc",
            "discard_unpacked_layers": False,
            "disable_snapshot_annotations": True,
            "runtimes": {
                "runc": _runtime_defaults("io.containerd.runc.v2"),
                "wharf": _runtime_defaults("io.containerd.wharf.v2"),
            },
        },
        "cni": {
            "bin_dir": "/opt/cni/bin",
            "conf_dir": "/etc/cni/net.d",
            "max_conf_num": 1,
            "conf_template": "",
            "ip_pref": "",
            "setup_serially": False,
        },
        "registry": {"config_path": ""},
        "image_decryption": {"key_model": "node"},
    }


def default_tree() -> dict[str, Any]:
    """Return the complete default configuration as a fresh TOML-ready tree (``version = 2`` layout)."""
    return {
        "version": 2,
        "root": "/var/lib/wharfd",
        "state": "/run/wharfd",
        "temp": "",
        "plugin_dir": "",
        "disabled_plugins": [],
        "required_plugins": [],
        "imports": [],
        "oom_score": 0,
        "grpc": asdict(GrpcConfig()),
        "ttrpc": asdict(TtrpcConfig()),
        "debug": asdict(DebugConfig()),
        "metrics": asdict(MetricsConfig()),
        "timeouts": dict(DEFAULT_TIMEOUTS),
        "plugins": {
            CRI: _cri_defaults(),
            GC_SCHEDULER: {
                "pause_threshold": 0.02,
                "deletion_threshold": 0,
                "mutation_threshold": 100,
                "schedule_delay": "0s",
                "startup_delay": "100ms",
            },
            OVERLAYFS: {
                "root_path": "",
                "upperdir_label": False,
                "sync_remove": False,
                "slow_chown": False,
                "mount_options": [],
            },
            NATIVE: {"root_path": ""},
            METADATA: {"content_sharing_policy": "shared"},
            TASK_RUNTIME: {"platforms": [HOST_PLATFORM], "sched_core": False},
            TASKS_SERVICE: {"blockio_config_file": "", "rdt_config_file": ""},
            CGROUPS_MONITOR: {"no_prometheus": False},
            OTLP: {"endpoint": "", "protocol": "http/protobuf", "insecure": False},
            TRACING: {"sampling_ratio": 1.0, "service_name": "wharfd"},
            TRANSFER: {"max_concurrent_downloads": 3, "max_concurrent_uploaded_layers": 3, "config_path": ""},
        },
        "proxy_plugins": {},
        "stream_processors": {},
    }


# The shape of one entry of the open tables (their keys are the user's names).
_PROXY_PLUGIN = {"type": "", "address": "", "platform": "", "exports": {}, "capabilities": []}
_STREAM_PROCESSOR = {"accepts": [], "returns": "", "path": "", "args": [], "env": []}


# --------------------------------------------------------------------------------------------
# The Config object


@dataclass
class GrpcConfig:
    """``[grpc]``: the socket serving CRI and the containerd client API."""

    address: str = "/run/wharfd/wharfd.sock"
    tcp_address: str = ""
    uid: int = 0
    gid: int = 0
    max_recv_message_size: int = 16 * 1024 * 1024
    max_send_message_size: int = 16 * 1024 * 1024
    tcp_tls_ca: str = ""
    tcp_tls_cert: str = ""
    tcp_tls_key: str = ""


@dataclass
class TtrpcConfig:
    """``[ttrpc]``: the socket shims publish events to; empty address means ``<grpc address>.ttrpc``."""

    address: str = ""
    uid: int = 0
    gid: int = 0


@dataclass
class DebugConfig:
    """``[debug]``: log level and format, and the optional debug (pprof-like) socket."""

    address: str = ""
    uid: int = 0
    gid: int = 0
    level: str = "info"
    format: str = "text"


@dataclass
class MetricsConfig:
    """``[metrics]``: the Prometheus endpoint (``host:port``; empty disables it)."""

    address: str = ""
    grpc_histogram: bool = False


def _default_plugins() -> dict[str, dict[str, Any]]:
    plugins: dict[str, dict[str, Any]] = default_tree()["plugins"]
    return plugins


def _default_timeouts() -> dict[str, float]:
    return {key: parse_duration(value, f"timeouts.{key}") for key, value in DEFAULT_TIMEOUTS.items()}


@dataclass
class Config:
    """The effective configuration: defaults, overridden by the files in :attr:`sources`."""

    version: int  # the layout of the effective config; always 2, whatever the files said
    root: str = "/var/lib/wharfd"
    state: str = "/run/wharfd"
    temp: str = ""
    plugin_dir: str = ""
    grpc: GrpcConfig = field(default_factory=GrpcConfig)
    ttrpc: TtrpcConfig = field(default_factory=TtrpcConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    disabled_plugins: list[str] = field(default_factory=list)
    required_plugins: list[str] = field(default_factory=list)
    imports: list[str] = field(default_factory=list)  # as absolute paths or globs
    oom_score: int = 0
    timeouts: dict[str, float] = field(default_factory=_default_timeouts)
    plugins: dict[str, dict[str, Any]] = field(default_factory=_default_plugins)
    sources: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    proxy_plugins: dict[str, dict[str, Any]] = field(default_factory=dict)
    stream_processors: dict[str, dict[str, Any]] = field(default_factory=dict)

    def plugin(self, plugin_id: str) -> dict[str, Any]:
        """Return the section of ``plugin_id`` (e.g. ``io.containerd.grpc.v1.cri``); ``{}`` if it has none.

        A wharfd plugin standing in for a containerd one (the SQLite metadata store
        for ``io.containerd.metadata.v1.bolt``) reads that plugin's section.
        """
        return self.plugins.get(PLUGIN_SECTION_ALIASES.get(plugin_id, plugin_id), {})

    def duration(self, plugin_id: str, *keys: str) -> float:
        """Return a duration key of a plugin section in seconds; an empty string reads as 0."""
        value: Any = self.plugin(plugin_id)
        for key in keys:
            value = value[key]
        key_path = _format_path(("plugins", plugin_id, *keys))
        if not isinstance(value, str):
            raise ConfigError(f"expected a duration string, got {_describe(value)}", key_path)
        return parse_duration(value, key_path) if value else 0.0

    def ttrpc_address(self) -> str:
        """The ttrpc socket shims connect to: ``[ttrpc] address``, else the gRPC address + ``.ttrpc``."""
        return self.ttrpc.address or self.grpc.address + ".ttrpc"

    def to_tree(self) -> dict[str, Any]:
        """The effective configuration as a TOML-ready tree, durations back in Go's notation."""
        return {
            "version": 2,
            "root": self.root,
            "state": self.state,
            "temp": self.temp,
            "plugin_dir": self.plugin_dir,
            "disabled_plugins": list(self.disabled_plugins),
            "required_plugins": list(self.required_plugins),
            "imports": list(self.imports),
            "oom_score": self.oom_score,
            "grpc": asdict(self.grpc),
            "ttrpc": asdict(self.ttrpc),
            "debug": asdict(self.debug),
            "metrics": asdict(self.metrics),
            "timeouts": {key: format_duration(value) for key, value in self.timeouts.items()},
            "plugins": copy.deepcopy(self.plugins),
            "proxy_plugins": copy.deepcopy(self.proxy_plugins),
            "stream_processors": copy.deepcopy(self.stream_processors),
        }


def _from_tree(tree: dict[str, Any], sources: list[str], warnings: list[str]) -> Config:
    return Config(
        version=2,
        root=tree["root"],
        state=tree["state"],
        temp=tree["temp"],
        plugin_dir=tree["plugin_dir"],
        grpc=GrpcConfig(**tree["grpc"]),
        ttrpc=TtrpcConfig(**tree["ttrpc"]),
        debug=DebugConfig(**tree["debug"]),
        metrics=MetricsConfig(**tree["metrics"]),
        disabled_plugins=tree["disabled_plugins"],
        required_plugins=tree["required_plugins"],
        imports=tree["imports"],
        oom_score=tree["oom_score"],
        timeouts={key: parse_duration(value, f"timeouts.{key}") for key, value in tree["timeouts"].items()},
        plugins=tree["plugins"],
        sources=sources,
        warnings=warnings,
        proxy_plugins=tree["proxy_plugins"],
        stream_processors=tree["stream_processors"],
    )


# --------------------------------------------------------------------------------------------
# Go durations

_NS_PER_UNIT = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # micro sign
    "\u03bcs": 1_000,  # Greek mu
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_NUMBER = re.compile(r"([0-9]*)(?:\.([0-9]*))?")
_UNIT = re.compile(r"[^0-9.]*")
_MAX_NS = 2**63 - 1  # Go's time.Duration is an int64 of nanoseconds


def parse_duration(value: str, key: str) -> float:
    """Parse a Go duration (``"5m0s"``, ``"1h"``, ``"300ms"``, ``"1.5s"``, ``"0"``) into seconds.

    Raises :class:`ConfigError` naming ``key`` when ``value`` is not in Go's syntax.
    """
    text = value
    negative = text[:1] == "-"
    if text[:1] in "+-":
        text = text[1:]
    if text == "0":
        return 0.0
    if not text:
        raise ConfigError(_bad_duration(value, "empty"), key)
    total = Fraction(0)
    while text:
        number = _NUMBER.match(text)
        assert number is not None  # the pattern matches the empty string
        whole, frac = number.group(1), number.group(2)
        if not whole and not frac:
            raise ConfigError(_bad_duration(value, "expected a number"), key)
        text = text[number.end() :]
        unit_match = _UNIT.match(text)
        assert unit_match is not None
        unit = unit_match.group(0)
        text = text[unit_match.end() :]
        if not unit:
            raise ConfigError(_bad_duration(value, "missing unit (ns, us, ms, s, m or h)"), key)
        if unit not in _NS_PER_UNIT:
            raise ConfigError(_bad_duration(value, f"unknown unit {_quote(unit)}"), key)
        amount = Fraction(int(whole or "0"))
        if frac:
            amount += Fraction(int(frac), 10 ** len(frac))
        total += amount * _NS_PER_UNIT[unit]
    nanoseconds = int(total)  # Go truncates fractions of a nanosecond
    if nanoseconds > _MAX_NS + (1 if negative else 0):
        raise ConfigError(_bad_duration(value, "out of range"), key)
    return (-nanoseconds if negative else nanoseconds) / 1e9


def _bad_duration(value: str, why: str) -> str:
    return f'invalid duration {_quote(value)}: {why}; use Go syntax such as "300ms", "1.5s", "5m0s" or "1h"'


def _fraction(value: int, unit: int) -> str:
    whole, rest = divmod(value, unit)
    if not rest:
        return str(whole)
    digits = len(str(unit)) - 1
    return f"{whole}.{rest:0{digits}d}".rstrip("0")


def format_duration(seconds: float) -> str:
    """Write seconds as Go's ``time.Duration.String`` does: ``"5m0s"``, ``"1h0m0s"``, ``"100ms"``."""
    nanoseconds = round(seconds * 1e9)
    if nanoseconds == 0:
        return "0s"
    sign = "-" if nanoseconds < 0 else ""
    left = abs(nanoseconds)
    if left < 1_000:
        return f"{sign}{left}ns"
    if left < 1_000_000:
        return f"{sign}{_fraction(left, 1_000)}\u00b5s"
    if left < 1_000_000_000:
        return f"{sign}{_fraction(left, 1_000_000)}ms"
    whole_seconds, rest = divmod(left, 1_000_000_000)
    hours, whole_seconds = divmod(whole_seconds, 3600)
    minutes, whole_seconds = divmod(whole_seconds, 60)
    text = _fraction(whole_seconds * 1_000_000_000 + rest, 1_000_000_000) + "s"
    if hours:
        text = f"{hours}h{minutes}m{text}"
    elif minutes:
        text = f"{minutes}m{text}"
    return sign + text


# --------------------------------------------------------------------------------------------
# TOML writing

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _quote(text: str) -> str:
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _quote(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        # Only reached inside arrays; tables elsewhere get [headers].
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write a {type(value).__name__} as TOML")


def _write_table(lines: list[str], table: Mapping[str, Any], path: tuple[str, ...]) -> None:
    depth = len(path)
    if path:
        if lines:
            lines.append("")
        lines.append("  " * (depth - 1) + "[" + ".".join(_key(part) for part in path) + "]")
    pad = "  " * depth
    for key, value in table.items():
        if not isinstance(value, Mapping):
            lines.append(f"{pad}{_key(key)} = {_value(value)}")
    for key, value in table.items():
        if isinstance(value, Mapping):
            _write_table(lines, value, (*path, key))


def dumps(tree: Mapping[str, Any]) -> str:
    """Write a tree (e.g. :func:`default_tree` or :meth:`Config.to_tree`) as TOML text."""
    lines: list[str] = []
    _write_table(lines, tree, ())
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Key paths and value descriptions for messages


def _format_path(path: KeyPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + _key(part)
    return out


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"float {value!r}"
    if isinstance(value, str):
        return f"string {_quote(value)}"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    return type(value).__name__


def _expected(spec: Any) -> str:
    if isinstance(spec, bool):
        return "a boolean"
    if isinstance(spec, int):
        return "an integer"
    if isinstance(spec, float):
        return "a number"
    if isinstance(spec, str):
        return "a string"
    if isinstance(spec, list):
        return "an array of strings"
    return "a table"


# --------------------------------------------------------------------------------------------
# Value rules (beyond the type, which comes from the default value)

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
            return f"must be one of {', '.join(_quote(c) for c in choices)}; got {_quote(value)}"
        return None

    return check


def _duration(allow_empty: bool) -> Rule:
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
        return None if os.path.isabs(value) else f"must be an absolute path, got {_quote(value)}"

    return check


def _non_empty(value: Any, _: KeyPath) -> str | None:
    return "must not be empty" if not value else None


def _plugin_uris(value: Any, _: KeyPath) -> str | None:
    for uri in value:
        if "." not in uri:
            return f'{_quote(uri)} is not a plugin URI: use a full name like "io.containerd.gc.v1.scheduler"'
    return None


def _platforms(value: Any, _: KeyPath) -> str | None:
    for item in value:
        parts = item.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            return f'invalid platform {_quote(item)}: expected "os/arch" or "os/arch/variant"'
    return None


def _port(value: Any, _: KeyPath) -> str | None:
    if not value.isdigit() or int(value) > 65535:
        return f'must be a port number from "0" (any free port) to "65535", got {_quote(value)}'
    return None


_RUNTIME_TYPE = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.v[0-9]+")


def _runtime_type(value: Any, path: KeyPath) -> str | None:
    if _RUNTIME_TYPE.fullmatch(value):
        return None
    name = _quote(str(path[-2]))
    return (
        f"unknown runtime type {_quote(value)} for runtime {name}: "
        'expected a dotted name ending in a version, such as "io.containerd.runc.v2"'
    )


_UID = _between(0, 4294967294)
_MSG_SIZE = _between(1, 2**31 - 1)  # gRPC keeps message sizes in an int32
_RUNTIMES: KeyPath = ("plugins", CRI, "containerd", "runtimes")

_RULES: list[tuple[KeyPath, Rule]] = [
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
    (("plugins", CRI, "stream_idle_timeout"), _duration(allow_empty=True)),
    (("plugins", CRI, "image_pull_progress_timeout"), _duration(allow_empty=True)),
    (("plugins", CRI, "drain_exec_sync_io_timeout"), _duration(allow_empty=True)),
    (("plugins", CRI, "max_concurrent_downloads"), _between(0, None)),  # 0: no limit
    (("plugins", CRI, "selinux_category_range"), _between(0, None)),
    (("plugins", CRI, "stats_collect_period"), _between(1, None)),  # seconds between samples
    (("plugins", CRI, "containerd", "snapshotter"), _non_empty),
    (("plugins", CRI, "containerd", "default_runtime_name"), _non_empty),
    ((*_RUNTIMES, "*", "runtime_type"), _runtime_type),
    ((*_RUNTIMES, "*", "runtime_path"), _absolute(required=False)),
    ((*_RUNTIMES, "*", "cni_max_conf_num"), _between(0, None)),
    ((*_RUNTIMES, "*", "sandbox_mode"), _one_of("podsandbox", "shim")),
    ((*_RUNTIMES, "*", "options", "IoUid"), _UID),
    ((*_RUNTIMES, "*", "options", "IoGid"), _UID),
    (("plugins", CRI, "cni", "max_conf_num"), _between(0, None)),
    (("plugins", CRI, "cni", "ip_pref"), _one_of("", "ipv4", "ipv6", "cni")),
    (("plugins", CRI, "image_decryption", "key_model"), _one_of("node", "")),
    (("plugins", GC_SCHEDULER, "pause_threshold"), _between(0, 0.5)),
    (("plugins", GC_SCHEDULER, "deletion_threshold"), _between(0, None)),
    (("plugins", GC_SCHEDULER, "mutation_threshold"), _between(0, None)),
    (("plugins", GC_SCHEDULER, "schedule_delay"), _duration(allow_empty=False)),
    (("plugins", GC_SCHEDULER, "startup_delay"), _duration(allow_empty=False)),
    (("plugins", METADATA, "content_sharing_policy"), _one_of("shared", "isolated")),
    (("plugins", TASK_RUNTIME, "platforms"), _platforms),
    (("plugins", TRANSFER, "max_concurrent_downloads"), _between(0, None)),
    (("plugins", TRANSFER, "max_concurrent_uploaded_layers"), _between(0, None)),
    (("plugins", OTLP, "protocol"), _one_of("http/protobuf", "grpc")),
    (("plugins", TRACING, "sampling_ratio"), _between(0, 1)),
]

# Keys containerd once had, with what to use instead.
_IN_OPTIONS = "in containerd.runtimes.<name>.options"
_RETIRED: dict[KeyPath, str] = {
    ("plugins", CRI, "systemd_cgroup"): f"set SystemdCgroup = true {_IN_OPTIONS}",
    ("plugins", CRI, "containerd", "no_pivot"): f"set NoPivotRoot = true {_IN_OPTIONS}",
    ("plugins", CRI, "containerd", "default_runtime"): "use default_runtime_name and containerd.runtimes",
    ("plugins", CRI, "containerd", "untrusted_workload_runtime"): "add a runtime under containerd.runtimes",
    ("plugins", CRI, "registry", "mirrors"): "use config_path with a hosts.toml per registry",
    ("plugins", CRI, "registry", "configs"): "use config_path with a hosts.toml per registry",
    ("plugins", CRI, "registry", "auths"): "use config_path, or image pull secrets",
}


def _matches(pattern: KeyPath, path: KeyPath) -> bool:
    return len(pattern) == len(path) and all(p in ("*", q) for p, q in zip(pattern, path, strict=True))


# --------------------------------------------------------------------------------------------
# Reading one file


@dataclass
class _File:
    """One file being read: where messages about it go, and where converted keys came from."""

    name: str
    warnings: list[str]
    origins: dict[KeyPath, KeyPath] = field(default_factory=dict)

    def where(self, path: KeyPath) -> str:
        # A key moved by a conversion is reported where the user wrote it.
        for cut in range(len(path), 0, -1):
            origin = self.origins.get(path[:cut])
            if origin is not None:
                return _format_path(origin + path[cut:])
        return _format_path(path)

    def error(self, path: KeyPath, problem: str) -> ConfigError:
        return ConfigError(problem, self.where(path), self.name)

    def warn(self, path: KeyPath, problem: str) -> None:
        self.warnings.append(str(ConfigError(problem, self.where(path), self.name)))


def _table(src: _File, value: Any, path: KeyPath) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise src.error(path, f"expected a table, got {_describe(value)}")
    return value


def _apply_rules(src: _File, value: Any, path: KeyPath) -> None:
    for pattern, rule in _RULES:
        if _matches(pattern, path):
            problem = rule(value, path)
            if problem:
                raise src.error(path, problem)


def _type_ok(value: Any, spec: Any) -> bool:
    if isinstance(spec, bool):
        return isinstance(value, bool)
    if isinstance(spec, int | float):
        # An integer is a fine value for a float key (pause_threshold = 0).
        allowed = (int,) if isinstance(spec, int) else (int, float)
        return isinstance(value, allowed) and not isinstance(value, bool)
    if isinstance(spec, str):
        return isinstance(value, str)
    return isinstance(value, list)


def _clean_scalar(src: _File, value: Any, spec: Any, path: KeyPath) -> Any:
    if not _type_ok(value, spec):
        raise src.error(path, f"expected {_expected(spec)}, got {_describe(value)}")
    if isinstance(spec, float):
        value = float(value)
    elif isinstance(spec, list):
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise src.error((*path, index), f"expected a string, got {_describe(item)}")
        value = list(value)
    _apply_rules(src, value, path)
    return value


def _unknown(src: _File, path: KeyPath) -> None:
    hint = _RETIRED.get(path)
    src.warn(path, f"no longer supported; {hint} (ignored)" if hint else "unknown key (ignored)")


def _clean(src: _File, value: Any, spec: Any, path: KeyPath) -> Any:
    """Check ``value`` against the shape of ``spec`` (a default), keeping only what wharfd knows."""
    for pattern, special in _OPEN_TABLES:
        if _matches(pattern, path):
            return special(src, value, path)
    if not isinstance(spec, dict):
        return _clean_scalar(src, value, spec, path)
    out: dict[str, Any] = {}
    for key, item in _table(src, value, path).items():
        if key in spec:
            out[key] = _clean(src, item, spec[key], (*path, key))
        else:
            _unknown(src, (*path, key))
    return out


def _clean_plugins(src: _File, value: Any, path: KeyPath) -> dict[str, Any]:
    known = default_tree()["plugins"]
    out: dict[str, Any] = {}
    for plugin_id, section in _table(src, value, path).items():
        here = (*path, plugin_id)
        if plugin_id in known:
            out[plugin_id] = _clean(src, section, known[plugin_id], here)
        else:
            # Kept so `config dump` shows it; nothing in wharfd reads it.
            out[plugin_id] = copy.deepcopy(_table(src, section, here))
            src.warn(here, "unknown plugin (kept)")
    return out


def _clean_runtimes(src: _File, value: Any, path: KeyPath) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, raw in _table(src, value, path).items():
        here = (*path, name)
        entry = dict(_table(src, raw, here))
        options = entry.pop("options", None)
        cleaned = _clean(src, entry, _runtime_defaults("io.containerd.runc.v2"), here)
        if options is not None:
            default_type = "io.containerd.wharf.v2" if name == "wharf" else "io.containerd.runc.v2"
            runc_like = cleaned.get("runtime_type", default_type) in RUNC_LIKE_TYPES
            cleaned["options"] = _clean_options(src, options, (*here, "options"), runc_like)
        out[name] = cleaned
    return out


def _clean_options(src: _File, value: Any, path: KeyPath, runc_like: bool) -> dict[str, Any]:
    # Options go to the shim; only runc's are known here, other shims define their own.
    out: dict[str, Any] = {}
    for key, item in _table(src, value, path).items():
        if key in RUNC_OPTIONS:
            out[key] = _clean_scalar(src, item, RUNC_OPTIONS[key], (*path, key))
        elif runc_like:
            src.warn((*path, key), "unknown runc option (ignored)")
        else:
            out[key] = copy.deepcopy(item)
    return out


def _clean_timeouts(src: _File, value: Any, path: KeyPath) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in _table(src, value, path).items():
        here = (*path, key)
        if not isinstance(item, str):
            raise src.error(here, f'expected a duration string such as "5s", got {_describe(item)}')
        problem = _duration(allow_empty=False)(item, here)
        if problem:
            raise src.error(here, problem)
        if key not in DEFAULT_TIMEOUTS:
            src.warn(here, "unknown timeout (kept)")
        out[key] = item
    return out


def _entries(spec: dict[str, Any]) -> Callable[[_File, Any, KeyPath], dict[str, Any]]:
    def clean(src: _File, value: Any, path: KeyPath) -> dict[str, Any]:
        entries = _table(src, value, path)
        return {name: _clean(src, entry, spec, (*path, name)) for name, entry in entries.items()}

    return clean


def _string_map(src: _File, value: Any, path: KeyPath) -> dict[str, Any]:
    return {key: _clean_scalar(src, item, "", (*path, key)) for key, item in _table(src, value, path).items()}


# Tables whose keys are names the user chooses, each with its own reader.
_OPEN_TABLES: list[tuple[KeyPath, Callable[[_File, Any, KeyPath], dict[str, Any]]]] = [
    (("plugins",), _clean_plugins),
    (_RUNTIMES, _clean_runtimes),
    (("timeouts",), _clean_timeouts),
    (("proxy_plugins",), _entries(_PROXY_PLUGIN)),
    (("proxy_plugins", "*", "exports"), _string_map),
    (("stream_processors",), _entries(_STREAM_PROCESSOR)),
]


# ---- versions

# Version 1 short plugin names and their full names (containerd's list).
_V1_PLUGIN_NAMES = {
    "cri": CRI,
    "cgroups": CGROUPS_MONITOR,
    "linux": "io.containerd.runtime.v1.linux",
    "scheduler": GC_SCHEDULER,
    "bolt": METADATA,
    "task": TASK_RUNTIME,
    "opt": "io.containerd.internal.v1.opt",
    "restart": "io.containerd.internal.v1.restart",
    "tracing": TRACING,
    "otlp": OTLP,
    "aufs": "io.containerd.snapshotter.v1.aufs",
    "btrfs": "io.containerd.snapshotter.v1.btrfs",
    "devmapper": "io.containerd.snapshotter.v1.devmapper",
    "native": NATIVE,
    "overlayfs": OVERLAYFS,
    "zfs": "io.containerd.snapshotter.v1.zfs",
}


def _v1_name(name: str) -> str:
    if "." in name:
        return name
    if name in _V1_PLUGIN_NAMES:
        return _V1_PLUGIN_NAMES[name]
    if name.endswith("-service"):
        return "io.containerd.service.v1." + name
    return "io.containerd.grpc.v1." + name


def _migrate_v1(src: _File, raw: dict[str, Any]) -> None:
    plugins = raw.get("plugins")
    if isinstance(plugins, dict):
        for name in list(plugins):
            full = _v1_name(name)
            if full != name:
                plugins[full] = plugins.pop(name)
                src.origins[("plugins", full)] = ("plugins", name)
                src.warn(("plugins", name), f"version 1 plugin name; read as {_quote(full)}")
    for key in ("disabled_plugins", "required_plugins"):
        names = raw.get(key)
        if isinstance(names, list):
            raw[key] = [_v1_name(n) if isinstance(n, str) else n for n in names]


def _put(src: _File, dst: dict[str, Any], rel: tuple[str, ...], value: Any, origin: KeyPath) -> None:
    node = dst
    for part in rel[:-1]:
        node = node.setdefault(part, {})
    node[rel[-1]] = value
    src.origins[("plugins", CRI, *rel)] = origin


def _convert_images(src: _File, images: dict[str, Any], cri: dict[str, Any]) -> None:
    base: KeyPath = ("plugins", CRI_IMAGES_V3)
    for key, value in images.items():
        if key in ("snapshotter", "disable_snapshot_annotations", "discard_unpacked_layers"):
            _put(src, cri, ("containerd", key), value, (*base, key))
        elif key == "pinned_images":
            for name, image in _table(src, value, (*base, key)).items():
                if name == "sandbox":
                    _put(src, cri, ("sandbox_image",), image, (*base, key, name))
                else:
                    src.warn((*base, key, name), "no version 2 equivalent (ignored)")
        else:
            _put(src, cri, (key,), value, (*base, key))


def _convert_runtime(src: _File, runtime: dict[str, Any], cri: dict[str, Any]) -> None:
    base: KeyPath = ("plugins", CRI_RUNTIME_V3)
    for key, value in runtime.items():
        here = (*base, key)
        if key == "stats_collect_period":
            # The runtime's CPU sampling period; the version 2 key of that name is the image one.
            src.warn(here, "no version 2 equivalent (ignored)")
        elif key == "cni" and isinstance(value, dict):
            for cni_key, item in value.items():
                if cni_key != "bin_dirs":
                    _put(src, cri, ("cni", cni_key), item, (*here, cni_key))
                    continue
                dirs = _clean_scalar(src, item, [], (*here, cni_key))
                if dirs:
                    _put(src, cri, ("cni", "bin_dir"), dirs[0], (*here, cni_key, 0))
                if len(dirs) > 1:
                    src.warn((*here, cni_key), f"version 2 has one bin_dir; only {_quote(dirs[0])} is used")
        elif key == "containerd" and isinstance(value, dict):
            for sub, item in value.items():
                if sub == "runtimes" and isinstance(item, dict):
                    for name, entry in item.items():
                        at = (*here, sub, name)
                        for rkey, rvalue in _table(src, entry, at).items():
                            target = "sandbox_mode" if rkey == "sandboxer" else rkey
                            _put(src, cri, ("containerd", sub, name, target), rvalue, (*at, rkey))
                else:
                    _put(src, cri, ("containerd", sub), item, (*here, sub))
        else:
            _put(src, cri, (key,), value, here)


def _convert_v3(src: _File, raw: dict[str, Any]) -> bool:
    """Fold the version 3 sections of ``raw`` into their version 2 places; return whether there were any."""
    plugins = raw.get("plugins")
    v3_sections = (CRI_IMAGES_V3, CRI_RUNTIME_V3, CGROUPS_MONITOR_V3, SHIM_MANAGER_V3)
    if not isinstance(plugins, dict) or not any(name in plugins for name in v3_sections):
        return False
    moved: dict[str, Any] = {}
    if CRI_IMAGES_V3 in plugins:
        _convert_images(src, _table(src, plugins.pop(CRI_IMAGES_V3), ("plugins", CRI_IMAGES_V3)), moved)
    if CRI_RUNTIME_V3 in plugins:
        _convert_runtime(src, _table(src, plugins.pop(CRI_RUNTIME_V3), ("plugins", CRI_RUNTIME_V3)), moved)
    if moved:
        _deep_merge(_table(src, plugins.setdefault(CRI, {}), ("plugins", CRI)), moved)
    if CGROUPS_MONITOR_V3 in plugins:
        plugins[CGROUPS_MONITOR] = plugins.pop(CGROUPS_MONITOR_V3)
        src.origins[("plugins", CGROUPS_MONITOR)] = ("plugins", CGROUPS_MONITOR_V3)
    if SHIM_MANAGER_V3 in plugins:
        base: KeyPath = ("plugins", SHIM_MANAGER_V3)
        for key, value in _table(src, plugins.pop(SHIM_MANAGER_V3), base).items():
            env = _clean_scalar(src, value, [], (*base, key)) if key == "env" else None
            for index, item in enumerate(env or []):
                if item.startswith("SCHED_CORE=") and item != "SCHED_CORE=":
                    task = _table(src, plugins.setdefault(TASK_RUNTIME, {}), ("plugins", TASK_RUNTIME))
                    task["sched_core"] = True
                    src.origins[("plugins", TASK_RUNTIME, "sched_core")] = (*base, key, index)
                else:
                    src.warn((*base, key, index), "no version 2 equivalent (ignored)")
            if env is None:
                src.warn((*base, key), "no version 2 equivalent (ignored)")
    return True


def _read_version(src: _File, raw: dict[str, Any], root_version: int | None) -> int:
    """Bring ``raw`` to the version 2 layout in place; return the version the file is read as."""
    declared = raw.pop("version", None)
    plugins = raw.get("plugins")
    looks_v3 = isinstance(plugins, dict) and (CRI_IMAGES_V3 in plugins or CRI_RUNTIME_V3 in plugins)
    if declared is None:
        version = 3 if looks_v3 or root_version == 3 else 2
        if root_version is None:
            src.warn(("version",), f"missing; read as version {version} (add `version = {version}`)")
    elif isinstance(declared, bool) or not isinstance(declared, int):
        raise src.error(("version",), f"expected an integer, got {_describe(declared)}")
    elif declared in (1, 2, 3):
        version = declared
        if version == 1:
            src.warn(("version",), "version 1 config read as version 2")
    else:
        raise src.error(
            ("version",),
            f"unsupported config version {declared}: wharfd reads version 2 (and converts 3); "
            "convert the file with `wharfd config default` as a template",
        )
    if declared is not None and root_version is not None and declared > root_version:
        problem = f"version {declared} is higher than the main file's version {root_version}"
        raise src.error(("version",), problem)
    if declared is None or declared == 1:
        _migrate_v1(src, raw)
    # A drop-in without a version follows the main file; it only earns the note if it had v3 keys.
    if version == 3 and (_convert_v3(src, raw) or declared == 3):
        src.warn(("version",), "version 3 config converted; `wharfd config dump` prints the version 2 form")
    return version


# --------------------------------------------------------------------------------------------
# Merging and loading


def _deep_merge(dst: dict[str, Any], src: Mapping[str, Any]) -> None:
    for key, value in src.items():
        if isinstance(value, Mapping) and isinstance(dst.get(key), dict):
            _deep_merge(dst[key], value)
        else:
            dst[key] = copy.deepcopy(value)


def _leaves(tree: Mapping[str, Any], path: KeyPath = ()) -> Iterator[KeyPath]:
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            yield from _leaves(value, (*path, key))
        else:
            yield (*path, key)


_ACCUMULATED = ("disabled_plugins", "required_plugins", "imports")
_REPLACED_ENTRIES = ("proxy_plugins", "stream_processors")  # an entry from a later file replaces it whole


def _merge_file(merged: dict[str, Any], tree: dict[str, Any]) -> None:
    for key, value in tree.items():
        if key in _ACCUMULATED:
            items = merged.setdefault(key, [])
            items.extend(item for item in value if item not in items)
        elif key in _REPLACED_ENTRIES:
            merged.setdefault(key, {}).update(copy.deepcopy(value))
        else:
            _deep_merge(merged, {key: value})


_GLOB_CHARS = re.compile(r"[*?\[]")


class _Loader:
    def __init__(self) -> None:
        self.sources: list[str] = []
        self.warnings: list[str] = []
        # For each key a file set: (file, the key as that file wrote it), the last file winning.
        self.provenance: dict[KeyPath, tuple[str, str]] = {}

    def load(self, path: str) -> Config:
        merged: dict[str, Any] = {}
        pending: list[tuple[str, str, str]] = [(path, "", "")]  # (file, importing file, its imports key)
        seen: set[str] = set()
        root_version: int | None = None
        while pending:
            name, importer, import_key = pending.pop(0)
            real = os.path.realpath(name)
            if real in seen:  # a file imported twice, or a cycle
                continue
            seen.add(real)
            src = _File(name, self.warnings)
            raw = self._parse(name, importer, import_key)
            version = _read_version(src, raw, root_version)
            root_version = version if root_version is None else root_version
            tree = _clean(src, raw, default_tree(), ())
            tree["imports"], found = self._imports(name, tree.get("imports", []))
            pending.extend(found)
            self.sources.append(name)
            for leaf in _leaves(tree):
                self.provenance[leaf] = (name, src.where(leaf))
            _merge_file(merged, tree)
        effective = _over_defaults(merged)
        self._check(effective, path)
        return _from_tree(effective, self.sources, self.warnings)

    @staticmethod
    def _parse(name: str, importer: str, import_key: str) -> dict[str, Any]:
        try:
            with open(name, "rb") as f:
                return tomllib.load(f)
        except OSError as e:
            reason = e.strerror or str(e)
            if importer:
                problem = f"cannot read imported file {_quote(name)}: {reason}"
                raise ConfigError(problem, import_key, importer) from e
            raise ConfigError(f"cannot read config file: {reason}", file=name) from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"not valid TOML: {e}", file=name) from e
        except UnicodeDecodeError as e:
            raise ConfigError("not valid TOML: the file is not UTF-8 text", file=name) from e

    @staticmethod
    def _imports(name: str, patterns: list[str]) -> tuple[list[str], list[tuple[str, str, str]]]:
        resolved: list[str] = []
        found: list[tuple[str, str, str]] = []
        base = os.path.dirname(name)
        for index, pattern in enumerate(patterns):
            # Absolute, so the dump of an effective config means the same wherever it is saved.
            target = os.path.abspath(os.path.join(base, pattern))
            resolved.append(target)
            key = f"imports[{index}]"
            if _GLOB_CHARS.search(target):
                # A glob matching nothing is fine: an empty conf.d is normal.
                found.extend((match, name, key) for match in sorted(glob.glob(target)))
            else:
                found.append((target, name, key))
        return resolved, found

    def _fail(self, path: KeyPath, problem: str, main: str) -> ConfigError:
        file, key = self.provenance.get(path, (main, _format_path(path)))
        return ConfigError(problem, key, file)

    def _check(self, tree: dict[str, Any], main: str) -> None:
        """Checks that need the merged result (a key and what it refers to may sit in different files)."""
        containerd = tree["plugins"][CRI]["containerd"]
        name = containerd["default_runtime_name"]
        if name not in containerd["runtimes"]:
            configured = ", ".join(_quote(n) for n in containerd["runtimes"])
            raise self._fail(
                ("plugins", CRI, "containerd", "default_runtime_name"),
                f"runtime {_quote(name)} is not configured in containerd.runtimes (configured: {configured})",
                main,
            )
        pair = tree["plugins"][CRI]["x509_key_pair_streaming"]
        if bool(pair["tls_cert_file"]) != bool(pair["tls_key_file"]):
            missing = "tls_key_file" if pair["tls_cert_file"] else "tls_cert_file"
            given = "tls_cert_file" if missing == "tls_key_file" else "tls_key_file"
            raise self._fail(
                ("plugins", CRI, "x509_key_pair_streaming", given),
                f"{missing} must be set too (or neither, for a self-signed pair)",
                main,
            )


def _over_defaults(merged: dict[str, Any]) -> dict[str, Any]:
    effective = default_tree()
    runtimes = effective["plugins"][CRI]["containerd"]["runtimes"]
    user_runtimes = merged.get("plugins", {}).get(CRI, {}).get("containerd", {}).get("runtimes", {})
    for name, entry in user_runtimes.items():
        if name not in runtimes:
            # A runtime only the files define starts complete, from the runtime defaults.
            runtimes[name] = _runtime_defaults(entry.get("runtime_type", "io.containerd.runc.v2"))
    for key, value in merged.items():
        if key in _ACCUMULATED or key in _REPLACED_ENTRIES:
            effective[key] = copy.deepcopy(value)
        else:
            _deep_merge(effective, {key: value})
    return effective


def load(path: str | None = None) -> Config:
    """Load the configuration from ``path`` and its imports, over the defaults.

    With ``path=None`` the file :data:`DEFAULT_CONFIG_PATH` is read if it exists,
    else the defaults are returned. A named file that cannot be read, or any
    invalid value, raises :class:`ConfigError`.
    """
    if path is None:
        if not os.path.exists(DEFAULT_CONFIG_PATH):
            return _from_tree(default_tree(), [], [])
        path = DEFAULT_CONFIG_PATH
    return _Loader().load(path)
