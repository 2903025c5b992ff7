"""The writer of the local content store, and its locks (one writer per ref, one change per digest).

A :class:`LocalWriter` is in one of two modes. Usually it owns an on-disk
:class:`~wharfd.runtime.content.ingest.Ingest`. A *shared* writer (the
expected blob is already on disk for another namespace) owns nothing: it
reports ``offset == size`` and commits by recording the blob in its
namespace; any write or truncate turns it into a real ingest first, as
containerd does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from wharfd.api.events import content_pb2 as events_pb2
from wharfd.runtime import errors
from wharfd.runtime.content import ingest as ingestmod
from wharfd.runtime.content.store import TOPIC_CREATE, Info, Status, parse_digest
from wharfd.runtime.metadata import labels as label_rules

if TYPE_CHECKING:
    from datetime import datetime

    from wharfd.runtime.content.local import Committed, LocalStore

LABELS_FIELD = "info.Labels"
# Smaller writes are gathered up to this size before going to a thread: a
# thread hop per 64 KiB chunk would cost more than the write and hash themselves.
FLUSH_AT = 1 << 20


def clean_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    """Validate labels (containerd's size limit) and drop empty values, which mean "no label"."""
    labels = dict(labels or {})
    label_rules.validate_all(labels, field=LABELS_FIELD)
    return {k: v for k, v in labels.items() if v}


@dataclass(frozen=True)
class Shared:
    """A blob already on disk that a writer will commit without receiving its bytes."""

    digest: str
    size: int


class RefLocks:
    """Which (namespace, ref) pairs have a live writer, and since when."""

    def __init__(self) -> None:
        self._held: dict[tuple[str, str], datetime] = {}

    def acquire(self, namespace: str, ref: str) -> Callable[[], None]:
        """Take the ref or raise Unavailable as containerd does; return an idempotent release."""
        key = (namespace, ref)
        since = self._held.get(key)
        if since is not None:
            held = (ingestmod.now() - since).total_seconds()
            raise errors.Unavailable(f"ref {ref} locked for {held:.3f}s (since {since.isoformat()})")
        self._held[key] = ingestmod.now()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._held.pop(key, None)

        return release

    def held(self, namespace: str, ref: str) -> bool:
        """Whether a writer holds the ref now."""
        return (namespace, ref) in self._held


class KeyedLocks:
    """One asyncio lock per key, dropped when nobody waits on it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        """Hold the lock of ``key`` for the body."""
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class LocalWriter:
    """One open ingest of a :class:`~wharfd.runtime.content.local.LocalStore`."""

    def __init__(
        self,
        store: LocalStore,
        namespace: str,
        ref: str,
        release: Callable[[], None],
        *,
        ingest: ingestmod.Ingest | None = None,
        shared: Shared | None = None,
        media_type: str = "",
    ) -> None:
        """Wrap an opened ingest (or a shared blob); ``release`` frees the ref lock."""
        assert (ingest is None) != (shared is None)
        self._store = store
        self.namespace = namespace
        self._ref = ref
        self._release = release
        self._ingest = ingest
        self._shared = shared
        self._media_type = media_type
        self._opened_at = ingestmod.now()
        self._done = False
        self._closing: asyncio.Future[None] | None = None
        self._pending = bytearray()

    @property
    def ref(self) -> str:
        """The ingest's name."""
        return self._ref

    @property
    def offset(self) -> int:
        """Bytes written so far; the full size for a shared writer."""
        if self._ingest is not None:
            return self._ingest.offset + len(self._pending)
        assert self._shared is not None
        return self._shared.size

    def status(self) -> Status:
        """The ingest's progress."""
        if self._ingest is not None:
            i = self._ingest
            return Status(self._ref, self.offset, i.total, i.expected, i.started_at, i.updated_at)
        assert self._shared is not None
        s, at = self._shared, self._opened_at
        return Status(self._ref, s.size, s.size, s.digest, at, at)

    def digest(self) -> str:
        """The digest of the bytes written so far (the shared blob's for a shared writer).

        Bytes still buffered are hashed here, on the caller's thread; :meth:`flush` first
        when that matters.
        """
        if self._ingest is not None:
            return self._ingest.digest(self._pending)
        assert self._shared is not None
        return self._shared.digest

    def _check_open(self) -> None:
        if self._done or self._closing is not None:
            raise errors.FailedPrecondition(f'ingest "{self._ref}": writer is closed')

    async def write(self, data: bytes | memoryview) -> int:
        """Append ``data``; return the byte count. Small writes are buffered up to 1 MiB."""
        self._check_open()
        if not len(data):
            return 0
        ingest = await self._own_ingest(copy=True)
        if not self._pending and len(data) >= FLUSH_AT:
            return await asyncio.to_thread(ingest.write, data)
        self._pending += data
        if len(self._pending) >= FLUSH_AT:
            await self.flush()
        return len(data)

    async def blocking_write(self) -> Callable[[bytes | bytearray | memoryview], int]:
        """The ingest's own (blocking) append, for a thread that streams a whole blob into it.

        Buffered bytes are flushed first. Until the thread is done, make no other
        write or truncate through this writer; close it only afterwards.
        """
        self._check_open()
        ingest = await self._own_ingest(copy=True)
        await self.flush()
        return ingest.write

    async def flush(self) -> None:
        """Hand buffered bytes to the ingest (its data file and digest)."""
        if self._pending and self._ingest is not None:
            # Handed over before the await: the thread finishes the write even if we are cancelled.
            pending, self._pending = self._pending, bytearray()
            await asyncio.to_thread(self._ingest.write, pending)

    async def truncate(self, size: int) -> None:
        """Start over from zero bytes."""
        self._check_open()
        if size != 0:
            raise errors.InvalidArgument(f'ingest "{self._ref}": cannot truncate to {size}, only to 0')
        self._pending = bytearray()
        if self._ingest is None:
            await self._own_ingest(copy=False)
        else:
            await asyncio.to_thread(self._ingest.truncate)

    async def _own_ingest(self, *, copy: bool) -> ingestmod.Ingest:
        if self._ingest is not None:
            return self._ingest
        assert self._shared is not None
        path = self._store.ingest_path(self.namespace, self._ref)
        blob = self._store.blob_path(self._shared.digest) if copy else None
        self._ingest = await asyncio.to_thread(_fresh_ingest, path, self.namespace, self._ref, blob)
        # Only now: while the record still names the blob, a delete keeps its file for our copy.
        self._shared = None
        await self._store.unshare(self.namespace, self._ref)
        return self._ingest

    async def commit(
        self, size: int = 0, expected: str = "", labels: Mapping[str, str] | None = None
    ) -> Info:
        """Verify size and digest (the ingest's own when not given), then make the blob visible.

        FailedPrecondition on a mismatch (the ingest is kept for a retry);
        AlreadyExists if the namespace has the blob already (the ingest is
        removed). The writer is closed afterwards either way.
        """
        self._check_open()
        self._done = True
        try:
            clean = clean_labels(labels)
            want = parse_digest(expected, field="expected") if expected else ""
            if size < 0:
                raise errors.InvalidArgument(f'ingest "{self._ref}": commit size {size} is negative')
            if self._ingest is None:
                committed = await self._commit_shared(size, want, clean)
            else:
                committed = await self._commit_data(size, want, clean)
        finally:
            await self.close()
        info = committed.info
        if not committed.created:
            raise errors.AlreadyExists(f"content {info.digest}: already exists")
        event = events_pb2.ContentCreate(digest=info.digest, size=info.size, mediaType=self._media_type)
        await self._store.emit(self.namespace, TOPIC_CREATE, event)
        return info

    async def _commit_data(self, size: int, expected: str, labels: dict[str, str]) -> Committed:
        ingest = self._ingest
        assert ingest is not None
        await self.flush()
        done = await asyncio.to_thread(ingest.finish)
        size = size or ingest.total
        if size and size != done.size:
            raise errors.FailedPrecondition(
                f'ingest "{self._ref}": unexpected commit size {done.size}, expected {size}'
            )
        expected = expected or ingest.expected
        if expected and expected != done.digest:
            raise errors.FailedPrecondition(
                f'ingest "{self._ref}": unexpected commit digest {done.digest}, expected {expected}'
            )
        # Shielded: once the rename starts, the record must follow even if the caller goes away.
        return await asyncio.shield(
            self._store.record_commit(
                self.namespace,
                self._ref,
                digest=done.digest,
                size=done.size,
                labels=labels,
                data=ingest.path / "data",
            )
        )

    async def _commit_shared(self, size: int, expected: str, labels: dict[str, str]) -> Committed:
        shared = self._shared
        assert shared is not None
        if size and size != shared.size:
            raise errors.FailedPrecondition(
                f'ingest "{self._ref}": unexpected commit size {shared.size}, expected {size}'
            )
        if expected and expected != shared.digest:
            raise errors.FailedPrecondition(
                f'ingest "{self._ref}": unexpected commit digest {shared.digest}, expected {expected}'
            )
        return await asyncio.shield(
            self._store.record_commit(
                self.namespace, self._ref, digest=shared.digest, size=shared.size, labels=labels, data=None
            )
        )

    async def close(self) -> None:
        """Release the ref, keeping the ingest for a resume. Idempotent, and completes even if cancelled."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        try:
            if self._ingest is not None:
                await self.flush()
                # Waits for a write still running in its thread, so the next writer sees all of it.
                await asyncio.to_thread(self._ingest.close)
        finally:
            self._release()


def _fresh_ingest(path: Path, namespace: str, ref: str, blob: Path | None) -> ingestmod.Ingest:
    ingestmod.remove(path)
    opened = ingestmod.Ingest.open(path, namespace, ref, 0, "")
    if blob is not None:
        opened.copy_from(blob)
    return opened
