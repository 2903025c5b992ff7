"""Which image records an import, pull or tag writes (containerd's ImageStore naming rules)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from wharfd.runtime import errors, namespaces
from wharfd.runtime.images.destination import (
    ANNOTATION_IMAGE_NAME,
    ANNOTATION_REF_NAME,
    ANNOTATION_REF_SOURCE,
    Destination,
    Reference,
    annotate,
    has_prefix,
    oci_ref_name,
    translate,
)
from wharfd.runtime.metadata.db import Database
from wharfd.runtime.metadata.images import Descriptor, Image, ImageStore

DIGEST = "sha256:" + "ab" * 32
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def entry(**annotations: str) -> Descriptor:
    return Descriptor(MANIFEST, DIGEST, 10, {ANNOTATION_REF_SOURCE: "annotation", **annotations})


def names(dest: Destination, target: Descriptor) -> list[str]:
    return [i.name for i in dest.images_for(target)]


def test_prefix_helpers() -> None:
    assert has_prefix("foo/bar:1", "foo/bar") and has_prefix("foo/bar", "foo/bar")
    assert not has_prefix("foo/barbaz:1", "foo/bar")
    assert translate("latest", "foo/bar", check_prefix=True) == "foo/bar:latest"
    assert translate("other/x:1", "foo/bar", check_prefix=True) == ""
    assert translate("other/x:1", "foo/bar", check_prefix=False) == "other/x:1"
    assert oci_ref_name("docker.io/library/busybox:1.36") == "1.36"
    assert oci_ref_name("127.0.0.1:5000/app:v2") == "v2"
    assert oci_ref_name("127.0.0.1:5000/app@" + DIGEST) == "127.0.0.1:5000/app@" + DIGEST
    annotated = annotate(Descriptor(MANIFEST, DIGEST, 10), "docker.io/library/busybox:1")
    assert annotated.annotations == {
        ANNOTATION_IMAGE_NAME: "docker.io/library/busybox:1",
        ANNOTATION_REF_NAME: "1",
    }


def test_import_names_from_annotations() -> None:
    full = entry(**{ANNOTATION_IMAGE_NAME: "docker.io/library/busybox:1", ANNOTATION_REF_NAME: "1"})
    tag_only = entry(**{ANNOTATION_REF_NAME: "v2"})
    # ctr import without --base-name: import-<date>, overwritten by full names.
    default = Destination(references=(Reference("import-2026-01-01", is_prefix=True, allow_overwrite=True),))
    assert names(default, full) == ["docker.io/library/busybox:1"]
    assert names(default, tag_only) == ["import-2026-01-01:v2"]
    # --base-name: only names under it.
    based = Destination(references=(Reference("docker.io/library/busybox", is_prefix=True),))
    assert names(based, full) == ["docker.io/library/busybox:1"]
    assert names(Destination(references=(Reference("example.com/x", is_prefix=True),)), full) == []
    # --digests: also prefix@digest (or only that when nothing is named, with skip_named_digest).
    digests = Destination(references=(Reference("example.com/x", is_prefix=True, add_digest=True),))
    assert names(digests, tag_only) == ["example.com/x:v2", f"example.com/x@{DIGEST}"]
    skip = Destination(
        references=(Reference("example.com/x", is_prefix=True, add_digest=True, skip_named_digest=True),)
    )
    assert names(skip, tag_only) == ["example.com/x:v2"]
    assert names(skip, entry()) == [f"example.com/x@{DIGEST}"]
    # The marker annotation never reaches the record.
    [image] = default.images_for(full)
    assert ANNOTATION_REF_SOURCE not in image.target.annotations
    assert image.target.annotations[ANNOTATION_IMAGE_NAME] == "docker.io/library/busybox:1"


def test_plain_names() -> None:
    target = Descriptor(MANIFEST, DIGEST, 10)
    dest = Destination(
        name="index:1",
        labels={"a": "b"},
        references=(
            Reference("plain:2"),
            Reference("pre", is_prefix=True),
            Reference("dig", True, add_digest=True),
        ),
    )
    images = dest.images_for(target)
    assert [i.name for i in images] == ["index:1", "plain:2", f"dig@{DIGEST}"]
    assert all(i.labels == {"a": "b"} for i in images)
    with pytest.raises(errors.InvalidArgument, match="ref-source"):
        Destination().images_for(Descriptor(MANIFEST, DIGEST, 10, {ANNOTATION_REF_SOURCE: "other"}))


def test_store_creates_then_updates(tmp_path: Path) -> None:
    async def main() -> tuple[Image, Image, list[str]]:
        namespaces.current.set("default")
        async with await Database.open(tmp_path / "metadata.db") as db:
            images = ImageStore(db)
            first = (
                await Destination(name="app:1", labels={"x": "1"}).store(
                    images, Descriptor(MANIFEST, DIGEST, 10)
                )
            )[0]
            other = "sha256:" + "cd" * 32
            second = (await Destination(name="app:1").store(images, Descriptor(MANIFEST, other, 11)))[0]
            with pytest.raises(errors.NotFound, match="no image name"):
                await Destination().store(images, Descriptor(MANIFEST, other, 11))
            found = await Destination(references=(Reference("app:1"),)).lookup(images)
            with pytest.raises(errors.NotFound):
                await Destination(name="missing:1").lookup(images)
            return first, second, [i.name for i in found]

    first, second, found = asyncio.run(main())
    assert first.labels == {"x": "1"} and first.target.digest == DIGEST
    assert second.target.size == 11 and second.labels == {}
    assert found == ["app:1"]
