"""Run Debian's real ``docker-registry`` on 127.0.0.1 for tests.

:func:`run_registry` starts ``/usr/bin/docker-registry serve <config.yml>`` on a
free port with its own storage directory, waits until ``/v2/`` answers, and
stops it afterwards. Optional authentication:

* ``htpasswd={"user": "password"}``: Basic auth (bcrypt hashes made with the
  system's libcrypt, so no Python bcrypt package is needed);
* ``token=TokenServer(...)``: the distribution token flow; the registry trusts
  the token server's self-made certificate (see :mod:`tests.support.tokens`).

Optional TLS: ``tls=make_certificates(dir)`` serves HTTPS with a server
certificate (for ``127.0.0.1`` and ``localhost``) issued by a CA the test made
with the ``openssl`` CLI; ``client_certs=True`` also requires a client
certificate issued by that CA (``http.tls.clientcas``).

Use it from a fixture in the test module::

    @pytest.fixture(scope="module")
    def registry(tmp_path_factory):
        with run_registry(tmp_path_factory.mktemp("registry")) as server:
            yield server
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import secrets
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from aiohttp import web

if TYPE_CHECKING:
    from tests.support.images import Image
    from tests.support.tokens import TokenServer
    from wharfd.runtime.registry import auth

DOCKER_REGISTRY = "/usr/bin/docker-registry"
READY_TIMEOUT = 15.0


@dataclass(frozen=True)
class Certificates:
    """A test CA and what it issued, as PEM files in ``directory``.

    The server certificate names ``127.0.0.1`` and ``localhost``; ``client_pem``
    holds the client certificate and its key in one file (hosts.toml's
    ``client = "file"`` form).
    """

    directory: Path
    ca: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_pem: Path

    def context(self, *, client: bool = False) -> ssl.SSLContext:
        """A client-side context trusting this CA (and presenting the client certificate)."""
        ctx = ssl.create_default_context(cafile=str(self.ca))
        if client:
            ctx.load_cert_chain(str(self.client_cert), str(self.client_key))
        return ctx


def _openssl(*args: str) -> None:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {result.stderr}")


def _issue(certs_dir: Path, name: str, subject: str, extensions: str, ca: tuple[Path, Path] | None) -> None:
    """Make ``<name>.key`` (P-256) and ``<name>.pem``: self-signed when ``ca`` is None, else issued by it."""
    key, cert, ext = (certs_dir / f"{name}{s}" for s in (".key", ".pem", ".ext"))
    ext.write_text(f"[v3]\n{extensions}\n")
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(key))
    if ca is None:
        sign = ["-signkey", str(key)]
    else:
        sign = ["-CA", str(ca[0]), "-CAkey", str(ca[1]), "-set_serial", str(secrets.randbits(63))]
    csr = certs_dir / f"{name}.csr"
    _openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr))
    _openssl(
        "x509", "-req", "-in", str(csr), *sign, "-days", "2", "-sha256",
        "-extfile", str(ext), "-extensions", "v3", "-out", str(cert),
    )  # fmt: skip
    csr.unlink()
    ext.unlink()


def make_certificates(directory: Path, name: str = "wharfd-test-ca") -> Certificates:
    """A new CA named ``name`` with a server and a client certificate, made with the openssl CLI."""
    directory.mkdir(parents=True, exist_ok=True)
    key_ids = "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid"
    _issue(
        directory, "ca", f"/CN={name}",
        "basicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\n"
        "subjectKeyIdentifier = hash",
        None,
    )  # fmt: skip
    ca = (directory / "ca.pem", directory / "ca.key")
    leaf = f"basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n{key_ids}"
    _issue(
        directory, "server", "/CN=127.0.0.1",
        f"{leaf}\nextendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1, DNS:localhost",
        ca,
    )  # fmt: skip
    _issue(directory, "client", f"/CN={name}-client", f"{leaf}\nextendedKeyUsage = clientAuth", ca)
    client_pem = directory / "client-with-key.pem"
    client_pem.write_bytes((directory / "client.pem").read_bytes() + (directory / "client.key").read_bytes())
    return Certificates(
        directory=directory,
        ca=ca[0],
        ca_key=ca[1],
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        client_pem=client_pem,
    )


@dataclass
class RegistryServer:
    """A running registry: ``host`` is ``127.0.0.1:<port>``."""

    host: str
    root: Path
    process: subprocess.Popen[bytes]
    # Set when the registry serves HTTPS; ``client_certs``: it also requires a client certificate.
    tls: Certificates | None = None
    client_certs: bool = False

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``, or ``https://`` with TLS."""
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def ref(self, path: str) -> str:
        """A reference on this registry: ``ref("test/busybox:1")``."""
        return f"{self.host}/{path}"

    def log(self) -> str:
        """What the registry printed so far."""
        return (self.root / "registry.log").read_text(errors="replace")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bcrypt_hash(password: str, cost: int = 4) -> str:
    """A ``$2b$`` bcrypt hash from libcrypt (libxcrypt), for htpasswd files."""
    name = ctypes.util.find_library("crypt") or "libcrypt.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        pytest.skip(f"libcrypt ({name}) is not available to make bcrypt hashes")
    lib.crypt_gensalt.restype = ctypes.c_char_p
    lib.crypt_gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int]
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    setting = lib.crypt_gensalt(b"$2b$", cost, None, 0)
    hashed = lib.crypt(password.encode(), setting) if setting else None
    if not hashed or not hashed.startswith(b"$2b$"):
        pytest.skip("this libcrypt cannot make bcrypt hashes")
    return str(hashed.decode())


