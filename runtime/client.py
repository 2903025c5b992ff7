"""A small synchronous client for wharfd's containerd API, used by the ``wharf`` CLI.

It dials the daemon's unix socket once, then exposes the generated gRPC stubs
as attributes (``client.namespaces``, ``client.introspection``,
``client.version``, …). Every call made through them:

* carries the ``containerd-namespace`` metadata of the client's namespace;
* gets what is left of the client's total timeout as its deadline (like ctr's
  ``--timeout``, one budget for the whole command, not one per call);
* raises the typed :mod:`wharfd.runtime.errors` class of a failed status, with
  the original :class:`grpc.RpcError` kept as ``__cause__`` so that
  :func:`describe` can print the server's words verbatim, as ctr does.

A daemon that cannot be reached raises :class:`ConnectError` before any call.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc

from wharfd.runtime import errors, namespaces

log = logging.getLogger("wharfd.client")

DEFAULT_ADDRESS = "/run/wharfd/wharfd.sock"
# containerd's client raises both limits from gRPC's 4 MiB default to 16 MiB.
MAX_MESSAGE_SIZE = 16 << 20
# ctr's connect timeout when --connect-timeout is 0.
DEFAULT_CONNECT_TIMEOUT = 10.0

# The errdefs class names a Go client falls back to when a status has no message.
_CLASS_TEXT = {
    grpc.StatusCode.UNKNOWN: "unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "invalid argument",
    grpc.StatusCode.NOT_FOUND: "not found",
    grpc.StatusCode.ALREADY_EXISTS: "already exists",
    grpc.StatusCode.PERMISSION_DENIED: "permission denied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "resource exhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "failed precondition",
    grpc.StatusCode.ABORTED: "aborted",
    grpc.StatusCode.OUT_OF_RANGE: "out of range",
    grpc.StatusCode.UNIMPLEMENTED: "not implemented",
    grpc.StatusCode.INTERNAL: "internal",
    grpc.StatusCode.UNAVAILABLE: "unavailable",
    grpc.StatusCode.DATA_LOSS: "data loss",
    grpc.StatusCode.UNAUTHENTICATED: "unauthorized",
}
# Go maps these two codes to context errors, which it appends to the message.
_CONTEXT_TEXT = {
    grpc.StatusCode.DEADLINE_EXCEEDED: "context deadline exceeded",
    grpc.StatusCode.CANCELLED: "context canceled",
}
# What grpc-python itself says when the local deadline or a cancel ends a call.
_LOCAL_DETAILS = {"Deadline Exceeded", "Locally cancelled by application!", "Cancelled"}
_CONNECT_FAILURE = "failed to connect to all addresses"


class ConnectError(errors.Unavailable):
    """The daemon's socket is missing, refuses connections, or never answered the handshake."""

    def __init__(self, address: str, reason: str, *, hint: str = "is the daemon running?") -> None:
        super().__init__(f"cannot connect to wharfd at {address}: {reason} ({hint})")
        self.address = address
        self.reason = reason


def _connect_error(address: str, exc: OSError) -> ConnectError:
    if isinstance(exc, PermissionError):
        # The daemon may well be running; the caller just may not use its socket.
        return ConnectError(address, _reason(exc), hint="is the socket readable by this user?")
    return ConnectError(address, _reason(exc))


def describe(exc: BaseException) -> str:
    """The message ctr would print for ``exc``: a server's status text verbatim, else ``str(exc)``."""
    cause = exc.__cause__
    if (
        isinstance(exc, errors.WharfError)
        and isinstance(cause, grpc.RpcError)
        and not isinstance(exc, ConnectError)
    ):
        code, details = _status_of(cause)
        context = _CONTEXT_TEXT.get(code)
        if context is not None:
            if not details or details in _LOCAL_DETAILS or details == context:
                return context
            return f"{details}: {context}"
        return details or _CLASS_TEXT.get(code, "unknown")
    return str(exc)


