"""Real stores for the CRI image tests: SQLite metadata, the local content store, images built in Python.

Images are written straight into the content store (no registry, no unpack)
and named with image records, which is all the CRI image model reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tests.support.images import (
    AMD64,
    File,
    Image,
    ImageIndex,
    build_image,
    build_index,
    build_layer,
    directory,
)
from wharfd.cri.images import Catalog
from wharfd.runtime import errors, namespaces
from wharfd.runtime.content.local import LocalStore
from wharfd.runtime.content.store import Expected
from wharfd.runtime.images import platforms
from wharfd.runtime.images.manifest import Descriptor as OciDescriptor
from wharfd.runtime.images.platforms import Platform
from wharfd.runtime.metadata.db import Database
from wharfd.runtime.metadata.images import Descriptor, ImageStore
from wharfd.runtime.metadata.images import Image as Record

T = TypeVar("T")
HOST = platforms.host()


@dataclass
class Stores:
    """The stores of one test, in namespace k8s.io."""

    db: Database
    content: LocalStore
    images: ImageStore
    catalog: Catalog


@asynccontextmanager
async def stores(tmp_path: Path) -> AsyncIterator[Stores]:
    """Fresh stores under ``tmp_path``, with the current namespace set to k8s.io."""
    token = namespaces.current.set(namespaces.K8S)
    try:
        async with await Database.open(tmp_path / "metadata.db") as db:
            content = LocalStore(tmp_path / "content", db)
            images = ImageStore(db)
            yield Stores(db, content, images, Catalog(images, content))
    finally:
        namespaces.current.reset(token)


def run(tmp_path: Path, body: Callable[[Stores], Awaitable[T]]) -> T:
    """Run ``body`` with fresh stores on a new event loop."""

    async def main() -> T:
        async with stores(tmp_path) as s:
            return await body(s)

    return asyncio.run(main())


def small_image(
    tag: str = "a", *, user: str = "", platform: Platform | None = None, layers: int = 1
) -> Image:
    """A tiny image whose files (and so digests) depend on ``tag``."""
    built = [
        build_layer([directory("etc"), File(f"etc/{tag}-{i}", f"{tag} {i}\n".encode())])
        for i in range(layers)
    ]
    return build_image(built, cmd=["sh"], user=user, platform=platform or HOST)


async def write_blob(
    content: LocalStore, data: bytes, digest: str, labels: Mapping[str, str] | None = None
) -> None:
    """Commit ``data`` to the content store (already there is fine)."""
    try:
        async with content.writer(f"test-{digest}", Expected(digest, len(data))) as w:
            await w.write(data)
            await w.commit(len(data), digest, labels)
    except errors.AlreadyExists:
        pass


async def store_image(content: LocalStore, image: Image) -> Descriptor:
    """Write an image's layers, config and manifest; return the manifest as an image target."""
    for layer in image.layers:
        await write_blob(content, layer.blob, layer.descriptor.digest)
    await write_blob(content, image.config, image.config_desc.digest)
    await write_blob(content, image.manifest, image.manifest_desc.digest)
    return target_of(image.manifest_desc)


async def store_index(content: LocalStore, index: ImageIndex) -> Descriptor:
    """Write every image of ``index`` and the index itself; return the index as an image target."""
    for image in index.images:
        await store_image(content, image)
    await write_blob(content, index.data, index.desc.digest)
    return target_of(index.desc)


def target_of(desc: OciDescriptor) -> Descriptor:
    """An image record's target for an OCI descriptor."""
    return Descriptor(desc.media_type, desc.digest, desc.size)


async def name(
    s: Stores, names: list[str], target: Descriptor, labels: Mapping[str, str] | None = None
) -> None:
    """Create image records ``names`` → ``target``."""
    for n in names:
        await s.images.create(Record(name=n, target=target, labels=dict(labels or {})))


def expected_size(image: Image, index: ImageIndex | None = None) -> int:
    """containerd's CRI size: the index (if any), manifest, config and layers, as descriptors say."""
    size = (
        image.manifest_desc.size
        + image.config_desc.size
        + sum(layer.descriptor.size for layer in image.layers)
    )
    return size + (index.desc.size if index is not None else 0)


def other_platform() -> Platform:
    """A platform this host does not run."""
    return Platform("linux", "s390x") if HOST.architecture != "s390x" else Platform("linux", "ppc64le")


__all__ = ["AMD64", "build_index"]
