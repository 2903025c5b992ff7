"""glibc malloc settings for a long-running daemon: fewer arenas, free pages given back.

glibc gives each thread that finds the main arena busy an arena of its own
(up to 8 per core), and each keeps the pages it once used. The daemon's
threads (the event loop, SQLite's writer and readers, the default executor,
gRPC's event engine) mostly take turns, so two arenas serve them as well as a
dozen. ``malloc_trim`` returns free pages inside the heap to the kernel, which
glibc otherwise does only for the top of the heap.

Both are no-ops where the C library lacks them (musl has no ``malloc_trim``).
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("wharfd.malloc")

M_ARENA_MAX = -8  # mallopt parameter number in glibc's <malloc.h>


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def limit_arenas(count: int) -> bool:
    """Cap the number of malloc arenas (call before threads start); whether it took effect."""
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(M_ARENA_MAX, count))


def trim() -> bool:
    """Give free heap pages back to the kernel; whether any memory was released."""
    libc = _libc()
    malloc_trim = getattr(libc, "malloc_trim", None)
    if malloc_trim is None:
        return False
    return bool(malloc_trim(0))
