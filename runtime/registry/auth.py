"""Registry authentication: ``WWW-Authenticate`` challenges, credentials, Basic and Bearer.

The flow follows the distribution token spec as containerd runs it:

1. A request goes out without credentials; a 401 carries challenges.
2. ``Basic``: the credentials for that host are sent with every later request.
3. ``Bearer``: a token for the request's scopes (``repository:<path>:pull[,push]``)
   is fetched from the challenge's realm and cached until it expires:

   * with a secret: ``POST`` an OAuth2 form (``grant_type=password`` with a
     username, ``grant_type=refresh_token`` with an identity token); registries
     that answer 400/401/404 (or 405 with a username) get the ``GET`` form with
     Basic credentials instead;
   * anonymous: ``GET realm?service=...&scope=...``;
   * a CRI ``registry_token`` is used as the bearer token directly.

4. A second 401 for the same request is final: PermissionDenied naming the
   server's reason.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import inspect
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from wharfd.runtime import errors

if TYPE_CHECKING:
    import aiohttp

# Token responses without ``expires_in`` are good for 60 s (distribution's token spec).
DEFAULT_TOKEN_LIFETIME = 60
CLIENT_ID = "wharfd"
_TOKEN_LIMIT = 1024 * 1024
_DOCKER_HUB = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge; ``scheme`` is lower-cased, parameter names too."""

    scheme: str
    params: Mapping[str, str]


@dataclass(frozen=True)
class Credentials:
    """What a caller knows for a host. An empty ``username`` with a ``secret`` is an identity token."""

    username: str = ""
    secret: str = ""
    registry_token: str = ""


CredentialsFn = Callable[[str], "Credentials | Awaitable[Credentials | None] | None"]


@dataclass(frozen=True)
class AuthConfig:
    """The CRI ``AuthConfig`` fields, as kubelet sends them with PullImage."""

    username: str = ""
    password: str = ""
    auth: str = ""
    server_address: str = ""
    identity_token: str = ""
    registry_token: str = ""


# Tokens go into a header verbatim: refuse blanks and control characters.
_TOKEN_TEXT = re.compile(r"[\x21-\x7e]+")
_PARAM = re.compile(r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]*)')


def parse_challenges(values: Iterable[str]) -> list[Challenge]:
    """Parse ``WWW-Authenticate`` header values (several challenges may share one value)."""
    out: list[Challenge] = []
    for value in values:
        pos = 0
        while pos < len(value):
            scheme_match = re.compile(r"[\s,]*([A-Za-z0-9!#$%&'*+.^_`|~-]+)").match(value, pos)
            if not scheme_match:
                break
            scheme, pos = scheme_match.group(1).lower(), scheme_match.end()
            params: dict[str, str] = {}
            while True:
                param = _PARAM.match(value, pos)
                if not param:
                    break
                raw = param.group(2)
                params[param.group(1).lower()] = (
                    re.sub(r"\\(.)", r"\1", raw[1:-1]) if raw.startswith('"') else raw
                )
                pos = param.end()
                comma = re.compile(r"\s*,").match(value, pos)
                if not comma:
                    break
                pos = comma.end()
            out.append(Challenge(scheme, params))
    return out


