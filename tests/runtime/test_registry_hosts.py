"""hosts.toml parsing, directory lookup, Docker certs.d layout, and the defaults without configuration."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from wharfd.runtime import errors
from wharfd.runtime.registry.hosts import (
    Capability,
    HostsConfig,
    RegistryHost,
    find_host_dir,
    is_localhost,
    parse_hosts_toml,
)


def _one(config: HostsConfig, domain: str) -> RegistryHost:
    hosts = config.hosts(domain)
    assert len(hosts) == 1
    return hosts[0]


@pytest.mark.parametrize(
    ("domain", "scheme", "host", "fallback", "skip_verify"),
    [
        ("docker.io", "https", "registry-1.docker.io", False, None),
        ("quay.io", "https", "quay.io", False, None),
        ("registry.example.com:5000", "https", "registry.example.com:5000", False, None),
        ("localhost:5000", "https", "localhost:5000", True, True),
        ("127.0.0.1:5000", "https", "127.0.0.1:5000", True, True),
        ("[::1]:5000", "https", "[::1]:5000", True, True),
        ("localhost", "https", "localhost", False, True),
        ("localhost:443", "https", "localhost:443", False, True),
        ("127.0.0.1:80", "http", "127.0.0.1:80", False, None),
    ],
)
def test_defaults_without_configuration(
    domain: str, scheme: str, host: str, fallback: bool, skip_verify: bool | None
) -> None:
    got = _one(HostsConfig(), domain)
    assert (got.scheme, got.host, got.path, got.http_fallback, got.skip_verify) == (
        scheme,
        host,
        "/v2",
        fallback,
        skip_verify,
    )
    assert got.capabilities == Capability.ALL


def test_plain_http_flag() -> None:
    for domain in ("registry.example.com", "127.0.0.1:5000"):
        got = _one(HostsConfig(plain_http=True), domain)
        assert (got.scheme, got.http_fallback) == ("http", False)


def test_is_localhost() -> None:
    assert is_localhost("localhost:1") and is_localhost("127.0.0.2") and is_localhost("[::1]:5000")
    assert not is_localhost("localhost.example.com") and not is_localhost("10.0.0.1:5000")


HOSTS_TOML = """
server = "https://registry.example.com"
ca = "ca.pem"

[host."https://mirror-b.example.com/prefix"]
  capabilities = ["pull", "resolve"]
  skip_verify = true
  [host."https://mirror-b.example.com/prefix".header]
    x-token = ["a", "b"]
    x-one = "1"

[host."http://mirror-a.example.com:8080"]
  capabilities = ["pull"]
  override_path = true
  client = [["/abs/cert.pem", "key.pem"], "both.pem"]

[host."mirror-c.example.com/v2"]
  ca = ["/etc/ca1.pem", "ca2.pem"]
  client = "only.pem"
