"""The CRI image model over real stores: grouping by image ID, repo tags and digests, lookups, sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cri.images_fixtures import (
    Stores,
    build_index,
    expected_size,
    name,
    other_platform,
    run,
    small_image,
    store_image,
    store_index,
    target_of,
)
from wharfd.cri import images as cri_images
from wharfd.cri.images import LABEL_PINNED, PINNED, parse_docker_ref, split_references, to_cri, user_of
from wharfd.runtime import errors
from wharfd.runtime.images.chainid import chain_id

REPO = "registry.test/app"


def test_records_of_one_image_group_under_its_config_digest(tmp_path: Path) -> None:
    image = small_image("a", layers=2)

    async def body(s: Stores) -> list[cri_images.CriImage]:
        target = await store_image(s.content, image)
        digest_ref = f"{REPO}@{image.manifest_desc.digest}"
        await name(s, [f"{REPO}:1", f"{REPO}:latest", digest_ref, image.config_desc.digest], target)
        return (await s.catalog.view()).images()

    (only,) = run(tmp_path, body)
    assert only.id == image.config_desc.digest
    assert only.repo_tags == [f"{REPO}:1", f"{REPO}:latest"]
    assert only.repo_digests == [f"{REPO}@{image.manifest_desc.digest}"]
    assert only.size == expected_size(image)
    assert only.references[-1] == image.config_desc.digest  # tags, then digests, then the ID
    diff_ids = [layer.diff_id for layer in image.layers]
    assert only.chain_id == chain_id(diff_ids)
    assert only.config["rootfs"]["diff_ids"] == diff_ids


def test_index_resolves_to_the_host_platform_and_counts_the_index(tmp_path: Path) -> None:
    mine, foreign = small_image("host"), small_image("far", platform=other_platform())
    index = build_index([foreign, mine])

    async def body(s: Stores) -> list[cri_images.CriImage]:
        await name(s, [f"{REPO}:multi"], await store_index(s.content, index))
        return (await s.catalog.view()).images()

    (only,) = run(tmp_path, body)
    assert only.id == mine.config_desc.digest
    assert only.size == expected_size(mine, index)


def test_unusable_targets_are_left_out(tmp_path: Path) -> None:
    foreign = small_image("far", platform=other_platform())
    index = build_index([foreign])
    missing = small_image("missing")
    present = small_image("present")

    async def body(s: Stores) -> tuple[list[str], str]:
        await name(s, [f"{REPO}:foreign"], await store_index(s.content, index))
        await name(s, [f"{REPO}:missing"], target_of(missing.manifest_desc))
        await name(s, [f"{REPO}:present"], await store_image(s.content, present))
        view = await s.catalog.view()
        with pytest.raises(errors.NotFound):
            view.find(f"{REPO}:foreign")
        return [i.id for i in view.images()], view.find(f"{REPO}:present").id

    ids, found = run(tmp_path, body)
    assert ids == [present.config_desc.digest] and found == present.config_desc.digest


def test_find_by_tag_digest_id_and_id_prefix(tmp_path: Path) -> None:
    image = small_image("find")
    image_id = image.config_desc.digest
    digest_ref = f"{REPO}@{image.manifest_desc.digest}"

    async def body(s: Stores) -> None:
        target = await store_image(s.content, image)
        await name(s, [f"{REPO}:1", digest_ref, image_id, "docker.io/library/busybox:latest"], target)
        view = await s.catalog.view()
        for key in (
            f"{REPO}:1",
            digest_ref,
            image_id,
            image_id[7:],  # the hex alone
            image_id[:19],  # sha256: + 12 hex, as crictl prints
            image_id[7:19],
            "busybox",  # normalized to docker.io/library/busybox:latest
            f"{REPO}:1@{image.manifest_desc.digest}",  # the digest wins over the tag
        ):
            assert view.find(key).id == image_id, key
        for absent in (f"{REPO}:2", "registry.test/other", "sha256:" + "0" * 64, "ffff" * 3, "NOT A REF!"):
            with pytest.raises(errors.NotFound):
                view.find(absent)
        with pytest.raises(errors.InvalidArgument, match="must name an image"):
            view.find("")

    run(tmp_path, body)


def test_ambiguous_id_prefix_is_an_error_naming_it(tmp_path: Path) -> None:
    async def body(s: Stores) -> None:
        seen: dict[str, str] = {}
        for i in range(17):  # 17 images: two share a first hex digit
            image = small_image(f"amb{i}")
            await name(s, [f"{REPO}:{i}"], await store_image(s.content, image))
            first = image.config_desc.digest[7]
            if first in seen:
                break
            seen[first] = image.config_desc.digest
        view = await s.catalog.view()
        with pytest.raises(errors.InvalidArgument, match=f'prefix "{first}" is ambiguous'):
            view.find(first)

    run(tmp_path, body)


def test_pinned_when_any_record_is_pinned(tmp_path: Path) -> None:
    image = small_image("pause")

    async def body(s: Stores) -> bool:
        target = await store_image(s.content, image)
        await name(s, [f"{REPO}:pause"], target, {LABEL_PINNED: PINNED})
        await name(s, [image.config_desc.digest], target)
        return (await s.catalog.find(image.config_desc.digest)).pinned

    assert run(tmp_path, body) is True


def test_a_removed_record_disappears_at_once(tmp_path: Path) -> None:
    image = small_image("gone")

    async def body(s: Stores) -> tuple[int, int]:
        await name(s, [f"{REPO}:gone"], await store_image(s.content, image))
        before = len((await s.catalog.view()).images())
        await s.images.delete(f"{REPO}:gone")
        return before, len((await s.catalog.view()).images())

    assert run(tmp_path, body) == (1, 0)


def test_cri_message_and_users() -> None:
    assert user_of("") == (None, "")
    assert user_of("1000") == (1000, "")
    assert user_of("1000:1000") == (1000, "")
    assert user_of("nobody") == (None, "nobody")
    assert user_of("nobody:nogroup") == (None, "nobody")
    assert user_of("99999999999999999999") == (None, "99999999999999999999")

    def image(user: str) -> cri_images.CriImage:
        config = {"config": {"User": user}, "rootfs": {"type": "layers", "diff_ids": []}}
        return cri_images.CriImage(
            id="sha256:" + "ab" * 32, references=(f"{REPO}:1", f"{REPO}@sha256:" + "cd" * 32), chain_id="",
            size=42, config=config, pinned=True,
        )  # fmt: skip

    numeric, named = to_cri(image("1000")), to_cri(image("app"))
    assert numeric.HasField("uid") and numeric.uid.value == 1000 and numeric.username == ""
    assert not named.HasField("uid") and named.username == "app"
    assert numeric.spec.image == numeric.id and numeric.size == 42 and numeric.pinned
    assert list(numeric.repo_tags) == [f"{REPO}:1"] and list(numeric.repo_digests) == [
        f"{REPO}@sha256:" + "cd" * 32
    ]
    info = json.loads(cri_images.verbose_info(image("app"))["info"])
    assert info == {
        "chainID": "",
        "imageSpec": {"config": {"User": "app"}, "rootfs": {"type": "layers", "diff_ids": []}},
    }


def test_reference_rules() -> None:
    assert str(parse_docker_ref("busybox")) == "docker.io/library/busybox:latest"
    assert (
        str(parse_docker_ref("busybox:1@sha256:" + "a" * 64))
        == "docker.io/library/busybox@sha256:" + "a" * 64
    )
    with pytest.raises(errors.InvalidArgument, match='invalid reference "Bad/Ref"'):
        parse_docker_ref("Bad/Ref")
    tags, digests = split_references(
        ["busybox:1", "sha256:" + "b" * 64, "b" * 64, "x/y@sha256:" + "c" * 64, "UPPER/case", "x/y"]
    )
    assert tags == ["docker.io/library/busybox:1"]
    assert digests == ["docker.io/x/y@sha256:" + "c" * 64]
