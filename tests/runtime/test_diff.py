"""Layers computed from two trees (native) and from an overlay upper; applied back, they rebuild the tree."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import zstandard

from tests.runtime.layer_fixtures import needs_root, rich_tree, tree
from wharfd.runtime.images.apply import apply_layer
from wharfd.runtime.images.diff import write_diff
from wharfd.runtime.images.layer import Compression

pytestmark = needs_root


def _copy(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


def _names(blob: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as tf:
        return tf.getnames()


def _mutate(root: Path) -> None:
    """Every kind of change a layer has to carry."""
    big = root / "home" / "user" / "big"
    st = big.stat()
    with big.open("r+b") as f:  # same size, same mtime: only the content tells
        f.seek(1000)
        f.write(b"changed")
    os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns))
    (root / "bin" / "wall").chmod(0o755)
    os.chown(root / "etc" / "rel", 0, 0, follow_symlinks=False)
    (root / "etc" / "localtime").unlink()
    (root / "etc" / "localtime").symlink_to("/usr/share/zoneinfo/Europe/Paris")
    (root / "home" / "user" / "empty").unlink()
    shutil.rmtree(root / "dev")
    (root / "dev").symlink_to("/run/dev")
    (root / "tmp").rmdir()
    (root / "tmp").write_bytes(b"now a file")
    os.setxattr(root / "bin" / "su", "user.note", b"other")
    (root / "new").mkdir()
    (root / "new" / "file").write_bytes(b"new")


def _apply_onto_copy(tmp_path: Path, lower: Path, blob: bytes) -> Path:
    out = _copy(lower, tmp_path / "applied")
    (tmp_path / "blob").write_bytes(blob)
    apply_layer(tmp_path / "blob", out, "full")
    return out


def test_two_trees_diff_rebuilds_the_upper(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    rich_tree(lower)
    upper = _copy(lower, tmp_path / "upper")
    _mutate(upper)
    out = io.BytesIO()
    d = write_diff(lower, upper, out)
    assert d.media_type == "application/vnd.oci.image.layer.v1.tar+gzip"
    names = _names(out.getvalue())
    assert "home/user/big" in names and "home/user/.wh.empty" in names
    assert "bin/su-hardlink" in names  # its inode (shared with su) changed
    assert "ro/inside" not in names and "bin/wall" in names and "caf\u00e9-\u00fcml\u00e4ut" not in names
    assert tree(_apply_onto_copy(tmp_path, lower, out.getvalue())) == tree(upper)


def test_diff_is_deterministic(tmp_path: Path) -> None:
    rich_tree(tmp_path / "t")
    a, b = io.BytesIO(), io.BytesIO()
    assert write_diff(None, tmp_path / "t", a, compression=Compression.NONE) == write_diff(
        None, tmp_path / "t", b, compression=Compression.NONE
    )
    assert a.getvalue() == b.getvalue()


def test_overlay_upper_diff_rebuilds_the_merged_view(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    rich_tree(lower)
    upper, work, merged = tmp_path / "upper", tmp_path / "work", tmp_path / "merged"
    for d in (upper, work, merged):
        d.mkdir()
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)], check=True)
    try:
        _mutate(merged)
        shutil.rmtree(merged / "home")  # then recreated: an opaque directory
        (merged / "home").mkdir()
        (merged / "home" / "fresh").write_bytes(b"fresh")
        expected = tree(merged)
    finally:
        subprocess.run(["umount", str(merged)], check=True)
    out = io.BytesIO()
    write_diff(lower, upper, out, overlay=True, compression=Compression.ZSTD)
    names = _names(zstandard.ZstdDecompressor().decompressobj().decompress(out.getvalue()))
    assert "home/.wh..wh..opq" in names and "etc/.wh.localtime" not in names
    assert ".wh.tmp" not in names and "tmp" in names
    assert tree(_apply_onto_copy(tmp_path, lower, out.getvalue())) == expected


def test_overlay_whiteouts_of_names_absent_below_are_dropped_only_with_a_lower(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    upper.mkdir()
    os.mknod(upper / "gone", 0o600 | stat.S_IFCHR, 0)  # a 0/0 char device: overlay's whiteout
    with_lower, without = io.BytesIO(), io.BytesIO()
    (tmp_path / "lower").mkdir()
    write_diff(tmp_path / "lower", upper, with_lower, overlay=True, compression=Compression.NONE)
    write_diff(None, upper, without, overlay=True, compression=Compression.NONE)
    assert _names(with_lower.getvalue()) == []
    assert _names(without.getvalue()) == [".wh.gone"]
