"""ListMetricDescriptors, ListPodSandboxMetrics and StreamPodSandboxMetrics.

For every ready pod: the network metrics of its interfaces (pod level), and
for every container with a running task its cAdvisor metrics
(:mod:`wharfd.cri.metrics`), gathered from the task's cgroup stats, the
container's OCI spec (resources, rlimits), its processes' open files, its
writable layer and the filesystem under it. A pod or container that goes away
while it is measured is left out, as containerd does; the others still answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.api.types.cgroups.v1 import metrics_pb2 as v1
from wharfd.cri import metrics, stats_decode, stats_host
from wharfd.cri.stats import STREAM_CHUNK, StatsService, bounded
from wharfd.cri.store import Container, Sandbox, SandboxState
from wharfd.runtime import errors

log = logging.getLogger("wharfd.cri.stats")


def _devices_of(m: stats_decode.Metrics) -> set[tuple[int, int]]:
    if isinstance(m, v1.Metrics):
        return {(e.major, e.minor) for e in m.blkio.io_service_bytes_recursive}
    return {(e.major, e.minor) for e in m.io.usage}


def _host_facts(pids: list[int], root: str, devices: set[tuple[int, int]]) -> tuple[Any, ...]:
    """Blocking: (fds, sockets), (capacity, inodes, inodes free), device names."""
    return stats_host.open_files(pids), stats_host.filesystem(root), stats_host.block_devices(devices)


class MetricsService:
    """Builds the CRI metric lists from what :class:`StatsService` reads."""

    def __init__(self, stats: StatsService) -> None:
        self.stats = stats

    @property
    def state(self) -> Any:
        """The CRI state (stores, tasks, metadata)."""
        return self.stats.state

    def list_descriptors(self) -> cri.ListMetricDescriptorsResponse:
        """ListMetricDescriptors: the fixed list."""
        return cri.ListMetricDescriptorsResponse(descriptors=metrics.descriptors())

    async def _spec(self, id: str) -> Mapping[str, Any]:
        """The OCI spec stored with the container record ({} if unreadable)."""
        try:
            record = await self.state.meta.get(id)
        except errors.NotFound:
            return {}
        if record.spec is None or not record.spec.value:
            return {}
        try:
            spec = json.loads(record.spec.value)
        except ValueError:
            return {}
        return spec if isinstance(spec, dict) else {}

    async def _pids(self, id: str) -> list[int]:
        task = self.state.task(id)
        if task is None:
            return []
        try:
            return [p.pid for p in await task.pids()]
        except errors.WharfError:
            return []

    async def container(self, sb: Sandbox, c: Container) -> cri.ContainerMetrics | None:
        """The metrics of one container; None when it has no running task."""
        if c.status.state() != cri.CONTAINER_RUNNING:
            return None
        m = await self.stats.task_metrics(c.id)
        if m is None:
            return None
        pod, config = sb.metadata.config.metadata, c.metadata.config
        image = config.image.user_specified_image or c.metadata.image_ref or config.image.image
        layer = await self.stats.writable_layer(c)
        root = layer.fs_id.mountpoint
        (fds, sockets), (capacity, inodes, inodes_free), devices = await asyncio.to_thread(
            _host_facts, await self._pids(c.id), root or "/", _devices_of(m)
        )
        source = metrics.ContainerInput(
            labels=[pod.name, pod.namespace, config.metadata.name, c.id, image],
            metrics=m,
            started_at=c.status.started_at,
            spec=await self._spec(c.id),
            fs_device=root,
            fs_used=layer.used_bytes.value,
            fs_capacity=capacity,
            fs_inodes=inodes,
            fs_inodes_free=inodes_free,
            fds=fds,
            sockets=sockets,
            devices=devices,
        )
        return cri.ContainerMetrics(
            container_id=c.id, metrics=metrics.container_metrics(source, time.time_ns())
        )

    async def pod(self, sb: Sandbox) -> cri.PodSandboxMetrics:
        """The metrics of one pod and its containers."""
        out = cri.PodSandboxMetrics(pod_sandbox_id=sb.id)
        if sb.metadata.netns_path:
            links = await asyncio.to_thread(stats_host.netns_links, sb.metadata.netns_path)
            meta = sb.metadata.config.metadata
            labels = [meta.name, meta.namespace, "", sb.id, ""]
            out.metrics.extend(metrics.network_metrics(labels, links, time.time_ns()))
        for c in self.state.containers_of(sb.id):
            try:
                found = await self.container(sb, c)
            except errors.WharfError as exc:
                log.info("metrics of container %s: %s", c.id, exc)
                continue
            if found is not None:
                out.container_metrics.append(found)
        return out

    async def all_pods(self) -> list[cri.PodSandboxMetrics]:
        """Metrics of every ready pod; a pod that fails is logged and left out."""
        ready = [s for s in self.state.sandboxes.list() if s.status.sandbox_state is SandboxState.READY]
        out: list[cri.PodSandboxMetrics] = []
        for sb, result in zip(ready, await bounded(ready, self.pod), strict=True):
            if isinstance(result, cri.PodSandboxMetrics):
                out.append(result)
            elif isinstance(result, BaseException):
                log.info("metrics of pod %s: %s", sb.id, result)
        return out

    async def list_pod_sandbox_metrics(self) -> cri.ListPodSandboxMetricsResponse:
        """ListPodSandboxMetrics."""
        return cri.ListPodSandboxMetricsResponse(pod_metrics=await self.all_pods())

    async def stream_pod_sandbox_metrics(self) -> AsyncIterator[cri.StreamPodSandboxMetricsResponse]:
        """StreamPodSandboxMetrics: the list in chunks."""
        pods = await self.all_pods()
        for start in range(0, len(pods), STREAM_CHUNK):
            yield cri.StreamPodSandboxMetricsResponse(pod_sandbox_metrics=pods[start : start + STREAM_CHUNK])
