"""The client side of Transfer and its side streams, for the synchronous CLI.

A transfer is prepared as ctr prepares it: streams are opened first
(``Streaming.Stream``, ``StreamInit{id}``, wait for the ack), each served by a
thread of its own (progress records in, registry credentials out, tar bytes
either way with WindowUpdate flow control), then ``Transfer`` names them.
Stream ids are ctr's ``<kind>-<nanoseconds>-<random>``.
"""

from __future__ import annotations

import base64
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Any

from google.protobuf import any_pb2
from google.protobuf.message import Message

from wharfd.api.services.streaming.v1 import streaming_pb2 as spb
from wharfd.api.types.transfer import progress_pb2, registry_pb2
from wharfd.api.types.transfer import streaming_pb2 as data_pb2
from wharfd.runtime import errors
from wharfd.runtime.services.streaming import MAX_DATA, WINDOW, pack, type_name, unpack

if TYPE_CHECKING:
    from wharfd.runtime.client import Client

log = logging.getLogger("wharfd.ctr")


def stream_id(kind: str) -> str:
    """A fresh stream id, shaped like ctr's (``progress-123456789-AbCd``)."""
    return f"{kind}-{time.time_ns() % 1_000_000_000}-{base64.urlsafe_b64encode(os.urandom(3)).decode()}"


def _stub(client: Client, module: str, name: str) -> Any:
    import importlib

    found = getattr(client, name.lower(), None)
    if found is not None:
        return found
    # The shared Client has no stub for these services (yet); build one on its policy-wrapped channel.
    return getattr(importlib.import_module(module), f"{name}Stub")(client._channel)


def transfer_stub(client: Client) -> Any:
    """``containerd.services.transfer.v1.Transfer``."""
    return _stub(client, "wharfd.api.services.transfer.v1.transfer_pb2_grpc", "Transfer")


class ClientStream:
    """One open ``Streaming.Stream``: send and receive Anys, from any thread."""

    def __init__(self, client: Client, kind: str, metadata: Any = ()) -> None:
        self.id = stream_id(kind)
        self._outbox: queue.Queue[any_pb2.Any | None] = queue.Queue()
        stub = _stub(client, "wharfd.api.services.streaming.v1.streaming_pb2_grpc", "Streaming")
        self._call = stub.Stream(self._requests(), metadata=tuple(metadata))
        self.send(spb.StreamInit(id=self.id))
        try:
            next(self._call)  # the ack: the stream is registered
        except StopIteration:
            raise errors.Unavailable(
                f'stream "{self.id}": the server ended it before acknowledging'
            ) from None

    def _requests(self) -> Iterator[any_pb2.Any]:
        while (item := self._outbox.get()) is not None:
            yield item

    def send(self, msg: Message) -> None:
        """Queue ``msg`` for sending."""
        self._outbox.put(pack(msg))

    def recv(self) -> any_pb2.Any | None:
        """The next message; None when the server has ended the stream."""
        try:
            return next(self._call)  # type: ignore[no-any-return]
        except StopIteration:
            return None

    def close_send(self) -> None:
        """No more messages from this side."""
        self._outbox.put(None)

    def cancel(self) -> None:
        """Abandon the stream."""
        self.close_send()
        self._call.cancel()


class Worker:
    """A daemon thread serving one stream; :meth:`join` re-raises what it failed with."""

    def __init__(self, target: Callable[[], None]) -> None:
        self.error: BaseException | None = None
        self._target = target
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._target()
        except BaseException as exc:
            self.error = exc

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread; raise its failure."""
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error


def serve_progress(stream: ClientStream, show: Callable[[progress_pb2.Progress], None]) -> Worker:
    """Feed every Progress the server sends to ``show``."""

    def run() -> None:
        while (msg := stream.recv()) is not None:
            if type_name(msg) == progress_pb2.Progress.DESCRIPTOR.full_name:
                show(unpack(msg, progress_pb2.Progress))

    return Worker(run)


def serve_credentials(stream: ClientStream, reference: str, username: str, secret: str) -> Worker:
    """Answer the server's AuthRequests: the user's credentials for ``reference``, else anonymous."""

    def run() -> None:
        while (msg := stream.recv()) is not None:
            req = unpack(msg, registry_pb2.AuthRequest)
            if username and req.reference in ("", reference):
                reply = registry_pb2.AuthResponse(
                    authType=registry_pb2.CREDENTIALS, username=username, secret=secret
                )
            else:
                reply = registry_pb2.AuthResponse(authType=registry_pb2.REFRESH, secret=secret)
            stream.send(reply)
        stream.close_send()

    return Worker(run)


def receive_to(stream: ClientStream, out: IO[bytes]) -> Worker:
    """Write the Data the server sends into ``out``, granting 64 KiB windows ahead (an export)."""

    def run() -> None:
        window = 0
        while True:
            if window < WINDOW:
                stream.send(data_pb2.WindowUpdate(update=WINDOW))
                window += WINDOW
            msg = stream.recv()
            if msg is None:
                break
            if type_name(msg) != data_pb2.Data.DESCRIPTOR.full_name:
                continue
            data = unpack(msg, data_pb2.Data).data
            out.write(data)
            window -= len(data)
        out.flush()
        stream.close_send()

    return Worker(run)


def send_from(stream: ClientStream, source: IO[bytes]) -> Worker:
    """Send ``source`` as Data within the windows the server grants, then close (an import)."""
    credit = [0]
    ended = [False]
    granted = threading.Condition()

    def updates() -> None:
        while (msg := stream.recv()) is not None:
            if type_name(msg) == data_pb2.WindowUpdate.DESCRIPTOR.full_name:
                with granted:
                    credit[0] += unpack(msg, data_pb2.WindowUpdate).update
                    granted.notify_all()
        with granted:
            ended[0] = True
            granted.notify_all()

    reader = Worker(updates)

    def run() -> None:
        while True:
            with granted:
                granted.wait_for(lambda: credit[0] > 0 or ended[0])
                if credit[0] <= 0:
                    return  # the server stopped reading (it failed; Transfer says why)
                n = min(credit[0], MAX_DATA)
            data = source.read(n)
            if not data:
                break
            with granted:
                credit[0] -= len(data)
            stream.send(data_pb2.Data(data=data))
        stream.close_send()
        reader.join()

    return Worker(run)
