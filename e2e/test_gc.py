"""Garbage collection through the real daemon: deleting an image frees what only it used."""

from __future__ import annotations

import hashlib
import json

import grpc
import pytest

from e2e.daemon import Daemon
from wharfd.api.services.content.v1 import content_pb2 as cpb
from wharfd.api.services.content.v1 import content_pb2_grpc as cpb_grpc
from wharfd.api.services.images.v1 import images_pb2 as ipb
from wharfd.api.services.images.v1 import images_pb2_grpc as ipb_grpc
from wharfd.api.services.leases.v1 import leases_pb2 as lpb
from wharfd.api.services.leases.v1 import leases_pb2_grpc as lpb_grpc
from wharfd.api.types import descriptor_pb2

MD = (("containerd-namespace", "gc-test"),)
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def write_blob(ch: grpc.Channel, data: bytes, labels: dict[str, str] | None = None, lease: str = "") -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    md = MD + ((("containerd-lease", lease),) if lease else ())
    requests = [
        cpb.WriteContentRequest(
            action=cpb.WRITE, ref=f"ref-{digest[7:19]}", total=len(data), expected=digest, data=data
        ),
        cpb.WriteContentRequest(
            action=cpb.COMMIT,
            ref=f"ref-{digest[7:19]}",
            total=len(data),
            expected=digest,
            offset=len(data),
            labels=labels or {},
        ),
    ]
    for _ in cpb_grpc.ContentStub(ch).Write(iter(requests), metadata=md, timeout=10):
        pass
    return digest


def exists(ch: grpc.Channel, digest: str) -> bool:
    try:
        cpb_grpc.ContentStub(ch).Info(cpb.InfoRequest(digest=digest), metadata=MD, timeout=5)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND
        return False
    return True


def blob_file(daemon: Daemon, digest: str) -> bool:
    return (daemon.root / "io.containerd.content.v1.content" / "blobs" / "sha256" / digest[7:]).exists()


def test_image_delete_sync_collects_content(daemon: Daemon) -> None:
    with daemon.channel() as ch:
        layer = write_blob(ch, b"layer bytes")
        config = write_blob(ch, b'{"config": true}')
        manifest_json = json.dumps({"config": config, "layers": [layer]}).encode()
        manifest = write_blob(
            ch,
            manifest_json,
            {"containerd.io/gc.ref.content.config": config, "containerd.io/gc.ref.content.l.0": layer},
        )
        stray = write_blob(ch, b"nothing points at me")
        target = descriptor_pb2.Descriptor(media_type=MANIFEST, digest=manifest, size=len(manifest_json))
        images = ipb_grpc.ImagesStub(ch)
        images.Create(
            ipb.CreateImageRequest(image=ipb.Image(name="example.com/app:1", target=target)), metadata=MD
        )
        images.Create(
            ipb.CreateImageRequest(image=ipb.Image(name="example.com/app:2", target=target)), metadata=MD
        )

        # One tag gone: the other still holds everything. The stray blob goes.
        images.Delete(ipb.DeleteImageRequest(name="example.com/app:1", sync=True), metadata=MD)
        assert all(exists(ch, d) for d in (manifest, config, layer))
        assert not exists(ch, stray) and not blob_file(daemon, stray)

        images.Delete(ipb.DeleteImageRequest(name="example.com/app:2", sync=True), metadata=MD)
        for digest in (manifest, config, layer):
            assert not exists(ch, digest)
            assert not blob_file(daemon, digest)


def test_lease_protects_until_deleted(daemon: Daemon) -> None:
    with daemon.channel() as ch:
        leases = lpb_grpc.LeasesStub(ch)
        leases.Create(lpb.CreateRequest(id="pull-1"), metadata=MD)
        held = write_blob(ch, b"in-flight pull", lease="pull-1")
        res = leases.ListResources(lpb.ListResourcesRequest(id="pull-1"), metadata=MD).resources
        assert (held, "content") in {(r.id, r.type) for r in res}
        # An unrelated sync collection leaves the leased blob alone.
        images = ipb_grpc.ImagesStub(ch)
        target = descriptor_pb2.Descriptor(media_type=MANIFEST, digest=held, size=14)
        images.Create(ipb.CreateImageRequest(image=ipb.Image(name="tmp", target=target)), metadata=MD)
        images.Delete(ipb.DeleteImageRequest(name="tmp", sync=True), metadata=MD)
        assert exists(ch, held)
        leases.Delete(lpb.DeleteRequest(id="pull-1", sync=True), metadata=MD)
        assert not exists(ch, held)
        with pytest.raises(grpc.RpcError) as info:
            leases.Delete(lpb.DeleteRequest(id="pull-1"), metadata=MD)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
