"""Pages shared between shims forked from one zygote: what the zygote does before it forks.

CPython writes an object's reference count each time it is used, so a forked
shim copies every inherited page whose objects it merely touches. These two
steps make fewer, denser such pages (docs/benchmarks.md, shim memory):

* :func:`relocate_hot_code` gives the functions a warm-up ran fresh copies of
  their code objects, side by side;
* :func:`fill_pools` takes up the free blocks of pymalloc's partly used pools,
  so a shim's new objects land in fresh pools instead of scattered old ones.

What is copied all the same is mostly copied *unchanged*: a call raises a
reference count and lowers it again when it returns. :func:`mark_mergeable`
lets the kernel find those pages again (KSM, when ``ksmd`` runs: the daemon
turns it on, runtime/tasks/memory_merge.py) and share them back between the
zygote and its shims.
"""

from __future__ import annotations

import ctypes
import gc
import os
import sys
import types
from collections.abc import Callable


def relocate_hot_code(exercise: Callable[[], object]) -> int:
    """Run ``exercise``; give each function it ran a fresh copy of its code object. Return how many.

    Code objects are made at import, module after module, so the few hundred a
    shim runs lie scattered among the thousands it never does, a page or two
    apart. Running a function writes its code object (reference count; inline
    caches until it has specialized), so in a forked shim each one run copies
    a page of its own. Copied here one after the other, they share pages.
    The copies are equal (``code.replace``), nested code objects (closures,
    comprehensions) included; the originals are freed.
    """
    ran: set[types.CodeType] = set()

    def profile(frame: types.FrameType, event: str, arg: object) -> None:
        if event == "call":
            ran.add(frame.f_code)

    sys.setprofile(profile)
    try:
        exercise()
    finally:
        sys.setprofile(None)
    copies: dict[types.CodeType, types.CodeType] = {}

    def copy(code: types.CodeType) -> types.CodeType:
        new = copies.get(code)
        if new is None:
            consts = tuple(copy(c) if isinstance(c, types.CodeType) else c for c in code.co_consts)
            new = copies[code] = code.replace(co_consts=consts)
        return new

    moved = 0
    for obj in gc.get_objects():
        if isinstance(obj, types.FunctionType) and obj.__code__ in ran:
            obj.__code__ = copy(obj.__code__)
            moved += 1
    return moved


# Objects that take up the free blocks of partly used pools (fill_pools); never used, never freed.
_FILLERS: list[object] = []
FILL_ROUNDS = 3


def fill_pools() -> int:
    """Take up the free blocks of pymalloc's partly used pools; return how many are left.

    A forked shim allocates from those pools first, and they are scattered over
    the whole heap: each new object then copies a page of its own. Once they
    are full, the shim's objects go to fresh pools, packed. The fillers cost
    this process the free blocks' size (~0.5 MiB), shared by every shim.
    Without pymalloc (``PYTHONMALLOC=malloc``) there is nothing to do.
    """
    left = free_blocks()
    for _ in range(FILL_ROUNDS):
        if not left:
            break
        for size, count in left.items():
            _FILLERS.extend(_filler(size) for _ in range(count))
        left = free_blocks()
    return sum(left.values())


def _filler(size: int) -> object:
    """An object that takes exactly one block of pymalloc's size class ``size``."""
    if size <= 16:
        return object()  # a bare object: 16 bytes
    if size <= 32:
        return float(len(_FILLERS)) + 0.5  # 24 bytes (a new object, not a cached constant)
    return bytes(size - 33)  # a bytes object is 33 bytes plus its length


def free_blocks() -> dict[int, int]:
    """Size class -> free blocks in partly used pools, from ``sys._debugmallocstats`` (CPython)."""
    stats = getattr(sys, "_debugmallocstats", None)
    if stats is None:
        return {}
    # It prints to the C stderr: catch fd 2 in a memfd for the call.
    capture = os.memfd_create("mallocstats", os.MFD_CLOEXEC)
    saved = os.dup(2)
    try:
        os.dup2(capture, 2)
        try:
            stats()
        finally:
            os.dup2(saved, 2)
        os.lseek(capture, 0, os.SEEK_SET)
        with os.fdopen(os.dup(capture), "rb") as f:
            text = f.read().decode(errors="replace")
    finally:
        os.close(saved)
        os.close(capture)
    free: dict[int, int] = {}
    for line in text.splitlines():
        # "class   size   num pools   blocks in use  avail blocks"
        fields = line.split()
        if len(fields) == 5 and all(f.isdigit() for f in fields) and int(fields[4]):
            free[int(fields[1])] = int(fields[4])
    return free


MADV_MERGEABLE = 12
MERGE_ENV = "WHARF_SHIM_MERGE"  # "0": leave the zygote's pages unmarked (to measure without KSM)
# Special mappings the kernel refuses (or that never hold copied pages): vdso, vvar, vsyscall.
_UNMERGEABLE = ("[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]", "[uprobes]")


def mark_mergeable(maps: str = "/proc/self/maps") -> int:
    """Mark this process's private writable mappings for KSM; return how many bytes were marked.

    Only pages that are private and writable can be copied on write, so only
    those are marked (anonymous memory, the heap, shared objects' data). A
    child inherits the marks with the mappings at fork; ``execve`` drops them,
    so runc and the containers a shim starts are never merged. Mappings made
    after this call (a shim's own new arenas) stay unmarked: their contents are
    its own. Without KSM in the kernel every call fails and nothing is marked.
    """
    if os.environ.get(MERGE_ENV) == "0":
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    marked = 0
    with open(maps, "rb") as f:
        lines = f.read().decode(errors="replace").splitlines()
    for line in lines:
        fields = line.split(maxsplit=5)
        perms = fields[1]
        name = fields[5] if len(fields) > 5 else ""
        if perms[1] != "w" or perms[3] != "p" or name in _UNMERGEABLE:
            continue
        start, end = (int(edge, 16) for edge in fields[0].split("-"))
        if libc.madvise(start, end - start, MADV_MERGEABLE) == 0:
            marked += end - start
    return marked
