"""The directory discipline both backends share: ``<root>/snapshots/<id>``.

A snapshot's directory is built under ``new-<id>`` and renamed to ``<id>``
only when complete, and renamed to ``rm-<id>`` before it is deleted. So a
crash at any point leaves either a finished ``<id>`` or a name that is
obviously garbage; the metadata layer writes a record only after the
directory exists, and :meth:`Layout.cleanup` removes whatever no record (and
no operation in flight) accounts for. Ids are never reused.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path

from wharfd.runtime import mount
from wharfd.runtime.snapshots.snapshotter import Usage

log = logging.getLogger("wharfd.snapshots")

_STAGING = "new-"
_DOOMED = "rm-"


class Layout:
    """The snapshots directory of one backend."""

    def __init__(self, root: Path) -> None:
        """Use ``root``/snapshots, creating it (0700: layers may hold secrets of images)."""
        self.root = root
        self.dir = root / "snapshots"
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.dir.mkdir(exist_ok=True, mode=0o700)

    def path(self, sid: int) -> Path:
        """The final directory of snapshot ``sid``."""
        return self.dir / str(sid)

    def staging(self, sid: int) -> Path:
        """An empty staging directory for ``sid`` (a leftover of a crash is removed first)."""
        path = self.dir / f"{_STAGING}{sid}"
        if path.exists():
            remove_tree(path)
        return path

    def publish(self, sid: int) -> None:
        """Move the staging directory of ``sid`` to its final name, atomically."""
        os.rename(self.dir / f"{_STAGING}{sid}", self.path(sid))

    def discard(self, sid: int) -> None:
        """Remove whatever exists of ``sid``: staging or final directory."""
        for path in (self.dir / f"{_STAGING}{sid}", self.path(sid)):
            if path.exists():
                remove_tree(path)

    def remove(self, sid: int) -> None:
        """Delete the directory of ``sid``; renamed first, so a half-deleted tree is never taken for it."""
        doomed = self.dir / f"{_DOOMED}{sid}"
        try:
            os.rename(self.path(sid), doomed)
        except FileNotFoundError:
            return
        remove_tree(doomed)

    def entries(self) -> list[str]:
        """The names in the snapshots directory now."""
        return sorted(os.listdir(self.dir))

    def cleanup(self, entries: Sequence[str], keep: set[int]) -> list[str]:
        """Delete each of ``entries`` that belongs to no id in ``keep``; return the names deleted."""
        removed = []
        for entry in entries:
            name = entry.removeprefix(_STAGING).removeprefix(_DOOMED)
            if name.isdigit() and int(name) in keep:
                continue
            try:
                remove_tree(self.dir / entry)
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("snapshots cleanup: cannot remove %s: %s", self.dir / entry, exc)
                continue
            removed.append(entry)
        return removed


def remove_tree(path: Path) -> None:
    """Delete ``path`` recursively; mounts found inside (a leaked container rootfs) are detached first."""
    try:
        _rmtree(path)
    except OSError as exc:
        if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY):
            raise
        mount.unmount_all(path, mount.MNT_DETACH)
        _rmtree(path)


def _rmtree(path: Path) -> None:
    if not path.is_dir() or path.is_symlink():
        path.unlink(missing_ok=True)
        return
    # Entries vanishing underneath are fine (a cleanup and a remove may race on
    # garbage): walk again until the tree is gone.
    for _ in range(3):
        try:
            shutil.rmtree(path)
            return
        except FileNotFoundError:
            if not path.exists():
                return
    shutil.rmtree(path)


def disk_usage(path: Path) -> Usage:
    """Bytes allocated and distinct inodes under ``path`` (hard links count once), like ``du``."""
    seen: set[tuple[int, int]] = set()
    size = 0
    pending = [os.fspath(path)]
    root = os.lstat(path)
    seen.add((root.st_dev, root.st_ino))
    size += root.st_blocks * 512
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
                size += st.st_blocks * 512
                if stat.S_ISDIR(st.st_mode):
                    pending.append(entry.path)
    return Usage(size=size, inodes=len(seen))
