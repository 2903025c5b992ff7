"""The snapshotter contract: what a container's root filesystem is made of.

Lifecycle. A snapshot is created *active* by :meth:`Snapshotter.prepare`
(writable, on top of an optional committed parent) or as a *view* by
:meth:`Snapshotter.view` (read-only). The caller mounts what either returns,
changes files, and :meth:`Snapshotter.commit` turns an active snapshot into a
*committed* one under a new name: the active key disappears, and the committed
snapshot is immutable from then on. Only committed snapshots can be parents,
so an image is a chain of committed layers and a container an active snapshot
on its top::

    prepare(key, parent) ──► ACTIVE ──commit(name, key)──► COMMITTED (name)
    view(key, parent)    ──► VIEW                               │
                               └──────── remove(key) ◄──────────┘  (no children)

Visibility. Keys live in the caller's namespace
(:data:`wharfd.runtime.namespaces.current`): the same key in two namespaces
names two unrelated snapshots, and a parent must be in the same namespace as
its child. A snapshot with children cannot be removed. Mounts of a committed
snapshot are not handed out: view it instead.

Durability. An acknowledged prepare, view or commit survives a crash of the
daemon; a crash in the middle of one leaves at most a directory no record
points at, which :meth:`Snapshotter.cleanup` reclaims.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol


class Kind(enum.IntEnum):
    """The state of a snapshot; the numbers are those of the Snapshots API's ``Kind`` enum."""

    UNKNOWN = 0
    VIEW = 1
    ACTIVE = 2
    COMMITTED = 3

    def __str__(self) -> str:
        """``View``, ``Active``, ``Committed`` or ``Unknown``, as ``ctr snapshots ls`` prints them."""
        return self.name.capitalize()

    @property
    def filter_value(self) -> str:
        """The value the ``kind`` filter field compares against (``active``, ``view``, ``committed``)."""
        return self.name.lower()


@dataclass(frozen=True)
class Info:
    """What is known about a snapshot apart from its files."""

    kind: Kind
    name: str
    parent: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    created: datetime | None = None
    updated: datetime | None = None


@dataclass(frozen=True)
class Usage:
    """Disk use of a snapshot's own layer: bytes allocated and distinct inodes."""

    size: int = 0
    inodes: int = 0


@dataclass(frozen=True)
class Mount:
    """One mount(2) to perform, in the form the Snapshots and Tasks APIs carry it."""

    type: str
    source: str
    target: str = ""
    options: tuple[str, ...] = ()


class Snapshotter(Protocol):
    """A namespaced store of snapshots; every method works in the current namespace."""

    name: str

    async def stat(self, key: str) -> Info:
        """Return the info of ``key`` (active, view or committed); NotFound if absent."""
        ...

    async def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        """Change the labels of ``info.name`` by field paths (``labels``, ``labels.<k>``); no paths: all."""
        ...

    async def usage(self, key: str) -> Usage:
        """Measure an active or view snapshot's layer now; a committed one's was recorded at commit."""
        ...

    async def mounts(self, key: str) -> list[Mount]:
        """Return the mounts of an active or view snapshot again (FailedPrecondition for committed)."""
        ...

    async def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """Create active snapshot ``key`` over committed ``parent`` and return its writable mounts."""
        ...

    async def view(self, key: str, parent: str = "", labels: Mapping[str, str] | None = None) -> list[Mount]:
        """Create view ``key`` of committed ``parent`` and return its read-only mounts."""
        ...

    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        """Turn active ``key`` into committed ``name`` with ``labels``; ``key`` goes away."""
        ...

    async def remove(self, key: str) -> None:
        """Remove ``key`` and its files; FailedPrecondition naming the children if it has any."""
        ...

    async def walk(self, filters: Sequence[str] = ()) -> list[Info]:
        """Every snapshot of the namespace matching any of ``filters`` (kind, name, parent, labels.<k>)."""
        ...

    async def cleanup(self) -> None:
        """Delete directories that no snapshot record points at (left by crashes or failed removes)."""
        ...

    async def close(self) -> None:
        """Release what the snapshotter holds; the metadata database stays open."""
        ...


class Backend(Protocol):
    """On-disk storage of snapshot layers, addressed by numeric id; it keeps no records.

    The namespaced layer (:mod:`~wharfd.runtime.snapshots.metadata`) owns
    keys, kinds, parents and labels, and hands a backend the id of a snapshot
    with the ids of its parents, nearest first. Every method blocks on the
    disk and is called off the event loop.
    """

    name: str
    root: Path

    def create(self, sid: int, kind: Kind, parents: Sequence[int]) -> None:
        """Make the directory of ``sid``; it must appear complete under its final name or not at all."""
        ...

    def mounts(self, sid: int, kind: Kind, parents: Sequence[int]) -> list[Mount]:
        """The mounts of an active or view snapshot (pure: no disk access)."""
        ...

    def usage(self, sid: int) -> Usage:
        """Measure the layer ``sid`` adds over its parents."""
        ...

    def remove(self, sid: int) -> None:
        """Delete the directory of ``sid``; a missing one is not an error."""
        ...

    def entries(self) -> list[str]:
        """The names in the snapshots directory now (the candidates of a cleanup)."""
        ...

    def cleanup(self, entries: Sequence[str], keep: set[int]) -> list[str]:
        """Delete those of ``entries`` that belong to no id in ``keep``; return the names deleted."""
        ...
