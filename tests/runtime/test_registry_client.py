"""Resolver, Fetcher and Pusher against Debian's real docker-registry on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.images import (
    File,
    Image,
    build_image,
    build_index,
    build_layer,
    busybox_files,
    push_image,
    push_index,
    without_platform,
)
from tests.support.registry import RegistryServer, run_registry
from wharfd.runtime import errors
from wharfd.runtime.images import manifest, platforms
from wharfd.runtime.images.manifest import Descriptor, Index, Manifest, digest_of
from wharfd.runtime.images.platforms import Platform
from wharfd.runtime.registry import HostsConfig, PushResult, Resolver, Transport


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    with run_registry(tmp_path_factory.mktemp("registry")) as server:
        yield server


@pytest.fixture(scope="module")
def busybox() -> Image:
    return build_image([build_layer(busybox_files())], cmd=["sh"])


def run(body: Callable[[Resolver], Awaitable[Any]], **options: Any) -> Any:
    """Run ``body`` with a resolver over a fresh transport (one event loop per test)."""

    async def main() -> Any:
        async with Transport(**options) as transport:
            return await body(Resolver(transport))

    return asyncio.run(main())


class Collect:
    """Keeps what its (blocking) ``write``, a BlobWriter, is given."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: memoryview, /) -> int:
        self.data += data
        return len(data)


