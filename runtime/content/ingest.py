"""The on-disk half of an ingest: a directory that survives restarts. Blocking; run it in threads.

Layout, one directory per (namespace, ref)::

    <root>/ingest/<sha256("<namespace>/<ref>")>/
    ├── data        the bytes received so far; its size is the ingest's offset
    ├── ref         the client's ref, checked on resume (a mismatch means a stale directory)
    ├── namespace   the namespace that owns the ingest
    ├── startedat   RFC 3339 time the ingest began
    ├── updatedat   RFC 3339 time of the last close (data's mtime may be newer)
    ├── total       expected size, when known
    └── expected    expected digest, when known

The running sha256 cannot be saved, so a resume re-reads ``data`` to rebuild
it. Namespaces cannot contain ``/``, so the hashed key is unambiguous.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from wharfd.runtime import errors
from wharfd.runtime.content.store import Status

log = logging.getLogger("wharfd.content")

CHUNK = 1 << 20


def now() -> datetime:
    """The current time, UTC."""
    return datetime.now(UTC)


def directory(root: Path, namespace: str, ref: str) -> Path:
    """Where the ingest of (``namespace``, ``ref``) lives under the store's ``root``."""
    key = hashlib.sha256(f"{namespace}/{ref}".encode()).hexdigest()
    return root / "ingest" / key


def _write_text(path: Path, text: str) -> None:
    # Through a rename, so a crash leaves the old or the new content, never half.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _read_time(path: Path) -> datetime | None:
    text = _read_text(path)
    try:
        return datetime.fromisoformat(text.strip()) if text else None
    except ValueError:
        return None


def _read_int(path: Path) -> int:
    text = _read_text(path)
    try:
        return int(text) if text else 0
    except ValueError:
        return 0


def read_status(path: Path, ref: str) -> Status | None:
    """The status of the ingest in ``path``, or None if it has no data file."""
    try:
        st = os.stat(path / "data")
    except FileNotFoundError:
        return None
    started = _read_time(path / "startedat") or datetime.fromtimestamp(st.st_ctime, UTC)
    updated = _read_time(path / "updatedat") or started
    # updatedat is written on close only; the data's mtime is fresher during a write.
    updated = max(updated, datetime.fromtimestamp(st.st_mtime, UTC))
    return Status(
        ref=ref,
        offset=st.st_size,
        total=_read_int(path / "total"),
        expected=(_read_text(path / "expected") or "").strip(),
        started_at=started,
        updated_at=updated,
    )


def remove(path: Path) -> bool:
    """Delete an ingest directory; rename first so no reader sees it half removed. False if absent."""
    tmp = path.with_name(f"{path.name}.{os.urandom(16).hex()}.tmp")
    try:
        os.rename(path, tmp)
    except FileNotFoundError:
        return False
    shutil.rmtree(tmp, ignore_errors=True)
    return True


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Finished:
    """The verified facts about an ingest's data once it is complete."""

    size: int
    digest: str


class Ingest:
    """An open ingest directory: appends bytes and keeps the running digest.

    Every method blocks and is meant for a worker thread; an internal lock
    serializes them, so a write still running when its caller was cancelled
    finishes before ``close`` runs.
    """

    def __init__(self, path: Path, ref: str, fd: int, offset: int, hasher: hashlib._Hash) -> None:
        """Take over an open data file; use :meth:`open`."""
        self.path = path
        self.ref = ref
        self._fd: int | None = fd
        self._offset = offset
        self._hasher = hasher
        self._lock = threading.Lock()
        self.started_at = _read_time(path / "startedat") or now()
        self.updated_at = _read_time(path / "updatedat") or self.started_at
        self.total = _read_int(path / "total")
        self.expected = (_read_text(path / "expected") or "").strip()

    @classmethod
    def open(cls, path: Path, namespace: str, ref: str, total: int, expected: str) -> Ingest:
        """Resume the ingest in ``path`` if it is valid for ``ref`` and ``total``, else start it afresh."""
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir()
        except FileExistsError:
            resumed = cls._resume(path, ref, total, expected)
            if resumed is not None:
                return resumed
        started = now().isoformat()
        for name, text in (
            ("ref", ref),
            ("namespace", namespace),
            ("startedat", started),
            ("updatedat", started),
        ):
            _write_text(path / name, text)
        cls._set_expectations(path, total, expected, fresh=True)
        fd = os.open(path / "data", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        return cls(path, ref, fd, 0, hashlib.sha256())

    @classmethod
    def _resume(cls, path: Path, ref: str, total: int, expected: str) -> Ingest | None:
        stored = _read_text(path / "ref")
        if stored != ref:
            log.info("ingest %s: ref file says %r, not %r; starting over", path, stored, ref)
            return None
        stored_total = _read_int(path / "total")
        if total > 0 and stored_total > 0 and total != stored_total:
            log.info(
                "ingest %r: total %d differs from the stored %d; starting over", ref, total, stored_total
            )
            return None
        try:
            fd = os.open(path / "data", os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        hasher = hashlib.sha256()
        offset = 0
        while chunk := os.pread(fd, CHUNK, offset):
            hasher.update(chunk)
            offset += len(chunk)
        cls._set_expectations(path, total, expected, fresh=False)
        return cls(path, ref, fd, offset, hasher)

    @staticmethod
    def _set_expectations(path: Path, total: int, expected: str, *, fresh: bool) -> None:
        if total > 0:
            _write_text(path / "total", str(total))
        elif fresh:
            (path / "total").unlink(missing_ok=True)
        if expected:
            _write_text(path / "expected", expected)
        elif fresh:
            (path / "expected").unlink(missing_ok=True)

    @property
    def offset(self) -> int:
        """Bytes written so far."""
        return self._offset

    def digest(self, pending: bytes | bytearray = b"") -> str:
        """The digest of the bytes written so far, followed by ``pending``."""
        hasher = self._hasher.copy()
        if pending:
            hasher.update(pending)
        return "sha256:" + hasher.hexdigest()

    def _require_fd(self) -> int:
        if self._fd is None:
            raise errors.FailedPrecondition(f'ingest "{self.ref}": writer is closed')
        return self._fd

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append ``data`` at the offset and hash it; return the byte count."""
        with self._lock:
            fd = self._require_fd()
            view = memoryview(data)
            done = 0
            while done < len(view):
                done += os.pwrite(fd, view[done:], self._offset + done)
            self._hasher.update(view)
            self._offset += done
            self.updated_at = now()
            return done

    def truncate(self) -> None:
        """Drop every byte written; the digest starts over."""
        with self._lock:
            os.ftruncate(self._require_fd(), 0)
            self._hasher = hashlib.sha256()
            self._offset = 0
            self.updated_at = now()

    def copy_from(self, blob: Path) -> None:
        """Append a whole existing blob (used when a shared ingest must become a real one)."""
        with open(blob, "rb") as src:
            while chunk := src.read(CHUNK):
                self.write(chunk)

    def finish(self) -> Finished:
        """Sync and close the data file; return its size and digest. The directory stays."""
        with self._lock:
            fd = self._require_fd()
            self._fd = None
            try:
                os.fsync(fd)
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
            return Finished(size, "sha256:" + self._hasher.hexdigest())

    def close(self) -> None:
        """Sync and close the data file and record the update time; the ingest stays for a resume."""
        with self._lock:
            if self._fd is None:
                return
            fd, self._fd = self._fd, None
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
            # The directory is gone if the ingest was aborted meanwhile; nothing to record then.
            with contextlib.suppress(FileNotFoundError):
                _write_text(self.path / "updatedat", self.updated_at.isoformat())
