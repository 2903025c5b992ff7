"""The CRI ImageService through the daemon's socket, pulling from real registries on 127.0.0.1.

The images are named under made-up registry domains; the daemon's
``registry.config_path`` holds a ``hosts.toml`` per domain that sends every
request to a docker-registry on 127.0.0.1 (one open, one with htpasswd).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import pytest

from e2e.daemon import Daemon, running
from tests.support.images import File, Image, build_image, build_layer, busybox_files
from tests.support.registry import point_hosts, push, run_registry
from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.api.cri.v1 import api_pb2_grpc as cri_grpc
from wharfd.api.services.images.v1 import images_pb2 as ipb
from wharfd.api.services.images.v1 import images_pb2_grpc as ipb_grpc
from wharfd.runtime.images import platforms
from wharfd.runtime.registry import auth

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="unpacks into overlayfs: needs root"),
]

OPEN = "open.wharf.test"  # served by the open registry
LOCKED = "locked.wharf.test"  # served by the htpasswd registry
USER, PASSWORD = "kubelet", "s3cret-pw"
K8S = (("containerd-namespace", "k8s.io"),)
TIMEOUT = 60


@dataclass
class Env:
    """The daemon, the registries and the images pushed to them."""

    daemon: Daemon
    busybox: Image
    pause: Image


def _image(cmd: str) -> Image:
    return build_image([build_layer(busybox_files())], cmd=[cmd], platform=platforms.host(), user="1000")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("cri-images")
    busybox, pause = _image("sh"), _image("sleep")
    with (
        run_registry(base / "open") as open_registry,
        run_registry(base / "locked", htpasswd={USER: PASSWORD}) as locked_registry,
    ):
        push(open_registry, "e2e/busybox:1", busybox)
        push(open_registry, "e2e/pause:3", pause)
        push(locked_registry, "e2e/private:1", busybox, auth.Credentials(USER, PASSWORD))
        # Big enough that concurrent pulls of it overlap (test_concurrent_pulls_share_only_with_their_credentials).
        shared = build_image(
            [build_layer([File("blob.bin", os.urandom(16 << 20))])], platform=platforms.host()
        )
        push(locked_registry, "e2e/shared:1", shared, auth.Credentials(USER, PASSWORD))
        certs = base / "certs.d"
        point_hosts(certs, OPEN, open_registry)
        point_hosts(certs, LOCKED, locked_registry)
        config = (
            '[plugins."io.containerd.grpc.v1.cri"]\n'
            f'  sandbox_image = "{OPEN}/e2e/pause:3"\n'
            '[plugins."io.containerd.grpc.v1.cri".registry]\n'
            f'  config_path = "{certs}"\n'
        )
        with running(base / "daemon", extra_config=config) as daemon:
            yield Env(daemon, busybox, pause)


def images_stub(env: Env) -> tuple[grpc.Channel, cri_grpc.ImageServiceStub]:
    ch = env.daemon.channel()
    return ch, cri_grpc.ImageServiceStub(ch)


def pull(stub: cri_grpc.ImageServiceStub, ref: str, **auth_fields: str) -> str:
    req = cri.PullImageRequest(image=cri.ImageSpec(image=ref))
    if auth_fields:
        req.auth.CopyFrom(cri.AuthConfig(**auth_fields))
    return str(stub.PullImage(req, timeout=TIMEOUT).image_ref)


def status(stub: cri_grpc.ImageServiceStub, ref: str, verbose: bool = False) -> cri.ImageStatusResponse:
    req = cri.ImageStatusRequest(image=cri.ImageSpec(image=ref), verbose=verbose)
    resp: cri.ImageStatusResponse = stub.ImageStatus(req, timeout=TIMEOUT)
    return resp


def record_names(ch: grpc.Channel) -> dict[str, ipb.Image]:
    resp = ipb_grpc.ImagesStub(ch).List(ipb.ListImagesRequest(), metadata=K8S, timeout=TIMEOUT)
    return {i.name: i for i in resp.images}


def test_pull_list_status_and_remove(env: Env) -> None:
    ref = f"{OPEN}/e2e/busybox:1"
    image_id = env.busybox.config_desc.digest
    repo_digest = f"{OPEN}/e2e/busybox@{env.busybox.manifest_desc.digest}"
    ch, stub = images_stub(env)
    with ch:
        assert pull(stub, ref) == image_id

        # The three records containerd's CRI keeps, on one target, labelled managed.
        records = record_names(ch)
        assert {ref, repo_digest, image_id} <= set(records)
        assert {records[n].target.digest for n in (ref, repo_digest, image_id)} == {
            env.busybox.manifest_desc.digest
        }
        assert all(records[n].labels["io.cri-containerd.image"] == "managed" for n in (ref, repo_digest))

        listed = {i.id: i for i in stub.ListImages(cri.ListImagesRequest(), timeout=TIMEOUT).images}
        image = listed[image_id]
        assert list(image.repo_tags) == [ref] and list(image.repo_digests) == [repo_digest]
        layers = sum(layer.descriptor.size for layer in env.busybox.layers)
        assert image.size == env.busybox.manifest_desc.size + env.busybox.config_desc.size + layers
        assert image.uid.value == 1000 and not image.pinned

        for key in (ref, repo_digest, image_id, image_id[7:19], f"{OPEN}/e2e/busybox:1"):
            assert status(stub, key).image.id == image_id, key
        info = json.loads(status(stub, ref, verbose=True).info["info"])
        assert info["imageSpec"]["config"]["Cmd"] == ["sh"] and info["chainID"].startswith("sha256:")

        # Removing one name removes them all; again, and an unknown image, are fine.
        stub.RemoveImage(cri.RemoveImageRequest(image=cri.ImageSpec(image=ref)), timeout=TIMEOUT)
        assert not status(stub, image_id).HasField("image")
        assert not {ref, repo_digest, image_id} & set(record_names(ch))
        stub.RemoveImage(cri.RemoveImageRequest(image=cri.ImageSpec(image=ref)), timeout=TIMEOUT)
        stub.RemoveImage(cri.RemoveImageRequest(image=cri.ImageSpec(image=f"{OPEN}/x:y")), timeout=TIMEOUT)


def test_concurrent_pulls_of_one_image_agree(env: Env) -> None:
    ref = f"{OPEN}/e2e/busybox:1"
    ch, stub = images_stub(env)
    with ch, ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(lambda _: pull(stub, ref), range(4)))
        assert ids == [env.busybox.config_desc.digest] * 4
        (image,) = [
            i for i in stub.ListImages(cri.ListImagesRequest(), timeout=TIMEOUT).images if i.id == ids[0]
        ]
        assert list(image.repo_tags) == [ref]
        stub.RemoveImage(cri.RemoveImageRequest(image=cri.ImageSpec(image=ids[0])), timeout=TIMEOUT)


def test_sandbox_image_is_pinned(env: Env) -> None:
    ch, stub = images_stub(env)
    with ch:
        image_id = pull(stub, f"{OPEN}/e2e/pause:3")
        assert status(stub, image_id).image.pinned
        assert record_names(ch)[f"{OPEN}/e2e/pause:3"].labels["io.cri-containerd.pinned"] == "pinned"


def test_pull_with_basic_auth(env: Env) -> None:
    ref = f"{LOCKED}/e2e/private:1"
    ch, stub = images_stub(env)
    with ch:
        for fields in ({}, {"username": USER, "password": "wrong"}):
            with pytest.raises(grpc.RpcError) as info:
                pull(stub, ref, **fields)
            assert info.value.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
            assert ref in (info.value.details() or "")
        assert pull(stub, ref, username=USER, password=PASSWORD) == env.busybox.config_desc.digest
        encoded = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        assert pull(stub, ref, auth=encoded) == env.busybox.config_desc.digest


def test_concurrent_pulls_share_only_with_their_credentials(env: Env) -> None:
    # A pull with wrong or no credentials started while an authorised pull of the same image is
    # downloading must not ride on that download: it is refused as if alone.
    ref = f"{LOCKED}/e2e/shared:1"
    ch, stub = images_stub(env)
    with ch, ThreadPoolExecutor(3) as pool:
        good = pool.submit(pull, stub, ref, username=USER, password=PASSWORD)
        bad = [
            pool.submit(pull, stub, ref, **fields) for fields in ({}, {"username": USER, "password": "wrong"})
        ]
        for attempt in bad:
            with pytest.raises(grpc.RpcError) as info:
                attempt.result()
            assert info.value.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
        assert good.result().startswith("sha256:")


def test_bad_and_missing_references(env: Env) -> None:
    ch, stub = images_stub(env)
    with ch:
        for bad in ("Invalid/UPPER:tag", "a" * 64, "x/y:bad tag", ""):
            with pytest.raises(grpc.RpcError) as info:
                pull(stub, bad)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
            assert bad in (info.value.details() or ""), info.value.details()
        missing = f"{OPEN}/e2e/nope:1"
        with pytest.raises(grpc.RpcError) as info:
            pull(stub, missing)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert missing in (info.value.details() or "")


def test_image_fs_info(env: Env) -> None:
    ch, stub = images_stub(env)
    with ch:
        pull(stub, f"{OPEN}/e2e/busybox:1")
        resp = stub.ImageFsInfo(cri.ImageFsInfoRequest(), timeout=TIMEOUT)
        first = resp.image_filesystems[0]
        assert first.fs_id.mountpoint == str(env.daemon.root / "io.containerd.snapshotter.v1.overlayfs")
        assert first.used_bytes.value >= 1_000_000  # busybox is about 2 MB unpacked
        assert first.inodes_used.value > 5 and first.timestamp > 0
        assert [f.fs_id.mountpoint for f in resp.container_filesystems] == [first.fs_id.mountpoint]
