"""The HTTPS-to-HTTP fall-back of an ``http://`` host with TLS settings, on both ways of sending.

It happens only when the port answers the TLS handshake in plain HTTP; a
server that speaks TLS but refuses the handshake is reported as a TLS
failure naming the endpoint, and is not asked again in plain HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.support.registry import Certificates, make_certificates, serve_app
from wharfd.runtime import errors
from wharfd.runtime.registry import Transport
from wharfd.runtime.registry.hosts import RegistryHost

# A TLS record: a fatal handshake_failure alert, what a server with no acceptable cipher sends.
HANDSHAKE_FAILURE_ALERT = bytes([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28])
TLS_HANDSHAKE = b"\x16"  # the first byte of a ClientHello record
# One connection's server side, blocking, in a thread of its own (the ssl module's blocking
# sockets send their alert before the connection closes; asyncio's TLS transport may not).
Peer = Callable[[socket.socket], None]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("pki"), "wharfd-test-fallback-ca")


class Server:
    """A TCP server on 127.0.0.1 running ``peer`` for each connection; counts those that began in plain HTTP."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.connections = 0
        self.plain = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):  # ssl.SSLError included: the handshake it refused
            if conn.recv(1, socket.MSG_PEEK) not in (b"", TLS_HANDSHAKE):
                self.plain += 1
            self.peer(conn)

    def close(self) -> None:
        self.listener.close()


@contextlib.contextmanager
def serving(peer: Peer) -> Iterator[Server]:
    server = Server(peer)
    try:
        yield server
    finally:
        server.close()


def alert_peer(conn: socket.socket) -> None:
    conn.recv(65536)  # the ClientHello
    conn.sendall(HANDSHAKE_FAILURE_ALERT)


def closing_peer(conn: socket.socket) -> None:
    conn.recv(65536)  # the ClientHello, then the connection closes without a word


def tls_peer(
    certs: Certificates, *, client_certificate: bool = False, maximum: ssl.TLSVersion | None = None
) -> Peer:
    """A real TLS server (the ssl module's) that answers 200 to whatever it is asked."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs.server_cert, certs.server_key)
    if client_certificate:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(certs.ca)
    if maximum is not None:
        with warnings.catch_warnings():  # TLS 1.1 is deprecated: this server is meant to be refused
            warnings.simplefilter("ignore", DeprecationWarning)
            context.maximum_version = maximum

    def peer(conn: socket.socket) -> None:
        with context.wrap_socket(conn, server_side=True) as tls:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = tls.recv(65536)
                if not chunk:
                    return
                request += chunk
            tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    return peer


def fallback_host(host: str) -> RegistryHost:
    """What hosts.toml's ``server = "http://host:port"`` with ``skip_verify = true`` becomes."""
    return RegistryHost(scheme="https", host=host, skip_verify=True, http_fallback=True)


async def get(transport: Transport, host: RegistryHost, how: str) -> int:
    """GET /v2/ on ``host``, pooled or blocking; the status."""
    url = transport.url(host, "")
    if how == "pooled":
        async with await transport.request(host, "GET", url, what="ping", scopes=[]) as resp:
            return resp.status
    async with await transport.request_blocking(host, "GET", url, what="ping", scopes=[]) as blocking:
        return blocking.status


@pytest.mark.parametrize("how", ["pooled", "blocking"])
def test_plain_http_port_falls_back(how: str) -> None:
    seen: list[str] = []

    async def ping(request: web.Request) -> web.Response:
        seen.append(request.url.scheme)
        return web.Response(text="{}")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/v2/", ping)
        async with serve_app(app) as address, Transport() as transport:
            host = fallback_host(address)
            assert await get(transport, host, how) == 200
            assert address in transport._plain
            assert str(transport.url(host, "")) == f"http://{address}/v2/"
            assert await get(transport, host, how) == 200  # straight to plain HTTP this time
        assert seen == ["http", "http"]

    asyncio.run(main())


def test_debian_registry_without_tls_falls_back(tmp_path: Path) -> None:
    from tests.support.registry import run_registry

    async def main(address: str) -> None:
        async with Transport() as transport:
            host = fallback_host(address)
            assert await get(transport, host, "blocking") == 200
            assert address in transport._plain

    with run_registry(tmp_path / "wharfd-test-registry") as server:
        asyncio.run(main(server.host))


# case: what the error must say after the endpoint (None: the way it fails is not fixed).
REFUSALS: dict[str, str | None] = {
    "alert": "ALERT_HANDSHAKE_FAILURE",
    "client-certificate-tls1.2": "ALERT_HANDSHAKE_FAILURE",
    "protocol-version": "PROTOCOL_VERSION",
    # Refused after a TLS 1.3 handshake: the alert comes with the response, or the client finds the
    # connection closed or reset first (the server closes on the request it did not read).
    "client-certificate-tls1.3": None,
    # Closed during the handshake: the blocking client reads an EOF, aiohttp a reset.
    "closed": None,
}


def refusing_peer(case: str, certs: Certificates) -> Peer:
    if case == "alert":
        return alert_peer
    if case == "closed":
        return closing_peer
    if case == "protocol-version":  # the client insists on TLS 1.2 at least
        return tls_peer(certs, maximum=ssl.TLSVersion.TLSv1_1)
    maximum = ssl.TLSVersion.TLSv1_2 if case.endswith("tls1.2") else None
    return tls_peer(certs, client_certificate=True, maximum=maximum)


@pytest.mark.parametrize("how", ["pooled", "blocking"])
@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_tls_refusal_is_no_reason_to_fall_back(certs: Certificates, case: str, how: str) -> None:
    reason = REFUSALS[case]

    async def main() -> None:
        async with Transport() as transport:
            host = fallback_host(address)
            expected = (
                rf"^ping: .*https://{address}"
                if reason is None
                else rf"^ping: TLS with https://{address} failed: .*{reason}"
            )
            with pytest.raises(errors.Unavailable, match=expected) as info:
                await get(transport, host, how)
            # aiohttp itself may send an idempotent request again after a reset (in TLS, though).
            assert server.connections >= 1 and server.plain == 0, "asked again in plain HTTP"
            assert address not in transport._plain
            if reason is not None:
                assert str(info.value).endswith("so no fall-back to plain HTTP")

    with serving(refusing_peer(case, certs)) as server:
        address = server.address
        asyncio.run(main())
