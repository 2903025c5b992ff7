"""Unpack: turn an image's layer blobs into a chain of committed snapshots named by chain id.

For layer ``i`` the snapshot is named ``chain_ids(diff_ids)[i]`` and its parent
is the one of layer ``i-1``; a layer whose snapshot exists is reused, so two
images with a common base share its snapshots. A layer's snapshot is
committed only after its extraction succeeded and its blob digest and diff id
(against the image config's ``rootfs.diff_ids``) checked out; a failing layer
leaves no snapshot and no staging directory behind (DataLoss or
InvalidArgument naming the layer).

Overlayfs: layers are independent upper directories, so they are extracted
**in parallel**, each by a worker process into a staging directory of its
own under ``<snapshotter root>/unpack/``, while they are still downloading
(see :mod:`~wharfd.runtime.images.extract`). They are committed in order:
once layer ``i-1`` is committed, layer ``i`` is prepared on it, the staged
tree is renamed into the snapshot's upper directory
(:meth:`~wharfd.runtime.snapshots.metadata.NamespacedSnapshotter.adopt`) and
committed. Other snapshotters (native: each snapshot is a copy of its
parent) apply layer after layer in ``full`` mode onto the prepared snapshot.

Garbage collection cannot take anything on the way: every snapshot key is
attached to the caller's lease *before* it is created or committed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import shutil
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wharfd.runtime import errors, mount
from wharfd.runtime.content.local import LocalStore
from wharfd.runtime.content.store import Info
from wharfd.runtime.images import labels as L
from wharfd.runtime.images.extract import Extracted, ExtractJob, Workers, extract
from wharfd.runtime.images.manifest import Descriptor
from wharfd.runtime.metadata.leases import LeaseStore, Resource
from wharfd.runtime.snapshots.metadata import NamespacedSnapshotter
from wharfd.runtime.snapshots.snapshotter import Kind, Mount

if TYPE_CHECKING:
    from wharfd.runtime.images.apply import Mode

log = logging.getLogger("wharfd.unpack")

STAGING = "unpack"
ABORT = "abort"


@dataclass(frozen=True)
class Source:
    """Where a layer's bytes can be read now, and when its blob is safely in the content store."""

    paths: tuple[str, ...]  # tried in order (a growing ingest first, then the blob file)
    stored: Awaitable[None]  # done once the blob is committed; raises if its download failed


@dataclass
class Layer:
    """One layer to unpack: its blob, its diff id, and its place in the chain."""

    desc: Descriptor
    diff_id: str
    chain: str
    parent: str
    source: Awaitable[Source]


Progress = Callable[[Layer, str], None]
"""Told ``(layer, status)`` with status ``unpacking``, ``done`` or ``exists``."""


@dataclass
class _Stage:
    """A layer being extracted into ``<root>/unpack/<token>/fs``."""

    layer: Layer
    workdir: Path
    task: asyncio.Task[Extracted] | None = None
    job: asyncio.Future[concurrent.futures.Future[Extracted]] | None = None  # the submission

    @property
    def fs(self) -> Path:
        return self.workdir / "fs"


