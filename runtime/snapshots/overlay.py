"""The overlayfs backend: each snapshot stores only its own changes.

On disk, as containerd lays it out (tools that know that layout keep working)::

    <root>/snapshots/<id>/fs      the layer: upperdir while active, a lowerdir once committed
    <root>/snapshots/<id>/work    overlayfs' workdir (active snapshots only)

Mounts, by kind and number of parents (parents nearest first):

=========  =======  ==============================================================
kind       parents  mount
=========  =======  ==============================================================
active     0        bind ``<id>/fs``, ``rw,rbind``
active     ≥1       overlay ``workdir=<id>/work,upperdir=<id>/fs,lowerdir=<p1>:<p2>…``
view       0        bind ``<id>/fs``, ``ro,rbind``
view       1        bind ``<parent>/fs``, ``ro,rbind`` (nothing to merge)
view       ≥2       overlay ``lowerdir=<p1>:<p2>…`` (read-only: no upperdir)
=========  =======  ==============================================================

Ids are small integers so that ``lowerdir`` stays short; what still does not
fit in a page is handled when mounting (:mod:`wharfd.runtime.mount`).
Deletions in an upper layer are overlayfs whiteouts (character devices 0/0),
which is what image layers' ``.wh.`` entries are unpacked into.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from wharfd.runtime import mount
from wharfd.runtime.snapshots import layout
from wharfd.runtime.snapshots.snapshotter import Kind, Mount, Usage

NAME = "overlayfs"


class OverlayBackend:
    """Snapshot layers as overlayfs upper and lower directories under ``root``."""

    name = NAME

    def __init__(self, root: Path, *, options: Sequence[str] = ()) -> None:
        """Store layers under ``root``; ``options`` are added to every overlay mount."""
        self.root = root
        self._layout = layout.Layout(root)
        self._options = tuple(options) or default_options()

    def create(self, sid: int, kind: Kind, parents: Sequence[int]) -> None:
        """Make ``<id>/fs`` (and ``work`` for active), owned and moded like the parent's root."""
        staging = self._layout.staging(sid)
        staging.mkdir(mode=0o700)
        try:
            upper = staging / "fs"
            upper.mkdir(mode=0o755)
            if kind == Kind.ACTIVE:
                (staging / "work").mkdir(mode=0o711)
            if parents:
                # The merged root takes its owner and mode from the upper dir, so a
                # fresh layer must not reset what the image's root directory says.
                st = os.stat(self.upper(parents[0]))
                os.chown(upper, st.st_uid, st.st_gid)
                os.chmod(upper, st.st_mode & 0o7777)
            self._layout.publish(sid)
        except BaseException:
            self._layout.discard(sid)
            raise

    def mounts(self, sid: int, kind: Kind, parents: Sequence[int]) -> list[Mount]:
        """The mounts of an active or view snapshot (see the module table)."""
        if not parents:
            flag = "ro" if kind == Kind.VIEW else "rw"
            return [Mount(type="bind", source=str(self.upper(sid)), options=(flag, "rbind"))]
        if kind == Kind.VIEW and len(parents) == 1:
            return [Mount(type="bind", source=str(self.upper(parents[0])), options=("ro", "rbind"))]
        options: list[str] = []
        if kind == Kind.ACTIVE:
            options += [f"workdir={self.work(sid)}", f"upperdir={self.upper(sid)}"]
        options.append("lowerdir=" + ":".join(str(self.upper(p)) for p in parents))
        return [Mount(type="overlay", source="overlay", options=(*options, *self._options))]

    def usage(self, sid: int) -> Usage:
        """The size of ``<id>/fs``: for an active snapshot, exactly what the container wrote."""
        return layout.disk_usage(self.upper(sid))

    def remove(self, sid: int) -> None:
        """Delete ``<id>`` and everything in it."""
        self._layout.remove(sid)

    def entries(self) -> list[str]:
        """The names in ``<root>/snapshots``."""
        return self._layout.entries()

    def cleanup(self, entries: Sequence[str], keep: set[int]) -> list[str]:
        """Delete those of ``entries`` that belong to no id in ``keep``."""
        return self._layout.cleanup(entries, keep)

    def adopt(self, sid: int, source: Path, *, keep_root: bool = False) -> None:
        """Make directory ``source`` the upper dir of active ``sid`` in place of its empty one.

        The unpacker extracts layers in parallel into directories of its own
        and hands each over once its parent is committed; ``source`` must be
        on this filesystem (a rename). With ``keep_root`` the tree's root takes
        the owner and mode :meth:`create` gave the empty upper (the layer did
        not say what its root looks like).
        """
        upper = self.upper(sid)
        if keep_root:
            st = os.stat(upper)
            os.chown(source, st.st_uid, st.st_gid)
            os.chmod(source, st.st_mode & 0o7777)
        os.rmdir(upper)  # refuses (ENOTEMPTY) if anything was written into it
        os.rename(source, upper)

    def upper(self, sid: int) -> Path:
        """``<root>/snapshots/<id>/fs``."""
        return self._layout.path(sid) / "fs"

    def work(self, sid: int) -> Path:
        """``<root>/snapshots/<id>/work``."""
        return self._layout.path(sid) / "work"


def default_options() -> tuple[str, ...]:
    """``index=off`` where the kernel knows the option: layers are shared, and the
    inode index would tie each lower directory to the first upper it was used with."""
    if os.path.exists("/sys/module/overlay/parameters/index"):
        return ("index=off",)
    return ()


def check_supported(root: Path) -> str | None:
    """Try a real overlay mount of two lowers, an upper and a work dir inside ``root``.

    Returns None when it works, else the reason, for the plugin table's ``skip``.
    """
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        # A unique directory without tempfile (which an idle daemon need not import).
        tmp = root / f"overlay-check-{os.urandom(6).hex()}"
        tmp.mkdir(mode=0o700)
        try:
            return _probe(tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:
        return f"overlayfs cannot be used under {root}: {exc}"


def _probe(base: Path) -> str | None:
    for name in ("lower1", "lower2", "upper", "work", "merged"):
        (base / name).mkdir()
    (base / "lower1" / "probe").write_text("lower")
    probe = Mount(
        type="overlay",
        source="overlay",
        options=(
            f"lowerdir={base / 'lower2'}:{base / 'lower1'}",
            f"upperdir={base / 'upper'}",
            f"workdir={base / 'work'}",
        ),
    )
    try:
        mount.mount(probe, base / "merged")
    except OSError as exc:
        return f"overlayfs cannot be mounted on {base.parent}: {exc.strerror or exc}"
    try:
        (base / "merged" / "probe").write_text("upper")
    finally:
        mount.unmount(base / "merged", mount.MNT_DETACH)
    if (base / "upper" / "probe").read_text() != "upper":
        return f"overlayfs on {base.parent} did not copy a lower file up"
    return None
