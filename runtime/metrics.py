"""Every Prometheus metric of the daemon, and the server that exposes them at ``/v1/metrics``.

Names follow containerd where the meaning is the same, so dashboards carry
over: ``grpc_server_*`` from the gRPC interceptor (with ``grpc_type``,
``grpc_service``, ``grpc_method``, ``grpc_code``), ``grpc_server_handling_seconds``
only when ``[metrics] grpc_histogram`` is on, and a build-info counter.
The server runs only when ``[metrics] address`` is set; otherwise the plugin
reports ``skip``, and neither prometheus_client nor aiohttp is imported (the
metrics are :mod:`wharfd.runtime.prom`'s, which drop updates until enabled).

The plugin is the one switch: it enables the metrics once it serves them, and
it starts before every other plugin (first in :mod:`wharfd.cri.builtins`, and
it requires none), so what they count from their start on is served.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from wharfd.runtime import plugin, prom, version
from wharfd.runtime.prom import Counter, Histogram
from wharfd.runtime.services import boundary

if TYPE_CHECKING:
    from aiohttp import web

BUILD_INFO = Counter("wharfd_build_info", "Build information of the running wharfd", ["version", "revision"])
_LABELS = ["grpc_type", "grpc_service", "grpc_method"]
GRPC_STARTED = Counter("grpc_server_started", "RPCs started on the server.", _LABELS)
GRPC_HANDLED = Counter(
    "grpc_server_handled", "RPCs completed on the server, by code.", [*_LABELS, "grpc_code"]
)
GRPC_RECEIVED = Counter("grpc_server_msg_received", "RPC stream messages received on the server.", _LABELS)
GRPC_SENT = Counter("grpc_server_msg_sent", "RPC stream messages sent by the server.", _LABELS)
GRPC_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Response latency of RPCs handled by the server.",
    _LABELS,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def _split(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").partition("/")
    return service, name


def go_code_name(code: grpc.StatusCode) -> str:
    """The code's name as Go's codes.Code.String() spells it (``OK``, ``NotFound``, ``Canceled``)."""
    if code == grpc.StatusCode.OK:
        return "OK"
    if code == grpc.StatusCode.CANCELLED:
        return "Canceled"
    return code.name.title().replace("_", "")


class GrpcMetrics(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Counts every RPC the daemon serves, as go-grpc-prometheus does."""

    def __init__(self, histogram: bool) -> None:
        self.histogram = histogram

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(details)
        if handler is None:  # unknown method: grpc answers UNIMPLEMENTED itself
            return handler
        service, name = _split(details.method)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, "unary", service, name),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, "server_stream", service, name),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(handler.stream_unary, "client_stream", service, name),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                self._stream(handler.stream_stream, "bidi_stream", service, name),
                handler.request_deserializer,
                handler.response_serializer,
            )
        return handler

    def _done(
        self, labels: tuple[str, str, str], context: Any, started: float, failed: BaseException | None
    ) -> None:
        code = context.code() if hasattr(context, "code") else None
        if code is None:
            code = grpc.StatusCode.UNKNOWN if failed is not None else grpc.StatusCode.OK
        GRPC_HANDLED.labels(*labels, go_code_name(code)).inc()
        if self.histogram:
            GRPC_SECONDS.labels(*labels).observe(time.monotonic() - started)

    def _unary(self, fn: Any, kind: str, service: str, name: str) -> Any:
        labels = (kind, service, name)

        async def wrapper(request: Any, context: Any) -> Any:
            GRPC_STARTED.labels(*labels).inc()
            GRPC_RECEIVED.labels(*labels).inc()
            started = time.monotonic()
            failed: BaseException | None = None
            try:
                result = await fn(request, context)
                GRPC_SENT.labels(*labels).inc()
                return result
            except BaseException as exc:
                failed = exc
                raise
            finally:
                self._done(labels, context, started, failed)

        return wrapper

    def _stream(self, fn: Any, kind: str, service: str, name: str) -> Any:
        labels = (kind, service, name)

        async def wrapper(request: Any, context: Any) -> AsyncIterator[Any]:
            GRPC_STARTED.labels(*labels).inc()
            started = time.monotonic()
            failed: BaseException | None = None
            try:
                # Responses written through the context (not yielded) are not counted as sent.
                async for item in boundary.responses(fn, request, context):
                    GRPC_SENT.labels(*labels).inc()
                    yield item
            except BaseException as exc:
                failed = exc
                raise
            finally:
                self._done(labels, context, started, failed)

        return wrapper


@dataclass
class MetricsServer:
    """The HTTP endpoint and the gRPC interceptor that feeds it."""

    runner: web.AppRunner
    interceptor: GrpcMetrics


async def _serve(request: web.Request) -> web.Response:
    from aiohttp import web
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    body = generate_latest(REGISTRY)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _init(ctx: plugin.InitContext) -> MetricsServer:
    address = ctx.config.metrics.address
    if not address:
        raise plugin.SkipPlugin("no [metrics] address configured")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"[metrics] address {address!r}: expected host:port")
    # Only a daemon that serves metrics imports the HTTP server and prometheus_client.
    from aiohttp import web

    app = web.Application()
    app.router.add_get("/v1/metrics", _serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host.strip("[]"), int(port))
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    # Collect only what is served: a failed bind above leaves the metrics off.
    prom.enable()
    BUILD_INFO.labels(version.version(), version.revision()).inc(0)
    ctx.exports["address"] = address
    return MetricsServer(runner, GrpcMetrics(ctx.config.metrics.grpc_histogram))


async def _close(instance: MetricsServer) -> None:
    await instance.runner.cleanup()


PLUGIN = plugin.Registration(type=plugin.SERVER, id="metrics", init=_init, close=_close)
