"""HTTP plumbing of the registry client: one aiohttp session, auth retries, redirects, errors.

:class:`Transport` owns the connection pool and the :class:`~wharfd.runtime.registry.auth.Authorizer`
and sends one logical request at a time through :meth:`Transport.request`, which

* adds the host's configured headers and the ``Authorization`` the authorizer
  holds for that host (never to another origin: a redirect to blob storage
  gets no credentials);
* answers a 401 by learning the challenge and retrying once;
* follows redirects itself (at most 10), so it decides what is forwarded;
* retries 408/429/5xx a few times, honouring ``Retry-After``;
* falls back from HTTPS to HTTP for hosts configured that way (an ``http://``
  host with TLS settings) when the port answers the handshake in plain HTTP;
* turns transport failures into typed errors: ``Unavailable`` (connection
  refused or reset, a TLS failure naming the endpoint), ``DeadlineExceeded``
  (no answer in time).

:meth:`Transport.request_blocking` goes through the same steps (headers,
auth, redirects, retries) but sends each request on a connection of its own
from a thread and answers a :class:`BlockingResponse`, whose body is read
with blocking calls from a thread. Layer blobs come this way: reading them
through aiohttp costs the event loop a few milliseconds of CPU per megabyte
(socket reads of 256 KiB, the parser, copies into the stream), which, under
CPU contention, delays every other call the daemon serves. A thread that
reads 1 MiB at a time holds the GIL only between its system calls.

:func:`error_for` maps a failed response to the typed error naming the object.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import http.client
import json
import socket
import ssl
import threading
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

import aiohttp
import multidict
import yarl

from wharfd.runtime import cpu, errors, version
from wharfd.runtime.registry.auth import Authorizer, CredentialsFn, parse_challenges
from wharfd.runtime.registry.hosts import Capability, HostsConfig, RegistryHost, split_port

CHUNK_SIZE = 1 << 20
MAX_REDIRECTS = 10
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})
# Statuses that mean the request was not processed, so even an upload may be sent again.
_NOT_PROCESSED = frozenset({408, 429})
_MAX_RETRY_DELAY = 10.0
_ERROR_BODY_LIMIT = 64 * 1024

# A request body: bytes, or a factory of a fresh stream (called again for each retry).
Body = bytes | Callable[[], AsyncIterable[bytes]] | None
HostsFn = Callable[[str], list[RegistryHost]]


class BodyReader(Protocol):
    """The part of a response's body stream that error handling reads."""

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes; b"" at the end."""
        ...


class Response(Protocol):
    """What :meth:`Transport.request`'s steps need of a response, whichever way it was sent."""

    @property
    def status(self) -> int:
        """The HTTP status."""
        ...

    @property
    def headers(self) -> multidict.CIMultiDictProxy[str]:
        """The response headers."""
        ...

    @property
    def content(self) -> BodyReader:
        """The body."""
        ...

    def release(self) -> Any:
        """Let go of the connection (the body is not read any further)."""
        ...


R = TypeVar("R", bound=Response)
T = TypeVar("T")
# One hop of a request, pooled (aiohttp) or blocking: (method, url, headers, body, TLS) -> the response.
Send = Callable[[str, yarl.URL, dict[str, str], Body, ssl.SSLContext | bool], Awaitable[R]]


@functools.cache
def _default_tls() -> ssl.SSLContext:
    # Built once: parsing the system CA bundle takes tens of milliseconds.
    return ssl.create_default_context()


