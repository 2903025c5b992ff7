"""Run Debian's real ``docker-registry`` on 127.0.0.1 for tests.

:func:`run_registry` starts ``/usr/bin/docker-registry serve <config.yml>`` on a
free port with its own storage directory, waits until ``/v2/`` answers, and
stops it afterwards. Optional authentication:

* ``htpasswd={"user": "password"}``: Basic auth (bcrypt hashes made with the
  system's libcrypt, so no Python bcrypt package is needed);
* ``token=TokenServer(...)``: the distribution token flow; the registry trusts
  the token server's self-made certificate (see :mod:`tests.support.tokens`).

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
    from tests.support.tokens import TokenServer

DOCKER_REGISTRY = "/usr/bin/docker-registry"
READY_TIMEOUT = 15.0


@dataclass
class RegistryServer:
    """A running registry: ``host`` is ``127.0.0.1:<port>``."""

    host: str
    root: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{self.host}"

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


def _config(root: Path, port: int, auth: Mapping[str, object] | None) -> str:
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(root / "storage")},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)},
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
    root: Path, *, htpasswd: Mapping[str, str] | None = None, token: TokenServer | None = None
) -> Iterator[RegistryServer]:
    """Start a registry under ``root`` and stop it on exit."""
    if not os.access(DOCKER_REGISTRY, os.X_OK):
        pytest.skip(f"{DOCKER_REGISTRY} is not installed (Debian package docker-registry)")
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = root / "config.yml"
    config.write_text(_config(root, port, _auth_section(root, htpasswd, token)))
    with open(root / "registry.log", "wb") as log:
        process = subprocess.Popen(
            [DOCKER_REGISTRY, "serve", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = RegistryServer(host=f"127.0.0.1:{port}", root=root, process=process)
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
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 only, never a proxy
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
