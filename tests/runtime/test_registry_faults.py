"""Registries that misbehave: stalls, dropped connections, redirects, odd manifests, busy servers.

Each fake is a small aiohttp app on 127.0.0.1 that does one wrong thing; the
client must turn it into a typed error naming the object, or recover.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import aclosing
from typing import Any

import pytest
from aiohttp import web

from tests.support.registry import serve_app
from wharfd.runtime import errors
from wharfd.runtime.images import manifest, mediatypes
from wharfd.runtime.images.manifest import MAX_MANIFEST_SIZE, Descriptor, digest_of
from wharfd.runtime.registry import Capability, Fetcher, HostsConfig, Resolver, Transport, auth

BLOB = bytes(range(256)) * 4096  # 1 MiB
BLOB_DESC = Descriptor(mediatypes.OCI_LAYER_GZIP, digest_of(BLOB), len(BLOB))
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _app(routes: Mapping[str, Handler], seen: list[web.Request] | None = None) -> web.Application:
    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        if seen is not None:
            seen.append(request)
        return await handler(request)

    app = web.Application(middlewares=[record])
    for path, handler in routes.items():
        app.router.add_route("*", path, handler)
    return app


async def _with_fake(
    routes: Mapping[str, Handler],
    body: Callable[[Resolver, str], Awaitable[Any]],
    seen: list[web.Request] | None = None,
    **options: Any,
) -> Any:
    async with serve_app(_app(routes, seen)) as host:
        options.setdefault("hosts", HostsConfig(plain_http=True))
        async with Transport(**options) as transport:
            return await body(Resolver(transport), host)


async def _drain(chunks: AsyncGenerator[bytes, None]) -> bytes:
    async with aclosing(chunks) as it:
        return b"".join([c async for c in it])


async def _get(fetcher: Fetcher, desc: Descriptor, blocking: bool, offset: int = 0) -> bytes:
    """A blob through the stream on the loop, or through ``fetch_to``'s thread (what pulls use)."""
    if not blocking:
        return await _drain(fetcher.fetch(desc, offset=offset))
    data = bytearray()
    await fetcher.fetch_to(desc, data.extend, offset=offset)
    return bytes(data)


BOTH = pytest.mark.parametrize("blocking", [False, True], ids=["stream", "thread"])