async def _read_all(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([c async for c in chunks])


def test_push_then_resolve_by_tag_and_digest_and_fetch_everything(
    registry: RegistryServer, busybox: Image
) -> None:
    ref = registry.ref("test/busybox:1")

    async def body(resolver: Resolver) -> None:
        pushed = await push_image(resolver.pusher(ref), busybox, tag="1")
        name, desc = await resolver.resolve(ref)
        assert name == ref
        assert desc == pushed == without_platform(busybox.manifest_desc)
        by_digest = f"{registry.host}/test/busybox@{desc.digest}"
        assert await resolver.resolve(by_digest) == (by_digest, desc)

        fetcher = resolver.fetcher(name)
        parsed = manifest.parse(desc, await fetcher.read(desc))
        assert isinstance(parsed, Manifest)
        config = await fetcher.read(parsed.config)
        assert manifest.parse_config(config).diff_ids == (busybox.layers[0].diff_id,)
        layer = await _read_all(fetcher.fetch(parsed.layers[0]))
        assert digest_of(layer) == parsed.layers[0].digest == busybox.layers[0].descriptor.digest

    run(body)


def test_multi_platform_index_resolution(registry: RegistryServer) -> None:
    images = [
        build_image([build_layer([File(f"arch-{p.architecture}{p.variant}", b"x")])], platform=p)
        for p in (
            Platform("linux", "amd64"),
            Platform("linux", "arm64", "v8"),
            Platform("linux", "arm", "v7"),
        )
    ]
    index = build_index(images)
    ref = registry.ref("test/multi:latest")

    async def body(resolver: Resolver) -> None:
        await push_index(resolver.pusher(ref), index, tag="latest")
        name, desc = await resolver.resolve(ref)
        assert desc == index.desc
        fetcher = resolver.fetcher(name)
        parsed = manifest.parse(desc, await fetcher.read(desc))
        assert isinstance(parsed, Index)
        for spec, wanted in [
            ("linux/arm64/v8", images[1]),
            ("linux/arm/v7", images[2]),
            ("linux/amd64/v3", images[0]),
        ]:
            chosen = manifest.select(parsed, platforms.only(platforms.parse(spec)))
            assert [d.digest for d in chosen] == [wanted.manifest_desc.digest], spec
            child = manifest.parse(chosen[0], await fetcher.read(chosen[0]))
            assert isinstance(child, Manifest) and child.config == wanted.config_desc
        assert manifest.select(parsed, platforms.only(platforms.parse("linux/arm/v6"))) == []

    run(body)


def test_fetch_resumes_at_an_offset(registry: RegistryServer, busybox: Image) -> None:
    ref = registry.ref("test/busybox:1")
    layer = busybox.layers[0]
    offset = layer.descriptor.size // 3

    async def body(resolver: Resolver) -> None:
        await push_image(resolver.pusher(ref), busybox, tag="1")
        fetcher = resolver.fetcher(ref)
        tail = await _read_all(fetcher.fetch(layer.descriptor, offset=offset))
        assert tail == layer.blob[offset:]
        # The pull pipeline's shape: an ingest that already holds `offset` bytes.
        writer = Collect()
        writer.data += layer.blob[:offset]
        written = await fetcher.fetch_to(layer.descriptor, writer.write, offset=offset)
        assert written == layer.descriptor.size - offset
        assert hashlib.sha256(writer.data).hexdigest() == layer.descriptor.digest.split(":")[1]
        assert await _read_all(fetcher.fetch(layer.descriptor, offset=layer.descriptor.size)) == b""
        with pytest.raises(errors.InvalidArgument, match="outside"):
            await _read_all(fetcher.fetch(layer.descriptor, offset=layer.descriptor.size + 1))

    run(body)


def test_push_skips_existing_blobs_and_manifests(registry: RegistryServer) -> None:
    image = build_image([build_layer([File("skip", b"skip me")])])
    ref = registry.ref("test/skip:1")

    async def body(resolver: Resolver) -> None:
        pusher = resolver.pusher(ref)
        layer = image.layers[0]
        assert await pusher.push_blob(layer.descriptor, layer.blob) is PushResult.UPLOADED
        assert await pusher.push_blob(layer.descriptor, b"never read") is PushResult.EXISTS
        await pusher.push_blob(image.config_desc, image.config)
        assert (
            await pusher.push_manifest(image.manifest_desc, image.manifest, reference="1")
            is PushResult.UPLOADED
        )
        assert (
            await pusher.push_manifest(image.manifest_desc, image.manifest, reference="1")
            is PushResult.EXISTS
        )
        assert await pusher.push_manifest(image.manifest_desc, image.manifest) is PushResult.EXISTS

    run(body)


def test_cross_repository_mount(registry: RegistryServer) -> None:
    layer = build_layer([File("shared", b"shared between repositories" * 100)])

    async def body(resolver: Resolver) -> None:
        source = resolver.pusher(registry.ref("test/base:1"))
        assert await source.push_blob(layer.descriptor, layer.blob) is PushResult.UPLOADED
        target = resolver.pusher(registry.ref("test/app:1"))
        assert (
            await target.push_blob(layer.descriptor, b"unused", mount_from=["test/base"])
            is PushResult.MOUNTED
        )
        fetched = await _read_all(resolver.fetcher(registry.ref("test/app:1")).fetch(layer.descriptor))
        assert fetched == layer.blob
        # A mount source that lacks the blob falls back to an upload.
        other = resolver.pusher(registry.ref("test/other:1"))
        assert (
            await other.push_blob(layer.descriptor, layer.blob, mount_from=["test/empty"])
            is PushResult.UPLOADED
        )

    run(body)


def test_chunked_upload(registry: RegistryServer, busybox: Image) -> None:
    layer = busybox.layers[0]
    ref = registry.ref("test/chunked:1")

    async def opener(offset: int) -> AsyncIterator[bytes]:
        for start in range(offset, len(layer.blob), 100_000):  # chunks unaligned with the PATCH size
            yield layer.blob[start : start + 100_000]

    async def body(resolver: Resolver) -> None:
        pusher = resolver.pusher(ref)
        assert await pusher.push_blob(layer.descriptor, opener, chunk_size=256 * 1024) is PushResult.UPLOADED
        assert await _read_all(resolver.fetcher(ref).fetch(layer.descriptor)) == layer.blob

    run(body)


def test_push_rejects_a_source_of_the_wrong_size(registry: RegistryServer) -> None:
    data = b"0123456789"
    desc = Descriptor("application/octet-stream", digest_of(data), len(data) + 5)

    async def body(resolver: Resolver) -> None:
        pusher = resolver.pusher(registry.ref("test/wrong:1"))
        with pytest.raises(errors.InvalidArgument, match="the source gave 10 bytes, the descriptor says 15"):
            await pusher.push_blob(desc, data, chunk_size=4)

    run(body)


def test_not_found_errors_name_the_object(registry: RegistryServer, busybox: Image) -> None:
    missing = Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", "sha256:" + "0" * 64, 10)

    async def body(resolver: Resolver) -> None:
        with pytest.raises(errors.NotFound, match=f'manifest "{registry.host}/test/busybox:nope": not found'):
            await resolver.resolve(registry.ref("test/busybox:nope"))
        with pytest.raises(errors.NotFound, match="test/nothing"):
            await resolver.resolve(registry.ref("test/nothing@sha256:" + "1" * 64))
        fetcher = resolver.fetcher(registry.ref("test/busybox:1"))
        with pytest.raises(errors.NotFound, match=f"blob sha256:0{{64}} of {registry.host}/test/busybox"):
            await _read_all(fetcher.fetch(missing))

    run(body)


def test_plain_http_and_hosts_toml_mirror(registry: RegistryServer, busybox: Image, tmp_path: Path) -> None:
    ref = registry.ref("test/busybox:1")

    async def push(resolver: Resolver) -> Descriptor:
        return await push_image(resolver.pusher(ref), busybox, tag="1")

    pushed = run(push, hosts=HostsConfig(plain_http=True))
    # A made-up domain whose only endpoint is our registry, reached through hosts.toml.
    (tmp_path / "mirror.test").mkdir()
    (tmp_path / "mirror.test" / "hosts.toml").write_text(
        f'server = "http://{registry.host}"\ncapabilities = ["pull", "resolve"]\n'
    )

    async def resolve(resolver: Resolver) -> tuple[str, Descriptor]:
        return await resolver.resolve("mirror.test/test/busybox:1")

    resolved = run(resolve, hosts=HostsConfig(config_path=str(tmp_path)))
    assert resolved == ("mirror.test/test/busybox:1", pushed)

    async def push_refused(resolver: Resolver) -> None:
        with pytest.raises(errors.FailedPrecondition, match=r"no host of mirror\.test accepts pushes"):
            await resolver.pusher("mirror.test/test/busybox:1").push_blob(busybox.config_desc, busybox.config)

    run(push_refused, hosts=HostsConfig(config_path=str(tmp_path)))


def test_localhost_falls_back_from_https_to_http(registry: RegistryServer, busybox: Image) -> None:
    async def body(resolver: Resolver) -> bool:
        await push_image(resolver.pusher(registry.ref("test/fallback:1")), busybox, tag="1")
        return registry.host in resolver.transport._plain

    assert run(body)


def test_unreachable_registry_is_unavailable() -> None:
    from tests.support.registry import free_port

    async def body(resolver: Resolver) -> None:
        with pytest.raises(errors.Unavailable, match=r"127\.0\.0\.1"):
            await resolver.resolve(f"127.0.0.1:{free_port()}/test/x:1")

    run(body, hosts=HostsConfig(plain_http=True))