class Unpacker:
    """Unpacks layers into snapshotters, extracting on a shared pool of worker processes."""

    def __init__(
        self,
        content: LocalStore,
        snapshotters: Mapping[str, NamespacedSnapshotter],
        leases: LeaseStore,
        workers: Workers,
        *,
        stall: float = 300.0,
    ) -> None:
        """Unpack blobs of ``content`` into ``snapshotters``, holding new snapshots with leases."""
        self.content = content
        self.snapshotters = dict(snapshotters)
        self.leases = leases
        self.workers = workers
        self.stall = stall
        self._cleanups: set[asyncio.Task[None]] = set()

    def snapshotter(self, name: str) -> NamespacedSnapshotter:
        """The snapshotter called ``name``; NotFound naming those there are."""
        try:
            return self.snapshotters[name]
        except KeyError:
            known = ", ".join(sorted(self.snapshotters)) or "none"
            raise errors.NotFound(f"snapshotter {name!r} not loaded (loaded: {known})") from None

    async def existing(self, chain: Sequence[str], snapshotter: str) -> int:
        """How many bottom layers are unpacked already: committed snapshots named by their chain ids."""
        sn = self.snapshotter(snapshotter)
        for i in range(len(chain), 0, -1):
            with contextlib.suppress(errors.NotFound):
                if (await sn.stat(chain[i - 1])).kind == Kind.COMMITTED:
                    return i
        return 0

    async def unpack(
        self, layers: Sequence[Layer], snapshotter: str, lease: str, progress: Progress | None = None
    ) -> None:
        """Unpack ``layers`` (bottom first, on the chain's existing part) under ``lease``."""
        sn = self.snapshotter(snapshotter)
        report = progress or (lambda layer, status: None)
        if getattr(sn.backend, "adopt", None) is not None:
            await self._parallel(sn, layers, lease, report)
        else:
            for layer in layers:
                await self._in_place(sn, layer, lease, report)

    # --- overlay: extract in parallel, commit in order ---------------------------------------

    async def _parallel(
        self, sn: NamespacedSnapshotter, layers: Sequence[Layer], lease: str, report: Progress
    ) -> None:
        base = sn.backend.root / STAGING
        await asyncio.to_thread(base.mkdir, mode=0o700, exist_ok=True)
        stages = [_Stage(layer, base / os.urandom(8).hex()) for layer in layers]
        for stage in stages:
            stage.task = asyncio.create_task(self._extract(stage, report))
        try:
            for stage in stages:
                await self._commit_stage(sn, stage, lease, report)
        finally:
            # Workers stop at once when waiting for bytes (the abort file), else after their layer.
            await _finish(asyncio.gather(*(self._discard(stage) for stage in stages)))

    async def _extract(self, stage: _Stage, report: Progress) -> Extracted:
        layer = stage.layer
        source = await layer.source
        report(layer, "unpacking")
        job = self._job(layer, source, str(stage.fs), stage.workdir / ABORT)
        # Not cancellable: once submitted, the job must be known to whoever cleans up.
        stage.job = asyncio.ensure_future(self.workers.submit(extract, job))
        running = await asyncio.shield(stage.job)
        return await _both(asyncio.wrap_future(running), source.stored)

    async def _commit_stage(
        self, sn: NamespacedSnapshotter, stage: _Stage, lease: str, report: Progress
    ) -> None:
        assert stage.task is not None
        layer = stage.layer
        extracted = await stage.task
        key = await self._hold(sn, layer, lease)
        try:
            await sn.prepare(key, layer.parent, {L.SNAPSHOT_REF: layer.chain})
        except errors.AlreadyExists:
            report(layer, "exists")  # unpacked meanwhile by another pull
            return
        try:
            await sn.adopt(key, stage.fs, keep_root=extracted.root_unset)
            await sn.commit(layer.chain, key, {L.SNAPSHOT_REF: layer.chain}, usage=extracted.usage)
        except BaseException as exc:
            await _remove_quietly(sn, key)
            if not isinstance(exc, errors.AlreadyExists):
                raise
            report(layer, "exists")
            return
        await self._label(layer)
        report(layer, "done")

    def _discard(self, stage: _Stage) -> asyncio.Task[None]:
        """Stop the stage's worker and remove its directory (an adopted tree has left it already).

        A task of its own, which :meth:`close` waits for if the caller did not.
        """

        async def discard() -> None:
            if stage.task is not None and not stage.task.done():
                stage.task.cancel()
            await _settle(stage.job, stage.workdir / ABORT)
            await asyncio.to_thread(shutil.rmtree, stage.workdir, ignore_errors=True)

        task = asyncio.get_running_loop().create_task(discard())
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)
        return task

    # --- other snapshotters: apply in place, one layer after another ---------------------------

    async def _in_place(self, sn: NamespacedSnapshotter, layer: Layer, lease: str, report: Progress) -> None:
        key = await self._hold(sn, layer, lease)
        try:
            mounts = await sn.prepare(key, layer.parent, {L.SNAPSHOT_REF: layer.chain})
        except errors.AlreadyExists:
            report(layer, "exists")
            return
        try:
            source = await layer.source
            report(layer, "unpacking")
            root = sn.backend.root
            async with contextlib.AsyncExitStack() as stack:
                target = _bind_source(mounts)
                if target is None:
                    target = await stack.enter_async_context(mount.temporary(mounts, root))
                await self._apply_in_place(layer, source, target, root / f"{key}.abort")
            await sn.commit(layer.chain, key, {L.SNAPSHOT_REF: layer.chain})
        except BaseException as exc:
            await _remove_quietly(sn, key)
            if not isinstance(exc, errors.AlreadyExists):
                raise
            report(layer, "exists")
            return
        await self._label(layer)
        report(layer, "done")

    async def _apply_in_place(self, layer: Layer, source: Source, target: str, abort: Path) -> None:
        job = self._job(layer, source, target, abort, mode="full", fresh=False)
        submitted = asyncio.ensure_future(self.workers.submit(extract, job))
        try:
            running = await asyncio.shield(submitted)
            await _both(asyncio.wrap_future(running), source.stored)
        except BaseException:
            # The snapshot is removed next: the worker must be gone from it first.
            await _finish(asyncio.ensure_future(_settle(submitted, abort)))
            raise
        finally:
            await asyncio.to_thread(abort.unlink, missing_ok=True)

    # --- shared ------------------------------------------------------------------------------

    def _job(
        self,
        layer: Layer,
        source: Source,
        target: str,
        abort: Path,
        *,
        mode: Mode = "overlay",
        fresh: bool = True,
    ) -> ExtractJob:
        return ExtractJob(
            sources=source.paths,
            size=layer.desc.size,
            digest=layer.desc.digest,
            media_type=layer.desc.media_type,
            diff_id=layer.diff_id,
            target=target,
            mode=mode,
            fresh=fresh,
            # Decoding on a second thread: a layer finishing last (the largest, often) then has
            # the core the others left; while all workers are busy it costs little.
            threaded=True,
            abort=str(abort),
            stall=self.stall,
        )

    async def _hold(self, sn: NamespacedSnapshotter, layer: Layer, lease: str) -> str:
        """Attach the active key and the chain id to the lease before either exists."""
        key = f"extract-{os.urandom(6).hex()}-{layer.chain}"
        kind = f"snapshots/{sn.name}"
        await self.leases.add_resource(lease, Resource(key, kind))
        await self.leases.add_resource(lease, Resource(layer.chain, kind))
        return key

    async def _label(self, layer: Layer) -> None:
        with contextlib.suppress(errors.NotFound):  # a blob discarded after unpacking: nothing to label
            await set_labels(self.content, layer.desc.digest, {L.UNCOMPRESSED: layer.diff_id})

    async def hold_existing(self, chain: Sequence[str], snapshotter: str, lease: str) -> None:
        """Attach the reused part of a chain to the lease (it is referenced only once labelled)."""
        kind = f"snapshots/{self.snapshotter(snapshotter).name}"
        for name in chain:
            await self.leases.add_resource(lease, Resource(name, kind))

    async def clean_staging(self) -> None:
        """Remove staging directories a previous run of the daemon left (it died mid-unpack)."""
        for sn in self.snapshotters.values():
            base = sn.backend.root / STAGING
            if await asyncio.to_thread(base.is_dir):
                await asyncio.to_thread(shutil.rmtree, base, ignore_errors=True)

    async def close(self) -> None:
        """Wait for background cleanups of failed unpacks."""
        if self._cleanups:
            await asyncio.gather(*self._cleanups, return_exceptions=True)


