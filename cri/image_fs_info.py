"""ImageFsInfo: how much of the image filesystem the snapshots of ``k8s.io`` use.

Like containerd's snapshots syncer, the figures are the sum of every
snapshot's usage per snapshotter, sampled at most once per
``stats_collect_period``. A committed layer's usage was recorded when it was
committed and never changes, so it is read once and remembered; active
snapshots (container writable layers) are measured again at every sample, by
the snapshotter, off the event loop. Concurrent callers share one sample.

The default snapshotter's filesystem comes first, as kubelet reads only the
first entry. Images and containers live in the same snapshotter, so the
container filesystem is the same mountpoint (no split image filesystem).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.runtime import errors, namespaces
from wharfd.runtime.snapshots.snapshotter import Kind, Snapshotter, Usage

log = logging.getLogger("wharfd.cri.images")


@dataclass(frozen=True)
class FsUsage:
    """The usage of one snapshotter's filesystem at ``timestamp`` (Unix nanoseconds)."""

    timestamp: int
    used_bytes: int = 0
    inodes_used: int = 0
    snapshots: int = 0


class SnapshotUsage:
    """Samples the disk use of the snapshots of ``k8s.io``, per snapshotter, at most once per ``period``."""

    def __init__(self, snapshotters: Mapping[str, Snapshotter], *, period: float = 10.0) -> None:
        self._snapshotters = dict(snapshotters)
        self._period = period
        # (snapshotter, key) → (kind, usage) from the last sample: committed and
        # view usage is reused while the kind stays the same.
        self._known: dict[tuple[str, str], tuple[Kind, Usage]] = {}
        self._totals: dict[str, FsUsage] = {}
        self._sampled_at: float | None = None
        self._sampling: asyncio.Task[None] | None = None
        # Bumped by invalidate(): a sample started before it must not count as fresh.
        self._generation = 0

    async def totals(self) -> dict[str, FsUsage]:
        """Usage per snapshotter, sampled now if the last sample is older than the period."""
        fresh = self._sampled_at is not None and time.monotonic() - self._sampled_at < self._period
        if not fresh:
            if self._sampling is None or self._sampling.done():
                self._sampling = asyncio.get_running_loop().create_task(self._sample())
            # A caller that goes away must not cancel the sample the others wait for.
            await asyncio.shield(self._sampling)
        return dict(self._totals)

    def invalidate(self) -> None:
        """Sample afresh at the next call (after a pull or a removal changed the layers)."""
        self._sampled_at = None
        self._generation += 1

    def usage_of(self, snapshotter: str, key: str) -> Usage | None:
        """The last sampled usage of one snapshot (a container's writable layer), if any."""
        known = self._known.get((snapshotter, key))
        return known[1] if known else None

    async def _sample(self) -> None:
        token = namespaces.current.set(namespaces.K8S)
        try:
            started, generation = time.monotonic(), self._generation
            stamp = time.time_ns()
            known: dict[tuple[str, str], tuple[Kind, Usage]] = {}
            totals = {}
            for name, snapshotter in self._snapshotters.items():
                totals[name] = await self._sample_one(name, snapshotter, stamp, known)
            self._known, self._totals = known, totals
            if generation == self._generation:
                self._sampled_at = time.monotonic()
            log.debug("snapshot usage sampled in %.3fs", time.monotonic() - started)
        finally:
            namespaces.current.reset(token)

    async def _sample_one(
        self,
        name: str,
        snapshotter: Snapshotter,
        stamp: int,
        known: dict[tuple[str, str], tuple[Kind, Usage]],
    ) -> FsUsage:
        used = inodes = count = 0
        for info in await snapshotter.walk():
            previous = self._known.get((name, info.name))
            if previous is not None and previous[0] == info.kind and info.kind != Kind.ACTIVE:
                usage = previous[1]
            else:
                try:
                    usage = await snapshotter.usage(info.name)
                except errors.NotFound:
                    continue  # removed since the walk
            known[(name, info.name)] = (info.kind, usage)
            used, inodes, count = used + usage.size, inodes + usage.inodes, count + 1
        return FsUsage(timestamp=stamp, used_bytes=used, inodes_used=inodes, snapshots=count)


def _filesystem(mountpoint: str, usage: FsUsage) -> cri.FilesystemUsage:
    msg = cri.FilesystemUsage(
        timestamp=usage.timestamp, fs_id=cri.FilesystemIdentifier(mountpoint=mountpoint)
    )
    msg.used_bytes.value = usage.used_bytes
    msg.inodes_used.value = usage.inodes_used
    return msg


async def image_fs_info(
    usage: SnapshotUsage, roots: Mapping[str, str], default_snapshotter: str
) -> cri.ImageFsInfoResponse:
    """The response: the default snapshotter first, then any other holding snapshots of ``k8s.io``."""
    totals = await usage.totals()
    first = totals.get(default_snapshotter) or FsUsage(timestamp=time.time_ns())
    images = [_filesystem(roots.get(default_snapshotter, ""), first)]
    for name in sorted(totals):
        if name != default_snapshotter and totals[name].snapshots:
            images.append(_filesystem(roots.get(name, ""), totals[name]))
    containers = [_filesystem(roots.get(default_snapshotter, ""), first)]
    return cri.ImageFsInfoResponse(image_filesystems=images, container_filesystems=containers)
