"""Walking an image through the content store: read small blobs, list children, label edges.

Import, export and push all see an image as a tree of descriptors (index →
manifests → config and layers) whose nodes are blobs in the content store.
This module reads those nodes (bounded in size, digest-verified), filters an
index's entries by platform, and writes the garbage-collection labels that tie
a parent blob to its children (the pull's scheme, :mod:`~wharfd.runtime.images.labels`:
``gc.ref.content.m.<i>`` on an index, ``.config`` and ``.l.<i>`` on a manifest).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from wharfd.runtime import errors
from wharfd.runtime.content.store import ContentStore, Info
from wharfd.runtime.images import labels, manifest, mediatypes
from wharfd.runtime.images.manifest import (
    MAX_CONFIG_SIZE,
    MAX_MANIFEST_SIZE,
    Descriptor,
    Index,
    Manifest,
    parse_index,
    parse_manifest,
    verify,
)
from wharfd.runtime.images.platforms import Matcher
from wharfd.runtime.metadata import images as records

T = TypeVar("T")
DISTRIBUTION_SOURCE = labels.DISTRIBUTION_SOURCE
# Blob files are read in pieces of this size (off the event loop).
READ_CHUNK = 1 << 20


def to_record(desc: Descriptor) -> records.Descriptor:
    """The image-store form of a descriptor (platform and URLs are not kept there)."""
    return records.Descriptor(desc.media_type, desc.digest, desc.size, dict(desc.annotations))


def from_record(desc: records.Descriptor) -> Descriptor:
    """A walkable descriptor from an image record's target."""
    return Descriptor(desc.media_type, desc.digest, desc.size, annotations=dict(desc.annotations))


async def read_blob(store: ContentStore, desc: Descriptor, *, limit: int = MAX_MANIFEST_SIZE) -> bytes:
    """The whole of a small blob (manifest, index, config), size-bounded and digest-verified."""
    if desc.size > limit:
        raise errors.ResourceExhausted(f"{desc.digest} is {desc.size} bytes; the limit is {limit}")
    path = await store.open_blob(desc.digest)
    return await asyncio.to_thread(_read_verified, str(path), desc, limit)


def _read_verified(path: str, desc: Descriptor, limit: int) -> bytes:
    # One more byte than the limit: a file longer than its descriptor fails the size check.
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    verify(desc, data)  # hashing up to 4 MiB: here, off the event loop
    return data


# Documents larger than this are parsed on a worker thread (JSON of up to 4 MiB takes tens of ms).
PARSE_INLINE = 64 << 10


async def parse_sized(parse: Callable[..., T], data: bytes, **kwargs: Any) -> T:
    """``parse(data, **kwargs)``: on a worker thread when ``data`` is large, else here."""
    if len(data) > PARSE_INLINE:
        return await asyncio.to_thread(parse, data, **kwargs)
    return parse(data, **kwargs)


async def read_index_or_manifest(store: ContentStore, desc: Descriptor) -> Index | Manifest:
    """Parse the index or manifest ``desc`` names."""
    data = await read_blob(store, desc)
    what = f"{'index' if mediatypes.is_index(desc.media_type) else 'manifest'} {desc.digest}"
    parse = parse_index if mediatypes.is_index(desc.media_type) else parse_manifest
    return await parse_sized(parse, data, media_type=desc.media_type, what=what)


