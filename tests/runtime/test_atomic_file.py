"""write_atomic: the one way the CRI plugin replaces a file (status files, the generated CNI config)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wharfd.runtime import atomic_file


def test_replaces_the_file_whole_with_the_mode_asked(tmp_path: Path) -> None:
    target = tmp_path / "made" / "on" / "demand" / "status"
    old_umask = os.umask(0o077)  # the mode is exact whatever the umask
    try:
        atomic_file.write_atomic(target, b"first")
        atomic_file.write_atomic(target, b"second" * 1000, mode=0o600)
        atomic_file.write_atomic(tmp_path / "conf", b"{}")
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"second" * 1000
    assert target.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "conf").stat().st_mode & 0o777 == 0o644
    assert os.listdir(target.parent) == ["status"]  # no temporary file left behind


def test_a_failed_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "status"
    atomic_file.write_atomic(target, b"old")

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic_file.os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        atomic_file.write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["status"]


def test_the_data_is_synced_before_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(atomic_file.os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(
        atomic_file.os, "replace", lambda a, b: (calls.append("rename"), real_replace(a, b))[1]
    )
    atomic_file.write_atomic(tmp_path / "status", b"x")
    assert calls == ["fsync", "rename"]
