"""Fixtures for end-to-end tests through the real daemon socket."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.daemon import Daemon, running


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A wharfd on a fresh root, state and socket."""
    with running(tmp_path / "d") as d:
        yield d
