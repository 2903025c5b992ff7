"""Computing a layer from two directory trees: the inverse of :mod:`~wharfd.runtime.images.apply`.

Two shapes of input, as the two snapshotters produce them:

* ``overlay=True``: ``upper`` is an overlayfs upper directory; its content
  *is* the change. Overlay whiteouts become OCI ones: a 0/0 character device
  ``name`` is written as ``.wh.name``, a directory carrying
  ``trusted.overlay.opaque=y`` is followed by ``.wh..wh..opq``. With
  ``lower`` (the merged view below), whiteouts of names absent from it are
  dropped. The upper must come from a mount without ``metacopy`` or
  ``redirect_dir``, as the overlay snapshotter mounts.
* ``overlay=False``: ``lower`` and ``upper`` are complete trees (native
  snapshotter); both are walked side by side. An entry is emitted when it is
  new or its type, mode, owner, size, mtime (whole seconds), link target,
  device or xattrs differ; a regular file whose metadata all match is
  compared by content when its mtime has no sub-second part, because
  extracted files carry whole-second times. A name only in ``lower`` becomes
  a whiteout.

The tar is PAX, sorted by name, directories before their contents,
mtimes truncated to seconds, no user/group names: the same trees give the
same bytes. With ``source_date_epoch`` (whole seconds) every time later than
it is written as it, whiteouts included (containerd's upper bound on
modification times, for reproducible layers). Hardlinked files are written once and linked after. xattrs go
in ``SCHILY.xattr.*`` records except overlay's own (``trusted.overlay.*``)
and SELinux labels, which belong to the host. Nothing is ever followed: every
open is relative to a directory descriptor with ``O_NOFOLLOW``, because the
upper of a container is written by the container.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, BinaryIO, cast

from wharfd.runtime.images.layer import Compression, LayerWriter
from wharfd.runtime.images.tarfmt import HOST_XATTRS, OPAQUE_MARKER, OPAQUE_XATTR, WHITEOUT_PREFIX, pax_xattrs

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CMP_CHUNK = 1 << 20


@dataclass(frozen=True)
class Diff:
    """The layer blob written: digests, sizes and media type."""

    digest: str
    diff_id: str
    size: int
    uncompressed_size: int
    media_type: str


@dataclass
class _Entry:
    name: str  # relative path inside the tree
    dfd: int  # descriptor of its directory
    base: str
    st: os.stat_result


def _xattrs(target: int | str) -> dict[str, bytes]:
    """xattrs of an open descriptor, or of a path whose last component is not followed."""
    follow = isinstance(target, int)  # the flag is refused with a descriptor
    try:
        names = os.listxattr(target, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM):
            return {}
        raise
    out = {}
    for key in sorted(names):
        if not key.startswith(HOST_XATTRS):
            with contextlib.suppress(OSError):  # removed meanwhile, or not readable: not part of the layer
                out[key] = os.getxattr(target, key, follow_symlinks=follow)
    return out


def _proc(dfd: int, base: str) -> str:
    return f"/proc/self/fd/{dfd}/{base}"


def _listdir(dfd: int) -> list[str]:
    return sorted(os.listdir(dfd))


def _open_dir(dfd: int, base: str) -> int:
    return os.open(base, _DIR, dir_fd=dfd)


class _Writer:
    def __init__(self, tf: tarfile.TarFile, latest: int | None = None) -> None:
        self.tf = tf
        self.latest = latest  # the source date epoch: no time after it
        self.links: dict[tuple[int, int], str] = {}
        # Unchanged directories above the current position: written only if
        # something below them is, so that apply restores their times (as
        # containerd's change writer includes parents).
        self.parents: list[tuple[_Entry, int]] = []

    def defer(self, e: _Entry, dir_fd: int) -> None:
        """Note an unchanged directory that must precede any change below it."""
        self.parents.append((e, dir_fd))

    def undefer(self, e: _Entry) -> None:
        """Leave a deferred directory; nothing below it changed if it is still pending."""
        if self.parents and self.parents[-1][0] is e:
            self.parents.pop()

    def _flush(self) -> None:
        parents, self.parents = self.parents, []
        for e, fd in parents:
            self.entry(e, fd)

    def info(self, e: _Entry, xattr_target: int | str) -> tarfile.TarInfo:
        st = e.st
        info = tarfile.TarInfo(e.name)
        info.mode = stat.S_IMODE(st.st_mode)
        info.uid, info.gid = st.st_uid, st.st_gid
        info.uname = info.gname = ""
        info.mtime = self.clamp(st.st_mtime_ns // 10**9)
        xattrs = _xattrs(xattr_target)
        if xattrs:
            info.pax_headers = pax_xattrs(xattrs)
        return info

    def clamp(self, mtime: int) -> int:
        """``mtime``, or the source date epoch if that is earlier."""
        return mtime if self.latest is None else min(mtime, self.latest)

    def entry(self, e: _Entry, dir_fd: int | None = None) -> None:
        """Write one non-whiteout entry; ``dir_fd`` is an open descriptor when ``e`` is a directory."""
        if self.parents:
            self._flush()
        mode = e.st.st_mode
        info = self.info(e, dir_fd if dir_fd is not None else _proc(e.dfd, e.base))
        if stat.S_ISDIR(mode):
            info.type = tarfile.DIRTYPE
        elif stat.S_ISLNK(mode):
            info.type = tarfile.SYMTYPE
            info.linkname = os.readlink(e.base, dir_fd=e.dfd)
        elif stat.S_ISREG(mode):
            return self.regular(e, info)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            info.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
            info.devmajor, info.devminor = os.major(e.st.st_rdev), os.minor(e.st.st_rdev)
        elif stat.S_ISFIFO(mode):
            info.type = tarfile.FIFOTYPE
        else:
            return None  # sockets are not part of a filesystem image
        self.tf.addfile(info)
        return None

    def regular(self, e: _Entry, info: tarfile.TarInfo) -> None:
        key = (e.st.st_dev, e.st.st_ino)
        if e.st.st_nlink > 1:
            first = self.links.get(key)
            if first is not None:
                info.type, info.linkname, info.pax_headers = tarfile.LNKTYPE, first, {}
                self.tf.addfile(info)
                return
            self.links[key] = e.name
        info.size = e.st.st_size
        fd = os.open(e.base, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=e.dfd)
        with os.fdopen(fd, "rb", buffering=0) as f:
            self.tf.addfile(info, f)

    def whiteout(self, parent: str, name: str, st: os.stat_result | None = None) -> None:
        if self.parents:
            self._flush()
        info = tarfile.TarInfo(f"{parent}/{name}" if parent else name)
        info.uname = info.gname = ""
        if st is not None:
            info.uid, info.gid, info.mtime = st.st_uid, st.st_gid, self.clamp(st.st_mtime_ns // 10**9)
        info.mode = 0o644
        self.tf.addfile(info)


def _children(dfd: int, rel: str) -> Iterator[_Entry]:
    for base in _listdir(dfd):
        st = os.stat(base, dir_fd=dfd, follow_symlinks=False)
        yield _Entry(f"{rel}/{base}" if rel else base, dfd, base, st)


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _exists(dfd: int | None, base: str) -> bool:
    if dfd is None:
        return True
    try:
        os.stat(base, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _walk_upper(w: _Writer, ufd: int, lfd: int | None, rel: str) -> None:
    """Overlay upper: everything in it is a change."""
    for e in _children(ufd, rel):
        if _is_whiteout(e.st):
            if _exists(lfd, e.base):
                w.whiteout(rel, WHITEOUT_PREFIX + e.base, e.st)
            continue
        if not stat.S_ISDIR(e.st.st_mode):
            w.entry(e)
            continue
        cfd = _open_dir(ufd, e.base)
        try:
            w.entry(e, cfd)
            opaque = _opaque(cfd)
            if opaque:
                w.whiteout(e.name, OPAQUE_MARKER, e.st)
            clfd = None if opaque or lfd is None else _lower_dir(lfd, e.base)
            try:
                _walk_upper(w, cfd, clfd, e.name)
            finally:
                if clfd is not None:
                    os.close(clfd)
        finally:
            os.close(cfd)


def _opaque(dfd: int) -> bool:
    try:
        return os.getxattr(dfd, OPAQUE_XATTR) == b"y"
    except OSError:
        return False


def _lower_dir(lfd: int, base: str) -> int | None:
    """The lower twin of a directory, or None if the lower has no directory there."""
    try:
        return _open_dir(lfd, base)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return None
        raise


def _walk_trees(w: _Writer, ufd: int, lfd: int | None, rel: str) -> None:
    """Two full trees side by side."""
    uppers = list(_children(ufd, rel))
    if lfd is not None:
        present = {e.base for e in uppers}
        for base in _listdir(lfd):
            if base not in present:
                st = os.stat(base, dir_fd=lfd, follow_symlinks=False)
                w.whiteout(rel, WHITEOUT_PREFIX + base, st)
    for e in uppers:
        lst = None
        if lfd is not None:
            with contextlib.suppress(FileNotFoundError):
                lst = os.stat(e.base, dir_fd=lfd, follow_symlinks=False)
        if not stat.S_ISDIR(e.st.st_mode):
            if lst is None or lfd is None or _changed(e, lst, lfd):
                w.entry(e)
            continue
        cfd = _open_dir(ufd, e.base)
        clfd = None
        if lfd is not None and lst is not None and stat.S_ISDIR(lst.st_mode):
            clfd = _lower_dir(lfd, e.base)
        try:
            if clfd is None or _dir_changed(cfd, clfd, e.st, lst):
                w.entry(e, cfd)
            else:
                w.defer(e, cfd)
            _walk_trees(w, cfd, clfd, e.name)
            w.undefer(e)
        finally:
            os.close(cfd)
            if clfd is not None:
                os.close(clfd)


def _same_meta(a: os.stat_result, b: os.stat_result) -> bool:
    return (
        a.st_mode == b.st_mode
        and a.st_uid == b.st_uid
        and a.st_gid == b.st_gid
        and a.st_mtime_ns // 10**9 == b.st_mtime_ns // 10**9
        and (a.st_size == b.st_size or stat.S_ISDIR(a.st_mode))
        and (a.st_rdev == b.st_rdev or not (stat.S_ISCHR(a.st_mode) or stat.S_ISBLK(a.st_mode)))
    )


def _dir_changed(ufd: int, lfd: int, ust: os.stat_result, lst: os.stat_result | None) -> bool:
    return lst is None or not _same_meta(ust, lst) or _xattrs(ufd) != _xattrs(lfd)


def _changed(e: _Entry, lst: os.stat_result, lfd: int) -> bool:
    ust = e.st
    if not _same_meta(ust, lst):
        return True
    if _xattrs(_proc(e.dfd, e.base)) != _xattrs(_proc(lfd, e.base)):
        return True
    if stat.S_ISLNK(ust.st_mode):
        return os.readlink(e.base, dir_fd=e.dfd) != os.readlink(e.base, dir_fd=lfd)
    if stat.S_ISREG(ust.st_mode) and ust.st_mtime_ns % 10**9 == 0:
        return not _same_content(e.dfd, lfd, e.base)
    return False


def _same_content(ufd: int, lfd: int, base: str) -> bool:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    with open(os.open(base, flags, dir_fd=ufd), "rb") as a, open(os.open(base, flags, dir_fd=lfd), "rb") as b:
        while True:
            x, y = a.read(_CMP_CHUNK), b.read(_CMP_CHUNK)
            if x != y:
                return False
            if not x:
                return True


def write_diff(
    lower: str | os.PathLike[str] | None,
    upper: str | os.PathLike[str],
    out: BinaryIO,
    *,
    overlay: bool = False,
    compression: Compression = Compression.GZIP,
    source_date_epoch: int | None = None,
) -> Diff:
    """Write the layer that turns ``lower`` into ``upper`` to ``out``; see the module docstring.

    ``lower=None`` means an empty lower (the first layer, or an overlay upper
    whose whiteouts should all be kept). ``out`` stays open. ``source_date_epoch``
    (seconds since 1970) bounds the times written.
    """
    writer = LayerWriter(out, compression)
    ufd = os.open(upper, _DIR)
    lfd = os.open(lower, _DIR) if lower is not None else None
    try:
        with tarfile.open(
            fileobj=cast(IO[bytes], writer),
            mode="w|",
            format=tarfile.PAX_FORMAT,
            encoding="utf-8",
            errors="surrogateescape",
        ) as tf:
            w = _Writer(tf, source_date_epoch)
            (_walk_upper if overlay else _walk_trees)(w, ufd, lfd, "")
        writer.close()
    finally:
        os.close(ufd)
        if lfd is not None:
            os.close(lfd)
    return Diff(writer.digest, writer.diff_id, writer.compressed_size, writer.size, writer.media_type)
