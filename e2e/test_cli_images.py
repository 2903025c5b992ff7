"""``wharf images`` against the real daemon, on an image stored the way a pull stores one.

Without a pull pipeline yet, the test writes the blobs with ``wharf content
ingest``, labels them with the garbage-collection references a pull sets,
and creates the image record through the Images API.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from dataclasses import dataclass

import pytest

from e2e.daemon import BIN, Daemon
from wharfd.api.services.images.v1 import images_pb2, images_pb2_grpc
from wharfd.api.types import descriptor_pb2
from wharfd.runtime.images import platforms
from wharfd.runtime.images.chainid import chain_ids

CTR = shutil.which("ctr")
HOST = platforms.host()
INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def desc(media_type: str, data: bytes, **extra: object) -> dict[str, object]:
    return {"mediaType": media_type, "digest": digest(data), "size": len(data), **extra}


@dataclass
class Image:
    name: str
    index: bytes
    diff_ids: list[str]


def store(daemon: Daemon, data: bytes, **labels: str) -> None:
    cmd = [str(BIN / "wharf"), "--address", str(daemon.address), "content", "ingest", f"ref-{digest(data)}"]
    result = subprocess.run(cmd, input=data, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    if labels:
        daemon.wharf("content", "label", digest(data), *(f"{k}={v}" for k, v in labels.items()))


def make_image(daemon: Daemon, name: str = "docker.io/library/demo:1") -> Image:
    layers = [b"\x1f\x8b" + b"a" * 1_500_000, b"\x1f\x8b" + b"b" * 1_100_000]
    diff_ids = [digest(b"diff-a"), digest(b"diff-b")]
    config = json.dumps(
        {"architecture": HOST.architecture, "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": desc("application/vnd.oci.image.config.v1+json", config),
            "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", layer) for layer in layers],
        }
    ).encode()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": INDEX,
            "manifests": [
                desc(MANIFEST, manifest, platform={"os": "linux", "architecture": HOST.architecture})
            ],
        }
    ).encode()
    for blob in (config, *layers):
        store(daemon, blob)
    refs = {"containerd.io/gc.ref.content.config": digest(config)}
    refs.update({f"containerd.io/gc.ref.content.l.{i}": digest(layer) for i, layer in enumerate(layers)})
    store(daemon, manifest, **refs)
    store(daemon, index, **{"containerd.io/gc.ref.content.m.0": digest(manifest)})
    target = descriptor_pb2.Descriptor(media_type=INDEX, digest=digest(index), size=len(index))
    with daemon.channel() as channel:
        images_pb2_grpc.ImagesStub(channel).Create(
            images_pb2.CreateImageRequest(image=images_pb2.Image(name=name, target=target)),
            metadata=(("containerd-namespace", "default"),),
            timeout=10,
        )
    return Image(name, index, diff_ids)


def test_list_check_tag_label_remove(daemon: Daemon) -> None:
    image = make_image(daemon)
    lines = daemon.wharf("images", "ls").stdout.splitlines()
    assert lines[0].split() == ["REF", "TYPE", "DIGEST", "SIZE", "PLATFORMS", "LABELS"]
    assert lines[1].split() == [
        image.name,
        INDEX,
        digest(image.index),
        "2.5",
        "MiB",
        f"linux/{HOST.architecture}",
        "-",
    ]

    check = daemon.wharf("images", "check").stdout.splitlines()
    assert check[1].split() == [
        image.name,
        INDEX,
        digest(image.index),
        "complete",
        "(3/3)",
        "2.5",
        "MiB/2.5",
        "MiB",
        "false",
    ]
    assert daemon.wharf("images", "check", "-q").stdout == ""  # not unpacked

    assert daemon.wharf("images", "tag", image.name, "example.com/demo:2").stdout == "example.com/demo:2\n"
    assert daemon.wharf("images", "label", "example.com/demo:2", "team=a").stdout == "team=a\n"
    assert daemon.wharf("images", "ls", "-q", "labels.team==a").stdout == "example.com/demo:2\n"

    removed = daemon.wharf("images", "rm", "--sync", image.name, "nope:1", "example.com/demo:2")
    assert removed.stdout == f"{image.name}\nexample.com/demo:2\n"
    assert "nope:1: image not found" in removed.stderr
    # The last delete waited for garbage collection: nothing references the blobs any more.
    assert daemon.wharf("content", "ls", "-q").stdout == ""


def test_check_and_usage_of_an_unpacked_image(daemon: Daemon) -> None:
    image = make_image(daemon)
    missing = daemon.wharf("images", "usage", image.name, check=False)
    assert missing.stderr == f"wharf: image {image.name} isn't unpacked in snapshotter overlayfs\n"
    # What an unpack leaves: committed snapshots named by the chain ids.
    chain = chain_ids(image.diff_ids)
    parent = ""
    for i, key in enumerate(chain):
        daemon.wharf("snapshots", "prepare", f"extract-{i}", parent)
        daemon.wharf("snapshots", "commit", key, f"extract-{i}")
        parent = key
    assert daemon.wharf("images", "check", "-q").stdout == f"{image.name}\n"
    usage = daemon.wharf("images", "usage", image.name).stdout.splitlines()
    assert usage[0].split() == ["KEY", "SIZE", "INODES"]
    assert [line.split()[0] for line in usage[1:]] == [chain[1], chain[0]]


@pytest.mark.skipif(CTR is None, reason="the stock ctr is not installed (Debian package containerd)")
def test_stock_ctr_reads_the_same(daemon: Daemon) -> None:
    make_image(daemon)
    make_image(daemon, "example.com/other/name:with-a-longer-tag")
    daemon.wharf("images", "label", "example.com/other/name:with-a-longer-tag", "b=2", "a=1")
    assert CTR is not None
    for command in (["images", "ls"], ["images", "check"]):
        stock = subprocess.run(
            [CTR, "--address", str(daemon.address), *command],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        assert daemon.wharf(*command).stdout == stock.stdout, command
