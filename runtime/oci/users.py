"""Users and groups of an image: ``/etc/passwd`` and ``/etc/group`` read safely inside its rootfs.

An image rootfs is hostile input. Its ``/etc/passwd`` may be a symlink to
``/etc/shadow`` or to ``../../../etc/passwd``; read naively from the host,
either would leak a host file into a container spec. :func:`read_in_root`
resolves every component itself as if the rootfs were ``/``: ``..`` stops
at the root, absolute symlinks restart at the root, every open uses
``O_NOFOLLOW`` relative to the directory reached so far, and only a regular
file is read, at most :data:`MAX_FILE_SIZE` bytes. (openat2's
RESOLVE_IN_ROOT would do the same in one call; two small files do not need
it, and one code path works on every kernel and under seccomp filters.)

:func:`resolve` turns an image's ``USER`` (``uid``, ``uid:gid``, ``name``,
``name:group``, ``uid:group``, ``name:gid``) into ids with containerd's rules
(``oci.WithUser`` + ``oci.WithAdditionalGIDs``): a numeric uid missing from
``/etc/passwd`` gets gid 0, a missing name is an error, supplementary groups
come from ``/etc/group`` membership, and the primary gid is put first among
them unless they already list it.

Everything here blocks on the disk: from async code call it via ``asyncio.to_thread``.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from wharfd.runtime import errors

MAX_FILE_SIZE = 10 << 20  # containerd's cap on user-database files
MAX_ID = 2**31 - 1  # runc's limit for uids and gids
_MAXSYMLINKS = 40
_NUMBER = re.compile(r"^[+-]?[0-9]+$")


@dataclass(frozen=True)
class PasswdEntry:
    """One line of /etc/passwd."""

    name: str
    uid: int
    gid: int
    home: str = ""
    shell: str = ""


@dataclass(frozen=True)
class GroupEntry:
    """One line of /etc/group."""

    name: str
    gid: int
    members: tuple[str, ...] = ()


@dataclass(frozen=True)
class User:
    """The ids a container process runs with; ``additional_gids`` always includes ``gid``."""

    uid: int
    gid: int
    additional_gids: tuple[int, ...]


# --- parsing ----------------------------------------------------------------------------------


def _id(field: str) -> int | None:
    return int(field) if field.isascii() and field.isdigit() else None


def _lines(text: str) -> list[list[str]]:
    # Blank lines and comments are skipped as glibc does.
    return [
        line.split(":") for line in map(str.strip, text.splitlines()) if line and not line.startswith("#")
    ]


def parse_passwd(text: str) -> list[PasswdEntry]:
    """The entries of a passwd file; lines without numeric uid and gid are skipped, never read as 0."""
    out = []
    for fields in _lines(text):
        if len(fields) < 4:
            continue
        uid, gid = _id(fields[2]), _id(fields[3])
        if uid is None or gid is None:
            continue
        extra = [*fields[5:7], "", ""]
        out.append(PasswdEntry(fields[0], uid, gid, extra[0], extra[1]))
    return out


def parse_group(text: str) -> list[GroupEntry]:
    """The entries of a group file; lines without a numeric gid are skipped."""
    out = []
    for fields in _lines(text):
        gid = _id(fields[2]) if len(fields) >= 3 else None
        if gid is None:
            continue
        members = tuple(m for m in fields[3].split(",") if m) if len(fields) > 3 else ()
        out.append(GroupEntry(fields[0], gid, members))
    return out


# --- reading inside a root ----------------------------------------------------------------------


def _components(path: str) -> list[str]:
    return [part for part in path.split("/") if part and part != "."]


def _open_in_root(root_fd: int, path: str) -> int:
    """An O_RDONLY descriptor of the regular file ``path`` resolved inside ``root_fd``."""
    todo = _components(path)[::-1]
    dirs = [root_fd]  # dirs[0] is the caller's; the rest are ours
    links = 0
    try:
        while todo:
            name = todo.pop()
            if name == "..":
                if len(dirs) > 1:
                    os.close(dirs.pop())
                continue
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirs[-1])
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                dirs.append(fd)
                continue
            os.close(fd)
            if stat.S_ISLNK(info.st_mode):
                links += 1
                if links > _MAXSYMLINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
                target = os.readlink(name, dir_fd=dirs[-1])
                if target.startswith("/"):
                    while len(dirs) > 1:
                        os.close(dirs.pop())
                todo.extend(_components(target)[::-1])
                continue
            if todo:
                raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
            if not stat.S_ISREG(info.st_mode):
                raise OSError(errno.EINVAL, "not a regular file", path)
            return _reopen(name, dirs[-1], info)
        raise OSError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    finally:
        for fd in dirs[1:]:
            os.close(fd)


def _reopen(name: str, dir_fd: int, seen: os.stat_result) -> int:
    # O_NONBLOCK|O_NOCTTY: had the entry been swapped for a FIFO or tty since the
    # fstat, opening it must neither hang nor grab a terminal; the inode check catches the swap.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    fd = os.open(name, flags, dir_fd=dir_fd)
    now = os.fstat(fd)
    if (now.st_dev, now.st_ino) != (seen.st_dev, seen.st_ino) or not stat.S_ISREG(now.st_mode):
        os.close(fd)
        raise OSError(errno.EAGAIN, "file changed while it was opened", name)
    return fd


def read_in_root(root: str | os.PathLike[str], path: str, *, limit: int = MAX_FILE_SIZE) -> bytes | None:
    """The bytes of ``path`` resolved inside ``root`` as if it were ``/``; None if it does not exist.

    Raises OSError for anything else: a loop (ELOOP), a component that is not
    a directory (ENOTDIR), a target that is not a regular file (EINVAL), or a
    file over ``limit`` bytes (EFBIG).
    """
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fd = _open_in_root(root_fd, path)
        except FileNotFoundError:
            return None
    finally:
        os.close(root_fd)
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit} bytes", path)
    return data


# --- resolution -------------------------------------------------------------------------------


class UserDB:
    """The passwd and group files of one rootfs, each read at most once."""

    def __init__(self, rootfs: str | os.PathLike[str], *, image: str = "") -> None:
        """Read from directory ``rootfs``; ``image`` names the image in error messages."""
        self.rootfs = Path(rootfs)
        self.image = image
        self._passwd: list[PasswdEntry] | None = None
        self._group: list[GroupEntry] | None = None
        self._read: set[str] = set()
        if not self.rootfs.is_dir():
            raise errors.NotFound(f'rootfs "{self.rootfs}"{self._of_image()}: not a directory')

    def _of_image(self) -> str:
        return f' of image "{self.image}"' if self.image else ""

    def _load(self, path: str) -> str | None:
        try:
            data = read_in_root(self.rootfs, path)
        except OSError as exc:
            raise errors.InvalidArgument(
                f"{path}{self._of_image()}: cannot be read: {exc.strerror or exc}"
            ) from exc
        return None if data is None else data.decode("utf-8", "surrogateescape")

    def passwd(self) -> list[PasswdEntry] | None:
        """The entries of /etc/passwd, or None when the image has none."""
        if "passwd" not in self._read:
            text = self._load("/etc/passwd")
            self._passwd = None if text is None else parse_passwd(text)
            self._read.add("passwd")
        return self._passwd

    def group(self) -> list[GroupEntry] | None:
        """The entries of /etc/group, or None when the image has none."""
        if "group" not in self._read:
            text = self._load("/etc/group")
            self._group = None if text is None else parse_group(text)
            self._read.add("group")
        return self._group

    def user_by_name(self, name: str, what: str) -> PasswdEntry:
        """The first passwd entry named ``name``; InvalidArgument naming ``what`` and the image if none."""
        entries = self.passwd()
        if entries is None:
            raise errors.InvalidArgument(f"{what}{self._of_image()}: the image has no /etc/passwd")
        for entry in entries:
            if entry.name == name:
                return entry
        raise errors.InvalidArgument(f'{what}{self._of_image()}: no user "{name}" in /etc/passwd')

    def gid_by_name(self, name: str, what: str) -> int:
        """The gid of the first group named ``name``; InvalidArgument if none."""
        entries = self.group()
        if entries is None:
            raise errors.InvalidArgument(f"{what}{self._of_image()}: the image has no /etc/group")
        for entry in entries:
            if entry.name == name:
                return entry.gid
        raise errors.InvalidArgument(f'{what}{self._of_image()}: no group "{name}" in /etc/group')

    def name_of_uid(self, uid: int) -> PasswdEntry | None:
        """The first passwd entry with ``uid``, or None (also when there is no passwd file)."""
        return next((e for e in self.passwd() or () if e.uid == uid), None)

    def supplementary_gids(self, username: str) -> list[int]:
        """Gids of the groups listing ``username`` as a member, except the group of the same name."""
        return [g.gid for g in self.group() or () if g.name != username and username in g.members]


def _number(part: str, what: str, field: str) -> int | None:
    if not _NUMBER.match(part):
        return None
    value = int(part)
    if not 0 <= value <= MAX_ID:
        raise errors.InvalidArgument(f"{what}: {field} out of range 0..{MAX_ID}")
    return value


def _primary(db: UserDB, userstr: str, what: str) -> tuple[int, int]:
    parts = userstr.split(":")
    if len(parts) > 2 or not all(parts):
        raise errors.InvalidArgument(
            f"{what}: expected name, uid, name:group, uid:gid, name:gid or uid:group"
        )
    uid = _number(parts[0], what, "uid")
    if len(parts) == 1:
        if uid is None:
            entry = db.user_by_name(parts[0], what)
            return entry.uid, entry.gid
        found = db.name_of_uid(uid)
        return uid, found.gid if found else 0  # containerd: an unknown uid runs with gid 0
    if uid is None:
        uid = db.user_by_name(parts[0], what).uid
    gid = _number(parts[1], what, "gid")
    if gid is None:
        gid = db.gid_by_name(parts[1], what)
    return uid, gid


def resolve(userstr: str, rootfs: str | os.PathLike[str], *, image: str = "") -> User:
    """The ids for an image's ``USER`` string, looked up in the image rootfs at ``rootfs``.

    An empty string means root (uid 0, gid 0, root's supplementary groups).
    ``image`` names the image in error messages.
    """
    db = UserDB(rootfs, image=image)
    what = f'user "{userstr}"'
    if userstr:
        uid, gid = _primary(db, userstr, what)
        owner = db.name_of_uid(uid)
        username = owner.name if owner else None
    else:
        uid, gid, username = 0, 0, "root"
    extra = db.supplementary_gids(username) if username is not None else []
    return User(uid, gid, tuple(extra if gid in extra else [gid, *extra]))
