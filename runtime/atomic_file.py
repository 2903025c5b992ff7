"""Replacing a file whole: readers and a crash see the old content or the new, never a mix."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644, sync: bool = True) -> None:
    """Replace ``path`` with ``data`` (blocking): a fresh file beside it, synced, then renamed over it.

    The data reaches the disk before the rename, so after a crash the file is
    the old one or the new one whole (``sync=False``: readers still never see
    a mix, but a crash may leave the file empty; for caches). The temporary file has a name of its own
    per write (two writers never rename each other's file), starts with a dot
    and ends in ``.tmp`` (a CNI conf dir ignores it), and is removed if the
    write fails. ``mode`` is set exactly, whatever the umask.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
