"""What the Transfer service does for each pair of endpoints, on plain Python values.

=====================  ======================  ==========================================
source                 destination             operation
=====================  ======================  ==========================================
registry reference     image store             :meth:`LocalTransfer.pull` (the puller)
image store            registry reference      :meth:`LocalTransfer.push`
image store            tar byte sink           :meth:`LocalTransfer.export`
tar byte source        image store             :meth:`LocalTransfer.import_archive`
image store            image store             :meth:`LocalTransfer.tag` (and unpack)
=====================  ======================  ==========================================

Each runs in the current namespace under a lease (the caller's, else one of
its own expiring after a day and deleted at the end), so nothing it stores is
collected before an image record holds it. Progress goes to a
:class:`~wharfd.runtime.images.progress.Throttle` as containerd's transfer
service reports it: status lines ("Pulling from OCI Registry (ref)",
"Completed import") and a tree of named nodes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from wharfd.runtime import errors, registry
from wharfd.runtime.content.store import ContentStore
from wharfd.runtime.images import labels, walk
from wharfd.runtime.images.destination import ANNOTATION_REF_SOURCE, Destination, Unpack
from wharfd.runtime.images.manifest import Descriptor
from wharfd.runtime.images.platforms import Ordered, Platform, format_platform, host, only
from wharfd.runtime.images.progress import Progress, PullRelay, Throttle
from wharfd.runtime.images.pull import Puller, PullOptions, PullProgress
from wharfd.runtime.images.reference import parse_normalized
from wharfd.runtime.metadata import images as records
from wharfd.runtime.metadata import leases

if TYPE_CHECKING:
    from wharfd.runtime.images import archive
    from wharfd.runtime.registry import CredentialsFn

log = logging.getLogger("wharfd.transfer")

DEFAULT_SNAPSHOTTER = "overlayfs"


@dataclass(frozen=True)
class RegistryEndpoint:
    """A reference in a registry, and how to reach it (containerd's ``OCIRegistry``)."""

    reference: str
    hosts_dir: str = ""
    plain_http: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)
    credentials: CredentialsFn | None = None

    def __str__(self) -> str:
        return f"OCI Registry ({self.reference})"


