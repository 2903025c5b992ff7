"""One pull's walk of an image: index → manifests → config and layers into the content store, then unpack.

A :class:`Session` works in one namespace under one lease (everything it
stores is attached to it). Small objects (indexes, manifests, configs) are
read whole, verified and parsed before they are stored, so each is committed
with its garbage-collection labels; one already in the store is read from
there instead of the registry. Layers stream into ingests named
``layer-<digest>``, several at a time (the puller's download semaphore); an
ingest left by an interrupted pull is resumed at its offset with a Range
request, and a connection dropped mid-blob is resumed at once, up to
:data:`RETRIES` times without progress. As soon as a layer's ingest exists
the unpacker may start extracting it (see :mod:`~wharfd.runtime.images.unpack`),
so downloads and extractions overlap.

Errors name the blob: a digest or size mismatch is DataLoss (the ingest is
thrown away, never resumed), a stall DeadlineExceeded (from the transport's
progress timeout), a dropped connection Unavailable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from wharfd.runtime import errors, namespaces
from wharfd.runtime.content.store import Expected
from wharfd.runtime.images import labels as L
from wharfd.runtime.images import mediatypes, platforms, walk
from wharfd.runtime.images.chainid import chain_ids
from wharfd.runtime.images.manifest import (
    MAX_CONFIG_SIZE,
    MAX_MANIFEST_SIZE,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    check_manifest_type,
    parse_config,
    parse_index,
    parse_manifest,
    select,
)
from wharfd.runtime.images.reference import Reference
from wharfd.runtime.images.unpack import Layer, Source, set_labels

if TYPE_CHECKING:
    from wharfd.runtime.content.writer import LocalWriter
    from wharfd.runtime.images.pull import Puller, PullOptions
    from wharfd.runtime.registry import BlobWriter, Fetcher

log = logging.getLogger("wharfd.pull")

T = TypeVar("T")
RETRIES = 3  # attempts in a row without a byte before a dropped blob download gives up
_REPORT_EVERY = 0.1
_RANGE_REFUSED = "requested range not satisfiable"


@dataclass
class PullProgress:
    """A descriptor's state during a pull; reported on each change, and every ~100 ms of bytes."""

    ref: str  # e.g. "layer-sha256:…"
    kind: str  # "index" | "manifest" | "config" | "layer"
    status: str  # "waiting" | "downloading" | "downloaded" | "unpacking" | "done" | "exists"
    offset: int
    total: int


@dataclass(frozen=True)
class Chosen:
    """A platform manifest of the image, fetched, and what became of it."""

    desc: Descriptor
    manifest: Manifest
    config: Descriptor
    platform: str
    chain_id: str | None
    size: int


