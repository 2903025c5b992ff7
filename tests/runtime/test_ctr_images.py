"""``wharf images``: ls/check/usage read images through the content store as ctr does; tag, label, rm."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.runtime.ctr_services import (
    OCI_INDEX,
    OCI_MANIFEST,
    Served,
    config,
    create_image,
    digest,
    put_image_manifest,
    put_index,
    serve,
)
from wharfd.api.services.images.v1 import images_pb2 as ipb
from wharfd.runtime.ctr import commands, main
from wharfd.runtime.ctr.snapshots import bytes_size
from wharfd.runtime.images import platforms
from wharfd.runtime.images.chainid import chain_ids

HOST = platforms.host()
FOREIGN = "s390x" if HOST.architecture != "s390x" else "ppc64le"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(commands.SUPPRESS_DEPRECATIONS_ENV, "true")


@dataclass
class Fixture:
    served: Served
    multi_index: bytes
    host_manifest: bytes
    host_config: bytes
    host_layers: tuple[bytes, bytes]
    single_manifest: bytes
    single_size: int
    diff_ids: tuple[str, str]


@pytest.fixture
def images(tmp_path: Path) -> Iterator[Fixture]:
    """Three images: multi (an index: host, foreign with a missing layer, attestation),
    single (a foreign manifest missing its layer) and missing (nothing stored)."""
    with serve(tmp_path) as served, served.client() as client:
        layers = (b"a" * 2_000_000, b"b" * 621_440)
        diff_ids = (digest(b"diff-a"), digest(b"diff-b"))
        host_config = config(HOST.architecture, diff_ids)
        host_manifest = put_image_manifest(client, host_config, layers)
        foreign_config = config(FOREIGN, [digest(b"f")])
        foreign = put_image_manifest(client, foreign_config, [b"foreign layer"], store_layers=False)
        attestation = put_image_manifest(client, b"{}", [])
        multi = put_index(
            client,
            [
                (foreign, {"os": "linux", "architecture": FOREIGN}),
                (host_manifest, {"os": "linux", "architecture": HOST.architecture}),
                (attestation, {"os": "unknown", "architecture": "unknown"}),
            ],
        )
        create_image(client, "docker.io/library/multi:1", OCI_INDEX, multi, {"z": "1", "a": "2"})
        create_image(client, "docker.io/library/single:1", OCI_MANIFEST, foreign)
        create_image(client, "missing:1", OCI_INDEX, b"never stored")
        single_size = len(foreign) + len(foreign_config) + len(b"foreign layer")
        yield Fixture(served, multi, host_manifest, host_config, layers, foreign, single_size, diff_ids)


def parse(*argv: str) -> str:
    return str(main.build_parser().parse_args(argv).func.__name__)


def test_commands_and_aliases() -> None:
    for group in ("images", "image", "i"):
        assert parse(group, "ls", "-q") == "_list"
    for alias in ("delete", "del", "remove", "rm"):
        assert parse("images", alias, "--sync", "x") == "_delete"
    assert parse("i", "check", "-q", "--snapshotter", "native", "name==x") == "_check"
    assert parse("i", "tag", "--force", "--local", "--skip-reference-check", "a", "b") == "_tag"
    assert parse("i", "label", "-r", "x", "a=b") == "_label"
    assert parse("i", "usage", "--snapshotter", "native", "x") == "_usage"


def test_list(images: Fixture, capsys: pytest.CaptureFixture[str]) -> None:
    assert images.served.wharf("images", "ls") == 0
    captured = capsys.readouterr()
    rows = [re.split(r" +", line.rstrip(" ")) for line in captured.out.splitlines()]
    assert rows[0] == ["REF", "TYPE", "DIGEST", "SIZE", "PLATFORMS", "LABELS"]
    by_name = {row[0]: row for row in rows[1:]}
    multi_size = len(images.multi_index) + len(images.host_manifest) + len(images.host_config) + 2_621_440
    both = ",".join(sorted([f"linux/{HOST.architecture}", f"linux/{FOREIGN}"]))  # the attestation is left out
    assert by_name["docker.io/library/multi:1"] == [
        "docker.io/library/multi:1", OCI_INDEX, digest(images.multi_index), *bytes_size(multi_size).split(),
        both, "a=2,z=1",
    ]  # fmt: skip
    assert bytes_size(multi_size) == "2.5 MiB"
    # A manifest target is counted whole, whatever its platform; its config names the platform.
    single = bytes_size(images.single_size).split()
    assert by_name["docker.io/library/single:1"][3:] == [*single, f"linux/{FOREIGN}", "-"]
    assert by_name["missing:1"][3:] == ["12.0", "B", "-", "-"]
    # Every line is padded to the same columns: the last one ends with its padding.
    assert len({len(line) for line in captured.out.splitlines()}) == 1
    assert "failed calculating size for image missing:1" in captured.err
    assert "failed resolving platform for image missing:1" in captured.err

    assert images.served.wharf("images", "ls", "-q", "labels.a==2") == 0
    assert capsys.readouterr().out == "docker.io/library/multi:1\n"


def _unpack_chain(images: Fixture) -> list[str]:
    """Committed native snapshots named by the host manifest's chain ids, as an unpack leaves them."""
    chain = chain_ids(images.diff_ids)
    parent = ""
    for i, key in enumerate(chain):
        assert images.served.wharf("snapshots", "--snapshotter", "native", "prepare", f"tmp{i}", parent) == 0
        assert images.served.wharf("snapshots", "--snapshotter", "native", "commit", key, f"tmp{i}") == 0
        parent = key
    return chain


