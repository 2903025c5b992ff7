"""Image archives: export images as an OCI layout tar, import OCI layout and ``docker save`` tars.

Export writes, sorted by name as containerd does::

    blobs/  blobs/sha256/  blobs/sha256/<hex>...   every blob of the chosen images
    index.json      one entry per image: its target, annotated with
                    io.containerd.image.name and org.opencontainers.image.ref.name
    manifest.json   Docker's view (Config, RepoTags, Layers) of one manifest per
                    image, for ``docker load``; left out on request
    oci-layout      {"imageLayoutVersion":"1.0.0"}

An index target brings the manifests that match the platforms (all of them
with ``all_platforms``); its best match is the one manifest.json describes.
Every blob is checked to exist before the first byte goes out, and re-hashed
while it is copied.

Import reads the tar as a stream and ingests every regular file as a blob
(``blobs/sha256/<hex>`` must hash to ``<hex>``). With ``oci-layout`` the
archive's ``index.json`` is the result; a Docker archive (``manifest.json``,
legacy layer directories, symlinked layers) gets a Docker schema 2 manifest
per image and an index naming them by their RepoTags. Nothing is named or
labelled here: the caller walks the index (:mod:`~wharfd.runtime.images.walk`)
and records images (:mod:`~wharfd.runtime.images.destination`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import zstandard

from wharfd.runtime import errors
from wharfd.runtime.content.store import ContentStore, Expected
from wharfd.runtime.images import mediatypes, tarstream, walk
from wharfd.runtime.images.destination import ANNOTATION_REF_SOURCE, annotate
from wharfd.runtime.images.dockerarchive import DockerImage, docker_index
from wharfd.runtime.images.layer import Compression, sniff
from wharfd.runtime.images.manifest import Descriptor, Index, parse_index
from wharfd.runtime.images.platforms import Matcher, Ordered
from wharfd.runtime.images.reference import parse
from wharfd.runtime.metadata.images import Image

LAYOUT_FILE = "oci-layout"
LAYOUT_VERSION = "1.0.0"
INDEX_FILE = "index.json"
DOCKER_MANIFEST_FILE = "manifest.json"
# containerd's bound on the JSON files of an archive.
JSON_LIMIT = 20 << 20
_BLOB_NAME = re.compile(r"^blobs/sha256/([a-f0-9]{64})$")

Sink = Callable[[bytes], Awaitable[object]]


@dataclass(frozen=True)
class ExportOptions:
    """What to put in an export."""

    # Preferred platforms, best first; empty means this host's platform only.
    platforms: Matcher = field(default_factory=lambda: Ordered(()))
    all_platforms: bool = False
    skip_manifest_json: bool = False
    skip_non_distributable: bool = False


def blob_name(digest: str) -> str:
    """``blobs/<algorithm>/<hex>``."""
    algorithm, _, hexpart = digest.partition(":")
    return f"blobs/{algorithm}/{hexpart}"


def go_json(obj: object) -> bytes:
    """JSON as Go's encoder writes it: compact, in the given key order, ``<>&`` escaped."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


def descriptor_json(desc: Descriptor) -> dict[str, Any]:
    """An OCI descriptor object in Go's field order."""
    out: dict[str, Any] = {"mediaType": desc.media_type, "digest": desc.digest, "size": desc.size}
    if desc.urls:
        out["urls"] = list(desc.urls)
    if desc.annotations:
        out["annotations"] = dict(sorted(desc.annotations.items()))
    if desc.platform is not None:
        out["platform"] = desc.platform.to_json()
    if desc.artifact_type:
        out["artifactType"] = desc.artifact_type
    return out


# --- export ------------------------------------------------------------------------


@dataclass
class _Plan:
    blobs: dict[str, Descriptor] = field(default_factory=dict)  # by digest, in walk order
    targets: list[Descriptor] = field(default_factory=list)  # index.json entries
    docker: dict[str, tuple[Descriptor, list[str]]] = field(default_factory=dict)  # manifest -> names


