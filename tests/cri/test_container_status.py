"""ContainerStatus over real stores: answered from memory, and in step with the image store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cri.images_fixtures import Stores, run, small_image, store_image
from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.cri import container_status
from wharfd.cri.store import ContainerMetadata, ContainerStatus, CriState, container_record
from wharfd.runtime.metadata.containers import ContainerStore
from wharfd.runtime.metadata.images import Image as ImageRecord
from wharfd.runtime.oci import spec as ocispec

CID = "c" * 64
TAG = "docker.io/library/wharfd-test-app:1"


async def _setup(s: Stores, tmp_path: Path) -> tuple[CriState, str]:
    """A state whose one container runs an image named TAG, with a spec that names a user."""
    target = await store_image(s.content, small_image("status"))
    await s.images.create(ImageRecord(name=TAG, target=target))
    await s.images.create(ImageRecord(name=f"{TAG.rsplit(':', 1)[0]}@{target.digest}", target=target))
    image_id = (await s.catalog.find(TAG)).id
    state = CriState(
        config={}, root=tmp_path, state_dir=tmp_path, meta=ContainerStore(s.db), tasks=None, snapshotters={}
    )
    state.catalog = s.catalog
    config = cri.ContainerConfig(
        metadata=cri.ContainerMetadata(name="app", attempt=1),
        image=cri.ImageSpec(image=TAG),
        labels={"tier": "web"},
        annotations={"note": "kept"},
        mounts=[cri.Mount(container_path="/data", host_path="/srv")],
    )
    meta = ContainerMetadata(
        id=CID, name="app_pod", sandbox_id="p" * 64, config=config, image_ref=TAG, image_id=image_id,
        log_path="/logs/app_1.log", stop_signal="SIGINT",
    )  # fmt: skip
    spec: ocispec.Spec = {
        "ociVersion": "1.1.0",
        "process": {"user": {"uid": 1000, "gid": 100, "additionalGids": [100, 7]}},
    }
    record = container_record(meta, spec=ocispec.to_any(spec), runtime="io.containerd.wharf.v2",
                              options=None, labels={})  # fmt: skip
    await state.meta.create(record)
    state.containers.add(state.new_container(meta, ContainerStatus(created_at=5, started_at=6, pid=9)))
    return state, image_id


async def _status(state: CriState, verbose: bool = False) -> cri.ContainerStatusResponse:
    request = cri.ContainerStatusRequest(container_id=CID[:12], verbose=verbose)
    return await container_status.container_status(state, request)


def test_status_fields_then_from_memory(tmp_path: Path) -> None:
    async def body(s: Stores) -> None:
        state, image_id = await _setup(s, tmp_path)
        first = (await _status(state)).status
        assert first.id == CID and first.state == cri.CONTAINER_RUNNING
        assert (first.created_at, first.started_at, first.finished_at) == (5, 6, 0)
        assert first.image.image == TAG and first.image_id == image_id
        assert first.image_ref.startswith("docker.io/library/wharfd-test-app@sha256:")
        assert dict(first.labels) == {"tier": "web"} and dict(first.annotations) == {"note": "kept"}
        assert [m.container_path for m in first.mounts] == ["/data"]
        assert first.log_path == "/logs/app_1.log" and first.stop_signal == cri.SIGINT
        user = first.user.linux
        assert (user.uid, user.gid, list(user.supplemental_groups)) == (1000, 100, [100, 7])
        # Later answers come from memory: the record is not read again (only verbose needs it).
        await state.meta.delete(CID)
        container = state.containers.get(CID)
        await container.update(finished_at=8, exit_code=3)
        again = (await _status(state)).status
        assert again.state == cri.CONTAINER_EXITED and again.exit_code == 3 and again.reason == "Error"
        assert again.user == first.user and again.image == first.image and again.image_ref == first.image_ref

    run(tmp_path, body)


def test_status_follows_image_changes(tmp_path: Path) -> None:
    async def body(s: Stores) -> None:
        state, image_id = await _setup(s, tmp_path)
        assert (await _status(state)).status.image.image == TAG
        # Another name for the same image sorts first: the report follows at once.
        other = "docker.io/library/wharfd-test-aaa:0"
        await s.images.create(ImageRecord(name=other, target=(await s.images.get(TAG)).target))
        assert (await _status(state)).status.image.image == other
        # The image goes away: what the config named, and the image ID as the reference.
        for record in await s.images.list():
            await s.images.delete(record.name)
        gone = (await _status(state)).status
        assert gone.image.image == TAG and gone.image_ref == image_id

    run(tmp_path, body)


def test_verbose_reads_the_record(tmp_path: Path) -> None:
    async def body(s: Stores) -> None:
        state, _ = await _setup(s, tmp_path)
        info = json.loads((await _status(state, verbose=True)).info["info"])
        assert info["runtimeType"] == "io.containerd.wharf.v2"
        assert info["runtimeSpec"]["process"]["user"]["uid"] == 1000

    run(tmp_path, body)


def test_first_verbose_call_reads_and_parses_the_spec_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(s: Stores) -> None:
        state, _ = await _setup(s, tmp_path)
        parsed: list[object] = []
        reads: list[str] = []
        real_parse, real_get = ocispec.from_any, state.meta.get

        def counting_parse(value: Any) -> ocispec.Spec:
            parsed.append(value)
            return real_parse(value)

        async def counting_get(cid: str) -> Any:
            reads.append(cid)
            return await real_get(cid)

        monkeypatch.setattr(container_status.oci, "from_any", counting_parse)
        monkeypatch.setattr(state.meta, "get", counting_get)
        first = await _status(state, verbose=True)
        assert (len(reads), len(parsed)) == (1, 1)
        # The same answer as a verbose call once the static part is in memory (which reads once).
        again = await _status(state, verbose=True)
        assert again == first and (len(reads), len(parsed)) == (2, 2)
        assert first.status.user.linux.uid == 1000
        assert json.loads(first.info["info"])["runtimeSpec"]["process"]["user"]["uid"] == 1000
        # A plain call after that reads nothing.
        await _status(state)
        assert (len(reads), len(parsed)) == (2, 2)

    run(tmp_path, body)


def test_a_tagged_image_is_reported_by_its_tag_alone(tmp_path: Path) -> None:
    """As containerd: while the image has a tag, the status's image spec is that tag and nothing else of
    the config's spec; once the image is gone, the config's spec as it was given."""

    async def body(s: Stores) -> None:
        state, image_id = await _setup(s, tmp_path)
        config_image = state.containers.get(CID).metadata.config.image
        config_image.annotations["wharfd-test/kept"] = "yes"
        config_image.user_specified_image = "wharfd-test-app:1"
        config_image.runtime_handler = "runc"
        assert (await _status(state)).status.image == cri.ImageSpec(image=TAG)
        for record in await s.images.list():
            await s.images.delete(record.name)
        gone = (await _status(state)).status
        assert gone.image == config_image and gone.image_ref == image_id

    run(tmp_path, body)
