"""Publishing task events to the daemon: ``containerd.services.events.ttrpc.v1.Events/Forward``.

Events go out one at a time, in the order they were published, over a ttrpc
connection to ``TTRPC_ADDRESS``. While the daemon is unreachable (restarting)
the head event is retried with growing back-off and the rest wait in a bounded
queue, so nothing is reordered and a restarted daemon still hears every exit.
An event the daemon *answers* with an error is retried a few times and then
dropped, so one bad event cannot wedge the queue. Unavailable (no connection,
or the daemon asking us to come back later) and DeadlineExceeded count as
"unreachable", never as a refusal.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time

from google.protobuf import any_pb2, empty_pb2, timestamp_pb2
from google.protobuf.message import Message

from wharfd.api.services.ttrpc.events.v1 import events_pb2
from wharfd.api.types import event_pb2
from wharfd.runtime import errors
from wharfd.runtime.ttrpc.client import TtrpcClient

log = logging.getLogger("wharfd.shim.events")

SERVICE = "containerd.services.events.ttrpc.v1.Events"
TOPICS = {
    "TaskCreate": "/tasks/create",
    "TaskStart": "/tasks/start",
    "TaskExit": "/tasks/exit",
    "TaskDelete": "/tasks/delete",
    "TaskExecAdded": "/tasks/exec-added",
    "TaskExecStarted": "/tasks/exec-started",
    "TaskPaused": "/tasks/paused",
    "TaskResumed": "/tasks/resumed",
    "TaskOOM": "/tasks/oom",
    "TaskCheckpointed": "/tasks/checkpointed",
}
MAX_QUEUE = 2048
MAX_REJECTIONS = 5
MAX_BACKOFF = 5.0
# Failures that mean "the daemon cannot be reached now": reconnect and retry, however long it takes.
_UNREACHABLE = (errors.Unavailable, errors.DeadlineExceeded, OSError)


def envelope(namespace: str, event: Message) -> events_pb2.ForwardRequest:
    """The Forward request for ``event`` (a ``containerd.events.Task*`` message), stamped now."""
    name = event.DESCRIPTOR.name
    now = time.time_ns()
    return events_pb2.ForwardRequest(
        envelope=event_pb2.Envelope(
            timestamp=timestamp_pb2.Timestamp(seconds=now // 1_000_000_000, nanos=now % 1_000_000_000),
            namespace=namespace,
            topic=TOPICS[name],
            event=any_pb2.Any(type_url=event.DESCRIPTOR.full_name, value=event.SerializeToString()),
        )
    )


class Publisher:
    """An ordered, bounded, retrying queue of events to the daemon."""

    def __init__(self, address: str, *, call_timeout: float = 5.0) -> None:
        """``address`` is the daemon's ttrpc socket; empty disables publishing."""
        self.address = address.removeprefix("unix://")
        self._timeout = call_timeout
        self._queue: collections.deque[events_pb2.ForwardRequest] = collections.deque()
        self._wakeup = asyncio.Event()
        self._emptied = asyncio.Event()
        self._client: TtrpcClient | None = None
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    def start(self) -> None:
        """Start the sending task."""
        self._task = asyncio.create_task(self._run())

    def publish(self, namespace: str, event: Message) -> None:
        """Queue ``event``; never blocks. A full queue drops the event (and says so)."""
        if not self.address:
            return
        if len(self._queue) >= MAX_QUEUE:
            self.dropped += 1
            log.error("event queue full (%d): dropping %s", MAX_QUEUE, event.DESCRIPTOR.name)
            return
        self._queue.append(envelope(namespace, event))
        self._wakeup.set()

    async def drained(self) -> None:
        """Return once every queued event has been delivered (or dropped)."""
        while self._queue:
            self._emptied.clear()
            await self._emptied.wait()

    async def close(self) -> None:
        """Stop sending (queued events are dropped) and close the connection."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._disconnect()

    async def _run(self) -> None:
        backoff = rejections = 0
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            try:
                await self._send(self._queue[0])
            except _UNREACHABLE as exc:
                await self._disconnect()
                backoff += 1
                log.debug("publishing to %s failed (%s); retry %d", self.address, exc, backoff)
                await asyncio.sleep(min(0.05 * 2 ** min(backoff, 8), MAX_BACKOFF))
                continue
            except errors.WharfError as exc:
                rejections += 1
                if rejections < MAX_REJECTIONS:
                    await asyncio.sleep(0.1 * rejections)
                    continue
                log.error("daemon refused an event %d times, dropping it: %s", rejections, exc)
                self.dropped += 1
            self._queue.popleft()
            backoff = rejections = 0
            if not self._queue:
                self._emptied.set()

    async def _send(self, request: events_pb2.ForwardRequest) -> None:
        if self._client is None or self._client.closed.is_set():
            self._client = await TtrpcClient.connect(self.address, timeout=self._timeout)
        await self._client.call(SERVICE, "Forward", request, empty_pb2.Empty, timeout=self._timeout)

    async def _disconnect(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()
