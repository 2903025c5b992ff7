"""GetContainerEvents: the lifecycle events kubelet's evented PLEG subscribes to.

Each event carries the container (or sandbox) id, its type (CREATED, STARTED,
STOPPED, DELETED), a timestamp in ns, and — as containerd sends them — the
pod's PodSandboxStatus and the ContainerStatus of every container of the pod,
taken when the event is emitted. Sandboxes send events under their own id.

Any number of subscribers may listen at once (containerd#7318); each gets every
event, through its own bounded queue. A subscriber that falls behind loses
events instead of holding the others up: each event it could not take counts
in ``containerd_cri_container_events_dropped_total`` and is logged. While
nobody listens, events are kept for ``hold`` seconds (containerd: 5 minutes)
and handed to the first subscriber; older ones are dropped and counted too.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.api.events import task_pb2 as events_pb2
from wharfd.cri.store import Container, CriState, Sandbox, in_k8s_namespace, wait_stopped
from wharfd.runtime import namespaces
from wharfd.runtime.prom import Counter

log = logging.getLogger("wharfd.cri.events")
T = TypeVar("T")

EVENTS_DROPPED = Counter(
    "containerd_cri_container_events_dropped",
    "count container discarding event total from server start",
)

CREATED = cri.CONTAINER_CREATED_EVENT
STARTED = cri.CONTAINER_STARTED_EVENT
STOPPED = cri.CONTAINER_STOPPED_EVENT
DELETED = cri.CONTAINER_DELETED_EVENT

SandboxStatusFn = Callable[[str], Awaitable[cri.PodSandboxStatus | None]]
ContainerStatusesFn = Callable[[str], Awaitable[list[cri.ContainerStatus]]]

_CLOSED = None  # queued to a subscriber to end its stream


@dataclass
class _Held:
    event: cri.ContainerEventResponse
    until: float


class Subscription:
    """One listener's queue; iterate it for events. Ends when the broker closes or the listener leaves."""

    def __init__(self, size: int) -> None:
        self._queue: asyncio.Queue[cri.ContainerEventResponse | None] = asyncio.Queue(size)
        self._ended = False
        self.dropped = 0

    def offer(self, event: cri.ContainerEventResponse) -> bool:
        """Queue ``event`` without waiting; False (and counted) if the queue is full."""
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            return False
        return True

    def end(self) -> None:
        """Finish the stream once the queued events are read."""
        self._ended = True
        with contextlib.suppress(asyncio.QueueFull):  # a full queue has no reader waiting to wake
            self._queue.put_nowait(_CLOSED)

    def __aiter__(self) -> AsyncIterator[cri.ContainerEventResponse]:
        return self._events()

    async def _events(self) -> AsyncIterator[cri.ContainerEventResponse]:
        while not (self._ended and self._queue.empty()):
            event = await self._queue.get()
            if event is _CLOSED:
                return
            yield event


class ContainerEvents:
    """Fan-out of CRI container events to every subscriber, never blocking the sender."""

    def __init__(self, *, buffer: int = 100, hold: float = 300.0, hold_max: int = 1000) -> None:
        self._buffer = buffer
        self._hold = hold
        self._held: collections.deque[_Held] = collections.deque(maxlen=hold_max)
        self._subscribers: list[Subscription] = []
        self._closed = False
        self.sandbox_status: SandboxStatusFn | None = None
        self.container_statuses: ContainerStatusesFn | None = None

    @property
    def subscribers(self) -> int:
        """How many listeners there are now."""
        return len(self._subscribers)

    def _drop(self, event: cri.ContainerEventResponse, why: str) -> None:
        EVENTS_DROPPED.inc()
        log.info(
            "container event discarded (%s): container=%s type=%s",
            why,
            event.container_id,
            cri.ContainerEventType.Name(event.container_event_type),
        )

    def _expire(self) -> None:
        now = time.monotonic()
        while self._held and self._held[0].until <= now:
            self._drop(self._held.popleft().event, "no subscriber")

    def send(self, event: cri.ContainerEventResponse) -> None:
        """Deliver ``event`` to every subscriber now (or hold it while there is none)."""
        if self._closed:
            return
        if not self._subscribers:
            self._expire()
            if len(self._held) == self._held.maxlen:
                self._drop(self._held[0].event, "no subscriber, backlog full")
            self._held.append(_Held(event, time.monotonic() + self._hold))
            return
        for sub in self._subscribers:
            if not sub.offer(event):
                self._drop(event, "subscriber too slow")

    async def emit(self, container_id: str, sandbox_id: str, kind: cri.ContainerEventType) -> None:
        """Build the event for ``container_id`` of pod ``sandbox_id`` with the pod's statuses, and send it."""
        event = cri.ContainerEventResponse(
            container_id=container_id, container_event_type=kind, created_at=time.time_ns()
        )
        if self.sandbox_status is not None:
            try:
                status = await self.sandbox_status(sandbox_id)
            except Exception as exc:  # the event still goes out, as containerd sends it without status
                log.warning("container event %s: status of sandbox %s: %s", container_id, sandbox_id, exc)
                status = None
            if status is not None:
                event.pod_sandbox_status.CopyFrom(status)
        if self.container_statuses is not None:
            try:
                event.containers_statuses.extend(await self.container_statuses(sandbox_id))
            except Exception as exc:
                log.warning("container event %s: containers of sandbox %s: %s", container_id, sandbox_id, exc)
        self.send(event)

    @contextlib.contextmanager
    def subscribe(self) -> collections.abc.Iterator[Subscription]:
        """A new subscription (first gets any held events); removed when the block exits."""
        sub = Subscription(self._buffer)
        if self._closed:
            sub.end()
            yield sub
            return
        self._expire()
        while self._held:
            held = self._held.popleft()
            if not sub.offer(held.event):
                self._drop(held.event, "subscriber too slow")
        self._subscribers.append(sub)
        try:
            yield sub
        finally:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(sub)

    def close(self) -> None:
        """End every stream (daemon shutdown); later events are ignored."""
        self._closed = True
        for sub in self._subscribers:
            sub.end()
        self._subscribers.clear()


