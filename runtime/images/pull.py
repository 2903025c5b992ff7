"""The pull pipeline: resolve a reference, fetch the image into the content store, unpack it, record it.

::

    puller = ctx.get(plugin.TRANSFER, "local")
    result = await puller.pull("docker.io/library/busybox:latest", PullOptions(snapshotter="overlayfs"))

A pull runs in the current namespace under a lease (the caller's, from
:data:`wharfd.runtime.metadata.leases.current`, else one of its own that
expires after a day and is deleted when the pull ends). Everything it stores
is attached to that lease until the image record (named after the
normalized reference) holds it through the labels of
:mod:`~wharfd.runtime.images.labels`. A caller that pulls with
``record_image=False`` must hold its own lease until it has recorded the
image some other way, or the content is fair game for the next collection.

Concurrent pulls of the same reference in one namespace (with the same
options and the same credentials callback, or none) share one pull: later
callers wait for the first one's result and receive its progress too. The
shared pull is cancelled only when every caller has gone away. A pull with
another callback (or none) is not shared: it resolves the reference with its
own credentials, so a caller the registry would refuse is refused. (The CRI
shares PullImage calls with equal AuthConfigs itself, before they get here.)
(Blobs already stored in the namespace, or being stored by another pull, are
reused as containerd's content store reuses them.) Layers that two different
images share are downloaded once as well (see
:mod:`~wharfd.runtime.images.fetch`).

How the work is split: :mod:`~wharfd.runtime.images.fetch` walks the image
and downloads, :mod:`~wharfd.runtime.images.unpack` turns layers into
snapshots on worker processes; this module keeps the options, the single
flight, the image record and the plugin.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from google.protobuf.message import Message

from wharfd.api.events import image_pb2 as events_pb2
from wharfd.runtime import errors, namespaces, plugin, registry
from wharfd.runtime.content.local import LocalStore
from wharfd.runtime.images import labels as L
from wharfd.runtime.images import platforms, walk
from wharfd.runtime.images.chainid import chain_id
from wharfd.runtime.images.extract import Workers
from wharfd.runtime.images.fetch import Chosen, PullProgress, Session
from wharfd.runtime.images.manifest import MAX_CONFIG_SIZE, Descriptor, parse_config
from wharfd.runtime.images.reference import Reference, parse_normalized
from wharfd.runtime.images.unpack import Source, Unpacker
from wharfd.runtime.metadata import images as records
from wharfd.runtime.metadata import leases
from wharfd.runtime.snapshots.snapshotter import Kind

if TYPE_CHECKING:
    from wharfd.runtime.registry import CredentialsFn

log = logging.getLogger("wharfd.pull")

__all__ = ["PLUGIN", "PullOptions", "PullProgress", "PullResult", "Puller"]

TOPIC_CREATE = "/images/create"
TOPIC_UPDATE = "/images/update"


@dataclass
class PullOptions:
    """How to pull (see the module docstring)."""

    platforms: Sequence[str] = ()  # "os/arch[/variant]"; empty: the host's default matcher
    all_platforms: bool = False  # fetch every platform; implies no unpack
    unpack: bool = True
    snapshotter: str = "overlayfs"
    labels: Mapping[str, str] = field(default_factory=dict)  # labels of the image record
    # Pulls share only with the same object here (or none): a caller that knows two objects hold the
    # same credentials (the CRI, by their AuthConfig) shares those pulls itself.
    credentials: CredentialsFn | None = None
    plain_http: bool = False
    hosts_dir: str = ""  # registry config_path, ":"-separated; empty: the plugin's
    max_concurrent_downloads: int = 3
    progress_timeout: float = 300.0  # no byte for this long: DeadlineExceeded
    progress: Callable[[PullProgress], object] | None = None
    record_image: bool = True  # create/update the image record named after the normalized ref


@dataclass
class PullResult:
    """What a pull produced."""

    name: str  # normalized reference, e.g. "docker.io/library/busybox:latest"
    target: records.Descriptor  # what the reference resolved to (index or manifest)
    manifest: records.Descriptor  # the platform manifest chosen (== target for a single manifest)
    config: records.Descriptor  # the image config ("image id" for the CRI is config.digest)
    chain_id: str | None  # of the unpacked rootfs (None when not unpacked)
    size: int  # compressed bytes of config + layers of the chosen manifest
    platform: str


@dataclass
class _Flight:
    """A pull in progress that later callers join."""

    task: asyncio.Task[PullResult]
    listeners: list[Callable[[PullProgress], object]] = field(default_factory=list)
    waiters: int = 0


class Puller:
    """Pulls images into the content store, unpacks them and records them (``io.containerd.transfer.v1.local``)."""

    def __init__(
        self,
        content: LocalStore,
        images: records.ImageStore,
        lease_store: leases.LeaseStore,
        unpacker: Unpacker,
        *,
        publish: Callable[[str, Message], Any] | None = None,
        hosts_dir: str = "",
        max_concurrent_downloads: int = 3,
    ) -> None:
        """Work over these stores; ``max_concurrent_downloads`` is the configured default for callers."""
        self.content = content
        self.images = images
        self.leases = lease_store
        self.unpacker = unpacker
        self.publish = publish
        self.hosts_dir = hosts_dir
        self.max_concurrent_downloads = max_concurrent_downloads
        # Layer downloads in flight, by (namespace, digest): a second pull of the blob extracts from them.
        self.inflight: dict[tuple[str, str], Source] = {}
        self._flights: dict[tuple[Any, ...], _Flight] = {}
        self.own_workers: Workers | None = None  # a pool only this puller uses, closed with it

    async def pull(self, ref: str, opts: PullOptions | None = None) -> PullResult:
        """Pull ``ref`` in the current namespace; join a pull of the same reference already running."""
        opts = opts or PullOptions()
        ns = namespaces.required()
        parsed = parse_normalized(ref)
        for spec in opts.platforms:
            platforms.parse(spec)  # InvalidArgument now, not inside the shared task
        if opts.unpack and not opts.all_platforms:
            self.unpacker.snapshotter(opts.snapshotter)  # NotFound before any download
        # Callers share a pull that does what each asked for, with the same credentials.
        key = (
            _credentials_identity(opts),
            ns,
            str(parsed),
            opts.snapshotter,
            opts.unpack,
            opts.all_platforms,
            tuple(opts.platforms),
            opts.hosts_dir,
            opts.plain_http,
            opts.record_image,
        )
        flight = self._flights.get(key)
        if flight is None:
            flight = _Flight(asyncio.get_running_loop().create_task(self._pull(parsed, opts, key)))
            self._flights[key] = flight
        if opts.progress is not None:
            flight.listeners.append(opts.progress)
        flight.waiters += 1
        try:
            return await asyncio.shield(flight.task)
        finally:
            flight.waiters -= 1
            if opts.progress is not None:
                flight.listeners.remove(opts.progress)
            if flight.waiters == 0 and not flight.task.done():
                flight.task.cancel()  # every caller went away

    async def _pull(self, ref: Reference, opts: PullOptions, key: tuple[Any, ...]) -> PullResult:
        if opts.unpack and not opts.all_platforms:
            self.unpacker.workers.warm()  # while the manifests arrive
        try:
            # The registry client (and aiohttp) loads with the first pull, not with the daemon.
            await registry.load()
            from wharfd.runtime.registry import HostsConfig, Resolver, Transport

            async with self.leases.held(L.LEASE_LIFETIME) as lease:
                hosts = HostsConfig(config_path=opts.hosts_dir or self.hosts_dir, plain_http=opts.plain_http)
                async with Transport(
                    hosts, opts.credentials, progress_timeout=opts.progress_timeout
                ) as transport:
                    resolver = Resolver(transport)
                    name, root = await resolver.resolve(ref)
                    report = self._reporter(key)
                    session = Session(self, ref, opts, lease, report, fetcher=resolver.fetcher(ref))
                    chosen = await session.run(root)
                if opts.record_image:
                    await self._record(name, root, opts.labels)
                return _result(name, root, chosen)
        finally:
            self._flights.pop(key, None)

    def _reporter(self, key: tuple[Any, ...]) -> Callable[[PullProgress], None]:
        def report(progress: PullProgress) -> None:
            flight = self._flights.get(key)
            for listener in list(flight.listeners if flight else ()):
                try:
                    listener(progress)
                except Exception:
                    log.exception("pull progress callback failed")

        return report

    async def _record(self, name: str, root: Descriptor, labels: Mapping[str, str]) -> None:
        """Create the image record, or point the existing one at the new target."""
        target = walk.to_record(root)
        image = records.Image(name=name, target=target, labels=dict(labels))
        try:
            stored = await self.images.create(image)
            await self._emit(TOPIC_CREATE, events_pb2.ImageCreate(name=name, labels=stored.labels))
        except errors.AlreadyExists:
            stored = await self.images.update(image, ["target", *(f"labels.{k}" for k in labels)])
            await self._emit(TOPIC_UPDATE, events_pb2.ImageUpdate(name=name, labels=stored.labels))

    async def _emit(self, topic: str, event: Message) -> None:
        if self.publish is not None:
            try:
                await self.publish(topic, event)
            except Exception:
                log.exception("pull: publishing %s failed", topic)

    async def unpack(
        self, target: records.Descriptor, *, platforms: Sequence[str] = (), snapshotter: str = "overlayfs"
    ) -> str:
        """Unpack content already in the store (after an import, say); return the chain id."""
        opts = PullOptions(platforms=platforms, snapshotter=snapshotter)
        root = walk.from_record(target)
        async with self.leases.held(L.LEASE_LIFETIME) as lease:
            session = Session(self, _local_ref(root), opts, lease, lambda p: None, fetcher=None)
            chosen = await session.run(root)
        chain = chosen[0].chain_id
        if chain is None:
            raise errors.InvalidArgument(f"image {target.digest}: its config is not an image config")
        return chain

    async def is_unpacked(
        self, target: records.Descriptor, *, snapshotter: str = "overlayfs", platforms: Sequence[str] = ()
    ) -> bool:
        """Whether the rootfs of ``target``'s platform manifest is a committed snapshot."""
        opts = PullOptions(platforms=platforms, snapshotter=snapshotter, unpack=False)
        root = walk.from_record(target)
        session = Session(self, _local_ref(root), opts, "", lambda p: None, fetcher=None)
        (_desc, manifest), *_ = await session.manifests(root, store=False)
        data = await walk.read_blob(self.content, manifest.config, limit=MAX_CONFIG_SIZE)
        diff_ids = parse_config(data, what=f"image config {manifest.config.digest}").diff_ids
        if not diff_ids:
            return False
        try:
            info = await self.unpacker.snapshotter(snapshotter).stat(chain_id(diff_ids))
        except errors.NotFound:
            return False
        return info.kind == Kind.COMMITTED

    async def close(self) -> None:
        """Cancel pulls in progress and wait for cleanups."""
        for flight in list(self._flights.values()):
            flight.task.cancel()
        tasks = [f.task for f in self._flights.values()]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.unpacker.close()