async def parse_stored(store: ContentStore, digest: str, size: int) -> Index | Manifest:
    """A stored index or manifest known only by digest: its body says which it is."""
    data = await read_blob(store, Descriptor("", digest, size))
    try:
        body = json.loads(data)
    except ValueError as exc:
        raise errors.InvalidArgument(f"{digest}: not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise errors.InvalidArgument(f"{digest}: expected a JSON object")
    media_type = body.get("mediaType")
    if not isinstance(media_type, str) or not media_type:
        media_type = mediatypes.OCI_INDEX if "manifests" in body else mediatypes.OCI_MANIFEST
    what = f"{digest}"
    if mediatypes.is_index(media_type):
        return parse_index(data, media_type=media_type, what=what)
    return parse_manifest(data, media_type=media_type, what=what)


async def parsed(store: ContentStore, desc: Descriptor) -> Index | Manifest | None:
    """The index or manifest ``desc`` names; None for other blobs (configs, layers)."""
    if not (mediatypes.is_index(desc.media_type) or mediatypes.is_manifest(desc.media_type)):
        return None
    return await read_index_or_manifest(store, desc)


async def children(store: ContentStore, desc: Descriptor) -> list[Descriptor]:
    """An index's entries, a manifest's config then layers; nothing for other blobs."""
    obj = await parsed(store, desc)
    return [] if obj is None else manifest.children(obj)


def by_platform(kids: Sequence[Descriptor], matcher: Matcher) -> list[Descriptor]:
    """The entries ``matcher`` accepts; entries without a platform always pass (as containerd filters)."""
    return [d for d in kids if d.platform is None or matcher.match(d.platform)]


def kind_of(desc: Descriptor) -> str:
    """``index``, ``manifest``, ``config``, ``layer`` or ``blob``: how messages name a node."""
    if mediatypes.is_index(desc.media_type):
        return "index"
    if mediatypes.is_manifest(desc.media_type):
        return "manifest"
    if mediatypes.is_config(desc.media_type):
        return "config"
    return "layer" if mediatypes.is_layer(desc.media_type) else "blob"


async def walk_tree(
    store: ContentStore, root: Descriptor, matcher: Matcher | None = None, *, label: bool = True
) -> list[Descriptor]:
    """Visit ``root`` and what it references, depth first; return every node visited.

    Index entries are filtered by ``matcher`` (None: keep all). Each parent is
    labelled for all its children (filtered out or not, as containerd does:
    a reference to absent content is harmless), and every kept child must
    exist: NotFound names the child and its parent otherwise.
    """
    visited: list[Descriptor] = []
    seen: set[str] = set()

    async def visit(desc: Descriptor) -> None:
        visited.append(desc)
        if desc.digest in seen:
            return
        seen.add(desc.digest)
        obj = await parsed(store, desc)
        if obj is None:
            return
        kids = manifest.children(obj)
        if label:
            await set_labels(store, desc.digest, labels.children_labels(obj))
        if matcher is not None and mediatypes.is_index(desc.media_type):
            kids = by_platform(kids, matcher)
        for kid in kids:
            if not await exists(store, kid.digest):
                raise errors.NotFound(
                    f"{kind_of(kid)} {kid.digest} of {kind_of(desc)} {desc.digest}: not found in the content store"
                )
            await visit(kid)

    if not await exists(store, root.digest):
        raise errors.NotFound(f"{kind_of(root)} {root.digest}: not found in the content store")
    await visit(root)
    return visited


async def set_labels(store: ContentStore, digest: str, labels: Mapping[str, str]) -> None:
    """Set (only) these labels on a blob."""
    if not labels:
        return
    now = datetime.now(UTC)
    info = Info(digest=digest, size=0, created_at=now, updated_at=now, labels=dict(labels))
    await store.update(info, [f"labels.{k}" for k in labels])


async def exists(store: ContentStore, digest: str) -> bool:
    """Whether the current namespace has the blob."""
    try:
        await store.info(digest)
    except errors.NotFound:
        return False
    return True


async def blob_chunks(store: ContentStore, desc: Descriptor, offset: int = 0) -> AsyncIterator[bytes]:
    """Stream a blob from ``offset``, checking its size, and (from offset 0) its digest at the end."""
    path = await store.open_blob(desc.digest)
    fd = await asyncio.to_thread(os.open, str(path), os.O_RDONLY | os.O_CLOEXEC)
    hasher = hashlib.sha256() if offset == 0 else None
    position = offset
    try:
        while True:
            chunk = await asyncio.to_thread(_read_hashed, fd, position, hasher)
            if not chunk:
                break
            position += len(chunk)
            if position > desc.size:
                raise errors.DataLoss(f"content {desc.digest}: blob is larger than {desc.size} bytes")
            yield chunk
    finally:
        os.close(fd)
    if position != desc.size:
        raise errors.DataLoss(f"content {desc.digest}: blob has {position} bytes, expected {desc.size}")
    if hasher is not None and f"sha256:{hasher.hexdigest()}" != desc.digest:
        raise errors.DataLoss(f"content {desc.digest}: stored bytes have digest sha256:{hasher.hexdigest()}")


def _read_hashed(fd: int, offset: int, hasher: hashlib._Hash | None) -> bytes:
    chunk = os.pread(fd, READ_CHUNK, offset)
    if hasher is not None:
        hasher.update(chunk)
    return chunk


async def config_platform_of(store: ContentStore, config: Descriptor) -> Mapping[str, object]:
    """The raw JSON object of an image config (for its platform fields)."""
    data = await read_blob(store, config, limit=MAX_CONFIG_SIZE)
    try:
        obj = json.loads(data)
    except ValueError as exc:
        raise errors.InvalidArgument(f"image config {config.digest}: not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise errors.InvalidArgument(f"image config {config.digest}: expected a JSON object")
    return obj
