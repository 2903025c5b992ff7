"""Named network namespaces, bind-mounted so they outlive any process (``ip netns`` style)."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

from pyroute2 import netns as _netns

from wharfd.runtime import errors

DEFAULT_DIR = Path("/var/run/netns")


def _create(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _netns.create(str(path))


async def create(name: str | None = None, *, directory: Path = DEFAULT_DIR) -> Path:
    """Create a network namespace pinned at ``directory/name`` and return that path."""
    path = directory / (name or f"cni-{secrets.token_hex(8)}")
    await asyncio.to_thread(_create, path)
    if not path.exists():
        raise errors.Unavailable(f"network namespace {path}: not created")
    return path


def _remove(path: Path) -> None:
    if path.exists():
        _netns.remove(str(path))


async def remove(path: Path) -> None:
    """Unmount and delete a pinned namespace; a missing one is not an error."""
    await asyncio.to_thread(_remove, path)
