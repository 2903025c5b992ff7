"""The image store: names pointing at a target descriptor (an index or a manifest), per namespace.

An image record owns nothing by itself: its target keeps content alive through
garbage collection (the target and everything it references through
``containerd.io/gc.ref.*`` labels). Names are unique per namespace; the CRI
keeps three records per pulled image (``name:tag``, ``name@digest`` and
``sha256:<config>``), all pointing at the same target.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from wharfd.runtime import errors, filters, namespaces
from wharfd.runtime.content.store import parse_digest
from wharfd.runtime.metadata import labels as label_rules
from wharfd.runtime.metadata.db import Database, utcnow
from wharfd.runtime.metadata.namespaces import create_if_missing

_FIELD = "image.Labels"


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Image:
    """A named image in one namespace."""

    name: str
    target: Descriptor
    labels: dict[str, str] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None


def validate(image: Image) -> None:
    """Check what containerd checks before storing an image."""
    if not image.name:
        raise errors.InvalidArgument("image name must not be empty")
    if not image.target.media_type:
        raise errors.InvalidArgument(f'image "{image.name}": target.media_type must not be empty')
    parse_digest(image.target.digest, field=f'image "{image.name}": target.digest')
    if image.target.size < 0:
        raise errors.InvalidArgument(f'image "{image.name}": target.size must not be negative')
    label_rules.validate_all(image.labels, field=_FIELD)


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def _row(row: sqlite3.Row | tuple[object, ...]) -> Image:
    name, media_type, digest, size, annotations, labels, created, updated = row
    return Image(
        name=str(name),
        target=Descriptor(str(media_type), str(digest), int(str(size)), json.loads(str(annotations))),
        labels=json.loads(str(labels)),
        created_at=_time(str(created)),
        updated_at=_time(str(updated)),
    )


_SELECT_ONE = (
    "SELECT name, target_media_type, target_digest, target_size, target_annotations, labels, created_at,"
    " updated_at FROM images WHERE namespace=? AND name=?"
)
_SELECT_ALL = (
    "SELECT name, target_media_type, target_digest, target_size, target_annotations, labels, created_at,"
    " updated_at FROM images WHERE namespace=? ORDER BY name"
)
_INSERT = (
    "INSERT INTO images (namespace, name, target_media_type, target_digest, target_size, target_annotations,"
    " labels, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _select(conn: sqlite3.Connection, ns: str, name: str) -> Image | None:
    row = conn.execute(_SELECT_ONE, (ns, name)).fetchone()
    return None if row is None else _row(row)


def adaptor(image: Image) -> filters.Adaptor:
    """Fields for containerd's image filters: name, target.mediatype, target.digest, labels.<k>."""

    def get(path: Sequence[str]) -> str | None:
        if not path:
            return None
        if path[0] == "name":
            return image.name
        if path[0] == "target" and len(path) == 2:
            return {"mediatype": image.target.media_type, "digest": image.target.digest}.get(path[1])
        return filters.labels_adaptor(image.labels, path)

    return get


