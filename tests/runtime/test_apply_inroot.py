"""Path resolution inside a root: the Python walk must agree with openat2, and neither may leave the root."""

from __future__ import annotations

import errno
import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from wharfd.runtime.images import inroot


@pytest.mark.parametrize(
    ("name", "clean"),
    [
        ("a/b", "a/b"),
        ("./a//b/", "a/b"),
        ("/abs/path", "abs/path"),
        ("a/./b/../c", "a/c"),
        (".", ""),
        ("./", ""),
        ("/", ""),
    ],
)
def test_clean(name: str, clean: str) -> None:
    assert inroot.clean(name) == clean


@pytest.mark.parametrize("name", ["..", "../a", "a/../..", "/..", "a/b/../../../c"])
def test_clean_refuses_climbing_out(name: str) -> None:
    with pytest.raises(ValueError, match="climbs out"):
        inroot.clean(name)


def _outcome(fn: Callable[[int, str, bool], int], root_fd: int, path: str, beneath: bool) -> tuple[str, int]:
    try:
        fd = fn(root_fd, path, beneath)
    except OSError as exc:
        return ("error", exc.errno or 0)
    try:
        st = os.fstat(fd)
        return ("dir", st.st_ino)
    finally:
        os.close(fd)


def _random_tree(root: Path, outside: Path, rnd: random.Random) -> list[str]:
    """Directories, and symlinks among them: relative, absolute, climbing, looping, dangling."""
    dirs = [""]
    for i in range(25):
        parent = rnd.choice(dirs)
        name = f"{parent}/d{i}" if parent else f"d{i}"
        (root / name).mkdir()
        dirs.append(name)
    names = list(dirs)
    for i in range(25):
        parent = rnd.choice(dirs)
        target = rnd.choice(
            [
                "/" + rnd.choice(dirs),
                "../" * rnd.randint(1, 6) + rnd.choice(dirs),
                rnd.choice(dirs) or ".",
                str(outside),
                "/nonexistent",
                f"s{rnd.randint(0, 24)}",
            ]
        )
        name = f"{parent}/s{i}" if parent else f"s{i}"
        os.symlink(target, root / name)
        names.append(name)
    return names


@pytest.mark.skipif(not inroot.HAVE_OPENAT2, reason="kernel without openat2")
@pytest.mark.parametrize("seed", range(8))
def test_walk_agrees_with_openat2(tmp_path: Path, seed: int) -> None:
    rnd = random.Random(seed)
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    names = _random_tree(root, outside, rnd)
    root_ino = os.stat(root).st_ino
    inside = {os.stat(p).st_ino for p in root.rglob("*") if p.is_dir() and not p.is_symlink()} | {root_ino}
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        for _ in range(300):
            path = "/".join(rnd.choice([*names, "..", "."]) for _ in range(rnd.randint(1, 4)))
            for beneath in (False, True):
                fast = _outcome(inroot.openat2, fd, path, beneath)
                slow = _outcome(inroot.walk, fd, path, beneath)
                assert slow == fast, (path, beneath)
                if fast[0] == "dir":
                    assert fast[1] in inside, path
                elif beneath:
                    assert fast[1] in (errno.EXDEV, errno.ENOENT, errno.ENOTDIR, errno.ELOOP), path
    finally:
        os.close(fd)


def test_root_cache_is_dropped_after_a_removal(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "l").symlink_to("a")
    root = inroot.Root(tmp_path)
    try:
        assert os.fstat(root.resolve("l")).st_ino == os.stat(tmp_path / "a").st_ino
        root.clear(root.fd, "l")
        (tmp_path / "l").symlink_to("b")
        root.checkpoint()
        assert os.fstat(root.resolve("l")).st_ino == os.stat(tmp_path / "b").st_ino
    finally:
        root.close()
