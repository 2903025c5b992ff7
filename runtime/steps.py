"""Independent steps run side by side, each to its end (a failure does not cut the others off)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any


async def to_their_end(
    steps: Sequence[Awaitable[Any]], *, failed: Callable[[], None] | None = None
) -> list[Any]:
    """Run ``steps`` side by side, each to its end; their results in order, or the first failure raised.

    Unlike a bare TaskGroup, a failure does not cancel the other steps: a step
    cut off half-way (a CNI plugin, a shim launch) could leave behind what no
    undo knows of. ``failed`` is called as soon as one fails (so the others
    can skip what they have not started). Cancelling the caller cancels them all.
    """
    failures: list[Exception] = []

    async def guarded(step: Awaitable[Any]) -> Any:
        try:
            return await step
        except Exception as exc:
            failures.append(exc)
            if failed is not None:
                failed()
            return None

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(guarded(step)) for step in steps]
    if failures:
        raise failures[0]
    return [task.result() for task in tasks]
