"""ContainerStats, PodSandboxStats and their List/Stream variants.

Container figures come from the task's own Stats (the shim reads the
container's cgroup) and are converted by :mod:`wharfd.cri.stats_decode`; a
container without a running task still appears, with its attributes and
writable layer only (as in containerd). The writable layer's size and inodes
are the last sample of the snapshot usage sampler that ImageFsInfo shares
(re-sampled when older than its period), with the snapshotter root as the
mountpoint.

A pod's CPU, memory and process count are those of its cgroup
(``linux.cgroup_parent``), read by the daemon; a pod without a cgroup parent
falls back to its pause task. Network counters come from the pod's netns.

``usage_nano_cores`` needs two samples a period apart: a background collector
reads the cumulative CPU time of every running container and ready pod once
per ``period`` (one thread hop per tick, straight from the cgroup files), so
even the first query after a start has a rate once a period has passed.
Stream variants send the list in chunks of :data:`STREAM_CHUNK`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.cri import stats_decode, stats_host
from wharfd.cri.image_fs_info import SnapshotUsage
from wharfd.cri.store import Container, CriState, Sandbox, SandboxState
from wharfd.runtime import errors
from wharfd.runtime.shim import cgroups

log = logging.getLogger("wharfd.cri.stats")

STREAM_CHUNK = 100
_PARALLEL = 10  # pods measured at once in the List calls
_DEFAULT_IFNAME = "eth0"

T = TypeVar("T")


def labels_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Whether every selector pair is among ``labels`` (CRI label selectors are exact ANDs)."""
    return all(labels.get(k) == v for k, v in selector.items())


async def bounded(
    items: list[T], fn: Callable[[T], Awaitable[object]], limit: int = _PARALLEL
) -> list[object]:
    """``fn`` over ``items`` with at most ``limit`` running at once; results (or exceptions) in order."""
    gate = asyncio.Semaphore(limit)

    async def one(item: T) -> object:
        async with gate:
            return await fn(item)

    return list(await asyncio.gather(*(one(i) for i in items), return_exceptions=True))


@dataclass(frozen=True)
class ContainerSample:
    """One container's stats and what pod stats need besides (its process count)."""

    stats: cri.ContainerStats
    pids: int = 0