def from_auth_config(cfg: AuthConfig, host: str) -> Credentials | None:
    """Credentials for ``host`` from a CRI AuthConfig (None when it is for another server)."""
    if cfg.server_address and not _same_server(cfg.server_address, host):
        return None
    if cfg.registry_token:
        return Credentials(registry_token=cfg.registry_token)
    if cfg.username:
        return Credentials(cfg.username, cfg.password)
    if cfg.identity_token:
        return Credentials(secret=cfg.identity_token)
    if cfg.auth:
        try:
            decoded = base64.b64decode(cfg.auth, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise errors.InvalidArgument(f"auth config for {host}: auth: not base64 user:password") from exc
        user, sep, password = decoded.partition(":")
        if not sep:
            raise errors.InvalidArgument(f"auth config for {host}: auth: decoded value has no ':'")
        return Credentials(user, password.strip("\x00"))
    return None


def _same_server(address: str, host: str) -> bool:
    netloc = urlsplit(address if "://" in address else "https://" + address).netloc
    return netloc == host or (netloc in _DOCKER_HUB and host in _DOCKER_HUB)


def from_user_flag(value: str) -> Credentials:
    """``ctr``'s ``--user user[:password]`` (a missing password is left empty for the CLI to ask)."""
    user, _, password = value.partition(":")
    if not user:
        raise errors.InvalidArgument(f'--user "{value}": expected user[:password]')
    return Credentials(user, password)


def static(creds: Credentials | None, hosts: Iterable[str] | None = None) -> CredentialsFn:
    """A credentials callback that offers ``creds`` to ``hosts`` (or to every host)."""
    allowed = None if hosts is None else frozenset(hosts)

    def lookup(host: str) -> Credentials | None:
        return creds if allowed is None or host in allowed else None

    return lookup


@dataclass
class _HostAuth:
    scheme: str
    challenge: Challenge
    creds: Credentials | None


class Authorizer:
    """Per-client authentication state: one handler per registry host, tokens cached per scope set."""

    def __init__(
        self, credentials: CredentialsFn | None = None, *, user_agent: str = CLIENT_ID, timeout: float = 60.0
    ) -> None:
        self._credentials = credentials
        self._user_agent = user_agent
        self._timeout = timeout
        self._hosts: dict[str, _HostAuth] = {}
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}
        self._inflight: dict[tuple[str, str], asyncio.Future[str]] = {}

    async def header(
        self, session: aiohttp.ClientSession, host: str, scopes: Sequence[str], ssl: Any = True
    ) -> str | None:
        """The ``Authorization`` value for a request to ``host`` needing ``scopes``, if auth is known."""
        state = self._hosts.get(host)
        if state is None:
            return None
        if state.scheme == "basic":
            if state.creds is None:
                return None
            return _basic(state.creds)
        if state.creds is not None and state.creds.registry_token:
            return "Bearer " + state.creds.registry_token
        return "Bearer " + await self._token(session, host, state, scopes, ssl)

    async def unauthorized(
        self, host: str, challenges: Sequence[Challenge], *, what: str, retried: bool
    ) -> list[str]:
        """Learn from a 401 and return the scopes it names; PermissionDenied when retrying cannot help."""
        chosen = next((c for c in challenges if c.scheme in ("bearer", "basic")), None)
        if chosen is None:
            schemes = ", ".join(c.scheme for c in challenges) or "none"
            raise errors.PermissionDenied(
                f"{what}: unauthorized; unsupported authentication scheme ({schemes})"
            )
        reason = chosen.params.get("error_description") or chosen.params.get("error") or ""
        if retried:
            self.forget(host)
            detail = f": {reason}" if reason else ""
            raise errors.PermissionDenied(
                f"{what}: unauthorized{detail} (the repository may not exist or may need credentials)"
            )
        creds = await self._lookup(host)
        if chosen.scheme == "basic" and (creds is None or not creds.username or not creds.secret):
            raise errors.PermissionDenied(f"{what}: the registry requires a username and password")
        self.forget(host)
        self._hosts[host] = _HostAuth(chosen.scheme, chosen, creds)
        return chosen.params.get("scope", "").split()

    def forget(self, host: str) -> None:
        """Drop what is known about ``host`` (its handler and tokens)."""
        self._hosts.pop(host, None)
        for key in [k for k in self._tokens if k[0] == host]:
            del self._tokens[key]

    async def _lookup(self, host: str) -> Credentials | None:
        if self._credentials is None:
            return None
        found = self._credentials(host)
        if inspect.isawaitable(found):
            found = await found
        return found

    async def _token(
        self, session: aiohttp.ClientSession, host: str, state: _HostAuth, scopes: Sequence[str], ssl: Any
    ) -> str:
        # Only this request's scopes: a handler lives on across repositories.
        scope_set = " ".join(sorted(set(scopes)))
        key = (host, scope_set)
        cached = self._tokens.get(key)
        if cached and cached[1] > time.monotonic():
            return cached[0]
        # One fetch per scope set: concurrent layer downloads share it.
        if key in self._inflight:
            return await asyncio.shield(self._inflight[key])
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            token, lifetime = await self._fetch_token(session, state, scope_set.split(), ssl)
            life = lifetime if lifetime > 0 else DEFAULT_TOKEN_LIFETIME
            self._tokens[key] = (token, time.monotonic() + max(life - 5, 1))
            future.set_result(token)
            return token
        except asyncio.CancelledError:
            # The fetching call went away; its waiters get a retryable error, not a cancellation.
            future.set_exception(errors.Unavailable(f"token for {host}: the fetch was cancelled"))
            future.exception()  # mark retrieved: there may be no waiters
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()
            raise
        finally:
            del self._inflight[key]

    async def _fetch_token(
        self, session: aiohttp.ClientSession, state: _HostAuth, scopes: list[str], ssl: Any
    ) -> tuple[str, int]:
        params = state.challenge.params
        realm = params.get("realm", "")
        if urlsplit(realm).scheme not in ("http", "https"):
            raise errors.PermissionDenied(f'token challenge has no usable realm ("{realm}")')
        creds = state.creds
        service = params.get("service", "")
        if creds is None or not creds.secret:
            return await self._get_token(session, realm, service=service, scopes=scopes, creds=None, ssl=ssl)
        form = {"service": service, "client_id": CLIENT_ID, "scope": " ".join(scopes)}
        if creds.username:
            form |= {"grant_type": "password", "username": creds.username, "password": creds.secret}
        else:
            form |= {"grant_type": "refresh_token", "refresh_token": creds.secret}
        status, body = await self._call(session, "POST", realm, ssl=ssl, data=form)
        if status == 200:
            return _token_from(body, "access_token", realm)
        # Token servers without the OAuth2 POST form: use the GET form with Basic credentials.
        if status in (400, 401, 404) or (status == 405 and creds.username):
            return await self._get_token(session, realm, service=service, scopes=scopes, creds=creds, ssl=ssl)
        raise _token_error(realm, status, body)

    async def _get_token(
        self,
        session: aiohttp.ClientSession,
        realm: str,
        *,
        service: str,
        scopes: list[str],
        creds: Credentials | None,
        ssl: Any,
    ) -> tuple[str, int]:
        query = ([("service", service)] if service else []) + [("scope", s) for s in scopes if s]
        headers = {"Authorization": _basic(creds)} if creds else {}
        status, body = await self._call(session, "GET", realm, ssl=ssl, params=query, headers=headers)
        if status != 200:
            raise _token_error(realm, status, body)
        return _token_from(body, "token", realm)

    async def _call(
        self, session: aiohttp.ClientSession, method: str, url: str, **kw: Any
    ) -> tuple[int, Any]:
        # Imported here: the CRI and Transfer services use this module's credentials while idle,
        # and the HTTP client is loaded only once a session exists.
        import aiohttp

        try:
            async with asyncio.timeout(self._timeout):
                headers = {"User-Agent": self._user_agent, **kw.pop("headers", {})}
                async with session.request(method, url, headers=headers, allow_redirects=True, **kw) as resp:
                    raw = b""  # read() returns what is buffered: loop up to the limit
                    while len(raw) <= _TOKEN_LIMIT and (more := await resp.content.read(_TOKEN_LIMIT)):
                        raw += more
                    try:
                        return resp.status, json.loads(raw)
                    except ValueError:
                        return resp.status, raw[:200].decode(errors="replace")
        except TimeoutError as exc:
            raise errors.DeadlineExceeded(f"token server {url}: no answer in {self._timeout:g}s") from exc
        except aiohttp.ClientError as exc:
            raise errors.Unavailable(f"token server {url}: {exc}") from exc


def _basic(creds: Credentials) -> str:
    return "Basic " + base64.b64encode(f"{creds.username}:{creds.secret}".encode()).decode()


def _token_from(body: Any, preferred: str, realm: str) -> tuple[str, int]:
    if not isinstance(body, dict):
        raise errors.PermissionDenied(f"token server {realm}: answer is not a JSON object")
    token = body.get(preferred) or body.get("access_token") or body.get("token")
    if not isinstance(token, str) or not token or not _TOKEN_TEXT.fullmatch(token):
        raise errors.PermissionDenied(f"token server {realm}: answer holds no usable token")
    lifetime = body.get("expires_in")
    return token, lifetime if isinstance(lifetime, int) and not isinstance(lifetime, bool) else 0


def _token_error(realm: str, status: int, body: Any) -> errors.WharfError:
    detail = body.get("details") or body.get("error") if isinstance(body, dict) else body
    message = f"token server {realm}: HTTP {status}" + (f": {detail}" if detail else "")
    if status in (429,) or status >= 500:
        return errors.Unavailable(message)
    return errors.PermissionDenied(message)
