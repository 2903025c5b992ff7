"""Mounting a task's rootfs (the snapshotter's mounts) on ``<bundle>/rootfs``, and unmounting it.

:mod:`wharfd.runtime.mount` does the same for the daemon and more (recording
fake, overlays too long for one page), but it imports
:mod:`wharfd.runtime.errors` and with it grpc, which a per-pod shim must not
carry. This module covers the common case with mount(2) directly and defers
to that module only for an overlay whose options do not fit in a page.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import time
from collections.abc import Sequence

from wharfd.api.types import mount_pb2

MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MNT_DETACH = 0x2
PAGE = os.sysconf("SC_PAGE_SIZE")

# word -> (flag, set?); everything not listed is filesystem data (lowerdir=…, upperdir=…).
_FLAGS = {
    "ro": (MS_RDONLY, True),
    "rw": (MS_RDONLY, False),
    "nosuid": (0x2, True),
    "nodev": (0x4, True),
    "noexec": (0x8, True),
    "noatime": (0x400, True),
    "nodiratime": (0x800, True),
    "relatime": (0x200000, True),
    "bind": (MS_BIND, True),
    "rbind": (MS_BIND | MS_REC, True),
    "defaults": (0, True),
}
_PROPAGATION = {
    "private": 0x40000,
    "rprivate": 0x40000 | MS_REC,
    "slave": 0x80000,
    "rslave": 0x80000 | MS_REC,
}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    rc = _libc.mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode() or None)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype} {source!r} on {target!r}: {os.strerror(err)}")


def mount(m: mount_pb2.Mount, target: str) -> None:
    """Perform one Task API mount on ``target`` (blocking)."""
    flags = propagation = 0
    data: list[str] = []
    for option in m.options:
        if option in _FLAGS:
            flag, on = _FLAGS[option]
            flags = flags | flag if on else flags & ~flag
        elif option in _PROPAGATION:
            propagation |= _PROPAGATION[option]
        else:
            data.append(option)
    text = ",".join(data)
    if len(text.encode()) >= PAGE and m.type == "overlay":
        _mount_long_overlay(m, target)
        return
    fstype = "" if flags & MS_BIND else m.type
    _mount(m.source, target, fstype, flags, text)
    if flags & MS_BIND and flags & MS_RDONLY:
        # A bind ignores MS_RDONLY; only a remount of the new mount applies it.
        _mount("", target, "", (flags & ~MS_REC) | MS_REMOUNT, "")
    if propagation:
        _mount("", target, "", propagation, "")


def _mount_long_overlay(m: mount_pb2.Mount, target: str) -> None:
    # Rare: many layers. The daemon's helper names layers by fd to fit the page (imports grpc).
    from wharfd.runtime import mount as full
    from wharfd.runtime.snapshots.snapshotter import Mount

    full.mount(Mount(m.type, m.source, "", tuple(m.options)), target)


def mount_all(mounts: Sequence[mount_pb2.Mount], target: str) -> None:
    """Mount ``mounts`` in order on ``target``; undo the done ones if one fails."""
    done = 0
    try:
        for m in mounts:
            mount(m, target)
            done += 1
    except BaseException:
        for _ in range(done):
            with contextlib.suppress(OSError):
                _libc.umount2(target.encode(), MNT_DETACH)
        raise


async def unmount_all_async(target: str, *, attempts: int = 50, max_stacked: int = 64) -> None:
    """:func:`unmount_all` for the event loop: EBUSY is retried with ``asyncio.sleep``."""
    busy = 0
    for _ in range(max_stacked):
        while _libc.umount2(target.encode(), 0) != 0:
            err = ctypes.get_errno()
            if err in (errno.EINVAL, errno.ENOENT):
                return
            busy += 1
            if err != errno.EBUSY or busy >= attempts:
                raise OSError(err, f"unmount {target!r}: {os.strerror(err)}")
            await asyncio.sleep(0.05)
    raise OSError(errno.EBUSY, f"unmount {target!r}: still mounted after {max_stacked} unmounts")


def unmount_all(target: str, *, attempts: int = 50, max_stacked: int = 64) -> None:
    """Unmount everything stacked on ``target``; nothing mounted is fine. EBUSY is retried a while."""
    busy = 0
    for _ in range(max_stacked):
        while _libc.umount2(target.encode(), 0) != 0:
            err = ctypes.get_errno()
            if err in (errno.EINVAL, errno.ENOENT):
                return
            busy += 1
            if err != errno.EBUSY or busy >= attempts:
                raise OSError(err, f"unmount {target!r}: {os.strerror(err)}")
            time.sleep(0.05)
    raise OSError(errno.EBUSY, f"unmount {target!r}: still mounted after {max_stacked} unmounts")


def detach(target: str) -> None:
    """Lazily detach the top mount on ``target`` (MNT_DETACH), for cleanup that must not fail on EBUSY."""
    if _libc.umount2(target.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):
            raise OSError(err, f"detach {target!r}: {os.strerror(err)}")