class StatsService:
    """Answers the stats RPCs from the CRI state, the tasks and the snapshot usage sampler."""

    def __init__(
        self,
        state: CriState,
        usage: SnapshotUsage | None,
        roots: Mapping[str, str],
        *,
        period: float = 1.0,
    ) -> None:
        self.state = state
        self.usage = usage
        self.roots = dict(roots)
        self.sampler = stats_decode.CpuSampler(period)
        self._cgroups: dict[str, cgroups.Cgroup] = {}
        self._collector: asyncio.Task[None] | None = None

    # -- the CPU collector ------------------------------------------------------------------

    def start(self) -> None:
        """Begin sampling CPU time every period in the background."""
        if self._collector is None:
            self._collector = asyncio.get_running_loop().create_task(self._collect(), name="cri-stats")

    async def close(self) -> None:
        """Stop the collector."""
        if self._collector is not None:
            self._collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._collector
            self._collector = None

    def _targets(self) -> dict[str, tuple[str, int]]:
        """id → (cgroup parent or "", pid) of everything that has CPU time now."""
        out: dict[str, tuple[str, int]] = {}
        for sb in self.state.sandboxes.list():
            if sb.status.sandbox_state is SandboxState.READY:
                out[sb.id] = (sb.metadata.config.linux.cgroup_parent, sb.status.pid)
        for c in self.state.containers.list():
            if c.status.state() == cri.CONTAINER_RUNNING and c.status.pid:
                out[c.id] = ("", c.status.pid)
        return out

    def _read_cpu(self, targets: dict[str, tuple[str, int]]) -> dict[str, tuple[int, int]]:
        """id → (cpu ns, timestamp ns); blocking."""
        out: dict[str, tuple[int, int]] = {}
        for key, (parent, pid) in targets.items():
            cg = self._cgroups.get(key)
            if cg is None:
                try:
                    cg = stats_host.cgroup_at(parent) if parent else cgroups.of_pid(pid)
                except errors.WharfError:
                    continue
                if not cg.dirs:
                    continue
                self._cgroups[key] = cg
            usage = stats_host.cpu_usage_ns(cg)
            if usage is not None:
                out[key] = (usage, time.time_ns())
        return out

    async def sample_once(self) -> None:
        """Take one CPU sample of every running container and ready pod."""
        targets = self._targets()
        for key in [k for k in self._cgroups if k not in targets]:
            del self._cgroups[key]
        self.sampler.forget(set(targets))
        if not targets:
            return  # an idle node costs no thread hop
        for key, (usage, ts) in (await asyncio.to_thread(self._read_cpu, targets)).items():
            self.sampler.add(key, usage, ts)

    async def _collect(self) -> None:
        while True:
            try:
                await self.sample_once()
            except Exception:
                log.exception("cri stats: CPU sample failed")
            await asyncio.sleep(self.sampler.period)

    # -- containers -------------------------------------------------------------------------

    async def task_metrics(self, id: str) -> stats_decode.Metrics | None:
        """The cgroup metrics of the running task ``id``; None when it has no task (any more)."""
        task = self.state.task(id)
        if task is None:
            return None
        try:
            data = await task.stats()
        except (errors.NotFound, errors.FailedPrecondition, errors.Unavailable) as exc:
            log.debug("stats of %s: %s", id, exc)  # it exited or is going away
            return None
        return stats_decode.decode(data, f'container "{id}"')

    async def writable_layer(self, c: Container) -> cri.FilesystemUsage:
        """Size and inodes of the container's writable layer, as last sampled."""
        snapshotter, key = c.metadata.snapshotter, c.metadata.snapshot_key
        out = cri.FilesystemUsage(
            timestamp=time.time_ns(),
            fs_id=cri.FilesystemIdentifier(mountpoint=self.roots.get(snapshotter, "")),
        )
        out.used_bytes.value = 0
        out.inodes_used.value = 0
        if self.usage is not None and key:
            totals = await self.usage.totals()
            if snapshotter in totals:
                out.timestamp = totals[snapshotter].timestamp
            usage = self.usage.usage_of(snapshotter, key)
            if usage is not None:
                out.used_bytes.value, out.inodes_used.value = usage.size, usage.inodes
        return out

    async def container_sample(self, c: Container) -> ContainerSample:
        """The ContainerStats of one container (CPU/memory only while it runs)."""
        config = c.metadata.config
        stats = cri.ContainerStats(
            attributes=cri.ContainerAttributes(
                id=c.id, metadata=config.metadata, labels=config.labels, annotations=config.annotations
            ),
            writable_layer=await self.writable_layer(c),
        )
        m = await self.task_metrics(c.id) if c.status.state() == cri.CONTAINER_RUNNING else None
        if m is None:
            return ContainerSample(stats)
        now = time.time_ns()
        rate = self.sampler.add(c.id, stats_decode.cpu_total_ns(m), now)
        stats.cpu.CopyFrom(stats_decode.cpu_usage(m, now, rate))
        stats.memory.CopyFrom(stats_decode.memory_message(m, now))
        if (swap := stats_decode.swap_message(m, now)) is not None:
            stats.swap.CopyFrom(swap)
        if (io := stats_decode.io_message(m, now)) is not None:
            stats.io.CopyFrom(io)
        return ContainerSample(stats, stats_decode.process_count(m))

    def containers_for(self, f: cri.ContainerStatsFilter | None) -> list[Container]:
        """The containers a stats filter selects (ids and pod ids may be unique prefixes)."""
        items = self.state.containers.list()
        if f is None:
            return items
        if f.id:
            found = self.state.containers.find(f.id)
            items = [found] if found is not None else []
        if f.pod_sandbox_id:
            sandbox = self.state.sandboxes.find(f.pod_sandbox_id)
            wanted = sandbox.id if sandbox is not None else f.pod_sandbox_id
            items = [c for c in items if c.sandbox_id == wanted]
        return [c for c in items if labels_match(f.label_selector, c.metadata.config.labels)]

    async def samples(self, containers: list[Container]) -> list[ContainerSample]:
        """Samples of many containers; one that fails is logged and left out."""
        out: list[ContainerSample] = []
        for c, result in zip(containers, await bounded(containers, self.container_sample), strict=True):
            if isinstance(result, ContainerSample):
                out.append(result)
            elif isinstance(result, BaseException):
                log.warning("stats of container %s: %s", c.id, result)
        return out

    async def container_stats(self, request: cri.ContainerStatsRequest) -> cri.ContainerStatsResponse:
        """ContainerStats: NotFound for an unknown id."""
        container = self.state.containers.get(request.container_id)
        return cri.ContainerStatsResponse(stats=(await self.container_sample(container)).stats)

    async def list_container_stats(
        self, request: cri.ListContainerStatsRequest
    ) -> cri.ListContainerStatsResponse:
        """ListContainerStats."""
        f = request.filter if request.HasField("filter") else None
        samples = await self.samples(self.containers_for(f))
        return cri.ListContainerStatsResponse(stats=[s.stats for s in samples])

    async def stream_container_stats(
        self, request: cri.StreamContainerStatsRequest
    ) -> AsyncIterator[cri.StreamContainerStatsResponse]:
        """StreamContainerStats: the list in chunks."""
        f = request.filter if request.HasField("filter") else None
        stats = [s.stats for s in await self.samples(self.containers_for(f))]
        for start in range(0, len(stats), STREAM_CHUNK):
            yield cri.StreamContainerStatsResponse(container_stats=stats[start : start + STREAM_CHUNK])

    # -- pods -------------------------------------------------------------------------------

    async def pod_metrics(self, sb: Sandbox) -> stats_decode.Metrics:
        """The pod cgroup's metrics (the pause task's when the pod has no cgroup parent)."""
        parent = sb.metadata.config.linux.cgroup_parent
        if parent:
            try:
                data = await asyncio.to_thread(stats_host.pod_metrics, parent)
                return stats_decode.decode(data, f'pod "{sb.id}"')
            except errors.NotFound:
                log.debug("pod %s: cgroup %s not found; using its pause task", sb.id, parent)
        m = await self.task_metrics(sb.id)
        if m is None:
            raise errors.Unavailable(f'pod sandbox "{sb.id}": its pause task is not running')
        return m

    async def network(self, sb: Sandbox, timestamp: int) -> cri.NetworkUsage | None:
        """The pod's interface counters (None for host-network pods)."""
        if not sb.metadata.netns_path:
            return None
        links = await asyncio.to_thread(stats_host.netns_links, sb.metadata.netns_path)
        out = cri.NetworkUsage(timestamp=timestamp)
        for link in links:
            usage = cri.NetworkInterfaceUsage(name=link.name)
            usage.rx_bytes.value, usage.rx_errors.value = link.rx_bytes, link.rx_errors
            usage.tx_bytes.value, usage.tx_errors.value = link.tx_bytes, link.tx_errors
            out.interfaces.append(usage)
        default = next((i for i in out.interfaces if i.name == _DEFAULT_IFNAME), None)
        if default is None and out.interfaces:
            default = out.interfaces[0]
        if default is not None:
            out.default_interface.CopyFrom(default)
        return out

    async def pod_stats(self, sb: Sandbox) -> cri.PodSandboxStats:
        """The stats of one ready pod; Unavailable when it is not ready."""
        if sb.status.sandbox_state is not SandboxState.READY:
            raise errors.Unavailable(f'pod sandbox "{sb.id}": not ready, no stats')
        config = sb.metadata.config
        out = cri.PodSandboxStats(
            attributes=cri.PodSandboxAttributes(
                id=sb.id, metadata=config.metadata, labels=config.labels, annotations=config.annotations
            )
        )
        m = await self.pod_metrics(sb)
        now = time.time_ns()
        linux = out.linux
        linux.cpu.CopyFrom(
            stats_decode.cpu_usage(m, now, self.sampler.add(sb.id, stats_decode.cpu_total_ns(m), now))
        )
        linux.memory.CopyFrom(stats_decode.memory_message(m, now))
        if (io := stats_decode.io_message(m, now)) is not None:
            linux.io.CopyFrom(io)
        if (net := await self.network(sb, now)) is not None:
            linux.network.CopyFrom(net)
        samples = await self.samples(self.state.containers_of(sb.id))
        linux.containers.extend(s.stats for s in samples)
        # The pod cgroup counts every task of the pod (pause included); without one, add up the containers.
        count = stats_decode.process_count(m) or sum(s.pids for s in samples)
        linux.process.CopyFrom(cri.ProcessUsage(timestamp=now, process_count=cri.UInt64Value(value=count)))
        return out

    def sandboxes_for(self, f: cri.PodSandboxStatsFilter | None) -> list[Sandbox]:
        """The ready pods a stats filter selects."""
        items = self.state.sandboxes.list()
        if f is not None and f.id:
            found = self.state.sandboxes.find(f.id)
            items = [found] if found is not None else []
        if f is not None:
            items = [s for s in items if labels_match(f.label_selector, s.metadata.config.labels)]
        return [s for s in items if s.status.sandbox_state is SandboxState.READY]

    async def many_pod_stats(self, sandboxes: list[Sandbox]) -> list[cri.PodSandboxStats]:
        """Stats of many pods; a pod that stopped meanwhile is left out, other failures are raised."""
        out: list[cri.PodSandboxStats] = []
        for sb, result in zip(sandboxes, await bounded(sandboxes, self.pod_stats), strict=True):
            if isinstance(result, cri.PodSandboxStats):
                out.append(result)
            elif isinstance(result, (errors.Unavailable, errors.NotFound)):
                log.debug("stats of pod %s: %s", sb.id, result)  # it stopped or went away meanwhile
            elif isinstance(result, BaseException):
                raise result
        return out

    async def pod_sandbox_stats(self, request: cri.PodSandboxStatsRequest) -> cri.PodSandboxStatsResponse:
        """PodSandboxStats: NotFound for an unknown id."""
        sandbox = self.state.sandboxes.get(request.pod_sandbox_id)
        return cri.PodSandboxStatsResponse(stats=await self.pod_stats(sandbox))

    async def list_pod_sandbox_stats(
        self, request: cri.ListPodSandboxStatsRequest
    ) -> cri.ListPodSandboxStatsResponse:
        """ListPodSandboxStats (ready pods only)."""
        f = request.filter if request.HasField("filter") else None
        return cri.ListPodSandboxStatsResponse(stats=await self.many_pod_stats(self.sandboxes_for(f)))

    async def stream_pod_sandbox_stats(
        self, request: cri.StreamPodSandboxStatsRequest
    ) -> AsyncIterator[cri.StreamPodSandboxStatsResponse]:
        """StreamPodSandboxStats: the list in chunks."""
        f = request.filter if request.HasField("filter") else None
        stats = await self.many_pod_stats(self.sandboxes_for(f))
        for start in range(0, len(stats), STREAM_CHUNK):
            yield cri.StreamPodSandboxStatsResponse(pod_sandbox_stats=stats[start : start + STREAM_CHUNK])