"""


def test_parse_hosts_toml(tmp_path: Path) -> None:
    hosts = parse_hosts_toml(HOSTS_TOML, tmp_path)
    assert [h.host for h in hosts] == [
        "mirror-b.example.com",
        "mirror-a.example.com:8080",
        "mirror-c.example.com",
        "registry.example.com",
    ]
    b, a, c, server = hosts
    assert (b.scheme, b.path, b.capabilities, b.skip_verify) == (
        "https",
        "/prefix/v2",
        Capability.PULL | Capability.RESOLVE,
        True,
    )
    assert b.headers == (("x-token", "a"), ("x-token", "b"), ("x-one", "1"))
    assert (a.scheme, a.path, a.capabilities) == ("http", "", Capability.PULL)
    assert a.client_pairs == (("/abs/cert.pem", str(tmp_path / "key.pem")), (str(tmp_path / "both.pem"), ""))
    assert (c.scheme, c.path) == ("https", "/v2")
    assert c.ca_files == ("/etc/ca1.pem", str(tmp_path / "ca2.pem"))
    assert c.client_pairs == ((str(tmp_path / "only.pem"), ""),)
    assert (server.scheme, server.path, server.capabilities) == ("https", "/v2", Capability.ALL)
    assert server.ca_files == (str(tmp_path / "ca.pem"),)
    assert a.url("library/x", "manifests", "1") == "http://mirror-a.example.com:8080/library/x/manifests/1"
    assert b.url("x", "blobs", "uploads/") == "https://mirror-b.example.com/prefix/v2/x/blobs/uploads/"


def test_http_host_with_tls_settings_tries_https_first(tmp_path: Path) -> None:
    directory = tmp_path / "reg.example.com:5000"
    directory.mkdir()
    (directory / "hosts.toml").write_text('server = "http://reg.example.com:5000"\nskip_verify = true\n')
    got = _one(HostsConfig(config_path=str(tmp_path)), "reg.example.com:5000")
    assert (got.scheme, got.http_fallback) == ("https", True)


def test_lookup_order(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for path in (
        first / "_default",
        second / "reg.example.com_5000_",
        second / "reg.example.com:5000",
        second / "other.example.com",
    ):
        path.mkdir(parents=True)
    roots = f"{second}:{first}"
    assert find_host_dir(roots, "reg.example.com:5000") == second / "reg.example.com_5000_"
    assert find_host_dir(roots, "other.example.com") == second / "other.example.com"
    assert find_host_dir(roots, "unknown.example.com") == first / "_default"
    assert find_host_dir(str(second), "unknown.example.com") is None


def test_default_directory_keeps_the_domain_as_upstream(tmp_path: Path) -> None:
    (tmp_path / "_default").mkdir()
    (tmp_path / "_default" / "hosts.toml").write_text(
        '[host."https://mirror.example.com"]\ncapabilities = ["pull"]\n'
    )
    mirror, upstream = HostsConfig(config_path=str(tmp_path)).hosts("quay.io")
    assert mirror.host == "mirror.example.com" and mirror.is_mirror_for("quay.io")
    assert (upstream.scheme, upstream.host, upstream.capabilities) == ("https", "quay.io", Capability.ALL)
    assert not upstream.is_mirror_for("quay.io")
    assert not RegistryHost("https", "registry-1.docker.io").is_mirror_for("docker.io")


def test_certs_d_layout(tmp_path: Path) -> None:
    directory = tmp_path / "reg.example.com"
    directory.mkdir()
    for name in ("ca.crt", "client.cert", "client.key", "lonely.cert", "README"):
        (directory / name).write_text("x")
    got = _one(HostsConfig(config_path=str(tmp_path)), "reg.example.com")
    assert got.host == "reg.example.com" and got.scheme == "https"
    assert got.ca_files == (str(directory / "ca.crt"),)
    assert got.client_pairs == (
        (str(directory / "client.cert"), str(directory / "client.key")),
        (str(directory / "lonely.cert"), ""),
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("server = [", "invalid TOML"),
        ('capabilities = ["pull", "fly"]', 'unknown capability "fly"'),
        ('[host."https://m"]\nclient = [["a"]]', r'host."https://m": client: \[\'a\'\] is neither'),
        ('server = "ftp://x"', 'server "ftp://x"'),
        ("skip_verify = 1", "skip_verify: expected true or false"),
        ("ca = 1", "ca: expected a string or a list"),
        ("[header]\nx = 1", "header.x: expected a string"),
        ("override_path = 'yes'", "override_path"),
        ("host = 1", "host: expected tables"),
    ],
)
def test_invalid_hosts_toml_names_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    directory = tmp_path / "bad.example.com"
    directory.mkdir()
    (directory / "hosts.toml").write_text(text)
    with pytest.raises(errors.InvalidArgument, match=message) as info:
        HostsConfig(config_path=str(tmp_path)).hosts("bad.example.com")
    assert str(directory / "hosts.toml") in str(info.value)


def test_ssl_contexts(tmp_path: Path) -> None:
    assert RegistryHost("https", "a").ssl_context() is True
    insecure = RegistryHost("https", "b", skip_verify=True).ssl_context()
    assert isinstance(insecure, ssl.SSLContext) and insecure.verify_mode == ssl.CERT_NONE
    assert RegistryHost("https", "b", skip_verify=True).ssl_context() is insecure  # built once
    missing = RegistryHost("https", "c.example.com", ca_files=(str(tmp_path / "nope.pem"),))
    with pytest.raises(errors.InvalidArgument, match=r"registry host c\.example\.com: TLS files"):
        missing.ssl_context()