class BlockingResponse:
    """A response read with blocking calls (from a thread); its connection serves only this request.

    :meth:`abort` may be called from any thread: it wakes a read blocked on
    the socket, which then fails.
    """

    def __init__(
        self, method: str, url: yarl.URL, conn: http.client.HTTPConnection, read_timeout: float | None = None
    ) -> None:
        """Wrap ``conn``, on which :meth:`send` will issue ``method url``.

        ``conn``'s own timeout bounds the connect; ``read_timeout`` every blocking step after it.
        """
        self.method = method
        self.url = url
        self._conn = conn
        self._read_timeout = read_timeout
        self._resp: http.client.HTTPResponse | None = None
        self._headers: multidict.CIMultiDictProxy[str] = multidict.CIMultiDictProxy(multidict.CIMultiDict())
        self._aborted = threading.Event()

    def send(self, headers: Mapping[str, str], body: bytes | None) -> None:
        """Send the request and read the response's headers (blocking)."""
        self._conn.connect()
        if self._aborted.is_set():  # checked after the socket exists: abort() shuts it down otherwise
            raise ConnectionAbortedError("request aborted")
        if self._conn.sock is not None:
            self._conn.sock.settimeout(self._read_timeout)
        # Everything goes as given: no Accept-Encoding (blobs must arrive as stored) nor a second Host.
        self._conn.putrequest(self.method, self.url.raw_path_qs, skip_host=True, skip_accept_encoding=True)
        for key, value in {"Host": _host_header(self.url), **headers}.items():
            self._conn.putheader(key, value)
        self._conn.endheaders(body)
        self._resp = self._conn.getresponse()
        self._headers = multidict.CIMultiDictProxy(multidict.CIMultiDict(self._resp.getheaders()))

    @property
    def status(self) -> int:
        """The HTTP status."""
        assert self._resp is not None
        return self._resp.status

    @property
    def headers(self) -> multidict.CIMultiDictProxy[str]:
        """The response headers."""
        return self._headers

    @property
    def content(self) -> BlockingResponse:
        """The body, for :func:`read_body` (each read runs in a thread)."""
        return self

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes of the body (all with -1), read in a thread."""
        assert self._resp is not None
        return await run_blocking(self._resp.read, None if n < 0 else n)

    def readinto(self, buffer: memoryview) -> int:
        """Fill ``buffer`` with body bytes as far as they come (blocking); 0 at the end."""
        assert self._resp is not None
        return self._resp.readinto(buffer)

    def abort(self) -> None:
        """Make a blocked read fail at once (from any thread); the connection is closed by :meth:`release`."""
        self._aborted.set()
        sock = self._conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):  # not connected (any more)
                sock.shutdown(socket.SHUT_RDWR)

    def release(self) -> None:
        """Close the connection; a read still blocked on it (one given up on) fails at once."""
        self.abort()
        self._conn.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()


# Threads for the blocking registry steps (a request's headers, a blob's body), apart from the
# loop's default executor: a blob download holds its thread for the whole blob, and concurrent
# pulls would otherwise take every thread the daemon's other calls hop to. Bulk work: each has
# the long time slice (runtime/cpu.py), so the event loop preempts it when it wakes.
IO_THREADS = 32


@functools.cache
def _io_pool() -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(
        IO_THREADS, "registry-io", initializer=cpu.set_slice, initargs=(cpu.BULK_SLICE_NS,)
    )


def run_blocking(fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """``fn(*args)`` on a registry I/O thread (with the caller's context variables)."""
    call = functools.partial(contextvars.copy_context().run, fn, *args)
    return asyncio.get_running_loop().run_in_executor(_io_pool(), call)


def _close_after(sending: asyncio.Future[None], resp: BlockingResponse) -> None:
    if not sending.cancelled():
        sending.exception()  # an abandoned request's failure is nobody's news
    resp.release()


def _host_header(url: yarl.URL) -> str:
    host = url.raw_host or ""
    if ":" in host:
        host = f"[{host}]"
    return host if url.is_default_port() else f"{host}:{url.port}"


class Transport:
    """The shared HTTP side of resolvers, fetchers and pushers; close it when done."""

    def __init__(
        self,
        hosts: HostsConfig | HostsFn | None = None,
        credentials: CredentialsFn | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        limit: int = 64,
        limit_per_host: int = 8,
        connect_timeout: float = 30.0,
        progress_timeout: float = 300.0,
        max_retries: int = 2,
        retry_delay: float = 0.5,
        trust_env: bool = False,
    ) -> None:
        config = hosts if hosts is not None else HostsConfig()
        self._hosts_fn: HostsFn = config.hosts if isinstance(config, HostsConfig) else config
        self.connect_timeout = connect_timeout
        self.progress_timeout = progress_timeout
        self.max_retries = max_retries
        self.retry_delay = retry_delay
        self._headers = {"User-Agent": f"wharfd/{version.version()}", **(headers or {})}
        self._pool = (limit, limit_per_host, connect_timeout, trust_env)
        self._session: aiohttp.ClientSession | None = None
        self._plain: set[str] = set()
        self.authorizer = Authorizer(
            credentials, user_agent=self._headers["User-Agent"], timeout=progress_timeout
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The aiohttp session (made on first use, inside the running loop)."""
        if self._session is None:
            limit, per_host, connect_timeout, trust_env = self._pool
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=limit, limit_per_host=per_host, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout),
                # Blobs are content-addressed: the bytes must arrive exactly as stored.
                auto_decompress=False,
                read_bufsize=CHUNK_SIZE,
                trust_env=trust_env,
            )
        return self._session

    async def hosts(self, domain: str, capability: Capability) -> list[RegistryHost]:
        """The hosts serving ``domain`` that have ``capability``, in the order to try them."""
        found = await asyncio.to_thread(self._hosts_fn, domain)
        return [h for h in found if capability in h.capabilities]

    def url(self, host: RegistryHost, *parts: str) -> yarl.URL:
        """The URL of an API path on ``host`` (over HTTP once the host has fallen back to it)."""
        url = yarl.URL(host.url(*parts), encoded=True)
        return url.with_scheme("http") if host.host in self._plain else url

    def same_origin(self, host: RegistryHost, url: yarl.URL) -> bool:
        """Whether ``url`` is on ``host`` itself (and so may carry its credentials)."""
        name, port = split_port(host.host)
        default = 443 if host.scheme == "https" else 80
        return (url.host or "").lower() == name.strip("[]").lower() and url.port == (
            int(port) if port else default
        )

    async def request(
        self,
        host: RegistryHost,
        method: str,
        url: yarl.URL,
        *,
        what: str,
        scopes: Sequence[str],
        headers: Mapping[str, str] | None = None,
        body: Body = None,
        wait: float | None = -1.0,
    ) -> aiohttp.ClientResponse:
        """Send ``method url``; the caller owns the response (``async with``) and checks its status.

        ``wait`` bounds the time until the response headers arrive; -1 means the
        progress timeout, None no bound (uploads: their headers wait for the whole body).
        """
        wait = self.progress_timeout if wait == -1.0 else wait

        async def once(
            method: str, url: yarl.URL, headers: dict[str, str], body: Body, tls: ssl.SSLContext | bool
        ) -> aiohttp.ClientResponse:
            data = body() if callable(body) else body
            async with asyncio.timeout(wait):
                return await self.session.request(
                    method, url, headers=headers, data=data, ssl=tls, allow_redirects=False
                )

        return await self._request(
            host, method, url, what=what, scopes=scopes, headers=headers, body=body, wait=wait, once=once
        )

    async def request_blocking(
        self,
        host: RegistryHost,
        method: str,
        url: yarl.URL,
        *,
        what: str,
        scopes: Sequence[str],
        headers: Mapping[str, str] | None = None,
    ) -> BlockingResponse:
        """As :meth:`request` (without a body), but each hop is sent from a thread on a connection of its own.

        Read the body with :meth:`BlockingResponse.readinto` from a thread; each
        blocking call gives up after the progress timeout. Proxies from the
        environment (``trust_env``) are not used on this path.
        """
        return await self._request(
            host,
            method,
            url,
            what=what,
            scopes=scopes,
            headers=headers,
            body=None,
            wait=self.progress_timeout,
            once=self._send_blocking,
        )

    async def _request(
        self,
        host: RegistryHost,
        method: str,
        url: yarl.URL,
        *,
        what: str,
        scopes: Sequence[str],
        headers: Mapping[str, str] | None,
        body: Body,
        wait: float | None,
        once: Send[R],
    ) -> R:
        """The steps around each hop: headers and auth, 401 challenges, redirects, HEAD refusals, retries."""
        unauthorized = redirects = retries = 0
        while True:
            sent = await self._headers_for(host, url, scopes, headers)
            resp = await self._send(host, method, url, sent, body, what=what, wait=wait, once=once)
            if resp.status in _REDIRECTS and "Location" in resp.headers and redirects < MAX_REDIRECTS:
                resp.release()
                url, redirects = url.join(yarl.URL(resp.headers["Location"], encoded=True)), redirects + 1
                if resp.status == 303:
                    method, body = "GET", None
                continue
            if resp.status == 401 and self.same_origin(host, url):
                challenges = parse_challenges(resp.headers.getall("WWW-Authenticate", []))
                resp.release()
                wanted = await self.authorizer.unauthorized(
                    host.host, challenges, what=what, retried=unauthorized > 0
                )
                # The registry said which scopes this request needs: ask for those too.
                scopes = sorted({*scopes, *wanted})
                unauthorized += 1
                continue
            if resp.status == 405 and method == "HEAD" and "/manifests/" in url.path:
                resp.release()  # registries without HEAD on manifests
                method = "GET"
                continue
            retryable = _RETRYABLE if method in ("GET", "HEAD") else _NOT_PROCESSED
            if resp.status in retryable and retries < self.max_retries:
                delay = _retry_after(resp, self.retry_delay * 2**retries)
                resp.release()
                retries += 1
                await asyncio.sleep(delay)
                continue
            return resp

    async def _headers_for(
        self, host: RegistryHost, url: yarl.URL, scopes: Sequence[str], extra: Mapping[str, str] | None
    ) -> dict[str, str]:
        sent = dict(self._headers)
        configured: dict[str, list[str]] = {}
        for key, value in host.headers:
            configured.setdefault(key, []).append(value)
        sent.update({key: ", ".join(values) for key, values in configured.items()})
        sent.update(extra or {})
        if self.same_origin(host, url):
            auth = await self.authorizer.header(self.session, host.host, scopes, host.ssl_context())
            if auth:
                sent["Authorization"] = auth
        return sent

    async def _send(
        self,
        host: RegistryHost,
        method: str,
        url: yarl.URL,
        headers: dict[str, str],
        body: Body,
        *,
        what: str,
        wait: float | None,
        once: Send[R],
    ) -> R:
        """One hop through ``once`` (pooled or blocking), whatever the status: the fall-back to HTTP, typed failures.

        Either way a TLS failure is one of the ssl module's errors, or an
        aiohttp error wrapping one (see :func:`_tls_failure`).
        """
        try:
            try:
                return await once(method, url, headers, body, host.ssl_context())
            except ssl.SSLError as exc:
                if not (host.http_fallback and url.scheme == "https" and _not_tls(exc)):
                    raise
            # The port answered the handshake in plain HTTP: remember that for this host, as containerd does.
            self._plain.add(host.host)
            return await once(method, url.with_scheme("http"), headers, body, True)
        except TimeoutError as exc:
            bound = self.connect_timeout if wait is None else wait  # unbounded but for the connect
            raise errors.DeadlineExceeded(f"{what}: {url.origin()} did not answer within {bound:g}s") from exc
        except (aiohttp.ClientError, http.client.HTTPException, OSError) as exc:
            tls = _tls_failure(exc)
            if isinstance(tls, ssl.SSLCertVerificationError):
                raise errors.Unavailable(
                    f"{what}: TLS certificate of {url.origin()} not trusted: {tls}"
                ) from exc
            if tls is not None:
                # For an http:// host with TLS settings, say why plain HTTP was not tried.
                hint = "; the port speaks TLS, so no fall-back to plain HTTP" if host.http_fallback else ""
                raise errors.Unavailable(f"{what}: TLS with {url.origin()} failed: {tls}{hint}") from exc
            raise errors.Unavailable(f"{what}: {method} {url.origin()}: {exc}") from exc

    async def _send_blocking(
        self, method: str, url: yarl.URL, headers: dict[str, str], body: Body, tls: ssl.SSLContext | bool
    ) -> BlockingResponse:
        """Send on a connection of its own from a registry I/O thread; answer once the headers are in."""
        assert body is None
        # The connect is bounded as the pooled client's is; each step after it by the progress timeout.
        host, port, timeout = url.raw_host or "", url.port, self.connect_timeout
        if url.scheme == "https":
            context = tls if isinstance(tls, ssl.SSLContext) else await asyncio.to_thread(_default_tls)
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, port, timeout=timeout, context=context
            )
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        resp = BlockingResponse(method, url, conn, self.progress_timeout)
        sending = run_blocking(resp.send, headers, None)
        try:
            await asyncio.shield(sending)
        except asyncio.CancelledError:
            # The thread gives up at its next step (a connect in progress still runs its course);
            # the connection is closed once it has.
            resp.abort()
            sending.add_done_callback(lambda f: _close_after(f, resp))
            raise
        except BaseException:
            resp.release()
            raise
        return resp


# What OpenSSL reports when the first bytes a TLS client reads are no TLS record, as a plain-HTTP
# server's reply ("HTTP/1.1 400 ...") is not: WRONG_VERSION_NUMBER; from 3.2 on, RECORD_LAYER_FAILURE
# stacked on it, which a Python built against an older OpenSSL names by its text alone.
_NOT_TLS_REASONS = frozenset({"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE"})
_NOT_TLS_TEXTS = ("wrong version number", "record layer failure")


def _tls_failure(exc: BaseException) -> ssl.SSLError | None:
    """The ssl module's error behind ``exc``, if a TLS failure is what it is.

    aiohttp wraps it: a failed handshake in a connector error (``os_error``),
    a TLS 1.3 alert read with the response (a refused client certificate) in
    a ``ClientOSError`` raised from it.
    """
    if isinstance(exc, aiohttp.ClientConnectorError):
        exc = exc.os_error
    elif not isinstance(exc, ssl.SSLError) and isinstance(exc.__cause__, ssl.SSLError):
        exc = exc.__cause__
    return exc if isinstance(exc, ssl.SSLError) else None


def _not_tls(exc: BaseException) -> bool:
    """Whether a handshake failed because the peer answered with something other than TLS.

    This is containerd's condition for the fall-back to HTTP (its TLS stack
    sees "HTTP/" where a record header belongs); a server that speaks TLS but
    refuses the handshake (an alert, a required client certificate, no common
    protocol version), or closes the connection, is no reason to try plain HTTP.
    """
    tls = _tls_failure(exc)
    if tls is None or isinstance(tls, ssl.SSLCertVerificationError):
        return False
    if tls.reason:
        return tls.reason in _NOT_TLS_REASONS
    return any(text in str(tls) for text in _NOT_TLS_TEXTS)


async def read_body(resp: Response, limit: int, *, wait: float | None = None) -> bytes:
    """The body, but no more than ``limit + 1`` bytes (so the caller can tell it is too long).

    ``wait`` bounds each wait for more bytes; on expiry TimeoutError propagates.
    """
    buffer = bytearray()
    while len(buffer) <= limit:
        async with asyncio.timeout(wait):
            chunk = await resp.content.read(limit + 1 - len(buffer))
        if not chunk:
            break
        buffer += chunk
    return bytes(buffer)


def _retry_after(resp: Response, default: float) -> float:
    try:
        return min(float(resp.headers.get("Retry-After", default)), _MAX_RETRY_DELAY)
    except ValueError:
        return default  # an HTTP date: not worth parsing for a short back-off


async def error_for(resp: Response, what: str) -> errors.WharfError:
    """The typed error for a failed response, with the registry's own reason when it gave one."""
    detail = await _detail(resp)
    suffix = f": {detail}" if detail else ""
    status = resp.status
    if status == 401:
        return errors.PermissionDenied(f"{what}: unauthorized (HTTP 401){suffix}")
    if status == 403:
        return errors.PermissionDenied(f"{what}: access denied (HTTP 403){suffix}")
    if status == 404:
        return errors.NotFound(f"{what}: not found{suffix}")
    if status == 409:
        return errors.Conflict(f"{what}: conflict (HTTP 409){suffix}")
    if status == 416:
        return errors.InvalidArgument(f"{what}: requested range not satisfiable{suffix}")
    if status == 429:
        return errors.Unavailable(f"{what}: too many requests (HTTP 429){suffix}")
    if status >= 500:
        return errors.Unavailable(f"{what}: registry error (HTTP {status}){suffix}")
    if 400 <= status < 500:
        return errors.InvalidArgument(f"{what}: rejected by the registry (HTTP {status}){suffix}")
    return errors.WharfError(f"{what}: unexpected HTTP status {status}{suffix}")


async def _detail(resp: Response) -> str:
    try:
        raw = await read_body(resp, _ERROR_BODY_LIMIT, wait=5)
    except (TimeoutError, aiohttp.ClientError, http.client.HTTPException, OSError):
        return ""  # an error reply's body is only detail: the status says what happened
    finally:
        resp.release()
    try:
        body = json.loads(raw)
    except ValueError:
        return raw[:200].decode(errors="replace").strip()
    items = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(items, list):
        return ""
    return "; ".join(
        ": ".join(str(e[k]) for k in ("code", "message") if isinstance(e, dict) and e.get(k)) for e in items
    )