# --- where the events come from -----------------------------------------------------------------

_EXIT_WAIT = 10.0  # how long a task exit may take to reach the store before the event goes out anyway


class ExitFeed:
    """Sends STOPPED when a pod's or container's init process exits, once the store has recorded it.

    The store's exit monitor applies ``/tasks/exit`` to the records and then
    sets the object's ``exited``/``stopped`` event; waiting for that keeps the
    event's statuses in step with what ContainerStatus answers.
    """

    def __init__(self, events: ContainerEvents, state: CriState) -> None:
        self.events = events
        self.state = state
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self.subscribed = asyncio.Event()

    def start(self) -> None:
        """Follow task exits in the background."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="cri-event-exits")

    async def close(self) -> None:
        """Stop following exits."""
        for task in [self._task, *self._pending]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = None

    async def _run(self) -> None:
        topic = f'topic=="/tasks/exit",namespace=="{namespaces.K8S}"'
        async with self.state.exchange.subscribe([topic]) as sub:
            self.subscribed.set()
            async for env in sub:
                exit_ = events_pb2.TaskExit.FromString(env.event.value)
                if exit_.id and exit_.id != exit_.container_id:
                    continue  # an exec process ended, not the container
                task = asyncio.get_running_loop().create_task(self._stopped(exit_.container_id))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)

    async def _stopped(self, id: str) -> None:
        sandbox = self.state.sandboxes.find(id)
        if sandbox is not None and sandbox.id == id:
            await wait_stopped(sandbox.stopped, _EXIT_WAIT)
            await self.events.emit(id, id, STOPPED)
            return
        container = self.state.containers.find(id)
        if container is not None and container.id == id:
            await wait_stopped(container.exited, _EXIT_WAIT)
            await self.events.emit(id, container.sandbox_id, STOPPED)


Handler = Callable[[Any, Any, Any], Awaitable[Any]]


def _lifecycle(name: str, inner: Handler) -> Handler:
    """Wrap one RuntimeService method so it sends its events after it succeeds."""

    @functools.wraps(inner)
    async def wrapper(self: Any, request: Any, context: Any) -> Any:
        state: CriState = self.state
        before: Container | Sandbox | None = None
        if name == "RemoveContainer":
            before = state.containers.find(request.container_id)
        elif name == "RemovePodSandbox":
            before = state.sandboxes.find(request.pod_sandbox_id)
        response = await inner(self, request, context)
        events: ContainerEvents | None = getattr(self, "events", None)
        if events is None:
            return response
        with in_k8s_namespace():
            if name == "RunPodSandbox":
                await events.emit(response.pod_sandbox_id, response.pod_sandbox_id, CREATED)
                await events.emit(response.pod_sandbox_id, response.pod_sandbox_id, STARTED)
            elif name == "RemovePodSandbox" and before is not None:
                await events.emit(before.id, before.id, DELETED)
            elif name == "RemoveContainer" and isinstance(before, Container):
                await events.emit(before.id, before.sandbox_id, DELETED)
            elif name in ("CreateContainer", "StartContainer"):
                id = response.container_id if name == "CreateContainer" else request.container_id
                container = state.containers.find(id)
                if container is not None:
                    await events.emit(
                        container.id, container.sandbox_id, CREATED if name == "CreateContainer" else STARTED
                    )
        return response

    return wrapper


LIFECYCLE_METHODS = (
    "RunPodSandbox",
    "RemovePodSandbox",
    "CreateContainer",
    "StartContainer",
    "RemoveContainer",
)


def instrument(cls: type[T]) -> type[T]:
    """Make the lifecycle methods ``cls`` defines send container events (CREATED, STARTED, DELETED).

    STOPPED comes from :class:`ExitFeed`, as it follows the process, not an RPC.
    Instances need ``state`` (the CriState) and ``events`` (a ContainerEvents or None).
    """
    for name in LIFECYCLE_METHODS:
        if name in cls.__dict__:
            setattr(cls, name, _lifecycle(name, cls.__dict__[name]))
    return cls
