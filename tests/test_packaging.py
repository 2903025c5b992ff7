"""The wheel installs everything under ``wharfd`` and nothing under a bare generic name."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_has_only_the_wharfd_package(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("wharfd-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"wharfd", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    for sub in ("api", "cri", "runtime", "cni"):
        assert f"wharfd/{sub}/__init__.py" in names
        assert f"wharfd/{sub}/py.typed" in names
    assert "wharfd/api/cri/v1/api_pb2.py" in names
    assert not [n for n in names if "/_tests/" in n or n.startswith("wharfd/tests")]
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    for script in ("wharfd = wharfd.cri.daemon:main", "wharf = wharfd.runtime.ctr.main:main"):
        assert script in text


def test_the_installed_version_is_the_one_in_runtime_version() -> None:
    """pyproject.toml takes its version from runtime/version.py; the metadata must agree."""
    from importlib import metadata

    from wharfd.runtime import version

    assert metadata.version("wharfd") == version.VERSION == version.version()
