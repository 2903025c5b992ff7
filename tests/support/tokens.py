"""A distribution token server for tests: issues RS256 JWTs that a real docker-registry accepts.

The key and its self-signed certificate are made with the ``openssl`` CLI; the
registry trusts the certificate (``rootcertbundle``) and each token carries it
in its ``x5c`` header. Signing is textbook RSA PKCS#1 v1.5 over SHA-256 done
in Python, which is all RS256 needs. The server runs in a thread on
127.0.0.1, accepts the ``GET`` form (optionally with Basic credentials) and the
OAuth2 ``POST`` form, grants whatever scopes it is asked for to known users
(``pull`` only to anonymous callers when ``anonymous_pull``), and records every
request for assertions.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

# DER prefix of a SHA-256 DigestInfo (PKCS#1 v1.5 signatures).
_SHA256_PREFIX = bytes.fromhex("3031300d060960864801650304020105000420")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class RsaKey:
    """An RSA private key made by openssl, with its certificate."""

    n: int
    d: int
    cert_der: bytes

    @classmethod
    def generate(cls, directory: Path) -> RsaKey:
        """Make a 2048-bit key and a self-signed certificate in ``directory``."""
        key, cert = directory / "token.key", directory / "token.pem"
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                str(key),
                "-out",
                str(cert),
                "-days",
                "2",
                "-subj",
                "/CN=wharfd-test-token",
            ],
            check=True,
            capture_output=True,
        )
        text = subprocess.run(
            ["openssl", "rsa", "-in", str(key), "-noout", "-text"], check=True, capture_output=True, text=True
        ).stdout
        der = subprocess.run(
            ["openssl", "x509", "-in", str(cert), "-outform", "DER"], check=True, capture_output=True
        ).stdout
        return cls(n=_hex_field(text, "modulus"), d=_hex_field(text, "privateExponent"), cert_der=der)

    def sign(self, message: bytes) -> bytes:
        """RSASSA-PKCS1-v1_5 with SHA-256."""
        k = (self.n.bit_length() + 7) // 8
        digest_info = _SHA256_PREFIX + hashlib.sha256(message).digest()
        encoded = b"\x00\x01" + b"\xff" * (k - len(digest_info) - 3) + b"\x00" + digest_info
        return pow(int.from_bytes(encoded, "big"), self.d, self.n).to_bytes(k, "big")


def _hex_field(text: str, name: str) -> int:
    match = re.search(rf"^{name}:\s*\n((?:\s+[0-9a-f:]+\n)+)", text, re.MULTILINE)
    if not match:
        raise RuntimeError(f"openssl output lacks {name}")
    return int(re.sub(r"[\s:]", "", match.group(1)), 16)


@dataclass
class TokenServer:
    """The token endpoint; ``realm`` is its URL, ``requests`` what it was asked."""

    key: RsaKey
    cert_path: Path
    users: Mapping[str, str] = field(default_factory=dict)
    refresh_tokens: Mapping[str, str] = field(default_factory=dict)  # token -> user
    anonymous_pull: bool = True
    support_post: bool = True
    service: str = "wharfd-test-registry"
    issuer: str = "wharfd-test-issuer"
    realm: str = ""
    requests: list[dict[str, object]] = field(default_factory=list)

    def issue(self, subject: str, scopes: list[str]) -> str:
        """A JWT granting ``scopes`` (``repository:name:actions``)."""
        now = int(time.time())
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            granted = actions.split(",") if subject else [a for a in actions.split(",") if a == "pull"]
            if kind == "repository" and (subject or self.anonymous_pull) and granted:
                access.append({"type": kind, "name": name, "actions": granted})
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self.key.cert_der).decode()]}
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + 300,
            "nbf": now - 30,
            "iat": now - 30,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        return f"{signing_input}.{_b64url(self.key.sign(signing_input.encode()))}"

    def authenticate(self, basic: str | None, form: Mapping[str, str]) -> str | None:
        """The subject for these credentials; "" for anonymous; None when they are wrong."""
        if form.get("grant_type") == "password":
            user = form.get("username", "")
            return user if user and self.users.get(user) == form.get("password") else None
        if form.get("grant_type") == "refresh_token":
            return self.refresh_tokens.get(form.get("refresh_token", ""))
        if basic is None:
            return ""
        user, _, password = base64.b64decode(basic).decode().partition(":")
        return user if self.users.get(user) == password else None


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        query = parse_qs(urlsplit(self.path).query)
        auth = self.headers.get("Authorization", "")
        basic = auth[6:] if auth.startswith("Basic ") else None
        self._answer("GET", query.get("scope", []), basic, {})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
        self._answer("POST", form.get("scope", "").split(), None, form)

    def _answer(self, method: str, scopes: list[str], basic: str | None, form: Mapping[str, str]) -> None:
        tokens = self.server.tokens
        tokens.requests.append({"method": method, "scopes": scopes, "basic": basic is not None, "form": form})
        if method == "POST" and not tokens.support_post:
            self._reply(404, {"error": "not found"})
            return
        subject = tokens.authenticate(basic, form)
        if subject is None:
            self._reply(401, {"details": "incorrect username or password"})
            return
        token = tokens.issue(subject, scopes)
        body = {"access_token": token, "expires_in": 300} if method == "POST" else {"token": token}
        self._reply(200, body)

    def _reply(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _HTTPServer(ThreadingHTTPServer):
    tokens: TokenServer


@contextmanager
def run_token_server(directory: Path, **options: object) -> Iterator[TokenServer]:
    """Serve tokens on 127.0.0.1 in a thread until the block ends."""
    key = RsaKey.generate(directory)
    tokens = TokenServer(key=key, cert_path=directory / "token.pem", **options)  # type: ignore[arg-type]
    httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
    httpd.tokens = tokens
    tokens.realm = f"http://127.0.0.1:{httpd.server_address[1]}/token"
    thread = threading.Thread(target=httpd.serve_forever, name="token-server", daemon=True)
    thread.start()
    try:
        yield tokens
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
