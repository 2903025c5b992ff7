"""Registry authentication: challenge parsing, credentials, Basic and Bearer flows.

Basic runs against the real docker-registry with an htpasswd file (bcrypt from
libcrypt); Bearer runs both against the real docker-registry configured for
token auth (our token server signs RS256 JWTs it trusts) and against small
aiohttp fakes for the cases a real registry will not stage on demand.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp import web

from tests.support.images import File, Image, build_image, build_layer, push_image
from tests.support.registry import RegistryServer, run_registry, serve_app
from tests.support.tokens import TokenServer, run_token_server
from wharfd.runtime import errors
from wharfd.runtime.registry import HostsConfig, Resolver, Transport, auth
from wharfd.runtime.registry.auth import AuthConfig, Challenge, Credentials, parse_challenges

IMAGE = build_image([build_layer([File("hello", b"hello\n")])])


def run(body: Callable[[Resolver], Awaitable[Any]], **options: Any) -> Any:
    async def main() -> Any:
        async with Transport(**options) as transport:
            return await body(Resolver(transport))

    return asyncio.run(main())


# -- parsing and credential helpers -------------------------------------------------------------


def test_parse_challenges() -> None:
    value = (
        'Bearer realm="https://auth.example.com/token",service="registry.example.com",'
        'scope="repository:a/b:pull,push"'
    )
    assert parse_challenges([value]) == [
        Challenge(
            "bearer",
            {
                "realm": "https://auth.example.com/token",
                "service": "registry.example.com",
                "scope": "repository:a/b:pull,push",
            },
        )
    ]
    assert parse_challenges(['Basic realm="x", Bearer realm="y" , error=invalid_token']) == [
        Challenge("basic", {"realm": "x"}),
        Challenge("bearer", {"realm": "y", "error": "invalid_token"}),
    ]
    assert parse_challenges(['BASIC Realm="a \\"q\\" b"']) == [Challenge("basic", {"realm": 'a "q" b'})]
    assert parse_challenges(["Negotiate", ""]) == [Challenge("negotiate", {})]


def test_credentials_from_cri_auth_config() -> None:
    assert auth.from_auth_config(AuthConfig(username="u", password="p"), "r.io") == Credentials("u", "p")
    encoded = base64.b64encode(b"user:pa:ss").decode()
    assert auth.from_auth_config(AuthConfig(auth=encoded), "r.io") == Credentials("user", "pa:ss")
    identity = AuthConfig(identity_token="refresh")
    assert auth.from_auth_config(identity, "r.io") == Credentials(secret="refresh")
    token = AuthConfig(registry_token="tok")
    assert auth.from_auth_config(token, "r.io") == Credentials(registry_token="tok")
    assert auth.from_auth_config(AuthConfig(), "r.io") is None
    other = AuthConfig(username="u", password="p", server_address="https://other.io")
    assert auth.from_auth_config(other, "r.io") is None
    hub = AuthConfig(username="u", password="p", server_address="https://index.docker.io/v1/")
    assert auth.from_auth_config(hub, "registry-1.docker.io") == Credentials("u", "p")
    assert auth.from_auth_config(AuthConfig(username="u", server_address="r.io:5000"), "r.io:5000")
    with pytest.raises(errors.InvalidArgument, match=r"auth config for r\.io: auth"):
        auth.from_auth_config(AuthConfig(auth="!!"), "r.io")
    with pytest.raises(errors.InvalidArgument, match="no ':'"):
        auth.from_auth_config(AuthConfig(auth=base64.b64encode(b"nocolon").decode()), "r.io")


def test_user_flag_and_static() -> None:
    assert auth.from_user_flag("me:secret") == Credentials("me", "secret")
    assert auth.from_user_flag("me") == Credentials("me", "")
    with pytest.raises(errors.InvalidArgument, match="user"):
        auth.from_user_flag(":pw")
    lookup = auth.static(Credentials("a", "b"), hosts=["one"])
    assert lookup("one") == Credentials("a", "b") and lookup("two") is None


# -- Basic against the real registry (htpasswd) --------------------------------------------------


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    with run_registry(tmp_path_factory.mktemp("basic"), htpasswd={"alice": "s3cret"}) as server:
        yield server


def test_basic_auth_with_credentials(basic_registry: RegistryServer) -> None:
    ref = basic_registry.ref("team/app:1")

    async def body(resolver: Resolver) -> None:
        pushed = await push_image(resolver.pusher(ref), IMAGE, tag="1")
        assert (await resolver.resolve(ref))[1] == pushed

    run(body, credentials=auth.static(Credentials("alice", "s3cret")))


def test_basic_auth_missing_or_wrong(basic_registry: RegistryServer) -> None:
    ref = basic_registry.ref("team/app:1")

    async def body(resolver: Resolver) -> None:
        await resolver.resolve(ref)

    with pytest.raises(errors.PermissionDenied, match="requires a username and password"):
        run(body)
    with pytest.raises(errors.PermissionDenied, match=f'manifest "{ref}": unauthorized'):
        run(body, credentials=auth.static(Credentials("alice", "wrong")))


# -- Bearer against the real registry (token auth with our token server) -------------------------


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    with run_token_server(
        tmp_path_factory.mktemp("tokens"), users={"bob": "hunter2"}, refresh_tokens={"refresh-bob": "bob"}
    ) as tokens:
        yield tokens


@pytest.fixture(scope="module")
def token_registry(
    tmp_path_factory: pytest.TempPathFactory, token_server: TokenServer
) -> Iterator[RegistryServer]:
    with run_registry(tmp_path_factory.mktemp("token"), token=token_server) as server:
        yield server


@pytest.fixture
def tokens(token_server: TokenServer) -> Iterator[TokenServer]:
    token_server.requests.clear()
    token_server.support_post = True
    yield token_server
    token_server.support_post = True


def _push_and_resolve(ref: str, image: Image) -> Callable[[Resolver], Awaitable[None]]:
    async def body(resolver: Resolver) -> None:
        pushed = await push_image(resolver.pusher(ref), image, tag="1")
        assert (await resolver.resolve(ref))[1] == pushed

    return body


def test_bearer_password_grant(token_registry: RegistryServer, tokens: TokenServer) -> None:
    ref = token_registry.ref("bob/app:1")
    run(_push_and_resolve(ref, IMAGE), credentials=auth.static(Credentials("bob", "hunter2")))
    first = tokens.requests[0]
    assert first["method"] == "POST"
    assert first["form"]["grant_type"] == "password"  # type: ignore[index]
    assert "repository:bob/app:pull,push" in first["scopes"]  # type: ignore[operator]
    # One token per scope set, reused for every request of the push.
    assert len({" ".join(r["scopes"]) for r in tokens.requests}) == len(tokens.requests)  # type: ignore[arg-type]


def test_bearer_identity_token(token_registry: RegistryServer, tokens: TokenServer) -> None:
    ref = token_registry.ref("bob/refresh:1")
    run(_push_and_resolve(ref, IMAGE), credentials=auth.static(Credentials(secret="refresh-bob")))
    assert tokens.requests[0]["form"]["grant_type"] == "refresh_token"  # type: ignore[index]


def test_bearer_falls_back_to_get_when_post_is_unsupported(
    token_registry: RegistryServer, tokens: TokenServer
) -> None:
    tokens.support_post = False
    ref = token_registry.ref("bob/get:1")
    run(_push_and_resolve(ref, IMAGE), credentials=auth.static(Credentials("bob", "hunter2")))
    assert [r["method"] for r in tokens.requests[:2]] == ["POST", "GET"]
    assert tokens.requests[1]["basic"] is True


def test_bearer_anonymous_pull_but_not_push(token_registry: RegistryServer, tokens: TokenServer) -> None:
    ref = token_registry.ref("bob/public:1")
    run(_push_and_resolve(ref, IMAGE), credentials=auth.static(Credentials("bob", "hunter2")))
    tokens.requests.clear()

    async def pull(resolver: Resolver) -> None:
        _, desc = await resolver.resolve(ref)
        await resolver.fetcher(ref).read(desc)

    run(pull)
    assert tokens.requests and all(r["method"] == "GET" and not r["basic"] for r in tokens.requests)

    async def push(resolver: Resolver) -> None:
        await resolver.pusher(token_registry.ref("bob/other:1")).push_blob(IMAGE.config_desc, IMAGE.config)

    with pytest.raises(errors.PermissionDenied, match="unauthorized"):
        run(push)


def test_bearer_wrong_password(token_registry: RegistryServer, tokens: TokenServer) -> None:
    async def body(resolver: Resolver) -> None:
        await resolver.resolve(token_registry.ref("bob/app:1"))

    with pytest.raises(errors.PermissionDenied, match=r"token server .*HTTP 401: incorrect username"):
        run(body, credentials=auth.static(Credentials("bob", "nope")))


# -- Bearer against aiohttp fakes ---------------------------------------------------------------


class FakeAuth:
    """A fake registry with its own token endpoint, counting what it hands out."""

    def __init__(self, *, reject_always: bool = False) -> None:
        self.issued = 0
        self.revoked: set[str] = set()
        self.reject_always = reject_always
        self.seen_auth: list[str] = []
        self.host = ""

    def challenge(self, error: str = "") -> web.Response:
        params = f'realm="http://{self.host}/token",service="fake",scope="repository:app:pull"'
        if error:
            params += f',error="{error}",error_description="the token is no good"'
        return web.Response(status=401, headers={"WWW-Authenticate": f"Bearer {params}"})

    async def token(self, request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.05)  # long enough for concurrent requests to pile up
        self.issued += 1
        return web.json_response({"token": f"tok{self.issued}", "expires_in": 300})

    async def blob(self, request: web.Request) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        self.seen_auth.append(header)
        if not header.startswith("Bearer "):
            return self.challenge()
        if self.reject_always or header.removeprefix("Bearer ") in self.revoked:
            return self.challenge("invalid_token")
        return web.Response(body=IMAGE.config)

    async def run(self, body: Callable[[Resolver, str], Awaitable[Any]], **options: Any) -> Any:
        app = web.Application()
        app.router.add_get("/token", self.token)
        app.router.add_get("/v2/app/blobs/{digest}", self.blob)
        async with serve_app(app) as host:
            self.host = host
            async with Transport(hosts=HostsConfig(plain_http=True), **options) as transport:
                return await body(Resolver(transport), host)


async def _read_config(resolver: Resolver, host: str) -> bytes:
    return await resolver.fetcher(f"{host}/app:1").read(IMAGE.config_desc)


def test_fake_bearer_token_is_shared_by_concurrent_requests() -> None:
    fake = FakeAuth()

    async def body(resolver: Resolver, host: str) -> None:
        results = await asyncio.gather(*[_read_config(resolver, host) for _ in range(5)])
        assert results == [IMAGE.config] * 5

    asyncio.run(fake.run(body))
    assert fake.issued == 1


def test_fake_bearer_refetches_a_revoked_token() -> None:
    fake = FakeAuth()

    async def body(resolver: Resolver, host: str) -> None:
        assert await _read_config(resolver, host) == IMAGE.config
        fake.revoked.add("tok1")  # e.g. expired early on the server's side
        assert await _read_config(resolver, host) == IMAGE.config

    asyncio.run(fake.run(body))
    assert fake.issued == 2
    assert fake.seen_auth == ["", "Bearer tok1", "Bearer tok1", "Bearer tok2"]


def test_fake_bearer_gives_up_with_the_servers_reason() -> None:
    fake = FakeAuth(reject_always=True)
    with pytest.raises(errors.PermissionDenied, match="unauthorized: the token is no good"):
        asyncio.run(fake.run(_read_config))


def test_fake_registry_token_is_used_as_is() -> None:
    fake = FakeAuth()

    async def creds(host: str) -> Credentials:  # callbacks may be async
        return Credentials(registry_token="tok7")

    assert asyncio.run(fake.run(_read_config, credentials=creds)) == IMAGE.config
    assert fake.issued == 0
    assert fake.seen_auth == ["", "Bearer tok7"]


def test_unsupported_scheme_is_permission_denied() -> None:
    async def negotiate(request: web.Request) -> web.StreamResponse:
        return web.Response(status=401, headers={"WWW-Authenticate": "Negotiate"})

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/v2/app/blobs/{digest}", negotiate)
        async with serve_app(app) as host, Transport(hosts=HostsConfig(plain_http=True)) as transport:
            await _read_config(Resolver(transport), host)

    with pytest.raises(errors.PermissionDenied, match=r"unsupported authentication scheme \(negotiate\)"):
        asyncio.run(main())
