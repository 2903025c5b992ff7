"""Named network namespaces, bind-mounted onto a file so they outlive any process (``ip netns`` style).

A namespace is made by a short-lived thread of its own: it unshares its
network namespace and bind-mounts ``/proc/self/task/<tid>/ns/net`` onto the
path, then ends. Nothing forks: forking the many-threaded daemon to run Python
in the child (as pyroute2's helper does) crashes now and then, and only that
one thread ever runs in the new namespace.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import threading
from pathlib import Path

from wharfd.runtime import errors

DEFAULT_DIR = Path("/var/run/netns")
_CLONE_NEWNET = 0x40000000
_MS_BIND = 0x1000
_MNT_DETACH = 0x2
_EINVAL = 22
_ENOENT = 2


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _pin_new_netns(path: Path) -> None:
    libc = _libc()
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
    try:
        if libc.unshare(_CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
        source = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
        if libc.mount(source, str(path).encode(), b"none", _MS_BIND, None) != 0:
            raise OSError(ctypes.get_errno(), f"bind mount of the new netns on {path}")
    except BaseException:
        path.unlink(missing_ok=True)
        raise


async def create(name: str | None = None, *, directory: Path = DEFAULT_DIR) -> Path:
    """Create a network namespace pinned at ``directory/name`` and return that path."""
    path = directory / (name or f"cni-{os.urandom(8).hex()}")
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(exc: BaseException | None) -> None:
        if done.done():
            return
        if exc is None:
            done.set_result(None)
        else:
            done.set_exception(exc)

    def work() -> None:
        try:
            _pin_new_netns(path)
        except BaseException as exc:  # handed to the awaiting coroutine
            loop.call_soon_threadsafe(settle, exc)
        else:
            loop.call_soon_threadsafe(settle, None)

    # A thread of its own, not the shared pool: it ends inside the new namespace.
    threading.Thread(target=work, name=f"netns-{path.name}", daemon=True).start()
    try:
        await done
    except OSError as exc:
        raise errors.Unavailable(f"network namespace {path}: {exc.strerror or exc}") from exc
    return path


def _remove(path: Path) -> None:
    if _libc().umount2(str(path).encode(), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (_EINVAL, _ENOENT):  # not mounted (any more), or gone
            raise OSError(err, f"unmount of netns {path}")
    path.unlink(missing_ok=True)


async def remove(path: Path) -> None:
    """Unmount and delete a pinned namespace; a missing one is not an error."""
    try:
        await asyncio.to_thread(_remove, path)
    except OSError as exc:
        raise errors.Unavailable(f"network namespace {path}: {exc.strerror or exc}") from exc
