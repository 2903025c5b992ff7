"""gRPC services whose implementation is imported on their first call.

An idle node daemon serves kubelet through the CRI; containerd's client API
(``ctr``, ``wharf``) is called now and then, and each of its services costs
its servicer module, its generated ``*_pb2`` modules and their descriptors.
:class:`LazyService` answers for one such service from its method names and
kinds (:class:`Api`; hack/protogen.py generates the table from the .proto
files into :mod:`wharfd.api.services.methods`, which holds no descriptors).
The first call imports the module in a worker thread (the event loop keeps
serving meanwhile), builds the real servicer and takes its method handlers as
the generated ``add_*_to_server`` would register them; from then on the real
handlers answer directly. Calls that arrive while the import runs wait for
it; the first call's request is deserialized, and every response serialized,
by the real handler's own functions, so what goes over the wire is the same
as with eager registration.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

import grpc

from wharfd.api.services.methods import METHODS
from wharfd.runtime.services import boundary

Context = grpc.aio.ServicerContext[Any, Any]
# A Handler; grpc-stubs type its behaviours as the synchronous server's, these are grpc.aio's.
Handler = Any
if TYPE_CHECKING:
    _GenericRpcHandler = grpc.GenericRpcHandler[Any, Any]  # generic only in grpc-stubs
else:
    _GenericRpcHandler = grpc.GenericRpcHandler


@dataclass(frozen=True)
class Api:
    """One gRPC service: its full name and the module that implements it."""

    service: str
    module: str

    def __post_init__(self) -> None:
        if self.service not in METHODS:  # a misspelt name fails at import, not on the first call
            raise ValueError(f"{self.service}: no .proto file under api/services/ declares this service")

    @property
    def methods(self) -> Mapping[str, tuple[bool, bool]]:
        """Each method's kind, (request streaming, response streaming), as the .proto declares it."""
        return METHODS[self.service]


class Registrable(Protocol):
    """What a service module builds: an object that adds its servicer to a gRPC server."""

    def register(self, server: grpc.aio.Server) -> None:
        """Add the servicer to ``server``."""


Build = Callable[[ModuleType], Registrable]
"""Builds the servicer from its imported module (on the event loop)."""


class _Capture:
    """Stands in for the server while a servicer registers: keeps the method handlers it adds."""

    def __init__(self) -> None:
        self.handlers: dict[str, Handler] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """Ignored: the same handlers arrive through :meth:`add_registered_method_handlers`."""

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Handler]) -> None:
        """Keep the handlers by full method path."""
        self.handlers.update({f"/{service}/{name}": h for name, h in handlers.items()})


class LazyService(_GenericRpcHandler):
    """The gRPC plugin instance of a service that loads on its first call."""

    def __init__(self, api: Api, build: Build) -> None:
        """Serve ``api``; ``build`` makes the servicer once its module is imported."""
        self.api = api
        self._build = build
        self._prefix = f"/{api.service}/"
        self._handlers: dict[str, Handler] | None = None
        # One load at a time (the daemon's one loop): the calls that come meanwhile wait for it.
        self._loading: asyncio.Future[dict[str, Handler]] | None = None

    def register(self, server: grpc.aio.Server) -> None:
        """Add this service to a gRPC server (before it starts)."""
        server.add_generic_rpc_handlers((self,))

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
        """The real handler once loaded; before that, one that loads the service first."""
        method: str = handler_call_details.method
        if self._handlers is not None:
            return self._handlers.get(method)
        if not method.startswith(self._prefix):
            return None
        kind = self.api.methods.get(method[len(self._prefix) :])
        if kind is None:
            return None
        return self._placeholder(method, kind)

    async def load(self) -> dict[str, Handler]:
        """Import the implementation (in a thread) and build the servicer, once."""
        if self._handlers is not None:
            return self._handlers
        if self._loading is None:
            self._loading = asyncio.ensure_future(self._load())
        # Shielded: a caller that goes away must not cancel the load the others wait for.
        return await asyncio.shield(self._loading)

    async def _load(self) -> dict[str, Handler]:
        try:
            module = await asyncio.to_thread(importlib.import_module, self.api.module)
            capture = _Capture()
            self._build(module).register(capture)  # type: ignore[arg-type]
            missing = set(self.api.methods) - {m[len(self._prefix) :] for m in capture.handlers}
            if missing:
                raise RuntimeError(f"{self.api.module} does not serve {sorted(missing)}")
            self._handlers = capture.handlers
            return self._handlers
        except BaseException:
            self._loading = None  # the next call tries again
            raise

    def _placeholder(self, method: str, kind: tuple[bool, bool]) -> Handler:
        """A handler of ``kind`` for ``method`` that waits for the load, then runs the real one."""

        def real() -> Handler:
            assert self._handlers is not None  # serializers run only once the behaviour has loaded
            return self._handlers[method]

        # The core deserializes a unary request before the behaviour runs, so it arrives as bytes here;
        # a streamed request is read inside the behaviour, after the load, with the real deserializer.
        def deserialize(raw: bytes) -> Any:
            return real().request_deserializer(raw)

        def serialize(message: Any) -> bytes:
            result: bytes = real().response_serializer(message)
            return result

        async def unary_unary(raw: bytes, context: Context) -> Any:
            handler = (await self.load())[method]
            return await handler.unary_unary(handler.request_deserializer(raw), context)

        async def unary_stream(raw: bytes, context: Context) -> AsyncIterator[Any]:
            handler = (await self.load())[method]
            async for item in boundary.responses(
                handler.unary_stream, handler.request_deserializer(raw), context
            ):
                yield item

        async def stream_unary(requests: Any, context: Context) -> Any:
            handler = (await self.load())[method]
            return await handler.stream_unary(requests, context)

        async def stream_stream(requests: Any, context: Context) -> AsyncIterator[Any]:
            handler = (await self.load())[method]
            async for item in boundary.responses(handler.stream_stream, requests, context):
                yield item

        match kind:
            case (False, False):
                return grpc.unary_unary_rpc_method_handler(unary_unary, None, serialize)
            case (False, True):
                return grpc.unary_stream_rpc_method_handler(unary_stream, None, serialize)
            case (True, False):
                return grpc.stream_unary_rpc_method_handler(stream_unary, deserialize, serialize)
            case _:
                return grpc.stream_stream_rpc_method_handler(stream_stream, deserialize, serialize)
