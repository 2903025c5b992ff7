"""Layer work in worker processes: extracting a blob onto a directory, writing a diff to a file.

Extraction is tarfile work, CPU-bound in Python: threads would take turns on
the GIL, so it runs in a long-lived pool of processes (:class:`Workers`). The
pool is made of ``forkserver`` children (never forks of the daemon, whose
gRPC threads a fork would copy in an unknown state), started on first use
and shut down by the plugin that owns it. This module is what the workers
import, so it stays light: no gRPC, no database.

The source of an extraction may still be downloading: :class:`Growing`
reads a blob file another writer is appending to, waiting for bytes until
the blob's size is reached. That lets a layer unpack while it downloads.
The extraction checks the blob's digest and size itself at the end, so a
source that changed underneath cannot go unnoticed. To stop a worker that
waits for bytes which will never come, the parent creates the job's
``abort`` file; a worker also gives up after ``stall`` seconds without a byte.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import select
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar, cast

from wharfd.runtime import cpu, errors
from wharfd.runtime.images.layer import Compression, LayerReader
from wharfd.runtime.snapshots.layout import disk_usage
from wharfd.runtime.snapshots.snapshotter import Usage

if TYPE_CHECKING:
    from wharfd.runtime.images.apply import Applied, Mode
    from wharfd.runtime.images.diff import Diff

# What the workers run, imported by them (the fork server preloads them) rather than by the
# daemon, which only submits jobs; multiprocessing too waits for the first pool.
_WORKER_MODULES = ("wharfd.runtime.images.apply", "wharfd.runtime.images.diff", "isal.isal_zlib", "zstandard")

T = TypeVar("T")

# A fresh staging root gets this mode: sticky and almost no permissions, which
# no image root has. If the layer carries an entry for its root, apply sets the
# real mode; if the mode is still this one afterwards, the layer left the root
# undescribed, and the snapshot keeps the owner and mode its parent's root has.
UNSET_ROOT_MODE = 0o1001
_POLL_MIN = 0.0005
_POLL_MAX = 0.02


@dataclass(frozen=True)
class ExtractJob:
    """One layer to extract: where from, where to, and what it must hash to."""

    sources: tuple[str, ...]  # paths tried in order: the ingest's data file, then the blob file
    size: int
    digest: str
    media_type: str
    diff_id: str
    target: str
    mode: Mode = "overlay"
    fresh: bool = True  # create ``target`` (staging) rather than apply onto an existing tree
    threaded: bool = True
    abort: str = ""
    stall: float = 600.0


@dataclass(frozen=True)
class Extracted:
    """What an extraction produced, whether the layer left its root undescribed, its disk use."""

    applied: Applied
    root_unset: bool
    usage: Usage | None = None  # of a fresh target (a staged layer); None when applied onto a tree


class Growing:
    """A blob file that may still be growing; reads wait for bytes up to ``size``."""

    def __init__(self, fd: int, size: int, abort: str, stall: float, what: str) -> None:
        self._fd = fd
        self._pos = 0
        self._size = size
        self._abort = abort
        self._stall = stall
        self._what = what
        self._cancelled = False

    def read(self, n: int = -1, /) -> bytes:
        """Up to ``n`` bytes; blocks until at least one is there (or the blob's end)."""
        left = self._size - self._pos
        if left <= 0:
            return b""
        want = left if n < 0 else min(n, left)
        delay, since = _POLL_MIN, time.monotonic()
        while True:
            data = os.pread(self._fd, want, self._pos)
            if data:
                self._pos += len(data)
                return data
            self._starved(since)
            time.sleep(delay)
            delay = min(delay * 2, _POLL_MAX)

    def _starved(self, since: float) -> None:
        if self._cancelled or (self._abort and os.path.exists(self._abort)):
            raise errors.Canceled(f"{self._what}: extraction stopped at byte {self._pos} of {self._size}")
        if time.monotonic() - since > self._stall:
            raise errors.DeadlineExceeded(
                f"{self._what}: no new bytes for {self._stall:g}s at byte {self._pos} of {self._size}"
            )

    def cancel(self) -> None:
        """Make a read waiting for bytes give up (called when the extraction failed)."""
        self._cancelled = True


def _open_first(paths: tuple[str, ...], what: str) -> int:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    # The ingest was committed (renamed to the blob) or aborted between the checks.
    raise errors.NotFound(f"{what}: none of {list(paths)} exists")


def extract(job: ExtractJob) -> Extracted:
    """Apply one layer blob onto ``job.target`` and verify it (runs in a worker process).

    Every error names the layer (its blob digest).
    """
    what = f"layer {job.digest}"
    try:
        return _extract(job, what)
    except errors.WharfError as exc:
        if job.digest in str(exc):
            raise
        raise type(exc)(f"{what}: {exc}") from exc


def _extract(job: ExtractJob, what: str) -> Extracted:
    from wharfd.runtime.images.apply import Applied, apply_tar

    if job.fresh:
        os.makedirs(os.path.dirname(job.target), mode=0o700, exist_ok=True)
        os.mkdir(job.target, 0o700)
        os.chmod(job.target, UNSET_ROOT_MODE)
    fd = _open_first(job.sources, what)
    try:
        src = Growing(fd, job.size, job.abort, job.stall, what)
        with LayerReader(cast(BinaryIO, src), job.media_type, threaded=job.threaded) as reader:
            try:
                entries = apply_tar(reader, job.target, job.mode)
                reader.drain()
            except BaseException:
                src.cancel()  # a decode thread waiting for bytes must not hold the exit up
                raise
    finally:
        os.close(fd)
    if reader.digest != job.digest or reader.compressed_size != job.size:
        raise errors.DataLoss(
            f"{what}: read {reader.compressed_size} bytes with digest {reader.digest}, want {job.size} bytes"
        )
    if job.diff_id and reader.diff_id != job.diff_id:
        raise errors.DataLoss(f"{what}: diff id is {reader.diff_id}, the image config says {job.diff_id}")
    unset = job.fresh and stat.S_IMODE(os.stat(job.target).st_mode) == UNSET_ROOT_MODE
    applied = Applied(
        digest=reader.digest,
        diff_id=reader.diff_id,
        size=reader.compressed_size,
        uncompressed_size=reader.size,
        entries=entries,
        compression=reader.compression.value,
    )
    # Measured here, off the daemon: the walk is Python work that would hold the daemon's GIL.
    return Extracted(applied, unset, disk_usage(Path(job.target)) if job.fresh else None)


def diff_to_file(  # noqa: PLR0917  # the pool passes arguments by position
    lower: str | None,
    upper: str,
    out: str,
    overlay: bool,
    compression: str,
    source_date_epoch: int | None = None,
) -> Diff:
    """Write the layer from ``lower`` to ``upper`` into file ``out`` (runs in a worker process)."""
    from wharfd.runtime.images.diff import write_diff

    # No fsync: the file is copied into the content store, whose commit makes the blob durable.
    with open(out, "wb") as f:
        return write_diff(
            lower,
            upper,
            f,
            overlay=overlay,
            compression=Compression(compression),
            source_date_epoch=source_date_epoch,
        )


# Worker processes yield the CPU to the daemon: with every core extracting, the
# event loop (serving the CRI) must still get its turn within milliseconds. Nice
# weighs tasks within one cgroup, so on a node this ranks the workers below the
# daemon's own threads and leaves their share against pods to the cgroup weights.
WORKER_NICE = 10


def _start_worker(owner: int) -> None:
    """Worker start-up: lower priority, and end when the daemon that owns the pool dies.

    The workers' cpu cgroup (:class:`~wharfd.runtime.cpu.BulkGroup`, where
    there is one) is what ranks them below the daemon's threads. Without one, a
    session of its own: where the kernel groups tasks for fair scheduling by
    session (autogroup, the root cgroup's tasks), the worker's CPU time is then
    not charged to the daemon's group, whose event loop would otherwise wait
    for its group's turn while layers extract. The long slice
    (:mod:`wharfd.runtime.cpu`) lets any waking task preempt it.

    Pool workers hold both ends of their queues, so a SIGKILLed daemon would
    leave them (and the fork server they keep alive) waiting forever; a thread
    watches the owner's pidfd and exits the worker when it goes.
    """
    with contextlib.suppress(PermissionError):  # already a session leader
        os.setsid()
    os.nice(WORKER_NICE)
    cpu.set_slice(cpu.BULK_SLICE_NS)  # the decode thread it starts inherits it

    def watch() -> None:
        try:
            fd = os.pidfd_open(owner)
        except OSError:  # already gone
            os._exit(1)
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.poll()
        os._exit(1)

    threading.Thread(target=watch, name="owner-watch", daemon=True).start()


def default_size() -> int:
    """Workers by default: one per CPU but one, and at least one.

    A pull with a worker on every core leaves none free for the calls it
    should not slow down (kubelet's, and its own event loop's): on a 2-core
    node a second worker raised the p99 of ListImages during a pull from about
    5 to 15 to 20 ms and its max to 45 ms, for 15% more unpack throughput
    (docs/benchmarks.md). Layers beyond the workers wait their turn, as all of
    them do in containerd, which unpacks one at a time.
    """
    return max(1, (os.cpu_count() or 1) - 1)


class Workers:
    """A lazily started pool of worker processes (:func:`default_size` of them unless told)."""

    def __init__(self, size: int | None = None, group: cpu.BulkGroup | None = None) -> None:
        """Run at most ``size`` jobs at once (default: :func:`default_size`), in ``group`` if given."""
        self.size = size or default_size()
        self.group = group
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._lock = threading.Lock()  # the pool is made from threads (never on the loop)
        self._warming: asyncio.Future[None] | None = None

    def _get(self) -> concurrent.futures.ProcessPoolExecutor:
        with self._lock:
            return self._make()

    def _make(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            import multiprocessing.forkserver

            ctx = multiprocessing.get_context("forkserver")
            # Workers fork from a server that has imported the main module (which each child
            # would import again otherwise), this one and the workers' own: quick to start,
            # pages shared.
            ctx.set_forkserver_preload(["__main__", __name__, *_WORKER_MODULES])
            if self.group is not None:
                # The fork server starts in this thread's cgroup, and the workers in the server's.
                with self.group.entered():
                    multiprocessing.forkserver.ensure_running()
            self._pool = concurrent.futures.ProcessPoolExecutor(
                self.size, mp_context=ctx, initializer=_start_worker, initargs=(os.getpid(),)
            )
        return self._pool

    def _submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        from concurrent.futures.process import BrokenProcessPool

        try:
            return self._get().submit(fn, *args)
        except BrokenProcessPool as exc:
            self._pool = None  # a worker died (killed, OOM): start a new pool next time
            raise errors.Unavailable(f"layer worker pool broke: {exc}") from exc

    async def submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        """Queue ``fn(*args)`` on the pool (a picklable module-level function).

        From a thread: submitting may start a worker process (the first one
        starts the fork server too), which must not hold up the event loop.
        """
        return await asyncio.to_thread(self._submit, fn, *args)

    def warm(self) -> None:
        """Start the pool and all its workers in the background, if they are not running.

        The first start costs the fork server's interpreter and imports (a
        second or so): a pull calls this first thing, so that by the time its
        first layer arrives the workers are ready.
        """
        if self._pool is None and (self._warming is None or self._warming.done()):
            self._warming = asyncio.ensure_future(asyncio.to_thread(self._start_all))

    def _start_all(self) -> None:
        pool = self._get()
        for future in [pool.submit(os.getpid) for _ in range(self.size)]:
            with contextlib.suppress(Exception):
                future.result()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the pool and wait for it (cancelling stops waiting, not the work)."""
        from concurrent.futures.process import BrokenProcessPool

        future = await self.submit(fn, *args)
        try:
            return await asyncio.wrap_future(future)
        except BrokenProcessPool as exc:
            self._pool = None
            raise errors.Unavailable(f"layer worker pool broke: {exc}") from exc

    async def close(self) -> None:
        """Stop the workers, waiting for jobs already running."""
        if self._warming is not None:
            with contextlib.suppress(Exception):
                await self._warming
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, True, cancel_futures=True)