def test_check(images: Fixture, capsys: pytest.CaptureFixture[str]) -> None:
    _unpack_chain(images)
    capsys.readouterr()
    assert images.served.wharf("images", "check", "--snapshotter", "native") == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].split() == ["REF", "TYPE", "DIGEST", "STATUS", "SIZE", "UNPACKED"]
    multi = lines[1]
    assert multi.startswith("docker.io/library/multi:1 ") and multi.endswith(" 2.5 MiB/2.5 MiB true")
    assert " complete (3/3) " in multi
    single = lines[2]
    assert " incomplete (1/2) " in single and single.endswith(" false")
    missing = lines[3]
    assert re.search(r" unavailable \(0/\?\) 0\.0 B/\? +false$", missing)
    assert len(lines) == 4
    # The header is padded with a trailing tab, the rows are not (ctr prints "%t\n").
    assert lines[0].endswith("UNPACKED ") and not lines[1].endswith(" ")
    assert "\nwharf: unable to check unpack for missing:1: " in captured.err

    assert images.served.wharf("images", "check", "-q", "--snapshotter", "native", "name~=multi") == 0
    assert capsys.readouterr().out == "docker.io/library/multi:1\n"


def test_usage_walks_the_chain(images: Fixture, capsys: pytest.CaptureFixture[str]) -> None:
    assert images.served.wharf("images", "usage", "--snapshotter", "native", "docker.io/library/multi:1") == 1
    assert capsys.readouterr().err == (
        "wharf: image docker.io/library/multi:1 isn't unpacked in snapshotter native\n"
    )
    chain = _unpack_chain(images)
    capsys.readouterr()
    assert images.served.wharf("images", "usage", "--snapshotter", "native", "docker.io/library/multi:1") == 0
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch("KEY {69}SIZE +INODES ", lines[0])
    assert [line.split()[0] for line in lines[1:]] == [chain[1], chain[0]]
    assert all(re.fullmatch(r"sha256:\w{64} \d+\.\d (B|KiB) +\d+ +", line) for line in lines[1:])
    assert images.served.wharf("images", "usage") == 1
    assert capsys.readouterr().err == "wharf: please provide an image reference to mount\n"
    assert images.served.wharf("images", "usage", "nope:1") == 1
    assert capsys.readouterr().err.startswith("wharf: failed to ensure if image nope:1 exists: ")


def _image(served: Served, name: str) -> ipb.Image:
    with served.client() as client:
        image: ipb.Image = client.images.Get(ipb.GetImageRequest(name=name)).image
    return image


def test_tag(images: Fixture, capsys: pytest.CaptureFixture[str]) -> None:
    served = images.served
    assert (
        served.wharf("images", "tag", "docker.io/library/multi:1", "docker.io/library/multi:2", "other/x:y")
        == 0
    )
    assert capsys.readouterr().out == "docker.io/library/multi:2\nother/x:y\n"
    tagged = _image(served, "other/x:y")
    assert tagged.target.digest == digest(images.multi_index) and dict(tagged.labels) == {}
    # Without --local an existing target is pointed at the source, as the transfer service does.
    assert served.wharf("images", "tag", "docker.io/library/single:1", "other/x:y") == 0
    assert _image(served, "other/x:y").target.digest == digest(images.single_manifest)
    # --local copies the labels and refuses an existing name unless forced.
    assert served.wharf("images", "tag", "--local", "docker.io/library/multi:1", "other/x:y") == 1
    assert capsys.readouterr().err == 'wharf: image "other/x:y": already exists\n'
    assert served.wharf("images", "tag", "--local", "--force", "docker.io/library/multi:1", "other/x:y") == 0
    assert dict(_image(served, "other/x:y").labels) == {"a": "2", "z": "1"}

    assert served.wharf("images", "tag", "docker.io/library/multi:1", "Bad:Name") == 1
    assert capsys.readouterr().err.startswith(
        'wharf: error parsing reference: "Bad:Name" is not a valid repository/tag '
    )
    assert served.wharf("images", "tag", "nope:1", "fine:1") == 1
    assert capsys.readouterr().err == 'wharf: image "nope:1": not found\n'
    assert served.wharf("images", "tag", "x") == 1
    assert capsys.readouterr().err == "wharf: please provide an image reference to tag to\n"
    assert served.wharf("images", "tag") == 1
    assert capsys.readouterr().err == "wharf: please provide an image reference to tag from\n"
    digest_ref = "sha256:" + hashlib.sha256(b"x").hexdigest()
    assert served.wharf("images", "tag", "docker.io/library/multi:1", digest_ref) == 0


def test_label(images: Fixture, capsys: pytest.CaptureFixture[str]) -> None:
    served = images.served
    assert served.wharf("images", "label", "docker.io/library/multi:1", "b=3", "a=") == 0
    assert capsys.readouterr().out == "b=3,z=1\n"
    assert served.wharf("images", "label", "-r", "docker.io/library/multi:1", "only=1") == 0
    assert capsys.readouterr().out == "only=1\n"
    assert served.wharf("images", "label") == 1
    assert capsys.readouterr().err == "wharf: please specify an image\n"


def test_remove(images: Fixture, capsys: pytest.CaptureFixture[str]) -> None:
    served = images.served
    assert served.wharf("images", "rm", "--sync", "docker.io/library/single:1", "nope:1", "missing:1") == 0
    captured = capsys.readouterr()
    assert captured.out == "docker.io/library/single:1\nmissing:1\n"
    assert 'level=warning msg="nope:1: image not found"' in captured.err
    assert served.wharf("images", "ls", "-q") == 0
    assert capsys.readouterr().out == "docker.io/library/multi:1\n"
    # The sync delete collected the single image's blobs: only what multi references is left.
    assert served.wharf("images", "check") == 0
    assert " complete (3/3) " in capsys.readouterr().out
