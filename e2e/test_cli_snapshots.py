"""``wharf snapshots`` against the real daemon (overlayfs), and the stock ctr reading the same snapshots."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from e2e.daemon import BIN, Daemon
from wharfd.api.services.content.v1 import content_pb2, content_pb2_grpc
from wharfd.api.services.diff.v1 import diff_pb2, diff_pb2_grpc
from wharfd.api.services.snapshots.v1 import snapshots_pb2, snapshots_pb2_grpc

CTR = shutil.which("ctr")


def ctr(daemon: Daemon, *args: str) -> str:
    """The stock ctr's output for the same command."""
    assert CTR is not None
    cmd = [CTR, "--address", str(daemon.address), *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=30).stdout


def test_lifecycle(daemon: Daemon) -> None:
    daemon.wharf("snapshots", "prepare", "base-work")
    daemon.wharf("snapshots", "commit", "base", "base-work")
    prepared = daemon.wharf("snapshots", "prepare", "--mounts", "-t", "/mnt/root", "app", "base").stdout
    line, _, mounts_json = prepared.partition("\n")
    assert re.fullmatch(
        r"mount -t overlay overlay /mnt/root -o workdir=\S+,upperdir=\S+,lowerdir=\S+", line
    ), line
    mounts = json.loads(mounts_json)
    assert [m["Type"] for m in mounts] == ["overlay"] and mounts[0]["Target"] == ""
    daemon.wharf("snapshots", "view", "ro", "base")

    assert daemon.wharf("snapshots", "ls").stdout == (
        "KEY  PARENT KIND      \napp  base   Active    \nbase        Committed \nro   base   View      \n"
    )
    assert daemon.wharf("snapshots", "tree").stdout == " base\n  \\_ app\n  \\_ ro\n"
    info = json.loads(daemon.wharf("snapshots", "info", "app").stdout)
    assert (info["Kind"], info["Name"], info["Parent"]) == ("Active", "app", "base")
    assert "containerd.io/gc.root" in info["Labels"]
    mount_lines = daemon.wharf("snapshots", "mounts", "/target", "app").stdout
    assert mount_lines.startswith("mount -t overlay overlay /target -o ")

    labels = daemon.wharf("snapshots", "label", "base", "team=a").stdout.strip()
    assert labels.endswith(",team=a")
    usage = daemon.wharf("snapshots", "usage", "-b", "app").stdout.splitlines()
    assert re.fullmatch(r"app +\d+ +\d+ +", usage[1])

    busy = daemon.wharf("snapshots", "rm", "base", check=False)
    assert busy.returncode == 1 and busy.stderr.startswith('wharf: failed to remove "base": ')
    daemon.wharf("snapshots", "rm", "app", "ro", "base")
    assert daemon.wharf("snapshots", "ls").stdout == "KEY PARENT KIND \n"


def test_native_snapshotter_by_flag_and_env(daemon: Daemon) -> None:
    daemon.wharf("snapshots", "--snapshotter", "native", "prepare", "n1")
    assert "n1" in daemon.wharf("snapshots", "--snapshotter", "native", "ls").stdout
    assert "n1" not in daemon.wharf("snapshots", "ls").stdout
    unknown = daemon.wharf("snapshots", "--snapshotter", "nope", "ls", check=False)
    assert unknown.returncode == 1 and "nope" in unknown.stderr


def test_diff(daemon: Daemon) -> None:
    daemon.wharf("snapshots", "prepare", "base-work")
    daemon.wharf("snapshots", "commit", "base", "base-work")
    mounts = json.loads(daemon.wharf("snapshots", "prepare", "--mounts", "top", "base").stdout)
    upper = next(o.split("=", 1)[1] for o in mounts[0]["Options"] if o.startswith("upperdir="))
    Path(upper, "hello.txt").write_text("hi\n")
    result = subprocess.run(
        [str(BIN / "wharf"), "--address", str(daemon.address), "snapshots", "diff", "top"],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(result.stdout))) as layer:
        assert layer.getnames() == ["hello.txt"]
    # The temporary view of the parent and the lease are gone.
    assert "parent-view" not in daemon.wharf("snapshots", "ls").stdout
    assert daemon.wharf("leases", "ls", "-q").stdout == ""


@pytest.mark.skipif(CTR is None, reason="the stock ctr is not installed (Debian package containerd)")
def test_stock_ctr_reads_the_same(daemon: Daemon) -> None:
    daemon.wharf("snapshots", "prepare", "w")
    daemon.wharf("snapshots", "commit", "c", "w")
    daemon.wharf("snapshots", "prepare", "child", "c")
    daemon.wharf("snapshots", "label", "c", "b=2", "a=1")
    for command in (["ls"], ["info", "c"], ["info", "child"], ["tree"], ["usage"], ["usage", "-b", "child"]):
        assert daemon.wharf("snapshots", *command).stdout == ctr(daemon, "snapshots", *command), command


def test_diff_clamps_times_to_the_source_date_epoch(daemon: Daemon) -> None:
    epoch, old = 1_600_000_000, 1_500_000_000
    daemon.wharf("snapshots", "prepare", "epoch-base-work")
    daemon.wharf("snapshots", "commit", "epoch-base", "epoch-base-work")
    mounts = json.loads(daemon.wharf("snapshots", "prepare", "--mounts", "epoch-top", "epoch-base").stdout)
    upper = next(o.split("=", 1)[1] for o in mounts[0]["Options"] if o.startswith("upperdir="))
    Path(upper, "new.txt").write_text("now\n")
    Path(upper, "old.txt").write_text("then\n")
    os.utime(Path(upper, "old.txt"), (old, old))
    md = (("containerd-namespace", "default"),)
    with daemon.channel() as channel:
        snapshots = snapshots_pb2_grpc.SnapshotsStub(channel)
        left = snapshots.View(
            snapshots_pb2.ViewSnapshotRequest(snapshotter="overlayfs", key="epoch-left", parent="epoch-base"),
            metadata=md,
            timeout=30,
        ).mounts
        right = snapshots.Mounts(
            snapshots_pb2.MountsRequest(snapshotter="overlayfs", key="epoch-top"), metadata=md, timeout=30
        ).mounts
        request = diff_pb2.DiffRequest(left=left, right=right, source_date_epoch=Timestamp(seconds=epoch))
        made = diff_pb2_grpc.DiffStub(channel).Diff(request, metadata=md, timeout=60).diff
        chunks = content_pb2_grpc.ContentStub(channel).Read(
            content_pb2.ReadContentRequest(digest=made.digest), metadata=md, timeout=60
        )
        blob = b"".join(chunk.data for chunk in chunks)
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as layer:
        times = {m.name: m.mtime for m in layer.getmembers()}
    assert times == {"new.txt": epoch, "old.txt": old}
