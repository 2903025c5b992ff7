"""Progress of a transfer as containerd reports it, and as ``ctr`` draws it.

A transfer reports :class:`Progress` records: a bare ``event`` with no name is
a status line ("Pulling from …", "Completed import"); a named record is a node
of a tree (``parents`` name the nodes above it) whose ``event`` is its state:
``waiting``, ``downloading``/``uploading`` (with ``progress`` of ``total``
bytes), ``complete``, ``already exists``, ``extracting``, ``extracted``,
``saved``. Nodes are named as containerd names them
(:func:`ref_key`: ``layer-sha256:…``, ``manifest-sha256:…``).

:class:`Throttle` keeps byte counts from flooding the stream: a node's
progress goes out when its state changes, and otherwise at most every
``interval`` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from wharfd.runtime import errors
from wharfd.runtime.content.store import ContentStore
from wharfd.runtime.images import mediatypes, walk
from wharfd.runtime.images.manifest import Descriptor, children

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"


@dataclass(frozen=True)
class Progress:
    """One progress record (containerd's ``transfer.Progress``)."""

    event: str
    name: str = ""
    parents: tuple[str, ...] = ()
    progress: int = 0
    total: int = 0
    desc: Descriptor | None = None


ProgressFn = Callable[[Progress], None]


def ref_key(desc: Descriptor) -> str:
    """The name of a descriptor's node: ``<kind>-<digest>``, as containerd's ``MakeRefKey``."""
    key = desc.digest
    ref_name = desc.annotations.get(ANNOTATION_REF_NAME)
    if ref_name:
        key = f"{ref_name}@{desc.digest}"
    media_type = desc.media_type
    if mediatypes.is_manifest(media_type):
        return f"manifest-{key}"
    if mediatypes.is_index(media_type):
        return f"index-{key}"
    if mediatypes.is_layer(media_type):
        return f"layer-{key}"
    if mediatypes.is_config(media_type):
        return f"config-{key}"
    return f"unknown-{key}"


class Throttle:
    """Forwards records to ``report``; repeated byte progress of a node only every ``interval`` seconds."""

    def __init__(self, report: ProgressFn | None, interval: float = 0.1) -> None:
        self._report = report
        self._interval = interval
        self._last: dict[str, tuple[str, float]] = {}
        self._last_named: Progress | None = None

    @property
    def enabled(self) -> bool:
        """Whether anyone listens."""
        return self._report is not None

    def __call__(self, record: Progress) -> None:
        """Forward ``record`` unless it only moves a byte count that was reported a moment ago."""
        if self._report is None:
            return
        now = time.monotonic()
        if record.name:
            last = self._last.get(record.name)
            recent = last is not None and last[0] == record.event and now - last[1] < self._interval
            if recent and record.progress < record.total:
                return
            self._last[record.name] = (record.event, now)
            self._last_named = record
        self._report(record)

    def status(self, event: str, desc: Descriptor | None = None, *, last: bool = False) -> None:
        """A status line (a record with no name).

        ``last``: the transfer's closing status. ctr redraws only when a named
        record arrives, so the last named one is sent again after it, and the
        final screen shows this status.
        """
        self(Progress(event, desc=desc))
        if last and self._last_named is not None:
            self(self._last_named)


class PullRelay:
    """Turns the puller's reports into progress records with parents, as containerd's tracker does.

    The puller stores an index or manifest before it fetches what it lists, so
    when one is reported stored, its children are read from the content store
    and remember it as their parent. Nodes whose parent is not known hang off
    ``root`` (the image name).

    The puller extracts a layer while it still downloads; ctr's display knows
    one state per node, so a layer shows ``downloading`` until its bytes are
    all there, then ``extracting``, then ``extracted``.
    """

    def __init__(self, root: str, store: ContentStore, report: ProgressFn) -> None:
        self.root = root
        self._store = store
        self._report = report
        self._parents: dict[str, list[str]] = {}  # digest -> parent node names
        self._downloaded: set[str] = set()
        self._unpacking: set[str] = set()
        self._exists: set[str] = set()
        self._finished: set[str] = set()

    async def relay(self, ref: str, kind: str, status: str, offset: int, total: int) -> None:
        """Forward one puller report."""
        digest = ref.split("-", 1)[1] if "-" in ref else ref
        name = ref if "-" in ref else f"{kind}-{ref}"
        event = self._event(name, status)
        if event:
            parents = tuple(self._parents.get(digest) or [self.root])
            self._report(Progress(event, name, parents, offset, total))
        if kind in ("index", "manifest") and status in ("done", "exists"):
            await self._learn(name, digest, kind, total)

    def _event(self, name: str, status: str) -> str:
        """The node's new event ("" to report nothing yet, or nothing any more)."""
        if name in self._finished:
            return ""
        if status == "downloaded":
            self._downloaded.add(name)
            return "extracting" if name in self._unpacking else "complete"
        if status == "unpacking":
            self._unpacking.add(name)
            return "extracting" if name in self._downloaded or name in self._exists else ""
        if status == "exists":
            self._exists.add(name)
            return "already exists"
        if status == "done":
            if name in self._unpacking:
                self._finished.add(name)
                return "extracted"
            return "already exists" if name in self._exists else "complete"
        return status  # waiting, downloading

    async def _learn(self, name: str, digest: str, kind: str, size: int) -> None:
        try:
            obj = await walk.parse_stored(self._store, digest, size)
        except errors.WharfError:
            return  # parents stay approximate; progress is no reason to fail a pull
        for child in children(obj):
            parents = self._parents.setdefault(child.digest, [])
            if name not in parents:
                parents.append(name)
