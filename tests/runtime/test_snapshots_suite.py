"""The snapshotter conformance suite, run against overlayfs and native (needs root)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from wharfd.runtime.metadata.db import Database
from wharfd.runtime.snapshots import testsuite
from wharfd.runtime.snapshots.metadata import NamespacedSnapshotter
from wharfd.runtime.snapshots.native import NativeBackend
from wharfd.runtime.snapshots.overlay import OverlayBackend

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounts overlayfs and bind mounts: needs root"),
]


@asynccontextmanager
async def overlay_snapshotter(root: Path) -> AsyncIterator[NamespacedSnapshotter]:
    async with await Database.open(root.parent / "metadata.db") as db:
        yield NamespacedSnapshotter(db, OverlayBackend(root))


@asynccontextmanager
async def native_snapshotter(root: Path) -> AsyncIterator[NamespacedSnapshotter]:
    async with await Database.open(root.parent / "metadata.db") as db:
        yield NamespacedSnapshotter(db, NativeBackend(root))


@pytest.mark.parametrize("case", testsuite.CASES, ids=testsuite.case_id)
def test_overlayfs(case: testsuite.Case, tmp_path: Path) -> None:
    asyncio.run(testsuite.run(case, overlay_snapshotter, tmp_path))


@pytest.mark.parametrize("case", testsuite.CASES, ids=testsuite.case_id)
def test_native(case: testsuite.Case, tmp_path: Path) -> None:
    asyncio.run(testsuite.run(case, native_snapshotter, tmp_path))