def _config(
    root: Path,
    port: int,
    auth: Mapping[str, object] | None,
    tls: Certificates | None = None,
    client_certs: bool = False,
) -> str:
    http: dict[str, object] = {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)}
    if tls is not None:
        http["tls"] = {
            "certificate": str(tls.server_cert),
            "key": str(tls.server_key),
            # Any client CA makes the registry require and verify a client certificate.
            **({"clientcas": [str(tls.ca)]} if client_certs else {}),
        }
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(root / "storage")},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": http,
    }
    if auth:
        config["auth"] = auth
    # JSON is YAML, so the registry reads this as is.
    return json.dumps(config, indent=2)


def _auth_section(
    root: Path, htpasswd: Mapping[str, str] | None, token: TokenServer | None
) -> dict[str, object] | None:
    if htpasswd:
        path = root / "htpasswd"
        path.write_text("".join(f"{user}:{bcrypt_hash(pw)}\n" for user, pw in htpasswd.items()))
        return {"htpasswd": {"realm": "wharfd-test", "path": str(path)}}
    if token is not None:
        return {
            "token": {
                "realm": token.realm,
                "service": token.service,
                "issuer": token.issuer,
                "rootcertbundle": str(token.cert_path),
            }
        }
    return None


@contextlib.contextmanager
def run_registry(
    root: Path,
    *,
    htpasswd: Mapping[str, str] | None = None,
    token: TokenServer | None = None,
    tls: Certificates | None = None,
    client_certs: bool = False,
) -> Iterator[RegistryServer]:
    """Start a registry under ``root`` and stop it on exit (HTTPS with ``tls``)."""
    if not os.access(DOCKER_REGISTRY, os.X_OK):
        pytest.skip(f"{DOCKER_REGISTRY} is not installed (Debian package docker-registry)")
    if client_certs and tls is None:
        raise ValueError("client_certs needs tls")
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = root / "config.yml"
    config.write_text(_config(root, port, _auth_section(root, htpasswd, token), tls, client_certs))
    with open(root / "registry.log", "wb") as log:
        process = subprocess.Popen(
            [DOCKER_REGISTRY, "serve", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = RegistryServer(
        host=f"127.0.0.1:{port}", root=root, process=process, tls=tls, client_certs=client_certs
    )
    try:
        _wait_ready(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _wait_ready(server: RegistryServer) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]  # 127.0.0.1: no proxy
    if server.tls is not None:
        handlers.append(urllib.request.HTTPSHandler(context=server.tls.context(client=server.client_certs)))
    opener = urllib.request.build_opener(*handlers)
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"docker-registry exited with {server.process.returncode}:\n{server.log()}")
        try:
            with opener.open(f"{server.url}/v2/", timeout=1):
                return
        except urllib.error.HTTPError as exc:
            if exc.code == 401:  # up, and asking for credentials
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"docker-registry on {server.host} not ready in {READY_TIMEOUT}s:\n{server.log()}")


@contextlib.asynccontextmanager
async def serve_app(app: web.Application) -> AsyncIterator[str]:
    """Serve an aiohttp app on 127.0.0.1 (a fake registry, token server or blob store); yields host:port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        host, port = runner.addresses[0][:2]
        yield f"{host}:{port}"
    finally:
        await runner.cleanup()


def push(server: RegistryServer, path: str, image: Image, creds: auth.Credentials | None = None) -> None:
    """Push ``image`` as ``path`` (``repo:tag``) to ``server`` with wharfd's client, from sync code."""
    import asyncio

    from tests.support.images import push_image
    from wharfd.runtime.registry import Resolver, Transport
    from wharfd.runtime.registry import auth as registry_auth

    async def main() -> None:
        async with Transport(credentials=registry_auth.static(creds) if creds else None) as transport:
            await push_image(Resolver(transport).pusher(server.ref(path)), image, tag=path.rsplit(":", 1)[1])

    asyncio.run(main())


def point_hosts(root: Path, domain: str, server: RegistryServer) -> Path:
    """A ``<root>/<domain>/hosts.toml`` that sends ``domain`` to ``server``; returns ``root``."""
    (root / domain).mkdir(parents=True, exist_ok=True)
    (root / domain / "hosts.toml").write_text(f'server = "{server.url}"\n')
    return root
