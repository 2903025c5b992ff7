"""Applying layers: round trips through diff → tar → apply, compressions, digests, full-mode whiteouts."""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import stat
import subprocess
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from tests.runtime.layer_fixtures import dir_, hard, needs_root, reg, rich_tree, sym, tar_bytes, tree
from wharfd.runtime import errors
from wharfd.runtime.images import inroot
from wharfd.runtime.images.apply import apply_layer, apply_tar
from wharfd.runtime.images.diff import write_diff
from wharfd.runtime.images.layer import Compression

pytestmark = needs_root


@pytest.fixture(params=["openat2", "walk"])
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with each way of resolving parents (openat2, and the Python walk fallback)."""
    if request.param == "openat2" and not inroot.HAVE_OPENAT2:
        pytest.skip("kernel without openat2")
    monkeypatch.setattr(inroot, "HAVE_OPENAT2", request.param == "openat2")
    return str(request.param)


def _blob(tmp_path: Path, src: Path, compression: Compression, lower: Path | None = None) -> tuple[Path, str]:
    blob = tmp_path / f"layer.{compression.value}"
    with blob.open("wb") as f:
        d = write_diff(lower, src, f, compression=compression)
    return blob, d.diff_id


@pytest.mark.parametrize("compression", list(Compression))
def test_rich_tree_round_trips(tmp_path: Path, compression: Compression, resolver: str) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    rich_tree(src)
    dst.mkdir()
    blob, diff_id = _blob(tmp_path, src, compression)
    applied = apply_layer(
        blob, dst, "overlay", media_type=f"application/vnd.oci.image.layer.v1.tar+{compression.value}"
    )
    assert applied.compression == compression.value
    assert applied.diff_id == diff_id
    assert applied.digest == "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()
    assert applied.size == blob.stat().st_size
    assert tree(dst) == tree(src)
    assert os.getxattr(dst / "bin" / "su", "security.capability") == os.getxattr(
        src / "bin" / "su", "security.capability"
    )
    assert stat.S_IMODE(os.stat(dst / "bin" / "su").st_mode) == 0o4755


def test_diff_id_is_the_sha256_of_the_uncompressed_stream(tmp_path: Path) -> None:
    src = tmp_path / "src"
    rich_tree(src)
    plain, plain_id = _blob(tmp_path, src, Compression.NONE)
    zst, zst_id = _blob(tmp_path, src, Compression.ZSTD)
    assert plain_id == zst_id == "sha256:" + hashlib.sha256(plain.read_bytes()).hexdigest()
    for blob, threaded in ((plain, False), (zst, True)):
        out = tmp_path / f"out-{blob.name}"
        out.mkdir()
        assert apply_layer(blob, out, "full", threaded=threaded).diff_id == plain_id


def test_gnu_tar_output_applies_like_gnu_tar_extracts(tmp_path: Path) -> None:
    """A layer made by GNU tar (GNU long names, sparse files) extracts to what GNU tar extracts."""
    src = tmp_path / "src"
    rich_tree(src)
    with (src / "sparse").open("wb") as f:
        f.seek(5 << 20)
        f.write(b"end")
    blob = tmp_path / "gnu.tar.gz"
    subprocess.run(
        ["tar", "--format=gnu", "--sparse", "--xattrs", "--xattrs-include=*", "-czf", blob, "-C", src, "."],
        check=True,
    )
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    ours.mkdir()
    theirs.mkdir()
    subprocess.run(
        ["tar", "--xattrs", "--xattrs-include=*", "--same-owner", "-xpzf", blob, "-C", theirs], check=True
    )
    apply_layer(blob, ours, "full")
    assert (ours / "sparse").read_bytes() == b"\0" * (5 << 20) + b"end"
    mine, gnu = tree(ours), tree(theirs)
    assert mine.keys() == gnu.keys()
    assert mine == gnu


def test_wrong_diff_id_is_data_loss(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    blob, _ = _blob(tmp_path, src, Compression.GZIP)
    (tmp_path / "dst").mkdir()
    with pytest.raises(errors.DataLoss, match="diff id"):
        apply_layer(blob, tmp_path / "dst", diff_id="sha256:" + "0" * 64)


def test_directory_metadata_is_set_after_its_contents(tmp_path: Path) -> None:
    layer = tar_bytes(
        dir_("ro", mode=0o555, mtime=1_000_000_000, uid=7, gid=8),
        reg("ro/a", b"a"),
        dir_("ro/sub", mode=0o700),
        reg("ro/sub/b", b"b", mode=0o600),
    )
    apply_tar(io.BytesIO(layer), tmp_path)
    st = os.stat(tmp_path / "ro")
    assert (stat.S_IMODE(st.st_mode), st.st_mtime, st.st_uid, st.st_gid) == (0o555, 1_000_000_000, 7, 8)
    assert (tmp_path / "ro" / "sub" / "b").read_bytes() == b"b"


def test_pax_times_keep_nanoseconds(tmp_path: Path) -> None:
    info, data = reg("f", b"x")
    info.pax_headers = {"mtime": "1600000000.123456789", "atime": "1600000001.5"}
    apply_tar(io.BytesIO(tar_bytes((info, data))), tmp_path)
    st = os.stat(tmp_path / "f")
    assert st.st_mtime_ns == 1_600_000_000_123_456_789
    assert st.st_atime_ns == 1_600_000_001_500_000_000


def test_missing_parents_are_created_and_later_entries_replace_earlier(tmp_path: Path) -> None:
    layer = tar_bytes(
        reg("a/b/c", b"first"),
        reg("a/b/c", b"second"),
        sym("s", "a"),
        dir_("s"),  # a directory replaces the symlink rather than merging through it
        reg("s/x", b"x"),
    )
    apply_tar(io.BytesIO(layer), tmp_path)
    assert (tmp_path / "a" / "b" / "c").read_bytes() == b"second"
    assert (tmp_path / "s").is_dir() and not (tmp_path / "s").is_symlink()
    assert not (tmp_path / "a" / "x").exists()


def test_empty_layers(tmp_path: Path) -> None:
    assert apply_tar(io.BytesIO(b""), tmp_path) == 0
    assert apply_tar(io.BytesIO(b"\0" * 1024), tmp_path) == 0
    assert list(tmp_path.iterdir()) == []


def test_full_mode_whiteouts_delete_lower_entries_only(tmp_path: Path) -> None:
    lower = tar_bytes(
        dir_("a"), reg("a/x", b"x"), reg("a/y", b"y"),
        dir_("b"), reg("b/z", b"z"), dir_("b/deep"), reg("b/deep/f"),
        reg("c", b"c"), sym("l", "a"),
    )  # fmt: skip
    upper = tar_bytes(
        reg("a/.wh.x"),
        dir_("b"),
        reg("b/new", b"new"),
        reg("b/.wh..wh..opq"),  # after b/new: b/new stays, z and deep go
        reg(".wh.c"),
        reg(".wh.l"),  # removes the symlink, not what it points to
        reg("d", b"d"),
        reg(".wh.d"),  # this layer's own d stays
    )
    apply_tar(io.BytesIO(lower), tmp_path, "full")
    apply_tar(io.BytesIO(upper), tmp_path, "full")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "a", "a/y", "b", "b/new", "d",
    ]  # fmt: skip


def test_hardlinks_inside_the_layer(tmp_path: Path) -> None:
    layer = tar_bytes(dir_("d"), reg("d/f", b"data", mode=0o4755), hard("d/g", "d/f"), hard("/h", "./d/f"))
    apply_tar(io.BytesIO(layer), tmp_path)
    ino = os.stat(tmp_path / "d" / "f").st_ino
    assert os.stat(tmp_path / "d" / "g").st_ino == ino == os.stat(tmp_path / "h").st_ino
    assert os.stat(tmp_path / "d" / "f").st_nlink == 3


def test_no_descriptor_leaks(tmp_path: Path) -> None:
    before = sorted(os.listdir("/proc/self/fd"))
    lower = tar_bytes(dir_("a"), reg("a/x"), dir_("a/d"), sym("l", "a"), reg("l/d/y"))
    upper = tar_bytes(dir_("a"), reg("a/.wh..wh..opq"), reg("a/new"), reg(".wh.l"), hard("h", "a/new"))
    apply_tar(io.BytesIO(lower), tmp_path, "full")
    apply_tar(io.BytesIO(upper), tmp_path, "full")
    with pytest.raises(errors.InvalidArgument):
        apply_tar(io.BytesIO(tar_bytes(dir_("b"), reg("b/f"), hard("bad", "../x"))), tmp_path, "full")
    with pytest.raises(errors.DataLoss):
        apply_tar(io.BytesIO(tar_bytes(reg("big", b"x" * 5000))[:1000]), tmp_path)
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_runs_in_a_worker_process(tmp_path: Path) -> None:
    """The unpacker ships layers to a process pool: arguments, result and errors must pickle."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    blob, diff_id = _blob(tmp_path, src, Compression.GZIP)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver")) as pool:
        assert pool.submit(apply_layer, str(blob), str(tmp_path / "a")).result().diff_id == diff_id
        with pytest.raises(errors.DataLoss, match="diff id"):
            pool.submit(apply_layer, blob, tmp_path / "b", diff_id="sha256:" + "1" * 64).result()
    assert (tmp_path / "a" / "f").read_bytes() == b"x"