async def export(store: ContentStore, images: Sequence[Image], sink: Sink, opts: ExportOptions) -> None:
    """Write ``images`` as an OCI layout tar into ``sink``."""
    plan = _Plan()
    for image in images:
        await _plan_image(store, image, plan, opts)
    if opts.skip_non_distributable:
        plan.blobs = {
            d: b for d, b in plan.blobs.items() if not mediatypes.is_non_distributable(b.media_type)
        }
    for desc in plan.blobs.values():  # fail before writing anything
        info = await store.info(desc.digest)
        if info.size != desc.size:
            raise errors.DataLoss(
                f"content {desc.digest}: stored size {info.size}, descriptor says {desc.size}"
            )
    files = {
        LAYOUT_FILE: go_json({"imageLayoutVersion": LAYOUT_VERSION}),
        INDEX_FILE: go_json(
            {
                "schemaVersion": 2,
                "mediaType": mediatypes.OCI_INDEX,
                "manifests": [descriptor_json(t) for t in plan.targets],
            }
        ),
    }
    if not opts.skip_manifest_json and plan.docker:
        files[DOCKER_MANIFEST_FILE] = go_json(await _docker_manifests(store, plan))
    entries: dict[str, Descriptor | bytes | None] = {n: b for n, b in files.items()}
    if plan.blobs:
        entries["blobs/"] = entries["blobs/sha256/"] = None
    entries.update({blob_name(d.digest): d for d in plan.blobs.values()})
    for name in sorted(entries):
        await _write_entry(store, sink, name, entries[name])
    await sink(tarstream.END)


async def _write_entry(store: ContentStore, sink: Sink, name: str, what: Descriptor | bytes | None) -> None:
    if what is None:
        await sink(tarstream.header(name, mode=0o755, directory=True))
    elif isinstance(what, bytes):
        mode = 0o444 if name == LAYOUT_FILE else 0o644
        await sink(tarstream.header(name, len(what), mode=mode) + what + tarstream.padding(len(what)))
    else:
        await sink(tarstream.header(name, what.size, mode=0o444))
        async for chunk in walk.blob_chunks(store, what):
            await sink(chunk)
        await sink(tarstream.padding(what.size))


async def _plan_image(store: ContentStore, image: Image, plan: _Plan, opts: ExportOptions) -> None:
    target = walk.from_record(annotate(image.target, image.name))
    info = await store.info(target.digest)
    sources = {k: v for k, v in info.labels.items() if k.startswith(walk.DISTRIBUTION_SOURCE)}
    target = Descriptor(
        target.media_type, target.digest, target.size, annotations={**target.annotations, **sources}
    )
    plan.targets.append(target)
    if mediatypes.is_manifest(target.media_type):
        await _add_tree(store, target, plan)
        plan.docker.setdefault(target.digest, (target, []))[1].append(image.name)
    elif mediatypes.is_index(target.media_type):
        plan.blobs.setdefault(target.digest, target)
        index = await walk.read_index_or_manifest(store, target)
        assert isinstance(index, Index)
        chosen = await _plan_index(store, index, plan, opts)
        if chosen is None:
            raise errors.NotFound(f'image "{image.name}": no manifest for the requested platform')
        plan.docker.setdefault(chosen.digest, (chosen, []))[1].append(image.name)
    else:
        raise errors.InvalidArgument(
            f'image "{image.name}": only manifests and indexes can be exported, not "{target.media_type}"'
        )


async def _plan_index(
    store: ContentStore, index: Index, plan: _Plan, opts: ExportOptions
) -> Descriptor | None:
    candidates: list[Descriptor] = []
    for entry in index.manifests:
        if entry.platform is None or opts.platforms.match(entry.platform):
            candidates.append(entry)
        elif not opts.all_platforms:
            continue
        await _add_tree(store, entry, plan)

    def rank(d: Descriptor) -> tuple[int, int]:
        if d.platform is None:
            return (1, 0)
        found = opts.platforms.rank(d.platform)
        return (0, found if found is not None else 1 << 30)

    return min(candidates, key=rank) if candidates else None