@BOTH
def test_stalled_blob_hits_the_progress_timeout(blocking: bool) -> None:
    release = asyncio.Event()

    async def stall(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": str(len(BLOB))})
        await resp.prepare(request)
        await resp.write(BLOB[:1000])
        await release.wait()  # headers and a little data, then nothing
        return resp

    async def body(resolver: Resolver, host: str) -> None:
        started = time.monotonic()
        fetcher = resolver.fetcher(f"{host}/test/stall:1")
        # The thread counts the bytes it has written: the 1000 were still in its buffer.
        at = 0 if blocking else 1000
        expected = f"blob {BLOB_DESC.digest} of {host}/test/stall: no data for 0.3s at byte {at}"
        with pytest.raises(errors.DeadlineExceeded, match=expected):
            await _get(fetcher, BLOB_DESC, blocking)
        assert time.monotonic() - started < 5
        release.set()

    asyncio.run(_with_fake({"/v2/test/stall/blobs/{digest}": stall}, body, progress_timeout=0.3))


def test_headers_that_never_come_are_a_deadline_too() -> None:
    release = asyncio.Event()

    async def silent(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.Response()

    async def body(resolver: Resolver, host: str) -> None:
        expected = f'manifest "{host}/test/silent:1": .* did not answer'
        with pytest.raises(errors.DeadlineExceeded, match=expected):
            await resolver.resolve(f"{host}/test/silent:1")
        release.set()

    asyncio.run(_with_fake({"/v2/test/silent/manifests/1": silent}, body, progress_timeout=0.3))


def test_an_unbounded_request_still_has_a_connect_deadline() -> None:
    """Uploads wait for their answer without a bound (wait=None); the connect keeps its timeout."""

    async def main() -> None:
        with socket.create_server(("127.0.0.1", 0)) as silent:  # connects, then never speaks TLS
            host = f"127.0.0.1:{silent.getsockname()[1]}"
            async with Transport(HostsConfig(), connect_timeout=0.2) as transport:
                (registry,) = await transport.hosts(host, Capability.PUSH)
                url = transport.url(registry, "test", "blobs", "uploads/")
                with pytest.raises(errors.DeadlineExceeded, match=r"upload: .* did not answer within 0\.2s"):
                    await transport.request(
                        registry, "POST", url, what="upload", scopes=[], body=b"x", wait=None
                    )

    asyncio.run(main())


def _dropping_blob(requests: list[str]) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        ranged = request.headers.get("Range", "")
        requests.append(ranged)
        if not ranged:  # the first attempt dies half way through
            resp = web.StreamResponse(headers={"Content-Length": str(len(BLOB))})
            await resp.prepare(request)
            await resp.write(BLOB[: len(BLOB) // 2])
            assert request.transport is not None
            request.transport.close()
            return resp
        start = int(ranged.removeprefix("bytes=").rstrip("-"))
        return web.Response(
            status=206,
            body=BLOB[start:],
            headers={"Content-Range": f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}"},
        )

    return handler


def test_dropped_connection_then_resume_from_the_offset() -> None:
    requests: list[str] = []

    async def body(resolver: Resolver, host: str) -> None:
        fetcher = resolver.fetcher(f"{host}/test/drop:1")
        got = bytearray()
        with pytest.raises(errors.Unavailable, match=f"blob {BLOB_DESC.digest} of .*resume from"):
            async with aclosing(fetcher.fetch(BLOB_DESC)) as chunks:
                async for chunk in chunks:
                    got += chunk
        assert 0 < len(got) < len(BLOB) and BLOB.startswith(got)
        got += await _drain(fetcher.fetch(BLOB_DESC, offset=len(got)))
        assert digest_of(bytes(got)) == BLOB_DESC.digest

    asyncio.run(_with_fake({"/v2/test/drop/blobs/{digest}": _dropping_blob(requests)}, body))
    assert requests[0] == "" and requests[1].startswith("bytes=") and requests[1] != "bytes=0-"


def test_fetch_to_resumes_by_itself() -> None:
    requests: list[str] = []

    async def body(resolver: Resolver, host: str) -> None:
        data = bytearray()
        written = await resolver.fetcher(f"{host}/test/drop:1").fetch_to(BLOB_DESC, data.extend, retries=2)
        assert written == len(BLOB) and bytes(data) == BLOB

    asyncio.run(_with_fake({"/v2/test/drop/blobs/{digest}": _dropping_blob(requests)}, body))
    assert len(requests) == 2


def test_cancelling_a_blob_download_stops_its_thread_at_once() -> None:
    release = asyncio.Event()
    sent = asyncio.Event()

    async def stall(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": str(len(BLOB))})
        await resp.prepare(request)
        await resp.write(BLOB[:1000])
        sent.set()
        await release.wait()
        return resp

    async def body(resolver: Resolver, host: str) -> None:
        written: list[int] = []
        fetcher = resolver.fetcher(f"{host}/test/stall:1")
        task = asyncio.create_task(fetcher.fetch_to(BLOB_DESC, lambda b: written.append(len(b))))
        await sent.wait()
        await asyncio.sleep(0.1)  # the thread is blocked reading
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Not the 60 s progress timeout: the abort woke the read. The bytes it had are written
        # (they are the blob's), and the thread is done once fetch_to is: nothing comes later.
        assert time.monotonic() - started < 5
        assert sum(written) <= 1000
        seen = list(written)
        release.set()
        await asyncio.sleep(0.2)
        assert written == seen

    asyncio.run(_with_fake({"/v2/test/stall/blobs/{digest}": stall}, body, progress_timeout=60))


@BOTH
def test_server_ignoring_range_is_handled(blocking: bool) -> None:
    async def whole(request: web.Request) -> web.StreamResponse:
        return web.Response(body=BLOB)

    async def body(resolver: Resolver, host: str) -> None:
        tail = await _get(resolver.fetcher(f"{host}/test/norange:1"), BLOB_DESC, blocking, offset=12345)
        assert tail == BLOB[12345:]

    asyncio.run(_with_fake({"/v2/test/norange/blobs/{digest}": whole}, body))


@BOTH
def test_more_bytes_than_the_descriptor_is_data_loss(blocking: bool) -> None:
    async def longer(request: web.Request) -> web.StreamResponse:
        return web.Response(body=BLOB + b"extra")

    async def body(resolver: Resolver, host: str) -> None:
        with pytest.raises(errors.DataLoss, match="more than"):
            await _get(resolver.fetcher(f"{host}/test/long:1"), BLOB_DESC, blocking)

    asyncio.run(_with_fake({"/v2/test/long/blobs/{digest}": longer}, body))


@BOTH
def test_redirect_to_blob_storage_does_not_leak_credentials(blocking: bool) -> None:
    storage_seen: list[web.Request] = []

    async def storage(request: web.Request) -> web.StreamResponse:
        return web.Response(body=BLOB)

    async def main() -> None:
        async with serve_app(_app({"/blob": storage}, storage_seen)) as storage_host:

            async def redirect(request: web.Request) -> web.StreamResponse:
                if request.headers.get("Authorization") != "Basic dTpw":  # u:p
                    raise web.HTTPUnauthorized(headers={"WWW-Authenticate": 'Basic realm="fake"'})
                # A raw header: aiohttp's redirect helper would re-encode the URL.
                return web.Response(status=307, headers={"Location": f"http://{storage_host}/blob?sig=a%2Fb"})

            async def body(resolver: Resolver, host: str) -> None:
                assert await _get(resolver.fetcher(f"{host}/test/cdn:1"), BLOB_DESC, blocking) == BLOB

            await _with_fake(
                {"/v2/test/cdn/blobs/{digest}": redirect},
                body,
                credentials=auth.static(auth.Credentials("u", "p")),
            )

    asyncio.run(main())
    assert len(storage_seen) == 1
    assert "Authorization" not in storage_seen[0].headers
    assert storage_seen[0].raw_path == "/blob?sig=a%2Fb"  # signed URLs pass through unaltered


def _manifest_server(content_type: str, data: bytes, *, digest_header: bool = True) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        headers = {"Content-Type": content_type}
        if digest_header:
            headers["Docker-Content-Digest"] = digest_of(data)
        return web.Response(body=data, headers=headers)  # aiohttp sends no body for HEAD

    return handler


def test_unexpected_manifest_media_type() -> None:
    data = b'{"schemaVersion": 2, "hello": "world"}'

    async def body(resolver: Resolver, host: str) -> None:
        name, desc = await resolver.resolve(f"{host}/test/odd:1")
        assert desc.media_type == "application/x-odd"
        fetched = await resolver.fetcher(name).read(desc)
        with pytest.raises(errors.NotImplemented, match='unexpected media type "application/x-odd"'):
            manifest.parse(desc, fetched)

    asyncio.run(_with_fake({"/v2/test/odd/{kind}/{ref}": _manifest_server("application/x-odd", data)}, body))


def test_schema1_is_refused_at_resolve() -> None:
    data = b'{"schemaVersion": 1}'

    async def body(resolver: Resolver, host: str) -> None:
        with pytest.raises(errors.NotImplemented, match="schema 1 images are not supported"):
            await resolver.resolve(f"{host}/test/old:1")

    handler = _manifest_server("text/plain", data, digest_header=False)
    asyncio.run(_with_fake({"/v2/test/old/manifests/1": handler}, body))


def test_oversize_manifest_is_refused() -> None:
    big = b"{" + b" " * MAX_MANIFEST_SIZE + b"}"

    async def body(resolver: Resolver, host: str) -> None:
        expected = f"is {len(big)} bytes; the limit is {MAX_MANIFEST_SIZE}"
        with pytest.raises(errors.ResourceExhausted, match=expected):
            await resolver.resolve(f"{host}/test/big:1")
        # Without headers to go by, the body is read only up to the limit.
        with pytest.raises(errors.ResourceExhausted, match=f"the limit is {MAX_MANIFEST_SIZE}"):
            await resolver.resolve(f"{host}/test/bigger:1")

    routes = {
        "/v2/test/big/manifests/1": _manifest_server(mediatypes.OCI_MANIFEST, big),
        "/v2/test/bigger/manifests/1": _manifest_server(mediatypes.OCI_MANIFEST, big, digest_header=False),
    }
    asyncio.run(_with_fake(routes, body))


def test_head_without_digest_falls_back_to_get() -> None:
    data = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}'

    async def body(resolver: Resolver, host: str) -> None:
        _, desc = await resolver.resolve(f"{host}/test/nodigest:1")
        assert desc == Descriptor(mediatypes.OCI_INDEX, digest_of(data), len(data))

    handler = _manifest_server(mediatypes.OCI_INDEX, data, digest_header=False)
    asyncio.run(_with_fake({"/v2/test/nodigest/manifests/1": handler}, body))


def test_wrong_content_for_a_digest_is_data_loss() -> None:
    data = b'{"schemaVersion":2}'
    claimed = "sha256:" + "e" * 64

    async def body(resolver: Resolver, host: str) -> None:
        with pytest.raises(errors.DataLoss, match="served content with digest"):
            await resolver.resolve(f"{host}/test/liar@{claimed}")

    handler = _manifest_server(mediatypes.OCI_INDEX, data, digest_header=False)

    async def no_length_head(request: web.Request) -> web.StreamResponse:
        if request.method == "HEAD":
            return web.Response(status=405)  # HEAD unsupported: the client retries with GET
        return await handler(request)

    asyncio.run(_with_fake({f"/v2/test/liar/manifests/{claimed}": no_length_head}, body))


def test_busy_registry_is_retried_then_reported() -> None:
    calls: list[int] = []

    async def busy_once(request: web.Request) -> web.StreamResponse:
        calls.append(1)
        if len(calls) == 1:
            return web.Response(status=429, headers={"Retry-After": "0"})
        return web.Response(body=BLOB)

    async def broken(request: web.Request) -> web.StreamResponse:
        return web.json_response({"errors": [{"code": "UNKNOWN", "message": "disk on fire"}]}, status=503)

    async def body(resolver: Resolver, host: str) -> None:
        assert await _drain(resolver.fetcher(f"{host}/test/busy:1").fetch(BLOB_DESC)) == BLOB
        with pytest.raises(errors.Unavailable, match=r"registry error \(HTTP 503\): UNKNOWN: disk on fire"):
            await _drain(resolver.fetcher(f"{host}/test/broken:1").fetch(BLOB_DESC))

    routes = {"/v2/test/busy/blobs/{digest}": busy_once, "/v2/test/broken/blobs/{digest}": broken}
    asyncio.run(_with_fake(routes, body, retry_delay=0.01))
    assert len(calls) == 2


def test_forbidden_is_permission_denied() -> None:
    async def forbidden(request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {"errors": [{"code": "DENIED", "message": "requested access is denied"}]}, status=403
        )

    async def body(resolver: Resolver, host: str) -> None:
        expected = r'manifest ".*/test/secret:1": access denied \(HTTP 403\)'
        with pytest.raises(errors.PermissionDenied, match=expected):
            await resolver.resolve(f"{host}/test/secret:1")
        # A GET has a body to quote the registry's reason from.
        with pytest.raises(errors.PermissionDenied, match=r"access denied .*DENIED: requested access"):
            await _drain(resolver.fetcher(f"{host}/test/secret:1").fetch(BLOB_DESC))

    routes = {"/v2/test/secret/manifests/1": forbidden, "/v2/test/secret/blobs/{digest}": forbidden}
    asyncio.run(_with_fake(routes, body))


@BOTH
def test_an_error_reply_cut_short_is_still_a_typed_error(blocking: bool) -> None:
    async def cut(request: web.Request) -> web.StreamResponse:
        # A 500 whose promised body never arrives: the connection is reset half way.
        resp = web.StreamResponse(status=500, headers={"Content-Length": "1000"})
        await resp.prepare(request)
        assert request.transport is not None
        request.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )  # closed with a reset, not an end of file
        request.transport.abort()
        return resp

    async def body(resolver: Resolver, host: str) -> None:
        with pytest.raises(errors.Unavailable, match=r"registry error \(HTTP 500\)"):
            await _get(resolver.fetcher(f"{host}/test/cut:1"), BLOB_DESC, blocking)

    asyncio.run(_with_fake({"/v2/test/cut/blobs/{digest}": cut}, body, retry_delay=0.01))