def _status_of(exc: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    # A failed call's RpcError is also a grpc.Call; the stubs' types cannot say so.
    call: Any = exc
    if not hasattr(call, "code"):
        return grpc.StatusCode.UNKNOWN, str(exc)
    return call.code(), call.details() or ""


def _reason(exc: OSError) -> str:
    # Go's syscall errors read in lower case ("connection refused"); match them.
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: Any
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class _MappedStream:
    """A response stream whose failures surface as typed errors; everything else is the grpc call's."""

    def __init__(self, call: Any, translate: Callable[[grpc.RpcError], errors.WharfError]) -> None:
        self._call = call
        self._translate = translate

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._call)
        except grpc.RpcError as exc:
            raise self._translate(exc) from exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


class _CallPolicy(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    """Adds namespace metadata and the remaining deadline to every call, and types its errors."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [*(details.metadata or ()), (namespaces.GRPC_METADATA_KEY, self._client.namespace)]
        timeout = self._client.remaining()
        if details.timeout is not None:
            timeout = details.timeout if timeout is None else min(timeout, details.timeout)
        return _CallDetails(
            method=details.method,
            timeout=timeout,
            metadata=metadata,
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
            compression=details.compression,
        )

    def _unary(self, continuation: Any, details: grpc.ClientCallDetails, request: Any) -> Any:
        outcome = continuation(self._details(details), request)
        # Blocks until the call ends; the CLI makes blocking calls only.
        exc = outcome.exception()
        if isinstance(exc, grpc.RpcError):
            raise self._client.translate(exc) from exc
        return outcome

    def _stream(self, continuation: Any, details: grpc.ClientCallDetails, request: Any) -> Any:
        return _MappedStream(continuation(self._details(details), request), self._client.translate)

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        """Run a unary call under the client's policy."""
        return self._unary(continuation, client_call_details, request)

    def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        """Run a client-streaming call under the client's policy."""
        return self._unary(continuation, client_call_details, request_iterator)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        """Run a server-streaming call under the client's policy."""
        return self._stream(continuation, client_call_details, request)

    def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        """Run a bidirectional call under the client's policy."""
        return self._stream(continuation, client_call_details, request_iterator)


class Client:
    """A connection to wharfd's containerd API on a unix socket.

    ``timeout`` bounds all calls together (None or 0: no bound); ``connect_timeout``
    bounds dialling (None or 0: 10 s, as ctr).
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        namespace: str = namespaces.DEFAULT,
        timeout: float | None = None,
        connect_timeout: float | None = None,
    ) -> None:
        self.address = address.removeprefix("unix://")
        self.namespace = namespace
        self._connect_timeout = connect_timeout or DEFAULT_CONNECT_TIMEOUT
        self._raw = self._dial()
        self._channel = grpc.intercept_channel(self._raw, _CallPolicy(self))
        # The budget starts once connected, as ctr's context does.
        self._deadline = time.monotonic() + timeout if timeout else None

    def _dial(self) -> grpc.Channel:
        path = self.address
        # Like ctr, look at the socket first: a missing file says more than a dial error.
        try:
            os.stat(path)
        except OSError as exc:
            raise _connect_error(path, exc) from exc
        # A stale socket file with no listener refuses at once; find out now
        # rather than after gRPC's reconnect backoff has used up the timeout.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(self._connect_timeout)
            try:
                probe.connect(path)
            except TimeoutError as exc:
                raise ConnectError(path, "timed out") from exc
            except OSError as exc:
                raise _connect_error(path, exc) from exc
        target = f"unix://{path}" if path.startswith("/") else f"unix:{path}"
        channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_SIZE),
                ("grpc.max_send_message_length", MAX_MESSAGE_SIZE),
            ],
        )
        try:
            grpc.channel_ready_future(channel).result(timeout=self._connect_timeout)
        except grpc.FutureTimeoutError as exc:
            channel.close()
            raise ConnectError(path, f"no gRPC handshake within {self._connect_timeout:g}s") from exc
        log.debug("connected to %s", path)
        return channel

    def remaining(self) -> float | None:
        """Seconds left of the total timeout, or None when there is none."""
        if self._deadline is None:
            return None
        # A spent budget still goes out as a tiny deadline, so the call fails
        # with DEADLINE_EXCEEDED through the usual path.
        return max(self._deadline - time.monotonic(), 0.001)

    def translate(self, exc: grpc.RpcError) -> errors.WharfError:
        """Map a failed call to its typed error; a lost connection becomes :class:`ConnectError`."""
        code, details = _status_of(exc)
        if code == grpc.StatusCode.UNAVAILABLE and details.startswith(_CONNECT_FAILURE):
            return ConnectError(self.address, details)
        return errors.from_rpc_error(exc)

    def close(self) -> None:
        """Close the channel; stubs obtained from this client stop working."""
        self._raw.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # Stubs are built on first use so a command imports only the services it calls.
    @functools.cached_property
    def version(self) -> Any:
        """``containerd.services.version.v1.Version``."""
        from wharfd.api.services.version.v1 import version_pb2_grpc

        return version_pb2_grpc.VersionStub(self._channel)

    @functools.cached_property
    def namespaces(self) -> Any:
        """``containerd.services.namespaces.v1.Namespaces``."""
        from wharfd.api.services.namespaces.v1 import namespace_pb2_grpc

        return namespace_pb2_grpc.NamespacesStub(self._channel)

    @functools.cached_property
    def introspection(self) -> Any:
        """``containerd.services.introspection.v1.Introspection``."""
        from wharfd.api.services.introspection.v1 import introspection_pb2_grpc

        return introspection_pb2_grpc.IntrospectionStub(self._channel)

    @functools.cached_property
    def content(self) -> Any:
        """``containerd.services.content.v1.Content``."""
        from wharfd.api.services.content.v1 import content_pb2_grpc

        return content_pb2_grpc.ContentStub(self._channel)

    @functools.cached_property
    def snapshots(self) -> Any:
        """``containerd.services.snapshots.v1.Snapshots``."""
        from wharfd.api.services.snapshots.v1 import snapshots_pb2_grpc

        return snapshots_pb2_grpc.SnapshotsStub(self._channel)

    @functools.cached_property
    def leases(self) -> Any:
        """``containerd.services.leases.v1.Leases``."""
        from wharfd.api.services.leases.v1 import leases_pb2_grpc

        return leases_pb2_grpc.LeasesStub(self._channel)

    @functools.cached_property
    def events(self) -> Any:
        """``containerd.services.events.v1.Events``."""
        from wharfd.api.services.events.v1 import events_pb2_grpc

        return events_pb2_grpc.EventsStub(self._channel)

    @functools.cached_property
    def images(self) -> Any:
        """``containerd.services.images.v1.Images``."""
        from wharfd.api.services.images.v1 import images_pb2_grpc

        return images_pb2_grpc.ImagesStub(self._channel)

    @functools.cached_property
    def diff(self) -> Any:
        """``containerd.services.diff.v1.Diff``."""
        from wharfd.api.services.diff.v1 import diff_pb2_grpc

        return diff_pb2_grpc.DiffStub(self._channel)

    @functools.cached_property
    def transfer(self) -> Any:
        """``containerd.services.transfer.v1.Transfer``."""
        from wharfd.api.services.transfer.v1 import transfer_pb2_grpc

        return transfer_pb2_grpc.TransferStub(self._channel)

    @functools.cached_property
    def streaming(self) -> Any:
        """``containerd.services.streaming.v1.Streaming``."""
        from wharfd.api.services.streaming.v1 import streaming_pb2_grpc

        return streaming_pb2_grpc.StreamingStub(self._channel)

    @functools.cached_property
    def containers(self) -> Any:
        """``containerd.services.containers.v1.Containers``."""
        from wharfd.api.services.containers.v1 import containers_pb2_grpc

        return containers_pb2_grpc.ContainersStub(self._channel)

    @functools.cached_property
    def tasks(self) -> Any:
        """``containerd.services.tasks.v1.Tasks``."""
        from wharfd.api.services.tasks.v1 import tasks_pb2_grpc

        return tasks_pb2_grpc.TasksStub(self._channel)
