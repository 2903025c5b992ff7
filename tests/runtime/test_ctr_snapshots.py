"""``wharf snapshots``: parsing, ctr's output formats, and every command against the real services."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2

from tests.runtime.ctr_services import Served, digest, put, serve
from wharfd.api.services.diff.v1 import diff_pb2 as dpb
from wharfd.api.services.diff.v1 import diff_pb2_grpc as dpb_grpc
from wharfd.api.services.namespaces.v1 import namespace_pb2 as npb
from wharfd.api.services.snapshots.v1 import snapshots_pb2 as spb
from wharfd.api.types import descriptor_pb2
from wharfd.runtime.ctr import commands, main
from wharfd.runtime.ctr import snapshots as cli

RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(commands.SUPPRESS_DEPRECATIONS_ENV, "true")
    monkeypatch.setenv(cli.SNAPSHOTTER_ENV, "native")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with serve(tmp_path) as s:
        yield s


def parse(*argv: str) -> argparse.Namespace:
    return main.build_parser().parse_args(argv)


# --- parsing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "handler"),
    [
        (["snapshots", "ls"], "_list"),
        (["snapshot", "list"], "_list"),
        (["snapshots", "rm", "a", "b"], "_remove"),
        (["snapshots", "del", "a"], "_remove"),
        (["snapshots", "remove", "a"], "_remove"),
        (["snapshots", "delete", "a"], "_remove"),
        (["snapshots", "m", "/mnt", "k"], "_mounts"),
        (["snapshots", "mount", "/mnt", "k"], "_mounts"),
        (["snapshots", "mounts", "--temp", "/mnt", "k"], "_mounts"),
        (["snapshots", "prepare", "-t", "/mnt", "--mounts", "k", "p"], "_prepare"),
        (["snapshots", "view", "k"], "_view"),
        (["snapshots", "commit", "name", "active"], "_commit"),
        (["snapshots", "diff", "--keep", "--label", "a=b", "x"], "_diff"),
        (["snapshots", "usage", "-b"], "_usage"),
        (["snapshots", "tree"], "_tree"),
        (["snapshots", "label", "k", "a=b"], "_label"),
        (["snapshots", "info", "k"], "_info"),
    ],
)
def test_commands_and_aliases(argv: list[str], handler: str) -> None:
    assert parse(*argv).func.__name__ == handler


def test_snapshotter_flag_belongs_to_the_group(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse("snapshots", "--snapshotter", "overlayfs", "ls").snapshotter == "overlayfs"
    assert parse("snapshots", "ls").snapshotter == "native"  # from the environment
    monkeypatch.delenv(cli.SNAPSHOTTER_ENV)
    assert parse("snapshots", "ls").snapshotter == ""  # resolved later from the namespace
    args = parse("snapshots", "prepare", "key")
    assert (args.key, args.parent, args.target, args.mounts) == ("key", "", "", False)
    diff = parse("snapshots", "diff", "a")
    assert (diff.id_a, diff.id_b, diff.media_type) == ("a", "", "application/vnd.oci.image.layer.v1.tar+gzip")


def test_wrong_argument_count_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main.main(["snapshots", "commit", "only-one"]) == 1
    assert "the following arguments are required: <active>" in capsys.readouterr().err


# --- formats ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0.0 B"), (5, "5.0 B"), (1023, "1023.0 B"), (1024, "1.0 KiB"), (2_621_440, "2.5 MiB"),
     (1 << 30, "1.0 GiB"), (1536 << 40, "1.5 PiB"), (-3, "-3.0 B")],
)  # fmt: skip
def test_bytes_size_is_progress_bytes(size: int, text: str) -> None:
    assert cli.bytes_size(size) == text


@pytest.mark.parametrize(
    ("parts", "joined"),
    [(("/mnt", ""), "/mnt"), (("/mnt/", "sub"), "/mnt/sub"), (("/a/./b/", "../c"), "/a/c"),
     (("rel", ""), "rel"), (("", ""), ""), (("//x//", "/y/"), "/x/y"), (("/", ".."), "/"), (("a", "../.."), "..")],
)  # fmt: skip
def test_go_join(parts: tuple[str, str], joined: str) -> None:
    assert cli.go_join(*parts) == joined


def test_rfc3339_nano_trims_like_go() -> None:
    assert (
        cli.rfc3339_nano(timestamp_pb2.Timestamp(seconds=1700000000, nanos=120000000))
        == "2023-11-14T22:13:20.12Z"
    )
    assert (
        cli.rfc3339_nano(timestamp_pb2.Timestamp(seconds=1700000000, nanos=1))
        == "2023-11-14T22:13:20.000000001Z"
    )
    assert cli.rfc3339_nano(timestamp_pb2.Timestamp(seconds=1700000000)) == "2023-11-14T22:13:20Z"
    assert cli.rfc3339_nano(timestamp_pb2.Timestamp()) == "1970-01-01T00:00:00Z"


def test_info_json_fields_in_go_order() -> None:
    info = spb.Info(name="k", kind=spb.COMMITTED, labels={"z": "1", "a": "2"})
    info.created_at.FromSeconds(1700000000)
    out = cli.info_json(info)
    assert list(out) == ["Kind", "Name", "Labels", "Created", "Updated"]
    assert out["Kind"] == "Committed" and list(out["Labels"]) == ["a", "z"]
    bare = cli.info_json(spb.Info(name="v", kind=spb.VIEW, parent="p"))
    assert list(bare) == ["Kind", "Name", "Parent", "Created", "Updated"]


def test_tree_lines_with_a_parent_listed_late() -> None:
    def info(name: str, parent: str = "") -> Any:
        return SimpleNamespace(name=name, parent=parent)

    infos = [info("c1", "base"), info("base"), info("c2", "base"), info("g", "c1"), info("orphan", "gone")]
    expected = [" base", "  \\_ c1", "    \\_ g", "  \\_ c2", " gone", "  \\_ orphan"]
    assert cli.tree_lines(infos) == expected


# --- against the services -------------------------------------------------------------


def test_prepare_view_commit_and_list(
    served: Served, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert served.wharf("snapshots", "prepare", "--mounts", "-t", "/mnt/x/", "base") == 0
    out = capsys.readouterr().out
    line, _, rest = out.partition("\n")
    source = re.escape(str(served.root / "io.containerd.snapshotter.v1.native"))
    assert re.fullmatch(rf"mount -t bind {source}/snapshots/\d+ /mnt/x -o rw,rbind", line), line
    assert json.loads(rest) == [
        {"Type": "bind", "Source": line.split()[3], "Target": "", "Options": ["rw", "rbind"]}
    ]
    assert rest.startswith('[\n    {\n        "Type": "bind",\n')
    assert served.wharf("snapshots", "commit", "layer1", "base") == 0
    assert served.wharf("snapshots", "prepare", "work", "layer1") == 0
    assert served.wharf("snapshots", "view", "--mounts", "ro", "layer1") == 0
    assert '"ro",' in capsys.readouterr().out
    assert served.wharf("snapshots", "ls") == 0
    assert capsys.readouterr().out == (
        "KEY    PARENT KIND      \n"
        "layer1        Committed \n"
        "ro     layer1 View      \n"
        "work   layer1 Active    \n"
    )


def test_info_and_gc_root_label(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    served.wharf("snapshots", "prepare", "a")
    served.wharf("snapshots", "commit", "c", "a")
    capsys.readouterr()
    assert served.wharf("snapshots", "info", "c") == 0
    out = capsys.readouterr().out
    info = json.loads(out)
    assert list(info) == ["Kind", "Name", "Labels", "Created", "Updated"]
    assert info["Kind"] == "Committed" and info["Name"] == "c"
    assert RFC3339.fullmatch(info["Labels"]["containerd.io/gc.root"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d*[1-9])?Z", info["Created"])
    assert out.startswith('{\n    "Kind": "Committed",\n    "Name": "c",\n')


def test_label_sets_clears_and_prints(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    served.wharf("snapshots", "prepare", "a")
    capsys.readouterr()
    assert served.wharf("snapshots", "label", "a", "x=1", "y=2") == 0
    printed = capsys.readouterr().out.strip().split(",")
    assert printed[1:] == ["x=1", "y=2"] and printed[0].startswith("containerd.io/gc.root=")
    assert served.wharf("snapshots", "label", "a", "x=") == 0
    assert capsys.readouterr().out.strip().split(",")[1:] == ["y=2"]
    assert served.wharf("snapshots", "label", "a") == 0  # no change: just show them
    assert capsys.readouterr().out.strip().endswith(",y=2")


def test_usage_tree_and_remove(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    served.wharf("snapshots", "prepare", "a")
    served.wharf("snapshots", "commit", "base", "a")
    served.wharf("snapshots", "prepare", "child", "base")
    capsys.readouterr()
    assert served.wharf("snapshots", "usage", "-b") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "KEY   SIZE INODES "
    assert re.fullmatch(r"base  \d+ +\d+ +", lines[1]) and lines[2].startswith("child ")
    assert served.wharf("snapshots", "usage", "child") == 0
    assert re.fullmatch(r"child \d+\.\d (B|KiB) +\d+ +", capsys.readouterr().out.splitlines()[1])
    assert served.wharf("snapshots", "tree") == 0
    assert capsys.readouterr().out == " base\n  \\_ child\n"
    assert served.wharf("snapshots", "rm", "base") == 1
    assert capsys.readouterr().err.startswith('wharf: failed to remove "base": ')
    assert served.wharf("snapshots", "rm", "child", "base") == 0
    served.wharf("snapshots", "ls")
    assert capsys.readouterr().out == "KEY PARENT KIND \n"


def test_missing_snapshot_is_reported(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    assert served.wharf("snapshots", "info", "nope") == 1
    err = capsys.readouterr().err
    assert err.startswith("wharf: ") and "nope" in err


def test_default_snapshotter_from_namespace_label(
    served: Served, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(cli.SNAPSHOTTER_ENV)
    with served.client() as client:
        ns = npb.Namespace(name="team", labels={cli.DEFAULT_SNAPSHOTTER_LABEL: "native"})
        client.namespaces.Create(npb.CreateNamespaceRequest(namespace=ns))
        assert cli.resolve_snapshotter(client, "") == cli.DEFAULT_SNAPSHOTTER  # "default" has no label
        assert cli.resolve_snapshotter(client, "btrfs") == "btrfs"
    with served.client("team") as client:
        assert cli.resolve_snapshotter(client, "") == "native"
    assert served.wharf("snapshots", "prepare", "k", namespace="team") == 0
    assert served.wharf("snapshots", "--snapshotter", "native", "ls", namespace="team") == 0
    assert capsys.readouterr().out.endswith("\nk          Active \n")


# --- diff: the client side, with a recording Diff service --------------------------------


class RecordingDiff(dpb_grpc.DiffServicer):
    """Answers Diff with a blob the test stored, and remembers what it was asked."""

    def __init__(self) -> None:
        self.requests: list[dpb.DiffRequest] = []
        self.metadata: list[dict[str, str]] = []
        self.answer = descriptor_pb2.Descriptor()

    async def Diff(
        self, request: dpb.DiffRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> dpb.DiffResponse:
        self.requests.append(request)
        self.metadata.append({k: str(v) for k, v in context.invocation_metadata() or ()})
        return dpb.DiffResponse(diff=self.answer)


def test_diff_against_parent_streams_the_blob(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    differ = RecordingDiff()
    with serve(tmp_path, [lambda server: dpb_grpc.add_DiffServicer_to_server(differ, server)]) as served:
        blob = b"\x1f\x8b pretend this is a gzipped tar"
        with served.client() as client:
            put(client, blob)
        differ.answer = descriptor_pb2.Descriptor(
            media_type=cli.DEFAULT_DIFF_MEDIA_TYPE, digest=digest(blob), size=len(blob)
        )
        served.wharf("snapshots", "prepare", "a")
        served.wharf("snapshots", "commit", "base", "a")
        served.wharf("snapshots", "prepare", "top", "base")
        capsysbinary.readouterr()
        assert served.wharf("snapshots", "diff", "--keep", "--label", "x=y", "top") == 0
        assert capsysbinary.readouterr().out == blob
        (request,) = differ.requests
        assert request.media_type == cli.DEFAULT_DIFF_MEDIA_TYPE
        assert request.labels["x"] == "y" and RFC3339.fullmatch(request.labels["containerd.io/gc.root"])
        assert request.right[0].options[0] == "rw"  # top is active: its own mounts
        assert request.left[0].options[0] == "ro"  # a view of base
        assert differ.metadata[0]["containerd-lease"]
        # The temporary view and the lease are gone again.
        served.wharf("snapshots", "ls")
        served.wharf("leases", "ls", "-q")
        listing = capsysbinary.readouterr().out.decode()
        assert "parent-view" not in listing and listing.count("\n") == 3


def test_diff_of_two_committed_snapshots_uses_views(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    differ = RecordingDiff()
    with serve(tmp_path, [lambda server: dpb_grpc.add_DiffServicer_to_server(differ, server)]) as served:
        with served.client() as client:
            put(client, b"layer")
        differ.answer = descriptor_pb2.Descriptor(media_type="m", digest=digest(b"layer"), size=5)
        for key, parent in (("a", ""), ("b", "A")):
            served.wharf("snapshots", "prepare", key, parent)
            served.wharf("snapshots", "commit", key.upper(), key)
        capsysbinary.readouterr()
        assert served.wharf("snapshots", "diff", "--media-type", "m", "A", "B") == 0
        assert capsysbinary.readouterr().out == b"layer"
        (request,) = differ.requests
        assert request.media_type == "m" and "containerd.io/gc.root" not in request.labels
        assert request.left[0].options[0] == request.right[0].options[0] == "ro"
        served.wharf("snapshots", "ls")
        assert "view-key" not in capsysbinary.readouterr().out.decode()


def test_diff_without_a_diff_service_fails_cleanly(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    served.wharf("snapshots", "prepare", "a")
    capsys.readouterr()
    assert served.wharf("snapshots", "diff", "a") == 1
    assert capsys.readouterr().err.startswith("wharf: ")
    served.wharf("snapshots", "ls")
    served.wharf("leases", "ls", "-q")
    assert capsys.readouterr().out == "KEY PARENT KIND   \na          Active \n"
