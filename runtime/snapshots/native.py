"""The native backend: every snapshot is a complete copy of its parent.

It works on any filesystem and needs no overlayfs, at the cost of copying the
whole parent tree for each child (cheap where ``cp --reflink`` can share
extents: btrfs, XFS with reflink). Layout: ``<root>/snapshots/<id>`` is the
tree itself, bind-mounted (read-only for views).

The copy is ``cp -a --reflink=auto``: owners, modes, timestamps, xattrs,
hard links, device nodes and sparse files are preserved. Measured on the
project VM copying a 333 MB tree of 12 824 entries: 1.4 s with cp against
7.4 s with a Python walk doing the same (copy_file_range plus metadata).
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from wharfd.runtime import errors
from wharfd.runtime.snapshots import layout
from wharfd.runtime.snapshots.snapshotter import Kind, Mount, Usage

NAME = "native"


class NativeBackend:
    """Snapshots as full directory copies under ``root``."""

    name = NAME

    def __init__(self, root: Path) -> None:
        """Store snapshots under ``root``."""
        self.root = root
        self._layout = layout.Layout(root)

    def create(self, sid: int, kind: Kind, parents: Sequence[int]) -> None:
        """Make ``<id>``: an empty directory, or a copy of the nearest parent (which holds all below)."""
        staging = self._layout.staging(sid)
        try:
            if parents:
                _copy_tree(self.path(parents[0]), staging)
            else:
                staging.mkdir(mode=0o755)
            self._layout.publish(sid)
        except BaseException:
            self._layout.discard(sid)
            raise

    def mounts(self, sid: int, kind: Kind, parents: Sequence[int]) -> list[Mount]:
        """A bind mount of the snapshot's own copy."""
        flag = "ro" if kind == Kind.VIEW else "rw"
        return [Mount(type="bind", source=str(self.path(sid)), options=(flag, "rbind"))]

    def usage(self, sid: int) -> Usage:
        """The size of the whole copy: a native snapshot shares nothing with its parent."""
        return layout.disk_usage(self.path(sid))

    def remove(self, sid: int) -> None:
        """Delete the copy."""
        self._layout.remove(sid)

    def entries(self) -> list[str]:
        """The names in ``<root>/snapshots``."""
        return self._layout.entries()

    def cleanup(self, entries: Sequence[str], keep: set[int]) -> list[str]:
        """Delete those of ``entries`` that belong to no id in ``keep``."""
        return self._layout.cleanup(entries, keep)

    def path(self, sid: int) -> Path:
        """``<root>/snapshots/<id>``."""
        return self._layout.path(sid)


def _copy_tree(source: Path, target: Path) -> None:
    # target does not exist yet, so cp creates it as a copy of source itself
    # (the root directory's owner and mode included), not a subdirectory.
    proc = subprocess.run(
        ["cp", "-a", "--reflink=auto", "--", str(source), str(target)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise errors.WharfError(
            f"copy snapshot {source} to {target}: {proc.stderr.strip() or proc.returncode}"
        )
