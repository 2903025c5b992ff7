"""ListMetricDescriptors and the values of ListPodSandboxMetrics: cAdvisor's container metrics from CRI.

kubelet serves ``/metrics/cadvisor`` from these when ``PodAndContainerStatsFromCRI``
is on. The names, help texts' meaning and label keys are cAdvisor's, as
containerd exports them on cgroup v1 (plus ``container_spec_cpu_quota`` and
``container_threads`` on v1 too, which critest expects). Every value carries
its descriptor's label values in the descriptor's key order: ``pod``,
``namespace``, ``container``, ``id``, ``image`` (pod-level values leave
``container`` and ``image`` empty and use the sandbox id), then ``interface``,
``device``, … Values are unsigned integers, so seconds are whole seconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.api.types.cgroups.v1 import metrics_pb2 as v1
from wharfd.cri import stats_decode
from wharfd.cri.stats_host import LinkStats

BASE = ("pod", "namespace", "container", "id", "image")
_NET = (*BASE, "interface")
_DISK = (*BASE, "device")
_C, _G = cri.COUNTER, cri.GAUGE
_NS = 1_000_000_000

# name → (help, label keys)
_DESCRIPTORS: dict[str, tuple[str, tuple[str, ...]]] = {
    # cpu
    "container_cpu_user_seconds_total": ("Cumulative user CPU time consumed in seconds.", BASE),
    "container_cpu_system_seconds_total": ("Cumulative system CPU time consumed in seconds.", BASE),
    "container_cpu_usage_seconds_total": ("Cumulative CPU time consumed in seconds.", BASE),
    "container_cpu_cfs_periods_total": ("Number of elapsed enforcement period intervals.", BASE),
    "container_cpu_cfs_throttled_periods_total": ("Number of throttled period intervals.", BASE),
    "container_cpu_cfs_throttled_seconds_total": (
        "Total time duration the container has been throttled.",
        BASE,
    ),
    # memory
    "container_memory_cache": ("Number of bytes of page cache memory.", BASE),
    "container_memory_rss": ("Size of RSS in bytes.", BASE),
    "container_memory_kernel_usage": ("Size of kernel memory allocated in bytes.", BASE),
    "container_memory_mapped_file": ("Size of memory mapped files in bytes.", BASE),
    "container_memory_swap": ("Container swap usage in bytes.", BASE),
    "container_memory_failcnt": ("Number of memory usage hits limits.", BASE),
    "container_memory_usage_bytes": (
        "Current memory usage in bytes, including all memory regardless of when it was accessed.",
        BASE,
    ),
    "container_memory_max_usage_bytes": ("Maximum memory usage recorded in bytes.", BASE),
    "container_memory_working_set_bytes": ("Current working set in bytes.", BASE),
    "container_memory_total_active_file_bytes": ("Current total active file in bytes.", BASE),
    "container_memory_total_inactive_file_bytes": ("Current total inactive file in bytes.", BASE),
    "container_memory_failures_total": (
        "Cumulative count of memory allocation failures.",
        (*BASE, "failure_type", "scope"),
    ),
    "container_oom_events_total": ("Count of out of memory events observed for the container.", BASE),
    # network (pod level)
    "container_network_receive_bytes_total": ("Cumulative count of bytes received.", _NET),
    "container_network_receive_packets_total": ("Cumulative count of packets received.", _NET),
    "container_network_receive_packets_dropped_total": (
        "Cumulative count of packets dropped while receiving.",
        _NET,
    ),
    "container_network_receive_errors_total": (
        "Cumulative count of errors encountered while receiving.",
        _NET,
    ),
    "container_network_transmit_bytes_total": ("Cumulative count of bytes transmitted.", _NET),
    "container_network_transmit_packets_total": ("Cumulative count of packets transmitted.", _NET),
    "container_network_transmit_packets_dropped_total": (
        "Cumulative count of packets dropped while transmitting.",
        _NET,
    ),
    "container_network_transmit_errors_total": (
        "Cumulative count of errors encountered while transmitting.",
        _NET,
    ),
    # filesystem (the writable layer)
    "container_fs_inodes_free": ("Number of available Inodes.", _DISK),
    "container_fs_inodes_total": ("Number of Inodes.", _DISK),
    "container_fs_limit_bytes": (
        "Number of bytes that can be consumed by the container on this filesystem.",
        _DISK,
    ),
    "container_fs_usage_bytes": (
        "Number of bytes that are consumed by the container on this filesystem.",
        _DISK,
    ),
    # disk io
    "container_fs_reads_bytes_total": ("Cumulative count of bytes read.", _DISK),
    "container_fs_reads_total": ("Cumulative count of reads completed.", _DISK),
    "container_fs_writes_bytes_total": ("Cumulative count of bytes written.", _DISK),
    "container_fs_writes_total": ("Cumulative count of writes completed.", _DISK),
    "container_blkio_device_usage_total": (
        "Blkio device bytes usage.",
        (*_DISK, "major", "minor", "operation"),
    ),
    # processes
    "container_processes": ("Number of processes running inside the container.", BASE),
    "container_file_descriptors": ("Number of open file descriptors for the container.", BASE),
    "container_sockets": ("Number of open sockets for the container.", BASE),
    "container_threads_max": (
        "Maximum number of threads allowed inside the container, infinity if value is zero.",
        BASE,
    ),
    "container_threads": ("Number of threads running inside the container.", BASE),
    "container_ulimits_soft": (
        "Soft ulimit values for the container root process. Unlimited if -1, except priority and nice.",
        (*BASE, "ulimit"),
    ),
    # misc
    "container_last_seen": ("Last time a container was seen by the exporter.", BASE),
    "container_start_time_seconds": ("Start time of the container since unix epoch in seconds.", BASE),
    # spec
    "container_spec_cpu_period": ("CPU period of the container.", BASE),
    "container_spec_cpu_quota": ("CPU quota of the container.", BASE),
    "container_spec_cpu_shares": ("CPU share of the container.", BASE),
    "container_spec_memory_limit_bytes": ("Memory limit for the container.", BASE),
    "container_spec_memory_reservation_limit_bytes": ("Memory reservation limit for the container.", BASE),
    "container_spec_memory_swap_limit_bytes": ("Memory swap limit for the container.", BASE),
}


def descriptors() -> list[cri.MetricDescriptor]:
    """Every metric this runtime reports, with help and label keys."""
    return [cri.MetricDescriptor(name=n, help=h, label_keys=list(k)) for n, (h, k) in _DESCRIPTORS.items()]


def label_keys(name: str) -> tuple[str, ...]:
    """The label keys of metric ``name``."""
    return _DESCRIPTORS[name][1]


@dataclass
class ContainerInput:
    """Everything one container's metrics are made of (gathered by the stats module)."""

    labels: Sequence[str]  # the five base label values
    metrics: stats_decode.Metrics
    started_at: int = 0  # ns
    spec: Mapping[str, Any] = field(default_factory=dict)  # the OCI runtime spec
    fs_device: str = ""
    fs_used: int = 0
    fs_capacity: int = 0
    fs_inodes: int = 0
    fs_inodes_free: int = 0
    fds: int = 0
    sockets: int = 0
    devices: Mapping[tuple[int, int], str] = field(default_factory=dict)  # (major, minor) → /dev/name