async def _both(extraction: asyncio.Future[Extracted], stored: Awaitable[None]) -> Extracted:
    """The extraction's result once the blob is stored too; the first failure of either wins."""
    blob = asyncio.ensure_future(stored)
    # Whichever fails first is raised; the other's outcome may go unread.
    extraction.add_done_callback(_retrieve)
    both: set[asyncio.Future[Any]] = {extraction, blob}
    await asyncio.wait(both, return_when=asyncio.FIRST_EXCEPTION)
    if extraction.done():
        result = extraction.result()  # its failure first, if it failed
        await blob
        return result
    if blob.exception() is not None:
        extraction.cancel()  # the worker itself is told to stop by the caller's abort file
    await blob
    return await extraction


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


async def _settle(
    submitted: asyncio.Future[concurrent.futures.Future[Extracted]] | None, abort: Path
) -> None:
    """Tell a worker to stop waiting for bytes, and wait until it has let go of its files."""
    await asyncio.to_thread(_touch, abort)
    if submitted is not None:
        with contextlib.suppress(BaseException):
            await asyncio.wrap_future(await submitted)


async def set_labels(content: LocalStore, digest: str, labels: Mapping[str, str]) -> None:
    """Set (only) ``labels`` on blob ``digest``."""
    if not labels:
        return  # an update without field paths would replace every label
    now = datetime.now(UTC)
    await content.update(Info(digest, 0, now, now, dict(labels)), [f"labels.{k}" for k in labels])


async def _remove_quietly(sn: NamespacedSnapshotter, key: str) -> None:
    try:
        await sn.remove(key)
    except errors.WharfError as exc:
        log.warning("unpack: removing %s from %s failed: %s", key, sn.name, exc)


def _touch(path: Path) -> None:
    # The worker makes the directory; made here first, it still finds the file there.
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.touch()


async def _finish(cleanup: asyncio.Future[Any]) -> None:
    """Wait for ``cleanup`` even through cancellation (then re-raised): its files must be gone first."""
    cancelled = False
    while not cleanup.done():
        try:
            await asyncio.shield(cleanup)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    await cleanup


def _bind_source(mounts: Sequence[Mount]) -> str | None:
    """The directory a writable plain bind (the native snapshotter's) shows: no need to mount it."""
    if len(mounts) == 1 and mounts[0].type == "bind" and "ro" not in mounts[0].options:
        return mounts[0].source
    return None
