"""ImageStatus over real stores: present by any name, absent without error, verbose info."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cri.images_fixtures import Stores, name, run, small_image, store_image
from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.cri import image_status
from wharfd.runtime import errors

REPO = "registry.test/status"


def request(image: str, verbose: bool = False) -> cri.ImageStatusRequest:
    return cri.ImageStatusRequest(image=cri.ImageSpec(image=image), verbose=verbose)


def test_status_by_tag_digest_and_id(tmp_path: Path) -> None:
    image = small_image("status", user="7:7")
    image_id = image.config_desc.digest
    digest_ref = f"{REPO}@{image.manifest_desc.digest}"

    async def body(s: Stores) -> None:
        await name(s, [f"{REPO}:1", digest_ref, image_id], await store_image(s.content, image))
        for key in (f"{REPO}:1", digest_ref, image_id, image_id[7:20]):
            resp = await image_status.image_status(s.catalog, request(key))
            assert resp.image.id == image_id, key
            assert list(resp.image.repo_tags) == [f"{REPO}:1"] and list(resp.image.repo_digests) == [
                digest_ref
            ]
            assert resp.image.uid.value == 7 and not resp.info

    run(tmp_path, body)


def test_absent_image_is_an_empty_answer(tmp_path: Path) -> None:
    async def body(s: Stores) -> None:
        for key in (f"{REPO}:nope", "sha256:" + "1" * 64, "not a ref"):
            resp = await image_status.image_status(s.catalog, request(key))
            assert not resp.HasField("image") and not resp.info
        with pytest.raises(errors.InvalidArgument):
            await image_status.image_status(s.catalog, request(""))

    run(tmp_path, body)


def test_verbose_info_is_containerds(tmp_path: Path) -> None:
    image = small_image("verbose", layers=2)

    async def body(s: Stores) -> None:
        await name(s, [f"{REPO}:v"], await store_image(s.content, image))
        resp = await image_status.image_status(s.catalog, request(f"{REPO}:v", verbose=True))
        info = json.loads(resp.info["info"])
        assert list(info) == ["chainID", "imageSpec"]
        assert info["imageSpec"] == json.loads(image.config)
        assert info["chainID"].startswith("sha256:") and info["chainID"] != image.layers[0].diff_id

    run(tmp_path, body)