class LocalTransfer:
    """Transfers between registries, archives and the local stores."""

    def __init__(
        self,
        puller: Puller,
        content: ContentStore,
        images: records.ImageStore,
        lease_store: leases.LeaseStore,
        *,
        default_snapshotter: str = DEFAULT_SNAPSHOTTER,
        max_concurrent_uploads: int = 3,
    ) -> None:
        """Work over these stores; pulls and unpacks go through ``puller``."""
        self.puller = puller
        self.content = content
        self.images = images
        self.leases = lease_store
        self.default_snapshotter = default_snapshotter
        self.max_concurrent_uploads = max_concurrent_uploads

    # --- pull ---------------------------------------------------------------------------------

    async def pull(
        self, source: RegistryEndpoint, dest: Destination, report: Throttle
    ) -> list[records.Image]:
        """Fetch (and unpack) ``source`` and record it as ``dest`` says."""
        normalized = str(parse_normalized(source.reference))
        root = dest.name or normalized
        report.status(f"Resolving from {source}")
        report.status(f"Pulling from {source}")
        report(Progress("fetching image content", root))
        relay = PullRelay(root, self.content, report)
        queue: asyncio.Queue[PullProgress | None] = asyncio.Queue()
        # The puller wants the whole image recorded under its one name; other names are ours to write.
        record = dest.name in ("", normalized) and not dest.references
        opts = PullOptions(
            platforms=[format_platform(p) for p in dest.platforms],
            all_platforms=not dest.platforms,
            unpack=bool(dest.unpacks) and bool(dest.platforms),
            snapshotter=self._snapshotter(dest.unpacks),
            labels=dict(dest.labels),
            credentials=source.credentials,
            plain_http=source.plain_http,
            hosts_dir=source.hosts_dir,
            progress=queue.put_nowait if report.enabled else None,
            record_image=record,
        )
        async with self.leases.held(labels.LEASE_LIFETIME):
            forward = asyncio.get_running_loop().create_task(_relay(queue, relay))
            try:
                result = await self.puller.pull(source.reference, opts)
            finally:
                queue.put_nowait(None)
                await forward
            if record:
                saved = [await self.images.get(result.name)]
            else:
                saved = await replace(dest, name=root).store(self.images, result.target)
        target = walk.from_record(result.target)
        report(Progress("fetching image content", root, desc=target))
        for image in saved:
            report(Progress("saved", image.name, desc=target))
        report.status(f"Completed pull from {source}", last=True)
        return saved

    def _snapshotter(self, unpacks: tuple[Unpack, ...]) -> str:
        return next((u.snapshotter for u in unpacks if u.snapshotter), self.default_snapshotter)

    # --- push ---------------------------------------------------------------------------------

    async def push(self, source: Destination, dest: RegistryEndpoint, report: Throttle) -> None:
        """Push the image ``source.name`` to ``dest``."""
        image = await self.images.get(source.name)
        target = walk.from_record(image.target)
        report.status(f"Pushing to {dest}")
        report(Progress("pushing content", image.name, desc=target))
        # The registry client (and aiohttp) loads with the first push or pull, not with the daemon.
        await registry.load()
        from wharfd.runtime.images.push import PushOptions, push_image
        from wharfd.runtime.registry import HostsConfig, Resolver, Transport

        hosts = HostsConfig(config_path=dest.hosts_dir or self.puller.hosts_dir, plain_http=dest.plain_http)
        async with Transport(hosts, dest.credentials, headers=dest.headers) as transport:
            pusher = Resolver(transport).pusher(dest.reference)
            opts = PushOptions(
                platforms=compatible(source.platforms) if source.platforms else None,
                max_concurrent_uploads=self.max_concurrent_uploads,
                progress=report,
                root_name=image.name,
            )
            await push_image(self.content, pusher, target, opts)
        report(Progress("pushed content", image.name, desc=target))
        report.status(f"Completed push to {dest}", target, last=True)

    # --- export / import ----------------------------------------------------------------------

    async def export(
        self, source: Destination, sink: archive.Sink, opts: archive.ExportOptions, report: Throttle
    ) -> None:
        """Write the images ``source`` names into ``sink`` as an OCI layout tar."""
        # The archive formats (tarfile, Docker's layout) load with the first export or import.
        from wharfd.runtime.images import archive

        report.status("Exporting")
        found = await source.lookup(self.images)
        async with self.leases.held(labels.LEASE_LIFETIME):
            await archive.export(self.content, found, sink, opts)
        report.status("Completed export", last=True)

    async def import_archive(
        self, source: AsyncIterator[bytes], dest: Destination, report: Throttle
    ) -> list[records.Image]:
        """Read an OCI or Docker archive, unpack what ``dest`` asks, record the images it names."""
        from wharfd.runtime.images import archive

        report.status("Importing")
        matcher = compatible(dest.platforms) if dest.platforms else None
        saved: list[records.Image] = []
        async with self.leases.held(labels.LEASE_LIFETIME):
            root = await archive.import_archive(self.content, archive.decompressed(source))
            try:
                await walk.walk_tree(self.content, root, matcher)
            except errors.NotFound as exc:
                raise errors.InvalidArgument(f"image archive is incomplete: {exc}") from exc
            entries = await archive.named_entries(self.content, root)
            kept = walk.by_platform(entries, matcher) if matcher is not None else entries
            if not kept:
                wanted = ", ".join(format_platform(p) for p in dest.platforms)
                raise errors.NotFound(f"image archive has no image for platform {wanted or 'any'}")
            for unpack in dest.unpacks:
                await self._unpack_all(kept, unpack)
            for desc in [root, *entries]:
                saved += await self._save(dest, walk.to_record(desc), report)
        report.status("Completed import", last=True)
        return saved

    async def _save(
        self, dest: Destination, desc: records.Descriptor, report: Throttle
    ) -> list[records.Image]:
        try:
            stored = await dest.store(self.images, desc)
        except errors.NotFound:
            log.debug("import: no image name for %s", desc.digest)
            return []
        for image in stored:
            report(Progress("saved", image.name, desc=walk.from_record(image.target)))
        return stored

    async def _unpack_all(self, targets: list[Descriptor], unpack: Unpack) -> None:
        wanted = [format_platform(unpack.platform)] if unpack.platform else []
        snapshotter = unpack.snapshotter or self.default_snapshotter
        clean = {ANNOTATION_REF_SOURCE}
        for target in targets:
            record = walk.to_record(target)
            record = replace(
                record, annotations={k: v for k, v in record.annotations.items() if k not in clean}
            )
            try:
                await self.puller.unpack(record, platforms=wanted, snapshotter=snapshotter)
            except errors.NotFound as exc:
                log.info("import: %s not unpacked: %s", target.digest, exc)

    # --- tag ----------------------------------------------------------------------------------

    async def tag(self, source: Destination, dest: Destination, report: Throttle) -> list[records.Image]:
        """Record ``source``'s target under ``dest``'s names; unpack it first if ``dest`` asks."""
        image = await self.images.get(source.name)
        async with self.leases.held(labels.LEASE_LIFETIME):
            for unpack in dest.unpacks:
                wanted = [format_platform(unpack.platform)] if unpack.platform else []
                snapshotter = unpack.snapshotter or self.default_snapshotter
                await self.puller.unpack(image.target, platforms=wanted, snapshotter=snapshotter)
            if dest.name == source.name and not dest.references:
                return [image]  # an unpack request: the record stays as it is, labels and all
            return await dest.store(self.images, image.target)


def compatible(wanted: tuple[Platform, ...]) -> Ordered:
    """Match the platforms given and those they can run (``linux/amd64/v4`` runs ``linux/amd64``)."""
    return Ordered(tuple(p for w in wanted for p in only(w).platforms))


def host_default() -> Ordered:
    """This host's platform and its lower variants, not other architectures (as ctr's strict default)."""
    here = host()
    return Ordered(tuple(p for p in only(here).platforms if p.architecture == here.architecture))


async def _relay(queue: asyncio.Queue[PullProgress | None], relay: PullRelay) -> None:
    while (item := await queue.get()) is not None:
        try:
            await relay.relay(item.ref, item.kind, item.status, item.offset, item.total)
        except Exception:
            log.exception("pull progress relay failed")
