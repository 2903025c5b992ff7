"""Cgroup metrics (as shims report them from Task.Stats) turned into CRI usage messages.

A shim answers Stats with ``io.containerd.cgroups.v1.Metrics`` or ``…v2.Metrics``
(bare type URLs; a ``type.googleapis.com/`` prefix is accepted too). The CRI
figures follow containerd and kubelet:

* CPU: ``usage_core_nano_seconds`` is cpuacct usage (v1) or ``usage_usec`` * 1000 (v2);
  ``usage_nano_cores`` is a rate, so it needs an earlier sample: :class:`CpuSampler`
  keeps per-object samples and measures over at least one ``stats_collect_period``;
* memory: working set = usage - (total_)inactive_file, never below 0; available =
  limit - working set when a limit is set (anything above 2^62 is "unlimited"),
  else 0; RSS is total_rss (v1) or anon (v2); page faults from memory.stat;
* swap: v1 memsw counts memory + swap, so swap = memsw - memory; v2 reports it directly;
* PSI (v2 only) in ns, as CRI wants (the kernel counts µs).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from google.protobuf import any_pb2

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.api.types.cgroups.v1 import metrics_pb2 as v1
from wharfd.api.types.cgroups.v2 import metrics_pb2 as v2
from wharfd.runtime import errors

V1_TYPE = "io.containerd.cgroups.v1.Metrics"
V2_TYPE = "io.containerd.cgroups.v2.Metrics"
_UNLIMITED = 1 << 62  # kernels round "no limit" to a page multiple below 2^63

Metrics = v1.Metrics | v2.Metrics


def decode(data: any_pb2.Any, what: str = "task") -> Metrics:
    """The cgroup metrics inside a Stats reply; DataLoss naming ``what`` for anything else."""
    name = data.type_url.rsplit("/", 1)[-1]
    try:
        if name == V1_TYPE:
            return v1.Metrics.FromString(data.value)
        if name == V2_TYPE:
            return v2.Metrics.FromString(data.value)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise errors.DataLoss(f"{what}: stats of type {name!r} do not decode: {exc}") from None
    raise errors.DataLoss(f"{what}: unexpected stats type {data.type_url!r}")


def _u64(value: int) -> cri.UInt64Value:
    return cri.UInt64Value(value=max(0, int(value)))


def cpu_total_ns(m: Metrics) -> int:
    """Cumulative CPU time in nanoseconds."""
    if isinstance(m, v1.Metrics):
        return int(m.cpu.usage.total)
    return int(m.cpu.usage_usec) * 1000


def working_set(m: Metrics) -> int:
    """Memory usage minus inactive file pages (what the kubelet evicts on)."""
    if isinstance(m, v1.Metrics):
        usage, inactive = m.memory.usage.usage, m.memory.total_inactive_file
    else:
        usage, inactive = m.memory.usage, m.memory.inactive_file
    return usage - inactive if inactive < usage else 0


def _psi(p: v2.PSIStats) -> cri.PsiStats:
    def one(d: v2.PSIData) -> cri.PsiData:
        return cri.PsiData(Total=d.total * 1000, Avg10=d.avg10, Avg60=d.avg60, Avg300=d.avg300)

    out = cri.PsiStats()
    if p.HasField("full"):
        out.Full.CopyFrom(one(p.full))
    if p.HasField("some"):
        out.Some.CopyFrom(one(p.some))
    return out


def cpu_usage(m: Metrics, timestamp: int, nano_cores: int | None = None) -> cri.CpuUsage:
    """CRI CpuUsage; ``nano_cores`` from a :class:`CpuSampler` when it could be computed."""
    out = cri.CpuUsage(timestamp=timestamp, usage_core_nano_seconds=_u64(cpu_total_ns(m)))
    if nano_cores is not None:
        out.usage_nano_cores.value = nano_cores
    if isinstance(m, v2.Metrics) and m.cpu.HasField("psi"):
        out.psi.CopyFrom(_psi(m.cpu.psi))
    return out


def memory_usage(m: Metrics) -> tuple[int, int, int, int, int, int]:
    """(working set, available, usage, rss, page faults, major page faults) in bytes/counts."""
    ws = working_set(m)
    if isinstance(m, v1.Metrics):
        mem = m.memory
        limit = mem.usage.limit
        available = limit - ws if limit and limit <= _UNLIMITED and limit > ws else 0
        return ws, available, mem.usage.usage, mem.total_rss, mem.total_pg_fault, mem.total_pg_maj_fault
    mem2 = m.memory
    limit = mem2.usage_limit
    available = limit - ws if limit and limit <= _UNLIMITED and limit > ws else 0
    return ws, available, mem2.usage, mem2.anon, mem2.pgfault, mem2.pgmajfault


def memory_message(m: Metrics, timestamp: int) -> cri.MemoryUsage:
    """CRI MemoryUsage."""
    ws, available, usage, rss, faults, major = memory_usage(m)
    out = cri.MemoryUsage(
        timestamp=timestamp,
        working_set_bytes=_u64(ws),
        available_bytes=_u64(available),
        usage_bytes=_u64(usage),
        rss_bytes=_u64(rss),
        page_faults=_u64(faults),
        major_page_faults=_u64(major),
    )
    if isinstance(m, v2.Metrics) and m.memory.HasField("psi"):
        out.psi.CopyFrom(_psi(m.memory.psi))
    return out


def swap_message(m: Metrics, timestamp: int) -> cri.SwapUsage | None:
    """CRI SwapUsage, or None when the kernel does not account swap for this cgroup."""
    if isinstance(m, v1.Metrics):
        memsw, mem = m.memory.swap, m.memory.usage
        if not memsw.usage:  # swapaccount off: no memsw files
            return None
        used = max(0, memsw.usage - mem.usage)
        limit = memsw.limit - mem.limit if memsw.limit <= _UNLIMITED and mem.limit else 0
        available = max(0, limit - used) if limit > 0 else 0
    else:
        used = m.memory.swap_usage
        limit = m.memory.swap_limit
        available = max(0, limit - used) if limit and limit <= _UNLIMITED else 0
    return cri.SwapUsage(
        timestamp=timestamp, swap_usage_bytes=_u64(used), swap_available_bytes=_u64(available)
    )


def io_message(m: Metrics, timestamp: int) -> cri.IoUsage | None:
    """CRI IoUsage (only pressure stall information, which only cgroup v2 has)."""
    if isinstance(m, v2.Metrics) and m.io.HasField("psi"):
        return cri.IoUsage(timestamp=timestamp, psi=_psi(m.io.psi))
    return None


def process_count(m: Metrics) -> int:
    """Tasks in the cgroup (pids.current)."""
    return int(m.pids.current)


@dataclass
class CpuSampler:
    """Per-object CPU samples, for ``usage_nano_cores`` measured over at least ``period`` seconds.

    For each key it keeps the samples since the newest one that is a full period
    old, so a rate is always taken across a whole period when one is known
    (a background collector feeds it every period); otherwise across the
    longest span it has. The first sample of a key has no rate (None), as in
    cAdvisor and containerd.
    """

    period: float = 1.0
    _samples: dict[str, collections.deque[tuple[int, int]]] = field(default_factory=dict)

    def add(self, key: str, usage_ns: int, timestamp: int) -> int | None:
        """Record a sample (cumulative CPU ns at ``timestamp`` ns); return nano cores, if known."""
        period_ns = int(self.period * 1e9)
        samples = self._samples.setdefault(key, collections.deque())
        base = None
        for ts, usage in reversed(samples):
            if timestamp - ts >= period_ns:
                base = (ts, usage)
                break
        if base is None and samples and timestamp > samples[0][0]:
            base = samples[0]
        if not samples or timestamp > samples[-1][0]:
            samples.append((timestamp, usage_ns))
        while len(samples) > 1 and timestamp - samples[1][0] >= period_ns:
            samples.popleft()  # the next one is a full period old too: this one is not needed
        if base is None or usage_ns < base[1]:
            return None  # no earlier sample, or the counter went backwards (a new cgroup)
        return int((usage_ns - base[1]) * 1_000_000_000 / (timestamp - base[0]))

    def forget(self, keep: set[str]) -> None:
        """Drop the samples of objects that are gone."""
        for key in [k for k in self._samples if k not in keep]:
            del self._samples[key]

    def keys(self) -> set[str]:
        """The objects with samples."""
        return set(self._samples)
