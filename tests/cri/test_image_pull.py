"""PullImage: credentials from AuthConfig, labels, the three records, and pulls through the real pipeline."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from aiohttp import web

from tests.cri.images_fixtures import Stores, run, small_image, store_image
from tests.support.images import Image as BuiltImage
from tests.support.registry import RegistryServer, point_hosts, push, run_registry, serve_app
from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.cri.image_pull import ImagePuller, auth_config, credentials_for
from wharfd.cri.images import IMAGE_MANAGED, LABEL_IMAGE, LABEL_PINNED, PINNED, ImageConfig, parse_docker_ref
from wharfd.runtime import errors
from wharfd.runtime.images.extract import Workers
from wharfd.runtime.images.pull import Puller, PullOptions, PullResult
from wharfd.runtime.images.unpack import Unpacker
from wharfd.runtime.metadata.images import Image
from wharfd.runtime.metadata.leases import LeaseStore
from wharfd.runtime.registry import auth
from wharfd.runtime.snapshots.metadata import NamespacedSnapshotter
from wharfd.runtime.snapshots.native import NativeBackend

T = TypeVar("T")

REF = parse_docker_ref("registry.test/app:1")


def test_auth_config_fields_become_credentials() -> None:
    msg = cri.AuthConfig(username="u", password="p", server_address="https://registry.test")
    cfg = auth_config(msg)
    lookup = credentials_for(cfg, REF)
    assert lookup is not None
    assert lookup("registry.test") == auth.Credentials("u", "p")
    assert lookup("mirror.test") is None  # only the server the kubelet named

    anywhere = credentials_for(auth_config(cri.AuthConfig(auth=base64.b64encode(b"u:p").decode())), REF)
    assert anywhere is not None and anywhere("mirror.test") == auth.Credentials("u", "p")
    token = credentials_for(auth_config(cri.AuthConfig(registry_token="tok")), REF)
    assert token is not None and token("registry.test") == auth.Credentials(registry_token="tok")
    assert credentials_for(auth_config(cri.AuthConfig()), REF) is None
    assert credentials_for(None, REF) is None


def test_malformed_auth_fails_before_any_request() -> None:
    with pytest.raises(errors.InvalidArgument, match="auth"):
        credentials_for(auth_config(cri.AuthConfig(auth="not base64!")), REF)
    with pytest.raises(errors.InvalidArgument, match="auth"):
        credentials_for(auth_config(cri.AuthConfig(auth=base64.b64encode(b"no-colon").decode())), REF)


def test_sandbox_image_is_pinned_by_its_normalized_name() -> None:
    puller = ImagePuller(None, None, ImageConfig(sandbox_image="registry.test/pause:3.10"))  # type: ignore[arg-type]
    assert puller.labels(parse_docker_ref("registry.test/pause:3.10")) == {
        LABEL_IMAGE: IMAGE_MANAGED,
        LABEL_PINNED: PINNED,
    }
    assert puller.labels(parse_docker_ref("registry.test/pause:3.9")) == {LABEL_IMAGE: IMAGE_MANAGED}
    broken = ImagePuller(None, None, ImageConfig(sandbox_image="Not A Ref"))  # type: ignore[arg-type]
    assert LABEL_PINNED not in broken.labels(parse_docker_ref("registry.test/pause:3.10"))


def test_invalid_reference_names_it_and_a_missing_pipeline_is_unavailable(tmp_path: Path) -> None:
    async def body(s: Stores) -> None:
        puller = ImagePuller(s.images, None, ImageConfig())
        with pytest.raises(errors.InvalidArgument, match='"Bad/Ref:1"'):
            await puller.pull("Bad/Ref:1")
        with pytest.raises(errors.InvalidArgument, match="must name an image"):
            await puller.pull("")
        with pytest.raises(
            errors.Unavailable, match=r'"registry.test/app:1".*io.containerd.transfer.v1.local'
        ):
            await puller.pull("registry.test/app:1")

    run(tmp_path, body)


def test_records_are_created_or_re_pointed_with_cri_labels(tmp_path: Path) -> None:
    old, new = small_image("old"), small_image("new")

    async def body(s: Stores) -> None:
        puller = ImagePuller(s.images, None, ImageConfig())
        old_target = await store_image(s.content, old)
        new_target = await store_image(s.content, new)
        managed = {LABEL_IMAGE: IMAGE_MANAGED}
        # Made by someone else (ctr), without the CRI label: the pull adds it and keeps the rest.
        await s.images.create(Image(name="registry.test/app:1", target=old_target, labels={"mine": "yes"}))
        await puller._record("registry.test/app:1", new_target, managed)
        got = await s.images.get("registry.test/app:1")
        assert got.target == new_target and got.labels == {"mine": "yes", **managed}

        # Pinning is added, never taken away by a later pull without it.
        pinned = {**managed, LABEL_PINNED: PINNED}
        await puller._record("registry.test/app:1", new_target, pinned)
        await puller._record("registry.test/app:1", new_target, managed)
        assert (await s.images.get("registry.test/app:1")).labels[LABEL_PINNED] == PINNED

        await puller._record(new.config_desc.digest, new_target, managed)
        assert (await s.images.get(new.config_desc.digest)).labels == managed

    run(tmp_path, body)


def test_shared_pull_survives_a_caller_going_away(tmp_path: Path) -> None:
    """The task behind a pull is shielded: cancelling one waiter leaves it to the others."""

    async def body(s: Stores) -> None:
        gate = asyncio.Event()
        calls: list[str] = []

        class Gated(ImagePuller):
            async def _pull(self, ref: object, snapshotter: str, credentials: object) -> str:
                calls.append(str(ref))
                await gate.wait()
                return "sha256:" + "e" * 64

        puller = Gated(s.images, None, ImageConfig())
        first = asyncio.ensure_future(puller.pull("busybox:1"))
        second = asyncio.ensure_future(puller.pull("docker.io/library/busybox:1"))  # the same, normalized
        other_creds = asyncio.ensure_future(
            puller.pull("busybox:1", auth.AuthConfig(username="u", password="p"))
        )
        await asyncio.sleep(0.01)
        first.cancel()
        gate.set()
        assert await second == "sha256:" + "e" * 64
        await other_creds
        assert calls == ["docker.io/library/busybox:1"] * 2  # one per credentials
        assert first.cancelled()

    run(tmp_path, body)


# --- through the real pull pipeline and a real registry --------------------------------------

DOMAIN = "wharf.test"  # sent to the registry on 127.0.0.1 by hosts.toml


@dataclass
class Remote:
    """A registry with one image, and a hosts.toml directory mapping DOMAIN to it."""

    registry: RegistryServer
    certs: Path
    image: BuiltImage


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Remote]:
    base = tmp_path_factory.mktemp("pull-registry")
    image = small_image("pulled", layers=2)
    with run_registry(base / "registry") as registry:
        push(registry, "unit/app:1", image)
        yield Remote(registry, point_hosts(base / "certs.d", DOMAIN, registry), image)


class Counting(Puller):
    """The real puller, counting the pulls it is asked for."""

    calls = 0

    async def pull(self, ref: str, opts: PullOptions | None = None) -> PullResult:
        type(self).calls += 1
        return await super().pull(ref, opts)


def pull_run(tmp_path: Path, remote: Remote, body: Callable[[Stores, ImagePuller], Awaitable[T]]) -> T:
    """Run ``body`` with an ImagePuller over a real Puller unpacking into a native snapshotter."""

    async def inner(s: Stores) -> T:
        leases = LeaseStore(s.db)
        snapshotter = NamespacedSnapshotter(s.db, NativeBackend(tmp_path / "native"))
        workers = Workers(2)
        puller = Counting(
            s.content, s.images, leases, Unpacker(s.content, {"native": snapshotter}, leases, workers)
        )
        config = ImageConfig(
            snapshotter="native", config_path=str(remote.certs), sandbox_image=f"{DOMAIN}/unit/app:1"
        )
        try:
            return await body(s, ImagePuller(s.images, puller, config))
        finally:
            await puller.close()
            await workers.close()

    return run(tmp_path, inner)


def test_pull_records_three_names_and_answers_the_image_id(tmp_path: Path, remote: Remote) -> None:
    image = remote.image
    ref = f"{DOMAIN}/unit/app:1"
    repo_digest = f"{DOMAIN}/unit/app@{image.manifest_desc.digest}"

    async def body(s: Stores, puller: ImagePuller) -> None:
        Counting.calls = 0
        ids = await asyncio.gather(puller.pull(ref), puller.pull(ref))
        assert list(ids) == [image.config_desc.digest] * 2 and Counting.calls == 1  # one shared pull
        records = {r.name: r for r in await s.images.list()}
        assert set(records) == {ref, repo_digest, image.config_desc.digest}
        for record in records.values():
            assert record.target.digest == image.manifest_desc.digest
            assert record.labels == {LABEL_IMAGE: IMAGE_MANAGED, LABEL_PINNED: PINNED}
        found = await s.catalog.find(ref)
        assert found.repo_tags == [ref] and found.repo_digests == [repo_digest] and found.pinned
        # The rootfs is unpacked into the configured snapshotter, named by the chain id.
        assert puller._puller is not None
        assert await puller._puller.is_unpacked(records[ref].target, snapshotter="native")
        with pytest.raises(errors.NotFound, match=f'"{DOMAIN}/unit/app:latest"'):
            await puller.pull(f"{DOMAIN}/unit/app")

    pull_run(tmp_path, remote, body)


def test_pulls_with_equal_auth_configs_share_one_pull(tmp_path: Path, remote: Remote) -> None:
    """The CRI decides which PullImage calls share a pull: equal AuthConfigs do, others do not."""
    ref = f"{DOMAIN}/unit/app:1"

    async def body(s: Stores, puller: ImagePuller) -> None:
        Counting.calls = 0
        # Separate but equal AuthConfigs (two PullImage requests): each gets a callback of its own.
        same = [auth.AuthConfig(username="u", password="p") for _ in range(2)]
        other = auth.AuthConfig(username="u", password="q")
        ids = await asyncio.gather(*(puller.pull(ref, cfg) for cfg in same))
        assert list(ids) == [remote.image.config_desc.digest] * 2 and Counting.calls == 1
        Counting.calls = 0
        ids = await asyncio.gather(puller.pull(ref, same[0]), puller.pull(ref, other), puller.pull(ref))
        assert len(set(ids)) == 1 and Counting.calls == 3  # one pull per credentials

    pull_run(tmp_path, remote, body)


def test_pull_by_digest_records_no_tag(tmp_path: Path, remote: Remote) -> None:
    image = remote.image
    ref = f"{DOMAIN}/unit/app@{image.manifest_desc.digest}"

    async def body(s: Stores, puller: ImagePuller) -> set[str]:
        assert (
            await puller.pull(f"{DOMAIN}/unit/app:1@{image.manifest_desc.digest}") == image.config_desc.digest
        )
        return {r.name for r in await s.images.list()}

    assert pull_run(tmp_path, remote, body) == {ref, image.config_desc.digest}


def test_a_stalled_pull_is_a_deadline_naming_the_image(tmp_path: Path) -> None:
    """A registry that stops sending mid-layer: the pull ends after the progress timeout."""
    image = small_image("stall")
    layer = image.layers[0]

    def app(release: asyncio.Event) -> web.Application:
        async def manifest(request: web.Request) -> web.StreamResponse:
            return web.Response(body=image.manifest, content_type=image.manifest_desc.media_type)

        async def blob(request: web.Request) -> web.StreamResponse:
            if request.match_info["digest"] == image.config_desc.digest:
                return web.Response(body=image.config)
            resp = web.StreamResponse(headers={"Content-Length": str(len(layer.blob))})
            await resp.prepare(request)
            await resp.write(layer.blob[:10])
            await release.wait()  # and then nothing, until the test is over
            return resp

        async def root(request: web.Request) -> web.StreamResponse:
            return web.Response()

        application = web.Application()
        application.router.add_get("/v2/", root)
        application.router.add_route("*", "/v2/stall/app/manifests/{ref}", manifest)
        application.router.add_get("/v2/stall/app/blobs/{digest}", blob)
        return application

    async def body(s: Stores) -> None:
        release = asyncio.Event()
        async with serve_app(app(release)) as host:
            certs = tmp_path / "certs.d"
            (certs / DOMAIN).mkdir(parents=True)
            (certs / DOMAIN / "hosts.toml").write_text(f'server = "http://{host}"\n')
            leases = LeaseStore(s.db)
            workers = Workers(1)
            native = {"native": NamespacedSnapshotter(s.db, NativeBackend(tmp_path / "native"))}
            puller = Puller(s.content, s.images, leases, Unpacker(s.content, native, leases, workers))
            config = ImageConfig(snapshotter="native", config_path=str(certs), progress_timeout=0.5)
            started = time.monotonic()
            try:
                with pytest.raises(errors.DeadlineExceeded, match=f'image "{DOMAIN}/stall/app:1".*no data'):
                    await ImagePuller(s.images, puller, config).pull(f"{DOMAIN}/stall/app:1")
            finally:
                release.set()
                await puller.close()
                await workers.close()
            assert time.monotonic() - started < 10
            assert await s.images.list() == []  # nothing is recorded for a failed pull

    run(tmp_path, body)