class Session:
    """Fetches (and unpacks) one image for a :class:`~wharfd.runtime.images.pull.Puller`."""

    def __init__(
        self,
        puller: Puller,
        ref: Reference,
        opts: PullOptions,
        lease: str,
        report: Callable[[PullProgress], None],
        *,
        fetcher: Fetcher | None,
    ) -> None:
        """Pull ``ref`` by ``opts``; without ``fetcher`` everything must be in the store already."""
        self.p = puller
        self.ref = ref
        self.opts = opts
        self.lease = lease
        self._report = report
        self.fetcher = fetcher
        self.ns = namespaces.required()
        specs = [platforms.parse(s) for s in opts.platforms] or [platforms.host()]
        self.matchers = [platforms.only(p) for p in specs]
        self.unpacking = opts.unpack and not opts.all_platforms
        limit = opts.max_concurrent_downloads
        self.downloads = asyncio.Semaphore(limit if limit > 0 else 1 << 16)

    def progress(self, ref: str, kind: str, status: str, offset: int = 0, total: int = 0) -> None:
        """Tell the caller about a descriptor's state."""
        self._report(PullProgress(ref=ref, kind=kind, status=status, offset=offset, total=total))

    # --- the walk ------------------------------------------------------------------------------

    async def run(self, root: Descriptor) -> list[Chosen]:
        """Fetch the image ``root`` names; return its platform manifests, the preferred first."""
        check_manifest_type(root.media_type, f'manifest "{self.ref}"')
        manifests = await self.manifests(root)
        chosen = await _gather(*(self.image(desc, obj) for desc, obj in manifests))
        return list(chosen)

    async def manifests(self, desc: Descriptor, *, store: bool = True) -> list[tuple[Descriptor, Manifest]]:
        """The image manifests under ``desc`` to pull (stored with their labels unless ``store`` is False)."""
        kind = "index" if mediatypes.is_index(desc.media_type) else "manifest"
        data = await self.small(desc, kind, MAX_MANIFEST_SIZE)
        if kind == "manifest":
            parsed = parse_manifest(data, media_type=desc.media_type, what=f"manifest {desc.digest}")
            if store:
                await self.store_small(desc, data, kind, L.children_labels(parsed))
            return [(desc, parsed)]
        index = parse_index(data, media_type=desc.media_type, what=f"index {desc.digest}")
        wanted = self.select(index, desc)
        if store:
            await self.store_small(desc, data, kind, L.children_labels(index, wanted))
        nested = await _gather(*(self.manifests(child, store=store) for child in wanted))
        return [m for found in nested for m in found]

    def select(self, index: Index, desc: Descriptor) -> list[Descriptor]:
        """The index entries to fetch: all, or the best per wanted platform (preferred first)."""
        usable = [
            m
            for m in index.manifests
            if mediatypes.is_index(m.media_type) or mediatypes.is_manifest(m.media_type)
        ]
        if self.opts.all_platforms:
            # All of them, those this host runs first: the result reports the first one.
            ranked = select(Index(index.media_type, tuple(usable)), self.matchers[0], limit=None)
            return ranked + [m for m in usable if m not in ranked]
        picked: list[Descriptor] = []
        for matcher in self.matchers:
            best = select(Index(index.media_type, tuple(usable)), matcher, limit=1)
            picked += [d for d in best if d not in picked]
        if not picked:
            wanted = ", ".join(self.opts.platforms) or platforms.format_platform(platforms.host())
            raise errors.NotFound(
                f'manifest "{self.ref}": index {desc.digest} has no match for platform {wanted}'
            )
        return picked

    async def image(self, desc: Descriptor, manifest: Manifest) -> Chosen:
        """Fetch one platform manifest's config and layers, and unpack them when asked."""
        what = f"image config {manifest.config.digest}"
        data = await self.small(manifest.config, "config", MAX_CONFIG_SIZE)
        config = parse_config(data, what=what) if mediatypes.is_config(manifest.config.media_type) else None
        await self.store_small(manifest.config, data, "config", {})
        platform = desc.platform or (config.platform if config else None)
        chain: str | None = None
        if self.unpacking and config is not None:
            chain = await self.layers_unpacked(manifest, config)
            label = {L.snapshot_label(self.opts.snapshotter): chain}
            await set_labels(self.p.content, manifest.config.digest, label)
        else:
            await _gather(*(self.layer(layer) for layer in manifest.layers))
        size = manifest.config.size + sum(layer.size for layer in manifest.layers)
        shown = platforms.format_platform(platform) if platform else ""
        return Chosen(desc, manifest, manifest.config, shown, chain, size)

    async def layers_unpacked(self, manifest: Manifest, config: ImageConfig) -> str:
        """Fetch the layers not unpacked yet and unpack them as they arrive; return the chain id."""
        if len(config.diff_ids) != len(manifest.layers):
            raise errors.InvalidArgument(
                f"image config {manifest.config.digest}: {len(config.diff_ids)} diff ids for "
                f"{len(manifest.layers)} layers of the manifest"
            )
        if not manifest.layers:
            raise errors.InvalidArgument(f"image config {manifest.config.digest}: the image has no layers")
        chain = chain_ids(config.diff_ids)
        unpacker, name = self.p.unpacker, self.opts.snapshotter
        have = await unpacker.existing(chain, name)
        await unpacker.hold_existing(chain[:have], name, self.lease)
        for desc, diff_id in zip(manifest.layers[:have], config.diff_ids[:have], strict=True):
            self.progress(f"layer-{desc.digest}", "layer", "exists", desc.size, desc.size)
            with contextlib.suppress(errors.NotFound):
                await set_labels(self.p.content, desc.digest, {L.UNCOMPRESSED: diff_id})
        loop = asyncio.get_running_loop()
        pairs: list[tuple[Layer, asyncio.Future[Source]]] = []
        for i in range(have, len(chain)):
            source: asyncio.Future[Source] = loop.create_future()
            _quiet(source)
            parent = chain[i - 1] if i else ""
            pairs.append((Layer(manifest.layers[i], config.diff_ids[i], chain[i], parent, source), source))
        todo = [layer for layer, _ in pairs]
        # Largest first: the longest extraction starts first, so it does not end the pull alone.
        ordered = sorted(pairs, key=lambda pair: pair[0].desc.size, reverse=True)
        jobs: list[Awaitable[object]] = [self.layer(layer.desc, source) for layer, source in ordered]
        jobs.append(unpacker.unpack(todo, name, self.lease, self._unpack_progress))
        await _gather(*jobs)
        return chain[-1]

    def _unpack_progress(self, layer: Layer, status: str) -> None:
        self.progress(f"layer-{layer.desc.digest}", "layer", status, layer.desc.size, layer.desc.size)

    # --- small objects ----------------------------------------------------------------------

    async def small(self, desc: Descriptor, kind: str, limit: int) -> bytes:
        """The bytes of an index, manifest or config: from the store when there, else the registry."""
        try:
            data = await walk.read_blob(self.p.content, desc, limit=limit)
        except errors.NotFound:
            if self.fetcher is None:
                raise errors.NotFound(
                    f"{kind} {desc.digest} of {self.ref}: not in the content store"
                ) from None
            data = await self.fetcher.read(desc, limit=limit)
        return data

    async def store_small(self, desc: Descriptor, data: bytes, kind: str, labels: dict[str, str]) -> None:
        """Commit a small object with ``labels`` (plus its source), or add them to the stored one."""
        labels = {**labels, **await self._source_labels(desc.digest)}
        ref = f"{kind}-{desc.digest}"
        try:
            info = await self.p.content.info(desc.digest)
        except errors.NotFound:
            try:
                async with self.p.content.writer(ref, Expected(desc.digest, desc.size, desc.media_type)) as w:
                    await w.write(data)
                    await w.commit(desc.size, desc.digest, labels)
                self.progress(ref, kind, "done", desc.size, desc.size)
                return
            except errors.AlreadyExists:
                info = await self.p.content.info(desc.digest)
        await set_labels(self.p.content, desc.digest, L.merge(info.labels, labels))
        self.progress(ref, kind, "exists", desc.size, desc.size)

    async def _source_labels(self, digest: str) -> dict[str, str]:
        if self.fetcher is None:
            return {}
        try:
            current = (await self.p.content.info(digest)).labels
        except errors.NotFound:
            current = {}
        return L.distribution_source(self.ref.domain, self.ref.path, current)

    # --- layers --------------------------------------------------------------------------------

    async def layer(self, desc: Descriptor, source: asyncio.Future[Source] | None = None) -> None:
        """Make sure the blob of ``desc`` is stored; resolve ``source`` as soon as it can be read."""
        try:
            await self._layer(desc, source)
        except BaseException as exc:
            if source is not None and not source.done():
                source.set_exception(exc if isinstance(exc, Exception) else errors.Canceled("pull cancelled"))
            raise

    async def _layer(self, desc: Descriptor, source: asyncio.Future[Source] | None) -> None:
        ref = f"layer-{desc.digest}"
        blob = str(self.p.content.blob_path(desc.digest))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        if await walk.exists(self.p.content, desc.digest):
            await self._label_source(desc)
            _resolve(source, Source((blob,), done))
            self.progress(ref, "layer", "exists", desc.size, desc.size)
            return
        if self.fetcher is None:
            raise errors.NotFound(f"layer {desc.digest} of {self.ref}: not in the content store")
        self.progress(ref, "layer", "waiting", 0, desc.size)
        async with self.downloads:
            await self.download(desc, ref, source, blob)

    async def download(
        self, desc: Descriptor, ref: str, source: asyncio.Future[Source] | None, blob: str
    ) -> None:
        """Stream the blob into its ingest (resuming it) and commit it."""
        try:
            writer = await self._open_writer(ref, desc, source)
        except errors.AlreadyExists:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            _resolve(source, Source((blob,), done))
            self.progress(ref, "layer", "exists", desc.size, desc.size)
            return
        if writer is None:
            return  # another pull of this process had it in flight, and stored it
        stored: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        _quiet(stored)
        data = str(self.p.content.ingest_path(self.ns, ref) / "data")
        shared = Source((data, blob), stored)
        _resolve(source, shared)
        key = (self.ns, desc.digest)
        self.p.inflight[key] = shared
        try:
            await self._copy(desc, ref, writer)
            await self._commit(desc, ref, writer)
        except BaseException as exc:
            stored.set_exception(exc if isinstance(exc, Exception) else errors.Canceled("pull cancelled"))
            # The extractor reading the ingest may find the bytes wrong (and stop the pull) before
            # our own commit does: a complete ingest with the wrong digest is useless for a resume.
            await self._drop_if_wrong(desc, ref, writer)
            raise
        finally:
            self.p.inflight.pop(key, None)
            await writer.close()
        stored.set_result(None)

    async def _drop_if_wrong(self, desc: Descriptor, ref: str, writer: LocalWriter) -> None:
        with contextlib.suppress(Exception):
            if writer.offset != desc.size:
                return  # incomplete: kept, the next pull resumes it
            await writer.flush()
            if await asyncio.to_thread(writer.digest) == desc.digest:
                return
            await writer.close()
            with contextlib.suppress(errors.NotFound):
                await self.p.content.abort(ref)

    async def _open_writer(
        self, ref: str, desc: Descriptor, source: asyncio.Future[Source] | None
    ) -> LocalWriter | None:
        """Open (or resume) the ingest; None when another pull here downloaded it meanwhile.

        A ref held by a pull of this process is shared (its source extracts as
        it grows); one held by another client is waited for.
        """
        deadline = time.monotonic() + self.opts.progress_timeout
        delay = 0.05
        while True:
            try:
                return await self.p.content.open_writer(
                    ref, Expected(desc.digest, desc.size, desc.media_type)
                )
            except errors.Unavailable:
                theirs = self.p.inflight.get((self.ns, desc.digest))
                if theirs is not None:
                    _resolve(source, theirs)
                    await theirs.stored
                    self.progress(ref, "layer", "downloaded", desc.size, desc.size)
                    return None
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _copy(self, desc: Descriptor, ref: str, writer: LocalWriter) -> None:
        """Download into the ingest: the bytes go from a thread straight to it, the loop only reports."""
        assert self.fetcher is not None
        write = await writer.blocking_write()
        ticker = asyncio.ensure_future(self._report_download(ref, desc, writer))
        try:
            await self._download(desc, write, writer)
        finally:
            ticker.cancel()

    async def _report_download(self, ref: str, desc: Descriptor, writer: LocalWriter) -> None:
        reported = -1
        while True:
            await asyncio.sleep(_REPORT_EVERY)
            if writer.offset != reported:
                reported = writer.offset
                self.progress(ref, "layer", "downloading", reported, desc.size)

    async def _download(self, desc: Descriptor, write: BlobWriter, writer: LocalWriter) -> None:
        assert self.fetcher is not None
        idle = 0
        while writer.offset < desc.size:
            start = writer.offset
            try:
                await self.fetcher.fetch_to(desc, write, offset=start)
            except errors.Unavailable:
                idle = 0 if writer.offset > start else idle + 1
                if idle >= RETRIES:
                    raise
                log.info(
                    "pull %s: blob %s dropped at byte %d; resuming", self.ref, desc.digest, writer.offset
                )
                await asyncio.sleep(0.05 * 2**idle)
            except errors.InvalidArgument as exc:
                if start and _RANGE_REFUSED in str(exc):
                    raise errors.DataLoss(
                        f"layer {desc.digest} of {self.ref.name}: the registry has only {start} of "
                        f"{desc.size} bytes"
                    ) from exc
                raise

    async def _commit(self, desc: Descriptor, ref: str, writer: LocalWriter) -> None:
        labels = await self._source_labels(desc.digest)
        try:
            await writer.commit(desc.size, desc.digest, labels)
        except errors.AlreadyExists:
            await self._label_source(desc)
        except errors.FailedPrecondition as exc:
            # Wrong bytes: resuming this ingest would only continue them.
            await writer.close()
            with contextlib.suppress(errors.NotFound):
                await self.p.content.abort(ref)
            raise errors.DataLoss(f"layer {desc.digest} of {self.ref.name}: {exc}") from exc
        self.progress(ref, "layer", "downloaded", desc.size, desc.size)

    async def _label_source(self, desc: Descriptor) -> None:
        labels = await self._source_labels(desc.digest)
        if labels:
            with contextlib.suppress(errors.NotFound):
                await set_labels(self.p.content, desc.digest, labels)


def _resolve(future: asyncio.Future[Source] | None, source: Source) -> None:
    if future is not None and not future.done():
        future.set_result(source)


def _quiet(future: asyncio.Future[Any]) -> None:
    """Nobody may wait for this future: do not log its exception as never retrieved."""
    future.add_done_callback(lambda f: f.cancelled() or f.exception())


async def _gather(*jobs: Awaitable[T]) -> list[T]:
    """Run ``jobs`` together; the first failure cancels the others (and waits for them) and is raised."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    if not tasks:
        return []
    done: set[asyncio.Future[T]] = set()
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        pending = [t for t in tasks if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
    for task in [t for t in tasks if t in done] + tasks:  # the failure that came first wins
        if not task.cancelled() and (exc := task.exception()) is not None:
            raise exc
    return [task.result() for task in tasks]
