"""The event exchange: publish, forward and subscribe, with containerd's topics and filters.

Every change the daemon makes (``/namespaces/create``, ``/images/update``,
``/tasks/exit`` …) is published here as a ``containerd.types.Envelope``;
shims forward theirs over ttrpc. Subscribers (``wharf events``, the stock
``ctr events``, the CRI's container-event stream) each get a bounded queue, so
a slow subscriber never stalls publishers: when its queue is full the oldest
events are dropped and counted (:attr:`Subscription.dropped`).

Filters use :mod:`wharfd.runtime.filters` over ``namespace``, ``topic`` and
``event.<field>`` (fields of the event message itself).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import any_pb2, timestamp_pb2
from google.protobuf.message import Message

from wharfd.api.types import event_pb2
from wharfd.runtime import errors, filters, namespaces, plugin

log = logging.getLogger("wharfd.events")

QUEUE_SIZE = 4096
_TOPIC = re.compile(r"^(/[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*)+$")


def validate_topic(topic: str) -> str:
    """Topics are absolute, slash-separated identifiers (``/tasks/exit``)."""
    if not _TOPIC.match(topic):
        raise errors.InvalidArgument(f'topic "{topic}" must be of the form /a/b with identifier components')
    return topic


def pack(event: Message) -> any_pb2.Any:
    """Wrap an event as containerd does: the full message name as the type URL, no prefix."""
    return any_pb2.Any(type_url=event.DESCRIPTOR.full_name, value=event.SerializeToString())


def _event_field(envelope: event_pb2.Envelope, path: Sequence[str]) -> str | None:
    from google.protobuf import symbol_database

    try:
        cls = symbol_database.Default().GetSymbol(envelope.event.type_url.rsplit("/", 1)[-1])
    except KeyError:
        return None
    msg: Any = cls.FromString(envelope.event.value)
    for name in path:
        if not hasattr(msg, "DESCRIPTOR") or name not in msg.DESCRIPTOR.fields_by_name:
            return None
        msg = getattr(msg, name)
    if isinstance(msg, Message):
        return None
    if isinstance(msg, bool):
        return "true" if msg else "false"
    return str(msg)


def adaptor(envelope: event_pb2.Envelope) -> filters.Adaptor:
    """Expose an envelope to filters: ``namespace``, ``topic``, ``event.<field>``."""

    def get(path: Sequence[str]) -> str | None:
        if not path:
            return None
        if path[0] == "namespace":
            return envelope.namespace
        if path[0] == "topic":
            return envelope.topic
        if path[0] == "event":
            return _event_field(envelope, path[1:]) if len(path) > 1 else envelope.event.type_url
        return None

    return get


@dataclass(eq=False)  # identity semantics: subscriptions live in a set
class Subscription:
    """One subscriber's view of the exchange; iterate it to receive envelopes."""

    filter: filters.Filter
    queue: asyncio.Queue[event_pb2.Envelope] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))
    dropped: int = 0

    def offer(self, envelope: event_pb2.Envelope) -> None:
        """Queue an envelope that passed the filter, dropping the oldest when full."""
        if not self.filter.matches(adaptor(envelope)):
            return
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(envelope)

    def __aiter__(self) -> AsyncIterator[event_pb2.Envelope]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[event_pb2.Envelope]:
        while True:
            yield await self.queue.get()


class Exchange:
    """Fans every published or forwarded envelope out to the subscribers whose filter matches."""

    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()

    async def publish(self, topic: str, event: Message, namespace: str | None = None) -> None:
        """Publish ``event`` on ``topic`` in ``namespace`` (default: the current call's)."""
        ns = namespace or namespaces.required()
        validate_topic(topic)
        envelope = event_pb2.Envelope(namespace=ns, topic=topic, event=pack(event))
        envelope.timestamp.GetCurrentTime()
        self._fan_out(envelope)

    async def forward(self, envelope: event_pb2.Envelope) -> None:
        """Re-publish an envelope made elsewhere (a shim, another daemon) unchanged."""
        namespaces.validate_identifier(envelope.namespace, what="namespace")
        validate_topic(envelope.topic)
        if not envelope.HasField("timestamp"):
            envelope.timestamp.CopyFrom(timestamp_pb2.Timestamp())
            envelope.timestamp.GetCurrentTime()
        self._fan_out(envelope)

    def _fan_out(self, envelope: event_pb2.Envelope) -> None:
        log.debug("event %s %s %s", envelope.namespace, envelope.topic, envelope.event.type_url)
        for sub in list(self._subscribers):
            sub.offer(envelope)

    def subscribe(self, filter_strings: Sequence[str] = ()) -> _Subscribed:
        """``async with exchange.subscribe(filters) as sub: async for env in sub: …``"""
        return _Subscribed(self, Subscription(filters.parse(filter_strings)))

    @property
    def subscribers(self) -> int:
        """How many subscriptions are open."""
        return len(self._subscribers)


class _Subscribed:
    def __init__(self, exchange: Exchange, sub: Subscription) -> None:
        self._exchange = exchange
        self._sub = sub

    async def __aenter__(self) -> Subscription:
        self._exchange._subscribers.add(self._sub)
        return self._sub

    async def __aexit__(self, *exc: object) -> None:
        self._exchange._subscribers.discard(self._sub)


async def _init(ctx: plugin.InitContext) -> Exchange:
    return Exchange()


PLUGIN = plugin.Registration(type=plugin.EVENT, id="exchange", init=_init)
