"""Helpers for the layer tests: hand-built tar entries and a comparable snapshot of a tree."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (owners, device nodes, trusted xattrs)")

Member = tuple[tarfile.TarInfo, bytes]


def _info(name: str, kind: bytes, mode: int, **kw: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = kind, mode, 1_600_000_000
    for key, value in kw.items():
        setattr(info, key, value)
    return info


def reg(name: str, data: bytes = b"", mode: int = 0o644, **kw: object) -> Member:
    """A regular file entry."""
    return _info(name, tarfile.REGTYPE, mode, size=len(data), **kw), data


def dir_(name: str, mode: int = 0o755, **kw: object) -> Member:
    """A directory entry."""
    return _info(name, tarfile.DIRTYPE, mode, **kw), b""


def sym(name: str, target: str) -> Member:
    """A symlink entry."""
    return _info(name, tarfile.SYMTYPE, 0o777, linkname=target), b""


def hard(name: str, target: str) -> Member:
    """A hardlink entry."""
    return _info(name, tarfile.LNKTYPE, 0o644, linkname=target), b""


def chardev(name: str, major: int, minor: int) -> Member:
    """A character device entry."""
    return _info(name, tarfile.CHRTYPE, 0o666, devmajor=major, devminor=minor), b""


def tar_bytes(*members: Member) -> bytes:
    """An uncompressed PAX tar of ``members``, in order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def tree(root: Path | str) -> dict[str, tuple[object, ...]]:
    """Everything observable about a tree, keyed by relative path, to compare two trees.

    Hardlinks show as the sorted list of names sharing an inode; directory
    mtimes are included (apply sets them after the contents).
    """
    root = str(root)
    out: dict[str, tuple[object, ...]] = {}
    inodes: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            mode = st.st_mode
            extra: object = None
            if stat.S_ISREG(mode):
                extra = hashlib.sha256(Path(path).read_bytes()).hexdigest()
                if st.st_nlink > 1:
                    inodes.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISLNK(mode):
                extra = os.readlink(path)
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                extra = (os.major(st.st_rdev), os.minor(st.st_rdev))
            xattrs = tuple(
                sorted(
                    (k, os.getxattr(path, k, follow_symlinks=False))
                    for k in os.listxattr(path, follow_symlinks=False)
                )
            )
            mtime = st.st_mtime_ns // 10**9
            out[rel] = (
                stat.S_IFMT(mode),
                stat.S_IMODE(mode),
                st.st_uid,
                st.st_gid,
                mtime,
                st.st_size if not stat.S_ISDIR(mode) else 0,
                extra,
                xattrs,
            )
    for names in inodes.values():
        if len(names) < 2:
            continue  # st_nlink counts links outside the tree too (overlay reports the lower's)
        for name in names:
            out[name] = (*out[name], tuple(sorted(names)))
    return out


CAPABILITY = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_bind_service=+ep, v2


def rich_tree(root: Path) -> None:
    """A tree exercising every kind of entry and attribute a layer can carry."""
    root.mkdir(exist_ok=True)
    (root / "bin").mkdir()
    su = root / "bin" / "su"
    su.write_bytes(b"\x7fELF" + bytes(range(256)) * 64)
    os.chown(su, 0, 0)
    su.chmod(0o4755)
    os.setxattr(su, "security.capability", CAPABILITY)
    os.setxattr(su, "user.note", b"\xff\x00binary")
    (root / "bin" / "su-hardlink").hardlink_to(su)
    wall = root / "bin" / "wall"
    wall.write_bytes(b"wall")
    os.chown(wall, 0, 5)
    wall.chmod(0o2755)
    tmp = root / "tmp"
    tmp.mkdir()
    tmp.chmod(0o1777)
    home = root / "home" / "user"
    home.mkdir(parents=True)
    (home / "empty").write_bytes(b"")
    (home / "big").write_bytes(os.urandom(3 << 20))
    os.chown(home / "big", 1000, 1000)
    os.chown(home, 1000, 1000)
    home.chmod(0o700)
    os.setxattr(home, "trusted.project", b"42")
    (root / "etc").mkdir()
    (root / "etc" / "localtime").symlink_to("/usr/share/zoneinfo/UTC")
    (root / "etc" / "rel").symlink_to("../home/user/empty")
    os.chown(root / "etc" / "rel", 1000, 1000, follow_symlinks=False)
    dev = root / "dev"
    dev.mkdir()
    os.mknod(dev / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(dev / "loop0", 0o660 | stat.S_IFBLK, os.makedev(7, 0))
    os.chown(dev / "loop0", 0, 6)
    os.mkfifo(dev / "initctl", 0o600)
    deep = root / ("d" * 120) / ("e" * 200)
    deep.mkdir(parents=True)
    (deep / ("f" * 250)).write_bytes(b"long name")
    (root / "caf\u00e9-\u00fcml\u00e4ut").write_bytes(b"non-ascii name")
    (root / "ro").mkdir()
    (root / "ro" / "inside").write_bytes(b"x")
    (root / "ro").chmod(0o555)
    # Times last: creating children moves a directory's mtime.
    for i, path in enumerate(sorted(root.rglob("*"), key=lambda p: -len(p.parts))):
        os.utime(
            path, ns=(1_500_000_000 * 10**9 + i, 1_400_000_000 * 10**9 + i * 10**9), follow_symlinks=False
        )
