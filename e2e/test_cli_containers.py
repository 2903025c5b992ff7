"""``wharf containers`` through the real daemon, and Debian's stock ctr reading the same containers.

Containers are made through the gRPC API with a hand-made spec over a
snapshot prepared here, so these tests need no image pull.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import grpc
import pytest
from google.protobuf import any_pb2

from e2e.daemon import Daemon
from wharfd.api.services.containers.v1 import containers_pb2 as pb
from wharfd.api.services.containers.v1 import containers_pb2_grpc as pb_grpc
from wharfd.api.services.content.v1 import content_pb2 as cpb
from wharfd.api.services.content.v1 import content_pb2_grpc as cpb_grpc
from wharfd.api.services.images.v1 import images_pb2 as ipb
from wharfd.api.services.images.v1 import images_pb2_grpc as ipb_grpc
from wharfd.api.services.snapshots.v1 import snapshots_pb2 as spb
from wharfd.api.services.snapshots.v1 import snapshots_pb2_grpc as spb_grpc
from wharfd.api.types import descriptor_pb2
from wharfd.api.types.runc.options import oci_pb2
from wharfd.runtime.images import platforms
from wharfd.runtime.images.chainid import chain_ids
from wharfd.runtime.oci import spec as oci_spec

NS = "ctr-test"
MD = (("containerd-namespace", NS),)
RUNC = "io.containerd.runc.v2"
WHARF_SHIM = "io.containerd.wharf.v2"
SNAPSHOTTER = "native"
CTR = shutil.which("ctr")


def _create(
    daemon: Daemon, cid: str, *, image: str = "", snapshot: bool = False, labels: dict[str, str] | None = None
) -> None:
    options = any_pb2.Any(
        type_url="containerd.runc.v1.Options", value=oci_pb2.Options(root="/run/x").SerializeToString()
    )
    spec = oci_spec.generate(NS, cid)
    spec["process"]["args"] = ["sh", "-c", "echo <hi> && sleep 1"]
    msg = pb.Container(
        id=cid,
        image=image,
        labels=labels or {},
        runtime=pb.Container.Runtime(name=RUNC, options=options),
        spec=oci_spec.to_any(spec),
    )
    with daemon.channel() as ch:
        if snapshot:
            gc_root = {"containerd.io/gc.root": "2024-01-01T00:00:00Z"}
            request = spb.PrepareSnapshotRequest(snapshotter=SNAPSHOTTER, key=cid, labels=gc_root)
            spb_grpc.SnapshotsStub(ch).Prepare(request, metadata=MD, timeout=10)
            msg.snapshotter, msg.snapshot_key = SNAPSHOTTER, cid
        pb_grpc.ContainersStub(ch).Create(pb.CreateContainerRequest(container=msg), metadata=MD, timeout=10)


def _snapshot_exists(daemon: Daemon, key: str) -> bool:
    with daemon.channel() as ch:
        try:
            request = spb.StatSnapshotRequest(snapshotter=SNAPSHOTTER, key=key)
            spb_grpc.SnapshotsStub(ch).Stat(request, metadata=MD, timeout=10)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND
            return False
    return True


def _ctr(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    assert CTR is not None
    return subprocess.run(
        [CTR, "--address", str(daemon.address), "--namespace", NS, *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_list_info_label_remove(daemon: Daemon) -> None:
    _create(daemon, "web-1", image="docker.io/library/nginx:latest", snapshot=True, labels={"app": "web"})
    _create(daemon, "job")
    assert daemon.wharf("containers", "ls", namespace=NS).stdout == (
        "CONTAINER    IMAGE                             RUNTIME                  \n"
        "job          -                                 io.containerd.runc.v2    \n"
        "web-1        docker.io/library/nginx:latest    io.containerd.runc.v2    \n"
    )
    assert daemon.wharf("c", "ls", "-q", "labels.app==web", namespace=NS).stdout == "web-1\n"

    info = json.loads(daemon.wharf("c", "info", "web-1", namespace=NS).stdout)
    assert info["Runtime"]["Options"]["type_url"] == "containerd.runc.v1.Options"
    assert (info["Snapshotter"], info["SnapshotKey"], info["Labels"]) == (
        SNAPSHOTTER,
        "web-1",
        {"app": "web"},
    )
    assert info["Spec"]["process"]["args"] == ["sh", "-c", "echo <hi> && sleep 1"]
    spec_only = json.loads(daemon.wharf("c", "info", "--spec", "web-1", namespace=NS).stdout)
    assert spec_only == info["Spec"]

    assert daemon.wharf("c", "label", "web-1", "tier=front", "app=", namespace=NS).stdout == "tier=front\n"
    missing = daemon.wharf("c", "info", "nope", namespace=NS, check=False)
    assert missing.returncode == 1
    assert missing.stderr == f'wharf: container "nope" in namespace "{NS}": not found\n'

    # No task service answers for these containers: delete goes straight to the snapshot and record.
    assert daemon.wharf("c", "rm", "web-1", "job", namespace=NS).returncode == 0
    assert not _snapshot_exists(daemon, "web-1")
    assert daemon.wharf("c", "ls", "-q", namespace=NS).stdout == ""


def test_containers_survive_a_daemon_kill(daemon: Daemon) -> None:
    _create(daemon, "durable", snapshot=True)
    daemon.kill()
    daemon.start()
    assert daemon.wharf("c", "ls", "-q", namespace=NS).stdout == "durable\n"
    assert _snapshot_exists(daemon, "durable")
    # The namespace still holds a container: it cannot be removed.
    result = daemon.wharf("namespaces", "rm", NS, check=False)
    assert result.returncode == 1 and "containers" in result.stderr


@pytest.mark.skipif(CTR is None, reason="the stock ctr is not installed (Debian package containerd)")
def test_stock_ctr_reads_the_same(daemon: Daemon) -> None:
    _create(daemon, "a-long-container-name", image="example.com/app:1", snapshot=True, labels={"k": "v"})
    _create(daemon, "b")
    listed = _ctr(daemon, "containers", "ls")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == daemon.wharf("containers", "ls", namespace=NS).stdout
    assert _ctr(daemon, "c", "ls", "-q").stdout == daemon.wharf("c", "ls", "-q", namespace=NS).stdout

    ours = daemon.wharf("c", "info", "a-long-container-name", namespace=NS).stdout
    theirs = _ctr(daemon, "c", "info", "a-long-container-name").stdout
    # Two differences are ctr 1.6's age: it predates sandboxes (no SandboxID), and it prints
    # no extensions as null where containerd 2.x's client (which we follow) prints {}.
    ours_16 = [line for line in ours.splitlines() if '"SandboxID"' not in line]
    ours_16 = [line.replace('"Extensions": {},', '"Extensions": null,') for line in ours_16]
    assert ours_16 == theirs.splitlines()
    spec_ours = daemon.wharf("c", "info", "--spec", "b", namespace=NS).stdout
    assert spec_ours == _ctr(daemon, "c", "info", "--spec", "b").stdout

    assert _ctr(daemon, "c", "label", "b", "x=1").stdout == "x=1\n"
    assert daemon.wharf("c", "label", "b", namespace=NS).stdout == "x=1\n"
    # ctr deletes what wharf created, including the snapshot.
    removed = _ctr(daemon, "c", "rm", "a-long-container-name")
    assert removed.returncode == 0, removed.stderr
    assert not _snapshot_exists(daemon, "a-long-container-name")
    assert daemon.wharf("c", "ls", "-q", namespace=NS).stdout == "b\n"


# --- create from an image unpacked on overlayfs ----------------------------------------------------


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _put(ch: grpc.Channel, data: bytes, labels: dict[str, str] | None = None) -> dict[str, object]:
    ref, total, expected = f"ref-{_digest(data)[7:19]}", len(data), _digest(data)
    requests = [
        cpb.WriteContentRequest(action=cpb.WRITE, ref=ref, total=total, expected=expected, data=data),
        cpb.WriteContentRequest(
            action=cpb.COMMIT, ref=ref, total=total, expected=expected, offset=total, labels=labels or {}
        ),
    ]
    for _ in cpb_grpc.ContentStub(ch).Write(iter(requests), metadata=MD, timeout=10):
        pass
    return {"digest": expected, "size": total}


def _layered_image(
    daemon: Daemon, name: str, files: list[dict[str, str]], config: Mapping[str, object]
) -> None:
    """Commit one overlayfs snapshot per layer (as an unpack leaves them) and the image over them."""
    diff_ids = [_digest(f"layer-{i}".encode()) for i in range(len(files))]
    chain = chain_ids(diff_ids)
    with daemon.channel() as ch:
        snapshots = spb_grpc.SnapshotsStub(ch)
        parent = ""
        for i, layer in enumerate(files):
            request = spb.PrepareSnapshotRequest(snapshotter="overlayfs", key=f"extract-{i}", parent=parent)
            (mount,) = snapshots.Prepare(request, metadata=MD, timeout=10).mounts
            upper = mount.source if mount.type == "bind" else _option(mount.options, "upperdir")
            for path, text in layer.items():
                (Path(upper) / path).parent.mkdir(parents=True, exist_ok=True)
                (Path(upper) / path).write_text(text)
            commit = spb.CommitSnapshotRequest(snapshotter="overlayfs", name=chain[i], key=f"extract-{i}")
            snapshots.Commit(commit, metadata=MD, timeout=10)
            parent = chain[i]
        host = platforms.host()
        document = {"architecture": host.architecture, "os": "linux", "config": config}
        document["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
        cfg = _put(ch, json.dumps(document).encode(), {"containerd.io/gc.ref.snapshot.overlayfs": chain[-1]})
        layers = [_put(ch, f"blob-{i}".encode()) for i in range(len(files))]
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **cfg},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **d} for d in layers],
            }
        ).encode()
        refs = {"containerd.io/gc.ref.content.config": str(cfg["digest"])}
        desc = _put(ch, manifest, refs)
        target = descriptor_pb2.Descriptor(
            media_type="application/vnd.oci.image.manifest.v1+json",
            digest=str(desc["digest"]),
            size=len(manifest),
        )
        create = ipb.CreateImageRequest(image=ipb.Image(name=name, target=target))
        ipb_grpc.ImagesStub(ch).Create(create, metadata=MD, timeout=10)


def _option(options: list[str], key: str) -> str:
    return next(o.split("=", 1)[1] for o in options if o.startswith(key + "="))


def test_create_from_an_image_on_overlayfs(daemon: Daemon) -> None:
    files = [
        {"etc/passwd": "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"},
        {"etc/group": "root:x:0:\napp:x:1000:\nwheel:x:10:app\n"},  # only the merged rootfs has both
    ]
    config = {"Entrypoint": ["/bin/app"], "Cmd": ["serve"], "User": "app", "Env": ["PATH=/bin"]}
    _layered_image(daemon, "example.com/layered:1", files, config)
    created = daemon.wharf("c", "create", "--label", "team=a", "example.com/layered:1", "svc", namespace=NS)
    assert created.returncode == 0 and created.stdout == ""
    info = json.loads(daemon.wharf("c", "info", "svc", namespace=NS).stdout)
    assert (info["Image"], info["Snapshotter"], info["SnapshotKey"]) == (
        "example.com/layered:1",
        "overlayfs",
        "svc",
    )
    assert info["Labels"] == {"io.containerd.image.config.stop-signal": "SIGTERM", "team": "a"}
    # The default runtime is wharfd's own shim, given runc v2's options as ctr gives runc v2.
    assert info["Runtime"] == {"Name": WHARF_SHIM, "Options": {"type_url": "containerd.runc.v1.Options"}}
    process = info["Spec"]["process"]
    assert process["args"] == ["/bin/app", "serve"]
    assert process["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [1000, 10]}
    assert "wharf-rootfs-" not in Path("/proc/self/mountinfo").read_text()  # the view is unmounted
    with daemon.channel() as ch:
        request = spb.ListSnapshotsRequest(snapshotter="overlayfs")
        keys = {
            i.name for m in spb_grpc.SnapshotsStub(ch).List(request, metadata=MD, timeout=10) for i in m.info
        }
    assert "svc" in keys and not any(k.startswith("wharf-rootfs-view") for k in keys)
    assert daemon.wharf("c", "rm", "svc", namespace=NS).returncode == 0
    with daemon.channel() as ch:
        stat = spb.StatSnapshotRequest(snapshotter="overlayfs", key="svc")
        with pytest.raises(grpc.RpcError) as exc:
            spb_grpc.SnapshotsStub(ch).Stat(stat, metadata=MD, timeout=10)
        assert exc.value.code() == grpc.StatusCode.NOT_FOUND
