"""The stream manager plugin (``io.containerd.streaming.v1`` ``manager``): the open streams by id.

The Streaming service registers each stream a client opens; the Transfer
service finds the ones a transfer names. Both services load on their first
call, the manager with the daemon, so this module imports neither (nor any
generated module).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wharfd.runtime import errors, namespaces, plugin

if TYPE_CHECKING:
    from wharfd.runtime.services.streaming import Stream

STREAMING = "io.containerd.streaming.v1"


class StreamManager:
    """Registered streams (:class:`~wharfd.runtime.services.streaming.Stream`) by (namespace, id)."""

    def __init__(self) -> None:
        self._streams: dict[tuple[str, str], Stream] = {}

    def register(self, namespace: str, stream: Stream) -> None:
        """Make ``stream`` findable; AlreadyExists when the id is in use."""
        key = (namespace, stream.id)
        if key in self._streams:
            raise errors.AlreadyExists(f'stream "{stream.id}": already exists')
        self._streams[key] = stream

    def unregister(self, namespace: str, stream: Stream) -> None:
        """Forget ``stream`` (if it is still the one registered under its id)."""
        if self._streams.get((namespace, stream.id)) is stream:
            del self._streams[(namespace, stream.id)]

    def get(self, stream_id: str) -> Stream:
        """The open stream ``stream_id`` of the current namespace; NotFound otherwise."""
        found = self._streams.get((namespaces.required(), stream_id))
        if found is None or found.closed:
            raise errors.NotFound(f'stream "{stream_id}": not found')
        return found

    def __len__(self) -> int:
        return len(self._streams)


async def _init(ctx: plugin.InitContext) -> StreamManager:
    return StreamManager()


PLUGIN = plugin.Registration(type=STREAMING, id="manager", init=_init)
