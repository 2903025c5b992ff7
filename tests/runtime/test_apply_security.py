"""Hostile layers: nothing outside the target may change, and every refusal names the entry.

Each test applies into ``root`` next to a sentinel directory ``host`` that
stands for the host filesystem; the entries aim at ``host`` by its absolute
path or by climbing out of ``root``. Every test runs with both parent
resolvers (openat2 and the Python walk).
"""

from __future__ import annotations

import gzip
import io
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runtime.layer_fixtures import Member, chardev, dir_, hard, needs_root, reg, sym, tar_bytes, tree
from wharfd.runtime import errors
from wharfd.runtime.images import inroot
from wharfd.runtime.images.apply import Mode, apply_layer, apply_tar

pytestmark = needs_root


@pytest.fixture(params=["openat2", "walk"], autouse=True)
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "openat2" and not inroot.HAVE_OPENAT2:
        pytest.skip("kernel without openat2")
    monkeypatch.setattr(inroot, "HAVE_OPENAT2", request.param == "openat2")
    return str(request.param)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Path]:
    """The sentinel: must be identical after every test."""
    host = tmp_path / "host"
    host.mkdir()
    (host / "secret").write_bytes(b"secret")
    (host / "dir").mkdir()
    (host / "dir" / "file").write_bytes(b"file")
    before = tree(host)
    yield host
    assert tree(host) == before, "the host side changed"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    return root


def inside(root: Path, host_path: Path) -> Path:
    """Where an absolute host path lands once re-rooted at ``root``."""
    return root / str(host_path).lstrip("/")


def apply(root: Path, *members: Member, mode: Mode = "overlay") -> int:
    return apply_tar(io.BytesIO(tar_bytes(*members)), root, mode)


@pytest.mark.parametrize("name", ["../escape", "a/../../escape", "/../escape", "./../host/secret"])
def test_names_climbing_out_are_refused(root: Path, host: Path, name: str) -> None:
    with pytest.raises(errors.InvalidArgument, match="climbs out") as exc:
        apply(root, reg(name, b"pwned"))
    assert repr(name) in str(exc.value)


def test_absolute_names_are_made_relative(root: Path, host: Path) -> None:
    apply(root, reg(str(host / "secret"), b"pwned"), reg("/etc/wharfd-test-abs", b"x"))
    assert inside(root, host / "secret").read_bytes() == b"pwned"
    assert (root / "etc" / "wharfd-test-abs").exists()
    assert not Path("/etc/wharfd-test-abs").exists()


@pytest.mark.parametrize("mode", ["overlay", "full"])
def test_write_through_absolute_symlink_is_rerooted(root: Path, host: Path, mode: Mode) -> None:
    apply(
        root,
        dir_(str(host).lstrip("/")),  # the re-rooted twin of the host dir exists in the image
        sym("link", str(host)),
        reg("link/pwned", b"pwned"),
        chardev("link/dev-null", 1, 3),
        mode=mode,
    )
    assert inside(root, host / "pwned").read_bytes() == b"pwned"
    assert stat.S_ISCHR(os.lstat(inside(root, host / "dev-null")).st_mode)


def test_lower_layer_symlink_to_etc_leads_into_the_target(root: Path, host: Path) -> None:
    """The native-snapshotter case: the parent layer made etc -> /etc."""
    apply(root, dir_("real-etc"), sym("etc", "/real-etc"), mode="full")
    apply(root, reg("etc/wharfd-test-passwd", b"root::0:0"), mode="full")
    assert (root / "real-etc" / "wharfd-test-passwd").read_bytes() == b"root::0:0"
    assert not Path("/real-etc").exists() and not Path("/etc/wharfd-test-passwd").exists()


def test_write_through_dangling_absolute_symlink_is_refused(root: Path, host: Path) -> None:
    with pytest.raises(errors.InvalidArgument, match="'link/pwned'"):
        apply(root, sym("link", str(host)), reg("link/pwned", b"pwned"))


def test_symlink_chain_climbing_out_stays_inside(root: Path, host: Path) -> None:
    depth = len(root.parts)
    apply(
        root,
        dir_("host"),
        sym("up", "/".join([".."] * (depth + 3))),  # far above the target root
        sym("chain", f"up/{'../' * 4}host"),
        reg("chain/secret", b"pwned"),
        sym("a", "b"),
        sym("b", "../../../../up/.."),
        reg("a/host/via-chain", b"x"),
    )
    assert (root / "host" / "secret").read_bytes() == b"pwned"
    assert (root / "host" / "via-chain").exists()


def test_file_entry_replaces_a_symlink_instead_of_following_it(root: Path, host: Path) -> None:
    apply(root, sym("f", str(host / "secret")), reg("f", b"pwned"), sym("d", str(host / "dir")), dir_("d"))
    assert (root / "f").read_bytes() == b"pwned" and not (root / "f").is_symlink()
    assert (root / "d").is_dir() and not (root / "d").is_symlink()


