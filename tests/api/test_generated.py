"""The committed generated modules are exactly what the .proto files produce."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_regeneration_changes_nothing() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "protogen.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"run `python hack/protogen.py`:\n{result.stdout}{result.stderr}"


def test_generated_modules_import_as_wharfd_api() -> None:
    for path in (ROOT / "api").rglob("*_pb2*.py"):
        text = path.read_text()
        for line in text.splitlines():
            if line.startswith(("from api", "import api")):
                raise AssertionError(f"{path}: bare import {line!r}")
