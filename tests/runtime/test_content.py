"""The content conformance suite, run against the local store over real SQLite and a real directory."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from wharfd.runtime.content import testsuite
from wharfd.runtime.content.local import LocalStore
from wharfd.runtime.content.store import ContentStore
from wharfd.runtime.metadata.db import Database


def local_factory(tmp_path: Path) -> testsuite.StoreFactory:
    """Each call opens the database and a new store on the same root: a restart."""

    @contextlib.asynccontextmanager
    async def factory() -> AsyncIterator[ContentStore]:
        async with await Database.open(tmp_path / "metadata.db") as db:
            yield LocalStore(tmp_path / "content", db)

    return factory


@pytest.mark.parametrize("check", list(testsuite.CHECKS.values()), ids=list(testsuite.CHECKS))
def test_local_store(tmp_path: Path, check: testsuite.Check) -> None:
    asyncio.run(check(local_factory(tmp_path)))
