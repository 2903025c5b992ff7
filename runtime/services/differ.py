"""The walking differ (``io.containerd.differ.v1.walking``) behind ``containerd.services.diff.v1.Diff``.

**Apply** puts a layer blob from the content store onto mounts: what a
client-side unpack (``ctr run`` without the transfer service) does after
preparing a snapshot. When the mounts are one overlay with an ``upperdir``
the layer is extracted straight into that upper directory in overlay mode
(OCI whiteouts become overlay ones), as containerd's applier does; any other
mounts are mounted on a temporary directory and the layer is applied onto
that view in ``full`` mode (whiteouts delete). The answer describes the
uncompressed layer (``application/vnd.oci.image.layer.v1.tar``, digest =
diff id). ``payloads`` are for stream processors, which this daemon has
none of; they are ignored.

**Diff** computes the layer that turns the ``left`` mounts into the
``right`` ones and writes it into the content store through an ingest
(``ref``, or ``diff-<random>``), labelled ``containerd.io/uncompressed`` and
with the request's labels. When ``right`` is an overlay whose lower layers
are exactly what ``left`` shows, only its upper directory is walked;
otherwise both sides are mounted read-only (an overlay's upper directory
turned into its top lower layer, so a container using it is not disturbed)
and compared entry by entry. ``media_type`` picks the compression: plain
tar, ``+gzip`` (the default) or ``+zstd``. ``source_date_epoch``, when set,
bounds the times in the tar: any later one is written as the epoch (whole
seconds; a fraction of a second in the request is dropped), for reproducible
layers.

The tar work runs on the worker processes of
:class:`~wharfd.runtime.images.extract.Workers`; the pull pipeline shares
this differ's pool. Mounts are always undone, whatever happens.

The pull pipeline uses this differ from start-up on; the gRPC service over it
(:mod:`wharfd.runtime.services.diff`) loads on its first call.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from wharfd.runtime import cpu, errors, mount, plugin
from wharfd.runtime.content.local import LocalStore
from wharfd.runtime.content.store import Expected, parse_digest
from wharfd.runtime.images import labels as L
from wharfd.runtime.images import mediatypes
from wharfd.runtime.images.extract import ExtractJob, Workers, diff_to_file, extract
from wharfd.runtime.images.layer import Compression
from wharfd.runtime.images.unpack import set_labels
from wharfd.runtime.metadata.images import Descriptor
from wharfd.runtime.snapshots.snapshotter import Mount

if TYPE_CHECKING:
    from wharfd.runtime.images.diff import Diff

_COPY = 1 << 20
_COMPRESSION = {
    mediatypes.OCI_LAYER: Compression.NONE,
    mediatypes.OCI_LAYER_GZIP: Compression.GZIP,
    mediatypes.OCI_LAYER_ZSTD: Compression.ZSTD,
    mediatypes.DOCKER_LAYER: Compression.NONE,
    mediatypes.DOCKER_LAYER_GZIP: Compression.GZIP,
    mediatypes.DOCKER_LAYER_ZSTD: Compression.ZSTD,
}


def _lowers(m: Mount) -> list[str]:
    value = mount.option(m, "lowerdir")
    return value.split(":") if value else []


def _upper_of(mounts: Sequence[Mount]) -> str | None:
    """The upper directory when ``mounts`` are one writable overlay."""
    if len(mounts) == 1 and mounts[0].type == "overlay":
        return mount.option(mounts[0], "upperdir")
    return None


def _layers_shown(mounts: Sequence[Mount]) -> list[str] | None:
    """The layer directories a read-only view shows (top first), when that is plain to see."""
    if len(mounts) != 1:
        return None
    m = mounts[0]
    if m.type == "bind":
        return [m.source]
    if m.type == "overlay" and mount.option(m, "upperdir") is None:
        return _lowers(m)
    return None


class WalkingDiffer:
    """Applies layers onto mounts and computes layers between mounts (``io.containerd.differ.v1.walking``)."""

    def __init__(self, content: LocalStore, workers: Workers, scratch: Path) -> None:
        """Read and write blobs of ``content``; mount and write temporary files under ``scratch``."""
        self.content = content
        self.workers = workers
        self.scratch = scratch

    async def apply(self, desc: Descriptor, mounts: Sequence[Mount], *, sync_fs: bool = False) -> Descriptor:
        """Apply layer blob ``desc`` onto ``mounts``; return the uncompressed layer's descriptor."""
        parse_digest(desc.digest, field="diff.digest")
        if not mounts:
            raise errors.InvalidArgument("mounts: at least one mount is needed to apply a layer onto")
        info = await self.content.info(desc.digest)
        if desc.size and desc.size != info.size:
            raise errors.InvalidArgument(
                f"diff {desc.digest}: size {desc.size}, but the stored blob has {info.size}"
            )
        blob = str(await self.content.open_blob(desc.digest))
        upper = _upper_of(mounts)
        async with contextlib.AsyncExitStack() as stack:
            target = upper if upper is not None else await self._mount(stack, mounts)
            job = ExtractJob(
                sources=(blob,),
                size=info.size,
                digest=desc.digest,
                media_type=desc.media_type,
                diff_id="",
                target=target,
                mode="overlay" if upper else "full",
                fresh=False,
            )
            applied = (await self.workers.run(extract, job)).applied
            if sync_fs:
                await asyncio.to_thread(_syncfs, target)
        return Descriptor(mediatypes.OCI_LAYER, applied.diff_id, applied.uncompressed_size)

    async def compare(
        self,
        lower: Sequence[Mount],
        upper: Sequence[Mount],
        *,
        media_type: str = "",
        ref: str = "",
        labels: Mapping[str, str] | None = None,
        source_date_epoch: int | None = None,
    ) -> Descriptor:
        """Write the layer from ``lower`` to ``upper`` into the content store; return its descriptor.

        ``source_date_epoch`` (seconds since 1970): no time in the layer is later.
        """
        media_type = media_type or mediatypes.OCI_LAYER_GZIP
        compression = _COMPRESSION.get(media_type)
        if compression is None:
            known = ", ".join(sorted(_COMPRESSION))
            raise errors.NotImplemented(
                f'media_type "{media_type}": cannot make such a diff (known: {known})'
            )
        if not upper:
            raise errors.InvalidArgument("right: the upper mounts must not be empty")
        await asyncio.to_thread(self.scratch.mkdir, parents=True, exist_ok=True)
        out = self.scratch / f"diff-{os.urandom(8).hex()}.tmp"
        try:
            made = await self._diff(lower, upper, str(out), compression, source_date_epoch)
            desc = Descriptor(media_type, made.digest, made.size)
            stored = {**(labels or {}), L.UNCOMPRESSED: made.diff_id}
            await self._store(out, ref or f"diff-{os.urandom(8).hex()}", desc, stored)
        finally:
            await asyncio.to_thread(out.unlink, missing_ok=True)
        return desc

    async def _diff(
        self,
        lower: Sequence[Mount],
        upper: Sequence[Mount],
        out: str,
        compression: Compression,
        epoch: int | None,
    ) -> Diff:
        upper_dir = _upper_of(upper)
        async with contextlib.AsyncExitStack() as stack:
            low = await self._mount(stack, [mount.readonly(m) for m in lower]) if lower else None
            if upper_dir is not None and _layers_shown(lower) == _lowers(upper[0]):
                return await self.workers.run(
                    diff_to_file, low, upper_dir, out, True, compression.value, epoch
                )
            high = await self._mount(stack, [mount.readonly(m) for m in upper])
            return await self.workers.run(diff_to_file, low, high, out, False, compression.value, epoch)

    async def _store(self, path: Path, ref: str, desc: Descriptor, labels: dict[str, str]) -> None:
        """Copy the diff file into the content store through ingest ``ref``."""
        try:
            async with self.content.writer(ref, Expected(desc.digest, desc.size, desc.media_type)) as writer:
                if writer.offset:
                    await writer.truncate(0)
                with open(path, "rb") as f:  # noqa: ASYNC230  # reads go to a thread below
                    while chunk := await asyncio.to_thread(f.read, _COPY):
                        await writer.write(chunk)
                await writer.commit(desc.size, desc.digest, labels)
        except errors.AlreadyExists:
            await set_labels(self.content, desc.digest, labels)

    async def _mount(self, stack: contextlib.AsyncExitStack, mounts: Sequence[Mount]) -> str:
        """Mount ``mounts`` under the scratch directory until ``stack`` closes; return where."""
        try:
            return await stack.enter_async_context(mount.temporary(mounts, self.scratch))
        except OSError as exc:
            # They are the request's mounts: one the kernel refuses is the caller's to fix.
            raise errors.InvalidArgument(
                f"mounts: cannot mount {list(mounts)}: {exc.strerror or exc}"
            ) from exc

    async def close(self) -> None:
        """Stop the worker processes."""
        await self.workers.close()


