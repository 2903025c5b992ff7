"""HTTP plumbing of the registry client: one aiohttp session, auth retries, redirects, errors.

:class:`Transport` owns the connection pool and the :class:`~wharfd.runtime.registry.auth.Authorizer`
and sends one logical request at a time through :meth:`Transport.request`, which

* adds the host's configured headers and the ``Authorization`` the authorizer
  holds for that host (never to another origin: a redirect to blob storage
  gets no credentials);
* answers a 401 by learning the challenge and retrying once;
* follows redirects itself (at most 10), so it decides what is forwarded;
* retries 408/429/5xx a few times, honouring ``Retry-After``;
* falls back from HTTPS to HTTP for hosts configured that way (localhost);
* turns transport failures into typed errors: ``Unavailable`` (connection
  refused or reset), ``DeadlineExceeded`` (no answer in time).

:func:`error_for` maps a failed response to the typed error naming the object.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import aiohttp
import yarl

from wharfd.runtime import errors, version
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
        unauthorized = redirects = retries = 0
        while True:
            sent = await self._headers_for(host, url, scopes, headers)
            resp = await self._send(host, method, url, headers=sent, body=body, wait=wait, what=what)
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
        *,
        headers: dict[str, str],
        body: Body,
        wait: float | None,
        what: str,
    ) -> aiohttp.ClientResponse:
        try:
            try:
                return await self._send_once(
                    method, url, headers=headers, body=body, wait=wait, ssl=host.ssl_context()
                )
            except aiohttp.ClientConnectorCertificateError:
                raise
            except aiohttp.ClientConnectorSSLError:
                if not (host.http_fallback and url.scheme == "https"):
                    raise
                # The port speaks plain HTTP: remember it for this host, as containerd does.
                self._plain.add(host.host)
                return await self._send_once(
                    method, url.with_scheme("http"), headers=headers, body=body, wait=wait, ssl=True
                )
        except TimeoutError as exc:
            raise errors.DeadlineExceeded(f"{what}: {url.origin()} did not answer within {wait:g}s") from exc
        except aiohttp.ClientConnectorCertificateError as exc:
            raise errors.Unavailable(f"{what}: TLS certificate of {url.origin()} not trusted: {exc}") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise errors.Unavailable(f"{what}: {method} {url.origin()}: {exc}") from exc

    async def _send_once(
        self, method: str, url: yarl.URL, *, headers: dict[str, str], body: Body, wait: float | None, ssl: Any
    ) -> aiohttp.ClientResponse:
        data = body() if callable(body) else body
        async with asyncio.timeout(wait):
            return await self.session.request(
                method, url, headers=headers, data=data, ssl=ssl, allow_redirects=False
            )


async def read_body(resp: aiohttp.ClientResponse, limit: int, *, wait: float | None = None) -> bytes:
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


def _retry_after(resp: aiohttp.ClientResponse, default: float) -> float:
    try:
        return min(float(resp.headers.get("Retry-After", default)), _MAX_RETRY_DELAY)
    except ValueError:
        return default  # an HTTP date: not worth parsing for a short back-off


async def error_for(resp: aiohttp.ClientResponse, what: str) -> errors.WharfError:
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


async def _detail(resp: aiohttp.ClientResponse) -> str:
    try:
        raw = await read_body(resp, _ERROR_BODY_LIMIT, wait=5)
    except (TimeoutError, aiohttp.ClientError):
        return ""
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
