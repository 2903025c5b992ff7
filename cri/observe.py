"""The runtime-level half of the CRI RuntimeService: status, runtime config, stats, metrics, events.

:class:`Observability` builds the parts once per daemon (probing the runtime
handlers' features off the event loop), starts their background work (the
CPU sampler, the exit feed for STOPPED events) and stops it at shutdown. The
servicer methods in :mod:`wharfd.cri.service` are thin adapters over it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.cri import container_status, runtime_status, sandbox_status
from wharfd.cri.events import ContainerEvents, ExitFeed
from wharfd.cri.image_fs_info import SnapshotUsage
from wharfd.cri.runtime_config import RuntimeConfigService
from wharfd.cri.runtime_status import RuntimeStatus
from wharfd.cri.sandbox_metrics import MetricsService
from wharfd.cri.stats import StatsService
from wharfd.cri.store import CriState, in_k8s_namespace
from wharfd.runtime import errors

CPU_SAMPLE_PERIOD = 1.0  # seconds; cAdvisor's housekeeping interval, containerd's stats_collect_period


async def sandbox_status_of(state: CriState, sandbox_id: str) -> cri.PodSandboxStatus | None:
    """A pod's CRI status for an event (None once it is gone)."""
    sandbox = state.sandboxes.find(sandbox_id)
    if sandbox is None or sandbox.id != sandbox_id:
        return None
    return sandbox_status.to_cri_status(sandbox)


async def container_statuses_of(state: CriState, sandbox_id: str) -> list[cri.ContainerStatus]:
    """The CRI status of every container of a pod, for an event (as ContainerStatus answers it)."""
    out: list[cri.ContainerStatus] = []
    with in_k8s_namespace():  # the status reads the container record
        for container in state.containers_of(sandbox_id):
            request = cri.ContainerStatusRequest(container_id=container.id)
            try:
                response = await container_status.container_status(state, request)
            except errors.NotFound:
                continue  # removed meanwhile
            out.append(response.status)
    return out


@dataclass
class Observability:
    """Status, RuntimeConfig, stats, metrics and container events of one daemon."""

    status: RuntimeStatus
    runtime_config: RuntimeConfigService
    stats: StatsService
    metrics: MetricsService
    events: ContainerEvents
    exits: ExitFeed

    @classmethod
    async def create(
        cls, state: CriState, usage: SnapshotUsage | None, roots: Mapping[str, str]
    ) -> Observability:
        """Build every part and start the background work."""
        handlers = await asyncio.to_thread(runtime_status.probe_handlers, state.config)
        stats = StatsService(state, usage, roots, period=CPU_SAMPLE_PERIOD)
        events = ContainerEvents()
        events.sandbox_status = lambda id: sandbox_status_of(state, id)
        events.container_statuses = lambda id: container_statuses_of(state, id)
        obs = cls(
            status=RuntimeStatus(state.cni, state.config, handlers),
            runtime_config=RuntimeConfigService(state.config, state.cni),
            stats=stats,
            metrics=MetricsService(stats),
            events=events,
            exits=ExitFeed(events, state),
        )
        stats.start()
        if state.exchange is not None:
            obs.exits.start()
            await obs.exits.subscribed.wait()  # no exit may slip by between start and the first RPC
        return obs

    async def close(self) -> None:
        """Stop the background work and end the event streams."""
        self.events.close()
        with contextlib.suppress(Exception):
            await self.exits.close()
        await self.stats.close()
