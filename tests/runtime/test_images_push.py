"""Pushing images from the content store to Debian's real docker-registry on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.runtime.test_images_archive import ARM64, Env, put_image, put_index, small_image
from tests.support.images import AMD64, build_index
from tests.support.registry import RegistryServer, run_registry
from wharfd.runtime import errors, namespaces
from wharfd.runtime.content.local import LocalStore
from wharfd.runtime.images import labels, walk
from wharfd.runtime.images.manifest import Descriptor, Index, parse_index
from wharfd.runtime.images.platforms import only_strict
from wharfd.runtime.images.progress import Progress
from wharfd.runtime.images.push import PushOptions, mount_sources, push_image
from wharfd.runtime.metadata import images as records
from wharfd.runtime.metadata.db import Database
from wharfd.runtime.registry import PushResult, Resolver, Transport
from wharfd.runtime.registry.push import BlobSource, Pusher

T = TypeVar("T")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    with run_registry(tmp_path_factory.mktemp("registry")) as server:
        yield server


class Recording(Pusher):
    """A real pusher that remembers what each blob push did."""

    results: dict[str, PushResult]
    manifests: list[tuple[str, str]]

    async def push_blob(
        self,
        desc: Descriptor,
        source: BlobSource,
        *,
        mount_from: Sequence[str] = (),
        chunk_size: int | None = None,
    ) -> PushResult:
        result = await super().push_blob(desc, source, mount_from=mount_from, chunk_size=chunk_size)
        self.results[desc.digest] = result
        return result

    async def push_manifest(self, desc: Descriptor, data: bytes, *, reference: str = "") -> PushResult:
        self.manifests.append((desc.digest, reference))
        return await super().push_manifest(desc, data, reference=reference)


def run(tmp: Path, fn: Callable[[Env, Resolver], Awaitable[T]]) -> T:
    async def main() -> T:
        namespaces.current.set("default")
        async with await Database.open(tmp / "metadata.db") as db, Transport() as transport:
            env = Env(db, LocalStore(tmp / "content", db), records.ImageStore(db))
            return await fn(env, Resolver(transport))

    return asyncio.run(main())


def recording(resolver: Resolver, ref: str) -> Recording:
    pusher = Recording(resolver.transport, resolver.pusher(ref).ref)
    pusher.results, pusher.manifests = {}, []
    return pusher


def test_push_index_then_head_skip_then_cross_repo_mount(tmp_path: Path, registry: RegistryServer) -> None:
    amd, arm = small_image("amd-push"), small_image("arm-push", ARM64)
    index = build_index([amd, arm])
    blobs = [d.digest for i in (amd, arm) for d in (i.config_desc, *(x.descriptor for x in i.layers))]
    events: list[Progress] = []

    async def go(env: Env, resolver: Resolver) -> tuple[Recording, Recording, Recording]:
        await put_index(env, index)
        first = recording(resolver, registry.ref("team/base:1"))
        await push_image(env.store, first, index.desc, PushOptions(progress=events.append, root_name="base"))
        _name, desc = await resolver.resolve(registry.ref("team/base:1"))
        assert desc.digest == index.desc.digest
        again = recording(resolver, registry.ref("team/base:1"))
        await push_image(env.store, again, index.desc, PushOptions())
        # Blobs pulled from team/base carry that source: a push elsewhere mounts instead of uploading.
        host = registry.host
        for digest in blobs:
            await walk.set_labels(env.store, digest, labels.distribution_source(host, "team/base"))
        mounted = recording(resolver, registry.ref("team/app:2"))
        await push_image(env.store, mounted, index.desc, PushOptions())
        fetched = await resolver.fetcher(registry.ref("team/app:2")).read(index.desc)
        assert isinstance(parse_index(fetched), Index)
        return first, again, mounted

    first, again, mounted = run(tmp_path, go)
    assert set(first.results.values()) == {PushResult.UPLOADED}
    # Manifests first, then the index, under the tag, last.
    assert first.manifests[-1] == (index.desc.digest, "1")
    assert {d for d, _ in first.manifests[:-1]} == {amd.manifest_desc.digest, arm.manifest_desc.digest}
    assert set(again.results.values()) == {PushResult.EXISTS}
    assert set(mounted.results.values()) == {PushResult.MOUNTED}
    assert set(mounted.results) == set(blobs)
    states = {(e.name, e.event) for e in events}
    layer = amd.layers[0].descriptor
    assert (f"layer-{layer.digest}", "waiting") in states and (f"layer-{layer.digest}", "complete") in states
    root = [e for e in events if e.name == f"index-{index.desc.digest}"]
    assert root and root[0].parents == ("base",)
    manifest_events = [e for e in events if e.name == f"manifest-{amd.manifest_desc.digest}"]
    assert manifest_events[0].parents == (f"index-{index.desc.digest}",)


def test_push_one_platform_of_a_manifest(tmp_path: Path, registry: RegistryServer) -> None:
    image = small_image("single-push")

    async def go(env: Env, resolver: Resolver) -> list[tuple[str, str]]:
        await put_image(env, image)
        pusher = recording(resolver, registry.ref("solo/app:v1"))
        target = Descriptor(
            image.manifest_desc.media_type, image.manifest_desc.digest, image.manifest_desc.size
        )
        await push_image(env.store, pusher, target, PushOptions(platforms=only_strict(AMD64)))
        _, desc = await resolver.resolve(registry.ref("solo/app:v1"))
        assert desc.digest == target.digest
        return pusher.manifests

    assert run(tmp_path, go) == [(image.manifest_desc.digest, "v1")]


def test_push_refuses_corrupt_blob(tmp_path: Path, registry: RegistryServer) -> None:
    image = small_image("corrupt-push")

    async def go(env: Env, resolver: Resolver) -> None:
        await put_image(env, image)
        layer = image.layers[0].descriptor
        path = env.store.blob_path(layer.digest)
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
        target = Descriptor(
            image.manifest_desc.media_type, image.manifest_desc.digest, image.manifest_desc.size
        )
        await push_image(env.store, resolver.pusher(registry.ref("bad/app:1")), target, PushOptions())

    with pytest.raises(errors.DataLoss, match="stored bytes have digest"):
        run(tmp_path, go)


def test_mount_sources_reads_host_labels() -> None:
    class Fake:
        class ref:
            domain = "127.0.0.1:5000"
            path = "team/app"

    blob_labels: dict[str, Any] = {
        "containerd.io/distribution.source.127.0.0.1:5000": "team/app,team/base",
        "containerd.io/distribution.source.127.0.0.1": "other/x",
        "containerd.io/distribution.source.docker.io": "library/busybox",
    }
    assert mount_sources(blob_labels, Fake()) == ["other/x", "team/base"]  # type: ignore[arg-type]
