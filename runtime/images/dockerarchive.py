"""``docker save`` archives: turn ``manifest.json`` and its files into schema 2 manifests and an index.

A Docker archive lists its images in ``manifest.json``::

    [{"Config": "<id>.json", "RepoTags": ["busybox:1"], "Layers": ["<id>/layer.tar", ...]}]

with paths into the archive (legacy layout) or ``blobs/sha256/<hex>``
(Docker 25+). Every file was already ingested as a blob by the importer; here
each entry becomes a Docker schema 2 manifest whose layer media types follow
the bytes (gzip or zstd magic, else plain tar), with the platform of its
config, and the index names each manifest once per RepoTag, normalized
(``busybox:1`` is ``docker.io/library/busybox:1``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from wharfd.runtime import errors
from wharfd.runtime.content.store import ContentStore, Expected
from wharfd.runtime.images import mediatypes, walk
from wharfd.runtime.images.destination import ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, oci_ref_name
from wharfd.runtime.images.layer import Compression, sniff
from wharfd.runtime.images.manifest import Descriptor, digest_of
from wharfd.runtime.images.platforms import Platform, normalize
from wharfd.runtime.images.reference import parse_normalized
from wharfd.runtime.images.tarstream import clean_name

_LAYER_TYPES = {
    Compression.GZIP: mediatypes.DOCKER_LAYER_GZIP,
    Compression.ZSTD: mediatypes.DOCKER_LAYER_ZSTD,
    Compression.NONE: mediatypes.DOCKER_LAYER,
}


@dataclass(frozen=True)
class DockerImage:
    """One entry of ``manifest.json``."""

    config: str
    repo_tags: tuple[str, ...]
    layers: tuple[str, ...]

    @classmethod
    def parse_all(cls, data: bytes) -> list[DockerImage]:
        """Validate and read ``manifest.json``."""
        what = "image archive manifest.json"
        try:
            obj = json.loads(data)
        except ValueError as exc:
            raise errors.InvalidArgument(f"{what}: not valid JSON: {exc}") from exc
        if not isinstance(obj, list):
            raise errors.InvalidArgument(f"{what}: expected a list of images")
        return [cls._one(entry, f"{what}[{i}]") for i, entry in enumerate(obj)]

    @classmethod
    def _one(cls, entry: Any, what: str) -> DockerImage:
        if not isinstance(entry, dict):
            raise errors.InvalidArgument(f"{what}: expected an object")
        config = entry.get("Config")
        if not isinstance(config, str) or not config:
            raise errors.InvalidArgument(f"{what}.Config: expected a file name")
        tags, layers = entry.get("RepoTags") or [], entry.get("Layers") or []
        for key, value in (("RepoTags", tags), ("Layers", layers)):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise errors.InvalidArgument(f"{what}.{key}: expected a list of strings")
        return cls(config, tuple(tags), tuple(layers))


async def docker_index(
    store: ContentStore, images: Sequence[DockerImage], blobs: Mapping[str, Descriptor], ref_prefix: str
) -> Descriptor:
    """Write a manifest per image and an index over them; return the index's descriptor."""
    entries: list[dict[str, Any]] = []
    for i, image in enumerate(images):
        desc = await _manifest(store, image, blobs, f"{ref_prefix}-{i}")
        names = [_normalized(tag) for tag in image.repo_tags]
        if not names:
            entries.append(_entry(desc, {}))
        for name in names:
            entries.append(
                _entry(desc, {ANNOTATION_IMAGE_NAME: name, ANNOTATION_REF_NAME: oci_ref_name(name)})
            )
    index = {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": entries}
    return await write_json(store, index, mediatypes.OCI_INDEX, f"{ref_prefix}-index")


def _entry(desc: Descriptor, annotations: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"mediaType": desc.media_type, "digest": desc.digest, "size": desc.size}
    if annotations:
        out["annotations"] = dict(sorted(annotations.items()))
    if desc.platform is not None:
        out["platform"] = desc.platform.to_json()
    return out


def _normalized(tag: str) -> str:
    try:
        return str(parse_normalized(tag))
    except errors.InvalidArgument as exc:
        raise errors.InvalidArgument(f"image archive manifest.json: RepoTags: {exc}") from exc


def _find(blobs: Mapping[str, Descriptor], name: str, what: str) -> Descriptor:
    found = blobs.get(clean_name(name, what=f"manifest.json {what}"))
    if found is None:
        raise errors.InvalidArgument(
            f'image archive: {what} "{name}" named in manifest.json is not in the archive'
        )
    return found


async def _manifest(
    store: ContentStore, image: DockerImage, blobs: Mapping[str, Descriptor], ref: str
) -> Descriptor:
    found = _find(blobs, image.config, "image config")
    config = Descriptor(mediatypes.DOCKER_CONFIG, found.digest, found.size)
    layers = []
    for name in image.layers:
        blob = _find(blobs, name, "layer")
        layers.append(Descriptor(await _layer_type(store, blob), blob.digest, blob.size))
    manifest = {
        "schemaVersion": 2,
        "mediaType": mediatypes.DOCKER_MANIFEST,
        "config": {"mediaType": config.media_type, "digest": config.digest, "size": config.size},
        "layers": [{"mediaType": d.media_type, "digest": d.digest, "size": d.size} for d in layers],
    }
    desc = await write_json(store, manifest, mediatypes.DOCKER_MANIFEST, ref)
    platform = await _platform(store, config)
    return Descriptor(desc.media_type, desc.digest, desc.size, platform=platform)


async def _layer_type(store: ContentStore, blob: Descriptor) -> str:
    path = await store.open_blob(blob.digest)
    head = await asyncio.to_thread(_head, str(path))
    return _LAYER_TYPES[sniff(head)]


def _head(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(16)


async def _platform(store: ContentStore, config: Descriptor) -> Platform | None:
    obj = await walk.config_platform_of(store, config)
    if not obj.get("os") and not obj.get("architecture"):
        return None
    return normalize(Platform.from_json(obj, what=f"image config {config.digest}"))


async def write_json(store: ContentStore, obj: object, media_type: str, ref: str) -> Descriptor:
    """Store ``obj`` as compact JSON; return its descriptor."""
    data = json.dumps(obj, separators=(",", ":")).encode()
    desc = Descriptor(media_type, digest_of(data), len(data))
    await write_blob(store, ref, data, desc)
    return desc


async def write_blob(store: ContentStore, ref: str, data: bytes, desc: Descriptor) -> None:
    """Store ``data`` (which must hash to ``desc``) unless the namespace already has it."""
    try:
        async with store.writer(ref, Expected(desc.digest, desc.size, desc.media_type)) as writer:
            if writer.offset != desc.size:  # else shared from another namespace: commit as is
                if writer.offset:
                    await writer.truncate(0)
                await writer.write(data)
            await writer.commit(desc.size, desc.digest)
    except errors.AlreadyExists:
        pass