class ImageStore:
    """Images over the metadata database, in the current call's namespace."""

    def __init__(self, db: Database) -> None:
        self._db = db
        # Bumped after every write (this process owns the database): caches of what the images
        # say (the CRI's ContainerStatus) stay valid while it is unchanged.
        self.generation = 0
        # Every image of a namespace as of a generation: kubelet lists images every few seconds,
        # and answering from memory spares each call a trip through a reader thread.
        self._listed: dict[str, tuple[int, builtins.list[Image]]] = {}

    async def _write(self, fn: Callable[[sqlite3.Connection], Image]) -> Image:
        # Bumped once the transaction has ended, even when the caller went away meanwhile:
        # a reader that saw the new generation then reads the new rows.
        write = asyncio.ensure_future(self._db.write(fn))
        write.add_done_callback(self._bump)
        return await asyncio.shield(write)

    def _bump(self, _: object) -> None:
        self.generation += 1

    async def get(self, name: str) -> Image:
        """The image called ``name``; NotFound otherwise."""
        ns = namespaces.required()

        def read(conn: sqlite3.Connection) -> Image:
            image = _select(conn, ns, name)
            if image is None:
                raise errors.NotFound(f'image "{name}": not found')
            return image

        return await self._db.read(read)

    async def list(self, filter_strings: Iterable[str] = ()) -> builtins.list[Image]:
        """Images matching any of the filters, sorted by name."""
        ns = namespaces.required()
        flt = filters.parse(filter_strings)
        # Copies: a caller may change the labels it got.
        return [
            replace(img, labels=dict(img.labels)) for img in await self._all(ns) if flt.matches(adaptor(img))
        ]

    async def _all(self, ns: str) -> builtins.list[Image]:
        # The generation is read before the rows: rows read after a write's bump are never
        # stored under the generation before it (see _write).
        generation = self.generation
        cached = self._listed.get(ns)
        if cached is not None and cached[0] == generation:
            return cached[1]

        def read(conn: sqlite3.Connection) -> builtins.list[Image]:
            return [_row(r) for r in conn.execute(_SELECT_ALL, (ns,))]

        rows = await self._db.read(read)
        # Entries of older generations are dropped: only namespaces listed since the last write stay.
        self._listed = {k: v for k, v in self._listed.items() if v[0] == generation}
        self._listed[ns] = (generation, rows)
        return rows

    async def create(self, image: Image) -> Image:
        """Store a new image; AlreadyExists when the name is taken."""
        validate(image)
        ns = namespaces.required()

        def write(conn: sqlite3.Connection) -> Image:
            create_if_missing(conn, ns)
            now = utcnow()
            try:
                conn.execute(_INSERT, (ns, *_values(image), now, now))
            except sqlite3.IntegrityError:
                raise errors.AlreadyExists(f'image "{image.name}": already exists') from None
            stored = _select(conn, ns, image.name)
            assert stored is not None
            return stored

        return await self._write(write)

    async def update(self, image: Image, paths: Sequence[str] = ()) -> Image:
        """Update an image's labels and/or target by field paths (none: replace both)."""
        ns = namespaces.required()
        if not image.name:
            raise errors.InvalidArgument("image name must not be empty")

        def write(conn: sqlite3.Connection) -> Image:
            current = _select(conn, ns, image.name)
            if current is None:
                raise errors.NotFound(f'image "{image.name}": not found')
            updated = _apply(current, image, builtins.list(paths))
            validate(updated)
            conn.execute(
                "UPDATE images SET target_media_type=?, target_digest=?, target_size=?, target_annotations=?,"
                " labels=?, updated_at=? WHERE namespace=? AND name=?",
                (*_values(updated)[1:], utcnow(), ns, image.name),
            )
            stored = _select(conn, ns, image.name)
            assert stored is not None
            return stored

        return await self._write(write)

    async def delete(self, name: str, *, target_digest: str | None = None) -> Image:
        """Remove an image record (content is left to garbage collection); NotFound if absent.

        With ``target_digest``, refuse (FailedPrecondition) when the image now
        points elsewhere, as containerd's conditional delete does.
        """
        ns = namespaces.required()

        def write(conn: sqlite3.Connection) -> Image:
            image = _select(conn, ns, name)
            if image is None:
                raise errors.NotFound(f'image "{name}": not found')
            if target_digest and image.target.digest != target_digest:
                raise errors.FailedPrecondition(
                    f'image "{name}": target is {image.target.digest}, not {target_digest}'
                )
            conn.execute("DELETE FROM images WHERE namespace=? AND name=?", (ns, name))
            return image

        return await self._write(write)


def _values(image: Image) -> tuple[object, ...]:
    t = image.target
    return (
        image.name,
        t.media_type,
        t.digest,
        t.size,
        json.dumps(t.annotations, sort_keys=True),
        json.dumps({k: v for k, v in image.labels.items() if v}, sort_keys=True),
    )


def _apply(current: Image, new: Image, paths: builtins.list[str]) -> Image:
    if not paths:
        return Image(current.name, new.target, {k: v for k, v in new.labels.items() if v}, current.created_at)
    labels = label_rules.apply_paths(current.labels, new.labels, paths, field=_FIELD)
    target = current.target
    for path in paths:
        if path == "target":
            target = new.target
        elif path == "annotations":
            target = Descriptor(target.media_type, target.digest, target.size, dict(new.target.annotations))
        elif path.startswith("annotations."):
            key = path[len("annotations.") :]
            annotations = dict(target.annotations)
            if new.target.annotations.get(key):
                annotations[key] = new.target.annotations[key]
            else:
                annotations.pop(key, None)
            target = Descriptor(target.media_type, target.digest, target.size, annotations)
        elif not (path == "labels" or path.startswith("labels.")):
            raise errors.InvalidArgument(f'cannot update "{path}" field on image "{current.name}"')
    return Image(current.name, target, current.labels if labels is None else labels, current.created_at)


def descriptor_from(mapping: Mapping[str, object]) -> Descriptor:
    """A Descriptor from an OCI JSON descriptor object."""
    annotations = mapping.get("annotations") or {}
    assert isinstance(annotations, dict)
    return Descriptor(
        media_type=str(mapping.get("mediaType", "")),
        digest=str(mapping.get("digest", "")),
        size=int(str(mapping.get("size", 0))),
        annotations={str(k): str(v) for k, v in annotations.items()},
    )
