"""Test helpers for code that serves or calls ttrpc: a real server and client over a unix socket."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from wharfd.runtime.ttrpc.client import TtrpcClient
from wharfd.runtime.ttrpc.server import TtrpcServer


@contextlib.asynccontextmanager
async def connected(server: TtrpcServer, path: Path) -> AsyncIterator[TtrpcClient]:
    """Serve ``server`` on ``path`` and yield a client connected to it; both are closed on exit."""
    await server.listen(path)
    try:
        client = await TtrpcClient.connect(path, timeout=5)
        try:
            yield client
        finally:
            await client.close()
    finally:
        await server.close()