def _syncfs(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if ctypes.CDLL(None, use_errno=True).syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def _clean_scratch(scratch: Path) -> None:
    # Mount points and diff files of a previous run of the daemon, if it died mid-call.
    if scratch.is_dir():
        mount.unmount_all(scratch, mount.MNT_DETACH)
        shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True, exist_ok=True, mode=0o700)


async def _init_differ(ctx: plugin.InitContext) -> WalkingDiffer:
    scratch = ctx.root / "tmp"
    await asyncio.to_thread(_clean_scratch, scratch)
    # wharfd's own keys: how many layer workers (0: extract.default_size()), and their cgroup's
    # weight beside the daemon (runtime/cpu.py).
    size = int(ctx.plugin_config.get("unpack_workers", 0))
    shares = int(ctx.plugin_config.get("worker_cpu_shares", cpu.WORKER_SHARES))
    group = await asyncio.to_thread(cpu.BulkGroup.make, shares) if shares > 0 else None
    return WalkingDiffer(ctx.get(plugin.CONTENT, "content"), Workers(size, group), scratch)


async def _close_differ(differ: WalkingDiffer) -> None:
    await differ.close()
    if differ.workers.group is not None:
        await asyncio.to_thread(differ.workers.group.remove)


PLUGIN = plugin.Registration(
    type=plugin.DIFF, id="walking", init=_init_differ, close=_close_differ, requires=(plugin.CONTENT,)
)
