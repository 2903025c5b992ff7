"""ImageReader: an image's manifest, config, chain id, size and platforms from stored blobs."""

from __future__ import annotations

import pytest

from tests.support.images import Image, build_image, build_index, build_layer, busybox_files, without_platform
from wharfd.runtime import errors
from wharfd.runtime.images import platforms
from wharfd.runtime.images.chainid import chain_ids
from wharfd.runtime.images.manifest import Descriptor
from wharfd.runtime.images.reader import ImageReader

HOST = platforms.host()
FOREIGN = platforms.Platform("linux", "s390x" if HOST.architecture != "s390x" else "ppc64le")


class Store:
    """Blobs by digest, counting reads; what the CLI's ``Content.Read`` gives the reader."""

    def __init__(self, *images: Image, extra: dict[str, bytes] | None = None) -> None:
        self.blobs: dict[str, bytes] = dict(extra or {})
        self.reads: list[str] = []
        for image in images:
            self.blobs[image.manifest_desc.digest] = image.manifest
            self.blobs[image.config_desc.digest] = image.config

    def read(self, digest: str, limit: int) -> bytes:
        self.reads.append(digest)
        if digest not in self.blobs:
            raise errors.NotFound(f"content {digest}: not found")
        data = self.blobs[digest]
        if len(data) > limit:
            raise errors.ResourceExhausted(f"content {digest}: larger than {limit}")
        return data


def image_for(platform: platforms.Platform, *contents: str) -> Image:
    layers = [build_layer(busybox_files((c,))) for c in contents]
    return build_image(layers, platform=platform)


def test_an_index_resolves_to_the_host_manifest_and_its_chain_id() -> None:
    host, foreign = image_for(HOST, "sh", "ls"), image_for(FOREIGN, "cat")
    index = build_index([foreign, host])
    store = Store(host, foreign, extra={index.desc.digest: index.data})
    reader = ImageReader(store.read)
    assert reader.resolve(index.desc).config == host.config_desc
    assert reader.image_config(index.desc)["architecture"] == HOST.architecture
    assert reader.chain_id(index.desc) == chain_ids([layer.diff_id for layer in host.layers])[-1]
    assert {p.architecture for p in reader.platforms(index.desc)} == {HOST.architecture, FOREIGN.architecture}
    sizes: list[int] = []
    reader.size(index.desc, sizes.append)
    expected = [index.desc.size, host.manifest_desc.size, host.config_desc.size]
    assert sizes == expected + [layer.descriptor.size for layer in host.layers]
    # Each blob came from the store once, however many questions were asked.
    assert sorted(store.reads) == sorted({*store.reads})


def test_a_matcher_picks_another_platform() -> None:
    host, foreign = image_for(HOST, "sh"), image_for(FOREIGN, "cat")
    index = build_index([host, foreign])
    store = Store(host, foreign, extra={index.desc.digest: index.data})
    reader = ImageReader(store.read, platforms.only(FOREIGN))
    assert reader.chain_id(index.desc) == foreign.layers[0].diff_id


def test_a_bare_manifest_is_taken_whatever_its_platform() -> None:
    foreign = image_for(FOREIGN, "cat")
    reader = ImageReader(Store(foreign).read)
    target = without_platform(foreign.manifest_desc)
    assert reader.resolve(target).config == foreign.config_desc
    assert reader.platforms(target) == [FOREIGN]


def test_no_manifest_for_the_platform_is_not_found() -> None:
    foreign = image_for(FOREIGN, "cat")
    index = build_index([foreign])
    reader = ImageReader(Store(foreign, extra={index.desc.digest: index.data}).read)
    with pytest.raises(errors.NotFound, match=f"no match for platform in manifest {index.desc.digest}"):
        reader.resolve(index.desc)


def test_a_config_that_is_not_an_object_is_invalid() -> None:
    data = b"[1, 2]"
    desc = Descriptor("application/vnd.oci.image.config.v1+json", "sha256:" + "c" * 64, len(data))
    reader = ImageReader(Store(extra={desc.digest: data}).read)
    with pytest.raises(errors.InvalidArgument, match="expected a JSON object"):
        reader.config(desc)
