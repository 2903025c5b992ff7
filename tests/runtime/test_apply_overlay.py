"""Overlay mode: OCI whiteouts become overlay whiteouts, and a real overlay mount honours them."""

from __future__ import annotations

import io
import os
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.runtime.layer_fixtures import dir_, needs_root, reg, sym, tar_bytes
from wharfd.runtime.images.apply import apply_tar
from wharfd.runtime.images.tarfmt import OPAQUE_XATTR

pytestmark = needs_root

LOWER = tar_bytes(
    dir_("a"), reg("a/x", b"x"), reg("a/y", b"y"),
    dir_("b"), reg("b/z", b"z"), dir_("b/deep"), reg("b/deep/f", b"f"),
    reg("c", b"c"), dir_("e"), reg("e/old", b"old"), sym("l", "a"),
)  # fmt: skip
UPPER = tar_bytes(
    reg("a/.wh.x"),  # no a/ entry: the directory is created implicitly
    dir_("b"),
    reg("b/.wh..wh..opq"),
    reg("b/new", b"new"),
    reg(".wh.c"),
    reg(".wh.l"),
    dir_("e"),
    reg("e/mine", b"mine"),
    reg(".wh.e"),  # e is this layer's own directory: it stays, the lower e/old goes
    reg(".wh..wh.plnk"),  # aufs bookkeeping: ignored
)


@contextmanager
def overlay(mnt: Path, *lowers: Path) -> Iterator[Path]:
    """A read-only overlay of ``lowers`` (top first) mounted at ``mnt``."""
    mnt.mkdir()
    opts = "lowerdir=" + ":".join(str(p) for p in lowers)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def test_whiteouts_become_overlay_whiteouts(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    upper.mkdir()
    apply_tar(io.BytesIO(UPPER), upper, "overlay")
    for name in ("a/x", "c", "l"):
        st = os.lstat(upper / name)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0, name
    assert os.getxattr(upper / "b", OPAQUE_XATTR) == b"y"
    assert os.getxattr(upper / "e", OPAQUE_XATTR) == b"y"
    assert OPAQUE_XATTR not in os.listxattr(upper / "a")
    assert not (upper / ".wh..wh.plnk").exists()


def test_overlay_mount_hides_whited_out_lower_files(tmp_path: Path) -> None:
    l1, l2 = tmp_path / "l1", tmp_path / "l2"
    l1.mkdir()
    l2.mkdir()
    apply_tar(io.BytesIO(LOWER), l1, "overlay")
    apply_tar(io.BytesIO(UPPER), l2, "overlay")
    with overlay(tmp_path / "mnt", l2, l1) as mnt:
        assert _files(mnt) == ["a", "a/y", "b", "b/new", "e", "e/mine"]


def test_overlay_and_full_mode_agree(tmp_path: Path) -> None:
    """The same two layers give the same tree as a native (full) apply."""
    l1, l2, full = tmp_path / "l1", tmp_path / "l2", tmp_path / "full"
    for d in (l1, l2, full):
        d.mkdir()
    apply_tar(io.BytesIO(LOWER), l1, "overlay")
    apply_tar(io.BytesIO(UPPER), l2, "overlay")
    apply_tar(io.BytesIO(LOWER), full, "full")
    apply_tar(io.BytesIO(UPPER), full, "full")
    with overlay(tmp_path / "mnt", l2, l1) as mnt:
        merged = {p: (mnt / p).read_bytes() for p in _files(mnt) if (mnt / p).is_file()}
        assert _files(mnt) == _files(full)
    assert merged == {p: (full / p).read_bytes() for p in _files(full) if (full / p).is_file()}


def test_opaque_root_is_marked_though_overlayfs_ignores_it(tmp_path: Path) -> None:
    l1, l2, full = tmp_path / "l1", tmp_path / "l2", tmp_path / "full"
    for d in (l1, l2, full):
        d.mkdir()
    wipe = tar_bytes(reg(".wh..wh..opq"), reg("only", b"1"))
    apply_tar(io.BytesIO(LOWER), l1, "overlay")
    apply_tar(io.BytesIO(wipe), l2, "overlay")
    assert os.getxattr(l2, OPAQUE_XATTR) == b"y"
    with overlay(tmp_path / "mnt", l2, l1) as mnt:
        assert "a" in _files(mnt)  # the kernel merges layer roots regardless
    apply_tar(io.BytesIO(LOWER), full, "full")
    apply_tar(io.BytesIO(wipe), full, "full")
    assert _files(full) == ["only"]