async def _add_tree(store: ContentStore, desc: Descriptor, plan: _Plan) -> None:
    plan.blobs.setdefault(desc.digest, desc)
    for child in await walk.children(store, desc):
        await _add_tree(store, child, plan)


async def _docker_manifests(store: ContentStore, plan: _Plan) -> list[dict[str, Any]]:
    out = []
    for desc, names in plan.docker.values():
        manifest = await walk.read_index_or_manifest(store, desc)
        if isinstance(manifest, Index):
            continue
        tags = [t for t in (_familiar(n) for n in names) if t]
        out.append(
            {
                "Config": blob_name(manifest.config.digest),
                "RepoTags": tags or None,
                "Layers": [blob_name(layer.digest) for layer in manifest.layers],
            }
        )
    return out


def _familiar(name: str) -> str:
    """``docker.io/library/busybox:1`` as Docker lists it (``busybox:1``); "" if it is no reference."""
    try:
        ref = parse(name)
    except errors.InvalidArgument:
        return ""
    if not ref.tag and not ref.digest:
        ref = ref.with_tag("latest")
    return ref.familiar()


# --- import ------------------------------------------------------------------------


async def decompressed(source: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The tar inside a gzip or zstd stream, told by its first bytes; a plain tar passes through.

    Decompression runs in a thread, a piece at a time.
    """
    head = b""
    async for piece in source:
        head += piece
        if len(head) >= 4:
            break
    kind = sniff(head)
    if kind is Compression.NONE:
        if head:
            yield head
        async for piece in source:
            yield piece
        return
    decoder = _Decoder(kind)
    if out := await asyncio.to_thread(decoder.feed, head):
        yield out
    async for piece in source:
        if out := await asyncio.to_thread(decoder.feed, piece):
            yield out
    decoder.finish()


class _Decoder:
    """Incremental gzip (several members allowed) or zstd decompression."""

    def __init__(self, kind: Compression) -> None:
        self._kind = kind
        self._gzip = zlib.decompressobj(wbits=31)
        self._open = False
        self._zstd = zstandard.ZstdDecompressor().decompressobj() if kind is Compression.ZSTD else None

    def feed(self, data: bytes) -> bytes:
        if self._zstd is not None:
            try:
                return bytes(self._zstd.decompress(data))
            except zstandard.ZstdError as exc:
                raise errors.InvalidArgument(f"image archive: bad zstd stream: {exc}") from exc
        out = bytearray()
        try:
            while data:
                self._open = True
                out += self._gzip.decompress(data)
                data = self._gzip.unused_data
                if self._gzip.eof:  # another member may follow
                    self._gzip, self._open = zlib.decompressobj(wbits=31), False
        except zlib.error as exc:
            raise errors.InvalidArgument(f"image archive: bad gzip stream: {exc}") from exc
        return bytes(out)

    def finish(self) -> None:
        if self._open:
            raise errors.InvalidArgument("image archive: the gzip stream ends early")


@dataclass
class _Contents:
    layout: dict[str, Any] | None = None
    docker: list[DockerImage] | None = None
    blobs: dict[str, Descriptor] = field(default_factory=dict)  # archive name -> blob (no media type)
    links: dict[str, str] = field(default_factory=dict)


async def import_archive(store: ContentStore, source: AsyncIterator[bytes]) -> Descriptor:
    """Ingest the archive's files as blobs; return the descriptor of the index that names its images."""
    contents = _Contents()
    reader = tarstream.TarReader(source)
    prefix = f"import-{secrets.token_hex(6)}"
    while (entry := await reader.next()) is not None:
        if entry.is_symlink:
            contents.links[entry.name] = tarstream.link_target(entry)
        elif not entry.is_file:
            continue
        elif entry.name == LAYOUT_FILE:
            contents.layout = _json_object(await reader.read_all(JSON_LIMIT, LAYOUT_FILE), LAYOUT_FILE)
        elif entry.name == DOCKER_MANIFEST_FILE:
            data = await reader.read_all(JSON_LIMIT, DOCKER_MANIFEST_FILE)
            contents.docker = DockerImage.parse_all(data)
        else:
            contents.blobs[entry.name] = await _ingest(store, reader, entry, f"{prefix}-{entry.name}")
    if contents.layout is not None:
        return await _oci_index(store, contents)
    if contents.docker is not None:
        return await docker_index(store, contents.docker, _resolve_links(contents), f"{prefix}-docker")
    raise errors.InvalidArgument(
        f"unrecognized image archive: it has neither {LAYOUT_FILE} (OCI layout) "
        f"nor {DOCKER_MANIFEST_FILE} (docker save)"
    )


def _json_object(data: bytes, name: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except ValueError as exc:
        raise errors.InvalidArgument(f"image archive: {name}: not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise errors.InvalidArgument(f"image archive: {name}: expected a JSON object")
    return obj


async def _ingest(
    store: ContentStore, reader: tarstream.TarReader, entry: tarstream.Entry, ref: str
) -> Descriptor:
    """Write one archive file into the content store; its name, if a blob path, must match its digest."""
    match = _BLOB_NAME.match(entry.name)
    expected = Expected(f"sha256:{match.group(1)}", entry.size) if match else Expected(size=entry.size)
    try:
        writer = await store.open_writer(ref, expected)
    except errors.AlreadyExists:
        async for _ in reader.data():
            pass
        return Descriptor("", expected.digest, entry.size)
    try:
        if expected.digest and writer.offset == entry.size:
            async for _ in reader.data():  # another namespace has the blob: nothing to copy
                pass
        else:
            if writer.offset:
                await writer.truncate(0)  # an ingest left by an earlier attempt
            async for chunk in reader.data():
                await writer.write(chunk)
        await writer.flush()
        digest = writer.digest()
        if expected.digest and digest != expected.digest:
            raise errors.DataLoss(f'image archive entry "{entry.name}": content has digest {digest}')
        await writer.commit(entry.size, digest)
    except errors.AlreadyExists:
        pass  # stored meanwhile, by someone else: same bytes
    except BaseException:
        await writer.close()
        await _abort(store, ref)
        raise
    return Descriptor("", digest, entry.size)


async def _abort(store: ContentStore, ref: str) -> None:
    with contextlib.suppress(errors.NotFound):
        await store.abort(ref)


async def _oci_index(store: ContentStore, contents: _Contents) -> Descriptor:
    assert contents.layout is not None
    version = contents.layout.get("imageLayoutVersion")
    if version != LAYOUT_VERSION:
        raise errors.InvalidArgument(f"image archive: unsupported OCI layout version {version!r}")
    found = contents.blobs.get(INDEX_FILE)
    if found is None:
        raise errors.InvalidArgument(f"image archive: OCI layout without {INDEX_FILE}")
    desc = Descriptor(mediatypes.OCI_INDEX, found.digest, found.size)
    data = await walk.read_blob(store, desc)
    parse_index(data, what=f"image archive {INDEX_FILE}")  # refuse a malformed index now, by name
    return desc


def _resolve_links(contents: _Contents) -> dict[str, Descriptor]:
    blobs = dict(contents.blobs)
    for name, target in contents.links.items():
        if target not in contents.blobs:
            raise errors.InvalidArgument(
                f'image archive: symlink "{name}" points at "{target}", which is not in it'
            )
        blobs[name] = contents.blobs[target]
    return blobs


async def named_entries(store: ContentStore, root: Descriptor) -> list[Descriptor]:
    """The entries of an imported index, marked so that image names come from their annotations."""
    index = parse_index(await walk.read_blob(store, root), what=f"imported index {root.digest}")
    marked = {ANNOTATION_REF_SOURCE: "annotation"}
    return [replace(entry, annotations={**entry.annotations, **marked}) for entry in index.manifests]