class _Out:
    """Collects metrics sharing one timestamp and base labels."""

    def __init__(self, labels: Sequence[str], timestamp: int) -> None:
        self.labels = list(labels)
        self.timestamp = timestamp
        self.items: list[cri.Metric] = []

    def add(self, name: str, kind: cri.MetricType, value: int, *extra: str) -> None:
        labels = [*self.labels, *extra]
        assert len(labels) == len(_DESCRIPTORS[name][1]), name  # a wrong label count is a bug here
        self.items.append(
            cri.Metric(
                name=name,
                timestamp=self.timestamp,
                metric_type=kind,
                label_values=labels,
                value=cri.UInt64Value(value=max(0, int(value))),
            )
        )


def _cpu(out: _Out, m: stats_decode.Metrics) -> None:
    if isinstance(m, v1.Metrics):
        u, t = m.cpu.usage, m.cpu.throttling
        total, user, system = u.total, u.user, u.kernel
        periods, throttled, throttled_ns = t.periods, t.throttled_periods, t.throttled_time
    else:
        c = m.cpu
        total, user, system = c.usage_usec * 1000, c.user_usec * 1000, c.system_usec * 1000
        periods, throttled, throttled_ns = c.nr_periods, c.nr_throttled, c.throttled_usec * 1000
    out.add("container_cpu_usage_seconds_total", _C, total // _NS)
    out.add("container_cpu_user_seconds_total", _C, user // _NS)
    out.add("container_cpu_system_seconds_total", _C, system // _NS)
    out.add("container_cpu_cfs_periods_total", _C, periods)
    out.add("container_cpu_cfs_throttled_periods_total", _C, throttled)
    out.add("container_cpu_cfs_throttled_seconds_total", _C, throttled_ns // _NS)


def _memory(out: _Out, m: stats_decode.Metrics) -> None:
    ws, _available, usage, rss, _faults, _major = stats_decode.memory_usage(m)
    if isinstance(m, v1.Metrics):
        mem = m.memory
        values = {
            "max_usage_bytes": mem.usage.max,
            "cache": mem.total_cache,
            "mapped_file": mem.total_mapped_file,
            "total_active_file_bytes": mem.total_active_file,
            "total_inactive_file_bytes": mem.total_inactive_file,
            "kernel_usage": mem.kernel.usage,
            "swap": max(0, mem.swap.usage - mem.usage.usage) if mem.swap.usage else 0,
        }
        failcnt, faults, major, ooms = (
            mem.usage.failcnt,
            mem.pg_fault,
            mem.pg_maj_fault,
            m.memory_oom_control.oom_kill,
        )
    else:
        mem2 = m.memory
        values = {
            "max_usage_bytes": mem2.max_usage,
            "cache": mem2.file,
            "mapped_file": mem2.file_mapped,
            "total_active_file_bytes": mem2.active_file,
            "total_inactive_file_bytes": mem2.inactive_file,
            "kernel_usage": mem2.kernel_stack + mem2.slab,
            "swap": mem2.swap_usage,
        }
        failcnt, faults, major, ooms = 0, mem2.pgfault, mem2.pgmajfault, m.memory_events.oom_kill
    out.add("container_memory_usage_bytes", _G, usage)
    out.add("container_memory_working_set_bytes", _G, ws)
    out.add("container_memory_rss", _G, rss)
    for key, value in values.items():
        out.add(f"container_memory_{key}", _G, value)
    out.add("container_memory_failcnt", _C, failcnt)
    out.add("container_memory_failures_total", _C, faults, "pgfault", "container")
    out.add("container_memory_failures_total", _C, major, "pgmajfault", "container")
    out.add("container_oom_events_total", _C, ooms)


def _disk_io(out: _Out, m: stats_decode.Metrics, devices: Mapping[tuple[int, int], str]) -> None:
    def name(major: int, minor: int) -> str:
        return devices.get((major, minor)) or f"{major}:{minor}"

    if isinstance(m, v1.Metrics):
        for e in m.blkio.io_service_bytes_recursive:
            dev = e.device or name(e.major, e.minor)
            out.add("container_blkio_device_usage_total", _C, e.value, dev, str(e.major), str(e.minor), e.op)
            if e.op.lower() in ("read", "write"):
                out.add(f"container_fs_{e.op.lower()}s_bytes_total", _C, e.value, dev)
        for e in m.blkio.io_serviced_recursive:
            if e.op.lower() in ("read", "write"):
                out.add(
                    f"container_fs_{e.op.lower()}s_total", _C, e.value, e.device or name(e.major, e.minor)
                )
        return
    for io in m.io.usage:
        dev = name(io.major, io.minor)
        out.add("container_fs_reads_bytes_total", _C, io.rbytes, dev)
        out.add("container_fs_writes_bytes_total", _C, io.wbytes, dev)
        out.add("container_fs_reads_total", _C, io.rios, dev)
        out.add("container_fs_writes_total", _C, io.wios, dev)


def _process(out: _Out, c: ContainerInput) -> None:
    pids = c.metrics.pids
    out.add("container_processes", _G, pids.current)
    out.add("container_threads", _G, pids.current)  # the pids controller counts tasks, i.e. threads
    out.add("container_threads_max", _G, pids.limit)
    out.add("container_file_descriptors", _G, c.fds)
    out.add("container_sockets", _G, c.sockets)
    for rlimit in (c.spec.get("process") or {}).get("rlimits") or []:
        out.add("container_ulimits_soft", _G, rlimit.get("soft", 0), str(rlimit.get("type", "")))


def _spec(out: _Out, spec: Mapping[str, Any]) -> None:
    resources = (spec.get("linux") or {}).get("resources") or {}
    cpu, memory = resources.get("cpu") or {}, resources.get("memory") or {}
    for key, name in (("period", "cpu_period"), ("quota", "cpu_quota"), ("shares", "cpu_shares")):
        if cpu.get(key) is not None:
            out.add(f"container_spec_{name}", _G, cpu[key])
    for key, name in (
        ("limit", "limit_bytes"),
        ("reservation", "reservation_limit_bytes"),
        ("swap", "swap_limit_bytes"),
    ):
        if memory.get(key) is not None:
            out.add(f"container_spec_memory_{name}", _G, memory[key])


def container_metrics(c: ContainerInput, timestamp: int) -> list[cri.Metric]:
    """The cAdvisor metrics of one container."""
    out = _Out(c.labels, timestamp)
    out.add("container_last_seen", _G, timestamp // _NS)
    out.add("container_start_time_seconds", _G, c.started_at // _NS)
    _cpu(out, c.metrics)
    _memory(out, c.metrics)
    _disk_io(out, c.metrics, c.devices)
    dev = c.fs_device
    out.add("container_fs_usage_bytes", _G, c.fs_used, dev)
    out.add("container_fs_limit_bytes", _G, c.fs_capacity, dev)
    out.add("container_fs_inodes_total", _G, c.fs_inodes, dev)
    out.add("container_fs_inodes_free", _G, c.fs_inodes_free, dev)
    _process(out, c)
    _spec(out, c.spec)
    return out.items


def network_metrics(labels: Sequence[str], links: Iterable[LinkStats], timestamp: int) -> list[cri.Metric]:
    """The pod-level network metrics, one set per interface."""
    out = _Out(labels, timestamp)
    for link in links:
        for direction, prefix in (("receive", "rx"), ("transmit", "tx")):
            out.add(
                f"container_network_{direction}_bytes_total", _C, getattr(link, f"{prefix}_bytes"), link.name
            )
            out.add(
                f"container_network_{direction}_packets_total",
                _C,
                getattr(link, f"{prefix}_packets"),
                link.name,
            )
            out.add(
                f"container_network_{direction}_packets_dropped_total",
                _C,
                getattr(link, f"{prefix}_dropped"),
                link.name,
            )
            out.add(
                f"container_network_{direction}_errors_total",
                _C,
                getattr(link, f"{prefix}_errors"),
                link.name,
            )
    return out.items
