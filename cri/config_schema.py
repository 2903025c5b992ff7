"""The configuration schema: every section and key wharfd knows, and its default.

The defaults are one tree in containerd's ``version = 2`` layout
(:func:`default_tree`); reading a file checks each value against the type of its
default, so a key is added by giving it a default here (and a rule in
:mod:`wharfd.cri.config_rules` when its type is not enough).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

from wharfd.runtime import cpu
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
DIFFER = "io.containerd.differ.v1.walking"

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

# Runtime types: the stock runc shim (containerd-shim-runc-v2, from a containerd install) and our own
# (containerd-shim-wharf-v2, installed with wharfd), which runs runc the same way.
RUNC_V2 = "io.containerd.runc.v2"
WHARF_V2 = "io.containerd.wharf.v2"

# The runc v2 shim options; our own shim takes the same.
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
RUNC_LIKE_TYPES = (RUNC_V2, WHARF_V2)


def runtime_defaults(runtime_type: str) -> dict[str, Any]:
    """A complete runtime entry of ``runtime_type``; runc-like types get runc's options."""
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
            # The handler kubelet and RuntimeClasses know as "runc" runs our own shim, which is
            # installed with wharfd; the stock shim needs containerd's package (runtime_type = RUNC_V2).
            "runtimes": {"runc": runtime_defaults(WHARF_V2), "wharf": runtime_defaults(WHARF_V2)},
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
            # merge_shim_memory (wharfd): turn on the kernel's same-page merging (ksmd) for the
            # shims' copied pages (runtime/tasks/memory_merge.py).
            TASK_RUNTIME: {"platforms": [HOST_PLATFORM], "sched_core": False, "merge_shim_memory": True},
            TASKS_SERVICE: {"blockio_config_file": "", "rdt_config_file": ""},
            CGROUPS_MONITOR: {"no_prometheus": False},
            OTLP: {"endpoint": "", "protocol": "http/protobuf", "insecure": False},
            TRACING: {"sampling_ratio": 1.0, "service_name": "wharfd"},
            # wharfd's own: unpack_workers, how many layers extract at once (0: one per CPU but one,
            # at least one); worker_cpu_shares, cpu.shares of the workers' cgroup, a child of the
            # daemon's (runtime/cpu.py; 0 keeps them in the daemon's cgroup).
            DIFFER: {"unpack_workers": 0, "worker_cpu_shares": cpu.WORKER_SHARES},
            TRANSFER: {"max_concurrent_downloads": 3, "max_concurrent_uploaded_layers": 3, "config_path": ""},
        },
        "proxy_plugins": {},
        "stream_processors": {},
    }


# The shape of one entry of the open tables (their keys are the user's names).
PROXY_PLUGIN = {"type": "", "address": "", "platform": "", "exports": {}, "capabilities": []}
STREAM_PROCESSOR = {"accepts": [], "returns": "", "path": "", "args": [], "env": []}


# --------------------------------------------------------------------------------------------
# Top-level sections with a fixed shape


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