@pytest.mark.parametrize(
    "members",
    [
        [hard("hl", "../host/secret")],
        [hard("hl", "../../host/secret")],
        [sym("out", "../.."), hard("hl", "out/host/secret")],
        [sym("out", "/"), hard("hl", "out/secret")],
        [dir_("host"), reg("host/secret"), sym("abs", "/host"), hard("hl", "abs/secret")],
    ],
    ids=["dotdot", "dotdot2", "relative-symlink-out", "absolute-symlink", "absolute-symlink-inside"],
)
def test_hardlinks_leaving_the_root_are_refused(root: Path, host: Path, members: list[Member]) -> None:
    with pytest.raises(errors.InvalidArgument, match=r"'hl'.*outside the layer"):
        apply(root, *members)
    assert not (root / "hl").exists()


def test_hardlink_to_an_absolute_host_path_is_resolved_in_the_root(root: Path, host: Path) -> None:
    with pytest.raises(errors.InvalidArgument, match=r"'hl'.*does not exist"):
        apply(root, hard("hl", str(host / "secret")))


def test_hardlink_to_a_directory_is_refused(root: Path, host: Path) -> None:
    with pytest.raises(errors.InvalidArgument, match=r"'hl'.*is a directory"):
        apply(root, dir_("d"), hard("hl", "d"))


def test_hardlink_never_follows_a_symlink_target(root: Path, host: Path) -> None:
    apply(root, sym("s", str(host / "secret")), hard("hl", "s"))
    assert os.readlink(root / "hl") == str(host / "secret")  # a link to the symlink itself


@pytest.mark.parametrize("mode", ["overlay", "full"])
def test_whiteouts_aimed_outside(root: Path, host: Path, mode: Mode) -> None:
    with pytest.raises(errors.InvalidArgument, match="climbs out"):
        apply(root, reg("../.wh.secret"), mode=mode)
    for name in (".wh..", ".wh...", "d/.wh.."):
        with pytest.raises(errors.InvalidArgument, match="invalid whiteout"):
            apply(root, dir_("d"), reg("d/keep"), reg(name), mode=mode)
    assert (root / "d" / "keep").exists()
    # Through an absolute symlink: re-rooted, so it can only hit the twin.
    twin = inside(root, host)
    twin.mkdir(parents=True)
    (twin / "secret").write_bytes(b"twin")
    apply(root, sym("link", str(host)), reg("link/.wh.secret"), mode=mode)
    if mode == "full":
        assert not (twin / "secret").exists()
    else:  # the name exists in the upper dir already (this layer's own), so it stays
        assert (twin / "secret").read_bytes() == b"twin"


def test_device_node_through_a_symlinked_dir(root: Path, host: Path) -> None:
    twin = inside(root, host)
    twin.mkdir(parents=True)
    apply(root, sym("devdir", str(host)), chardev("devdir/mem", 1, 1), sym("rel", "../" * 30 + str(host)[1:]))
    apply(root, chardev("rel/kmem", 1, 2))
    assert stat.S_ISCHR(os.lstat(twin / "mem").st_mode)
    assert os.lstat(twin / "kmem").st_rdev == os.makedev(1, 2)


def test_truncated_tar_is_data_loss_naming_the_entry(tmp_path: Path, root: Path, host: Path) -> None:
    data = tar_bytes(reg("ok", b"fine"), reg("big", os.urandom(100_000)), reg("after", b"x"))
    cut = data[: data.index(b"big") + 512 + 50_000]
    with pytest.raises(errors.DataLoss, match="'big'"):
        apply_tar(io.BytesIO(cut), root)
    blob = tmp_path / "cut.gz"
    blob.write_bytes(gzip.compress(data)[:-2000])
    (tmp_path / "root2").mkdir()
    with pytest.raises(errors.DataLoss, match=r"'big'.*truncated"):
        apply_layer(blob, tmp_path / "root2")


def test_corrupt_header_mid_stream_is_data_loss(root: Path, host: Path) -> None:
    data = bytearray(tar_bytes(reg("a", b"a"), reg("b", b"b")))
    second = data.index(b"b\0", 512)
    data[second + 148 : second + 156] = b"0000000\0"  # wrong checksum
    with pytest.raises(errors.DataLoss, match="after entry 'a'"):
        apply_tar(io.BytesIO(bytes(data)), root)


def test_overlay_xattrs_in_a_layer_are_dropped(root: Path) -> None:
    info, data = dir_("d")
    info.pax_headers = {"SCHILY.xattr.trusted.overlay.redirect": "/etc", "SCHILY.xattr.user.ok": "1"}
    apply(root, (info, data))
    assert os.listxattr(root / "d") == ["user.ok"]