def _credentials_identity(opts: PullOptions) -> int | None:
    # The object's id: the pull that uses it keeps it alive, so no other object can take the id meanwhile.
    return None if opts.credentials is None else id(opts.credentials)


def _local_ref(root: Descriptor) -> Reference:
    # Unpacking stored content names no registry; the digest stands in for the name in messages.
    return Reference(domain="local", path="content", digest=root.digest)


def _result(name: str, root: Descriptor, chosen: Sequence[Chosen]) -> PullResult:
    best = chosen[0]
    return PullResult(
        name=name,
        target=walk.to_record(root),
        manifest=walk.to_record(best.desc),
        config=walk.to_record(best.config),
        chain_id=best.chain_id,
        size=best.size,
        platform=best.platform,
    )


# --- plugin ---------------------------------------------------------------------------------


async def _init(ctx: plugin.InitContext) -> Puller:
    meta = ctx.get(plugin.METADATA)
    content = ctx.get(plugin.CONTENT, "content")
    # The walking differ's worker pool serves both; without the differ the puller runs its own.
    differ = ctx.plugins.instances(plugin.DIFF).get("walking")
    own: Workers | None = None
    if differ is not None:
        workers: Workers = differ.workers
    else:
        workers = own = Workers()
    config = ctx.plugin_config
    downloads = config.get("max_concurrent_downloads", 3)
    if not isinstance(downloads, int) or isinstance(downloads, bool) or downloads < 0:
        raise errors.InvalidArgument(
            f"plugins.{ctx.registration.uri!r}.max_concurrent_downloads: want an integer >= 0"
        )
    hosts_dir = config.get("config_path", "")
    if not isinstance(hosts_dir, str):
        raise errors.InvalidArgument(f"plugins.{ctx.registration.uri!r}.config_path: want a string")
    unpacker = Unpacker(content, ctx.get_all(plugin.SNAPSHOTTER), meta.leases, workers)
    await unpacker.clean_staging()
    publish = getattr(ctx.plugins.instances(plugin.EVENT).get("exchange"), "publish", None)
    puller = Puller(
        content,
        meta.images,
        meta.leases,
        unpacker,
        publish=publish,
        hosts_dir=hosts_dir,
        max_concurrent_downloads=downloads,
    )
    puller.own_workers = own
    return puller


async def _close(puller: Puller) -> None:
    await puller.close()
    if puller.own_workers is not None:
        await puller.own_workers.close()


PLUGIN = plugin.Registration(
    type=plugin.TRANSFER,
    id="local",
    init=_init,
    close=_close,
    requires=(plugin.METADATA, plugin.CONTENT, plugin.SNAPSHOTTER, plugin.EVENT, plugin.DIFF),
)
