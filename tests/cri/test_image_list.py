"""ListImages and StreamImages over real stores."""

from __future__ import annotations

from pathlib import Path

from tests.cri.images_fixtures import Stores, name, run, small_image, store_image
from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.cri import image_list

REPO = "registry.test/list"


async def two_images(s: Stores) -> tuple[str, str]:
    a, b = small_image("list-a", user="1000"), small_image("list-b", user="app")
    await name(s, [f"{REPO}:a", a.config_desc.digest], await store_image(s.content, a))
    await name(s, [f"{REPO}:b"], await store_image(s.content, b))
    return a.config_desc.digest, b.config_desc.digest


def test_lists_one_entry_per_image_id(tmp_path: Path) -> None:
    async def body(s: Stores) -> None:
        a, b = await two_images(s)
        resp = await image_list.list_images(s.catalog, cri.ListImagesRequest())
        by_id = {i.id: i for i in resp.images}
        assert sorted(by_id) == sorted([a, b])
        assert list(by_id[a].repo_tags) == [f"{REPO}:a"] and by_id[a].uid.value == 1000
        assert list(by_id[b].repo_tags) == [f"{REPO}:b"] and by_id[b].username == "app"

    run(tmp_path, body)


def test_filter_names_one_image(tmp_path: Path) -> None:
    async def body(s: Stores) -> None:
        a, _ = await two_images(s)
        for wanted in (f"{REPO}:a", a, a[7:19]):
            flt = cri.ImageFilter(image=cri.ImageSpec(image=wanted))
            resp = await image_list.list_images(s.catalog, cri.ListImagesRequest(filter=flt))
            assert [i.id for i in resp.images] == [a], wanted
        none = cri.ImageFilter(image=cri.ImageSpec(image=f"{REPO}:zzz"))
        assert not (await image_list.list_images(s.catalog, cri.ListImagesRequest(filter=none))).images

    run(tmp_path, body)


def test_stream_sends_the_same_list_in_chunks(tmp_path: Path) -> None:
    async def body(s: Stores) -> None:
        await two_images(s)
        image_list.STREAM_CHUNK = 1
        try:
            chunks = [c async for c in image_list.stream_images(s.catalog, cri.StreamImagesRequest())]
        finally:
            image_list.STREAM_CHUNK = 100
        listed = await image_list.list_images(s.catalog, cri.ListImagesRequest())
        assert [len(c.images) for c in chunks] == [1, 1]
        assert [i for c in chunks for i in c.images] == list(listed.images)

    run(tmp_path, body)
