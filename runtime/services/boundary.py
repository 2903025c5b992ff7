"""The one place where servicer calls meet errors, namespaces and logging.

Every containerd-API servicer method is wrapped with :func:`unary` or
:func:`stream`. The wrapper reads the ``containerd-namespace`` metadata into
:data:`wharfd.runtime.namespaces.current` (and ``containerd-lease`` into
:data:`wharfd.runtime.metadata.leases.current`), runs the handler, and turns a typed
error into the matching gRPC status. Handlers never touch status codes.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from wharfd.runtime import errors, namespaces
from wharfd.runtime.metadata import leases

log = logging.getLogger("wharfd.grpc")

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Self = TypeVar("Self")
T = TypeVar("T")


def _metadata(context: grpc.aio.ServicerContext[Any, Any], wanted: str) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == wanted:
            return value if isinstance(value, str) else value.decode()
    return None


def _namespace_of(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    return _metadata(context, namespaces.GRPC_METADATA_KEY)


async def _abort(context: grpc.aio.ServicerContext[Any, Any], method: str, exc: BaseException) -> None:
    code, message = errors.to_status(exc)
    if code == grpc.StatusCode.UNKNOWN:
        log.exception("%s failed unexpectedly", method, exc_info=exc)
    else:
        log.debug("%s: %s: %s", method, code.name, message)
    await context.abort(code, message)


def unary(
    fn: Callable[[Self, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]],
    *,
    namespace: str | None = None,
) -> Callable[[Self, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]]:
    """Wrap a unary (or client-streaming) servicer method with the error and namespace boundary.

    ``namespace`` fixes the namespace instead of reading it from the metadata
    (the CRI always works in ``k8s.io``).
    """

    @functools.wraps(fn)
    async def wrapper(self: Self, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> Resp:
        token = namespaces.current.set(namespace or _namespace_of(context))
        lease = leases.current.set(_metadata(context, leases.GRPC_METADATA_KEY))
        try:
            return await fn(self, request, context)
        except errors.WharfError as exc:
            await _abort(context, fn.__qualname__, exc)
        except (TimeoutError, OSError) as exc:
            await _abort(context, fn.__qualname__, exc)
        finally:
            leases.current.reset(lease)
            namespaces.current.reset(token)
        raise AssertionError("unreachable: context.abort raises")

    return wrapper


def stream(
    fn: Callable[[Self, Req, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Resp]],
    *,
    namespace: str | None = None,
) -> Callable[[Self, Req, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Resp]]:
    """Wrap a server-streaming servicer method (an async generator) the same way."""

    @functools.wraps(fn)
    async def wrapper(
        self: Self, request: Req, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Resp]:
        token = namespaces.current.set(namespace or _namespace_of(context))
        lease = leases.current.set(_metadata(context, leases.GRPC_METADATA_KEY))
        try:
            async for item in fn(self, request, context):
                yield item
        except errors.WharfError as exc:
            await _abort(context, fn.__qualname__, exc)
        except (TimeoutError, OSError) as exc:
            await _abort(context, fn.__qualname__, exc)
        finally:
            # A client that goes away mid-stream gets the generator finalized in
            # another context, where these tokens cannot be reset (nor need to be).
            with contextlib.suppress(ValueError):
                leases.current.reset(lease)
                namespaces.current.reset(token)

    return wrapper


def fill_unimplemented(cls: type[T], service: ServiceDescriptor) -> type[T]:
    """Give ``cls`` an async handler answering UNIMPLEMENTED for every method it does not define.

    The generated base servicers raise from synchronous methods, which grpc.aio
    cannot run without a thread pool; this keeps every method on the loop and
    names the method in the error.
    """
    for method in service.methods:
        if method.name in cls.__dict__:
            continue
        full = f"{service.full_name}/{method.name}"
        setattr(cls, method.name, _unimplemented(full, streaming=method.server_streaming))
    return cls


def _unimplemented(full: str, *, streaming: bool) -> Callable[..., Any]:
    message = f"{full} is not implemented"
    if streaming:

        async def stream_handler(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)
            yield  # type: ignore[unreachable]  # abort raises; the yield makes this a generator

        return stream_handler

    async def handler(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)

    return handler


async def responses(behaviour: Any, request: Any, context: Any) -> AsyncIterator[Any]:
    """The responses of a streaming behaviour, whichever of grpc.aio's two forms it takes.

    A behaviour either yields its responses or, a coroutine, writes them
    through the context (``Streaming.Stream`` does); a wrapper around either
    (the lazy services, the metrics interceptor) iterates this.
    """
    if inspect.iscoroutinefunction(behaviour):
        await behaviour(request, context)
        return
    async for item in behaviour(request, context):
        yield item
