"""RemoveImage over real stores: every name goes, absent is fine, a re-pointed name stays."""

from __future__ import annotations

from collections.abc import Awaitable
from pathlib import Path

from google.protobuf.message import Message

from tests.cri.images_fixtures import Stores, name, run, small_image, store_image
from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.cri import image_remove
from wharfd.cri.images import Catalog, CriImage
from wharfd.runtime.metadata.images import Descriptor, Image

REPO = "registry.test/remove"


class Recorder:
    """Collects events and GC requests."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.scheduled = 0

    async def publish(self, topic: str, event: Message) -> None:
        self.events.append((topic, getattr(event, "name", "")))

    def schedule(self) -> None:
        self.scheduled += 1


def remove(s: Stores, image: str, rec: Recorder) -> Awaitable[cri.RemoveImageResponse]:
    req = cri.RemoveImageRequest(image=cri.ImageSpec(image=image))
    return image_remove.remove_image(s.catalog, req, publish=rec.publish, gc=rec)


def test_remove_by_tag_removes_every_name(tmp_path: Path) -> None:
    image, other = small_image("rm"), small_image("keep")
    names = [f"{REPO}:1", f"{REPO}:2", f"{REPO}@{image.manifest_desc.digest}", image.config_desc.digest]

    async def body(s: Stores) -> None:
        await name(s, names, await store_image(s.content, image))
        await name(s, [f"{REPO}:keep"], await store_image(s.content, other))
        rec = Recorder()
        await remove(s, f"{REPO}:2", rec)
        assert [i.name for i in await s.images.list()] == [f"{REPO}:keep"]
        assert sorted(n for _, n in rec.events) == sorted(names)
        assert {t for t, _ in rec.events} == {"/images/delete"} and rec.scheduled == 1

    run(tmp_path, body)


def test_remove_by_id_and_again_is_fine(tmp_path: Path) -> None:
    image = small_image("rm-id")

    async def body(s: Stores) -> None:
        await name(s, [f"{REPO}:x", image.config_desc.digest], await store_image(s.content, image))
        rec = Recorder()
        await remove(s, image.config_desc.digest[:15], rec)
        assert await s.images.list() == []
        await remove(s, image.config_desc.digest, rec)
        await remove(s, f"{REPO}:never", rec)
        assert rec.scheduled == 1

    run(tmp_path, body)


def test_a_name_re_pointed_meanwhile_is_not_removed(tmp_path: Path) -> None:
    old, new = small_image("old"), small_image("new")

    class Racing(Catalog):
        """A pull moves the tag to another image between the lookup and the deletes."""

        new_target: Descriptor

        async def find(self, ref_or_id: str) -> CriImage:
            found = await super().find(ref_or_id)
            await self.images.update(Image(name=f"{REPO}:moving", target=self.new_target), ["target"])
            return found

    async def body(s: Stores) -> None:
        await name(s, [f"{REPO}:moving", old.config_desc.digest], await store_image(s.content, old))
        racing = Racing(s.images, s.content)
        racing.new_target = await store_image(s.content, new)
        req = cri.RemoveImageRequest(image=cri.ImageSpec(image=old.config_desc.digest))
        await image_remove.remove_image(racing, req)
        assert [i.name for i in await s.images.list()] == [f"{REPO}:moving"]

    run(tmp_path, body)
