"""Which endpoints serve a registry domain, and how to talk to them (``hosts.toml``).

``registry.config_path`` is a ``:``-separated list of directories. For a domain
``host[:port]`` each directory is searched for ``host_port_/``, ``host:port/``
(or ``host/``) and then ``_default/``; the first directory holding any of them
wins. Inside, ``hosts.toml`` reads::

    server = "https://registry.example.com"      # the upstream, tried last
    capabilities = ["pull", "resolve", "push"]   # the default for every host
    ca = "ca.pem"                                # str or list; relative to the directory
    client = [["cert.pem", "key.pem"]]           # str, list of str, or list of [cert, key]
    skip_verify = false
    override_path = false                        # true: the URL path is the API root (no /v2)
    [header]
      x-custom = "value"                         # str or list of str

    [host."https://mirror.example.com"]          # tried first, in file order
      capabilities = ["pull", "resolve"]
      ...same keys...

A directory without ``hosts.toml`` is read in Docker's ``certs.d`` layout
(``*.crt`` CAs, ``*.cert`` + ``*.key`` client pairs). Without any
configuration a domain is served by itself over HTTPS, ``docker.io`` by
``registry-1.docker.io``; plain HTTP is used only when configured, with
``--plain-http``, or for localhost, which (like containerd) tries HTTPS without
verification first and falls back to HTTP when the port speaks plain HTTP.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import os
import ssl
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from wharfd.runtime import errors


class Capability(enum.Flag):
    """What a host may be used for: ``resolve`` (tags to digests) needs the most trust."""

    NONE = 0
    PULL = enum.auto()
    RESOLVE = enum.auto()
    PUSH = enum.auto()
    ALL = PULL | RESOLVE | PUSH


@dataclass(frozen=True)
class RegistryHost:
    """One endpoint for a registry domain."""

    scheme: str
    host: str
    path: str = "/v2"
    capabilities: Capability = Capability.ALL
    skip_verify: bool | None = None
    ca_files: tuple[str, ...] = ()
    client_pairs: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    # Try HTTPS first and fall back to HTTP if the port answers in plain HTTP.
    http_fallback: bool = False

    @property
    def origin(self) -> str:
        """``scheme://host[:port]``."""
        return f"{self.scheme}://{self.host}"

    def url(self, *parts: str) -> str:
        """The URL of an API path under this host, e.g. ``url("library/busybox", "manifests", "latest")``."""
        return self.origin + "/".join([self.path.rstrip("/"), *parts])

    def ssl_context(self) -> ssl.SSLContext | bool:
        """The TLS settings for this host (built once per version of its files): ``True``: the system defaults."""
        if self.skip_verify is None and not self.ca_files and not self.client_pairs:
            return True
        files = [*self.ca_files, *(f for pair in self.client_pairs for f in pair if f)]
        return _build_ssl(self.host, self.skip_verify, self.ca_files, self.client_pairs, _file_ids(files))

    def is_mirror_for(self, domain: str) -> bool:
        """Whether this host serves ``domain`` on its behalf (requests then carry ``?ns=domain``)."""
        return self.host != domain and not (domain == "docker.io" and self.host == "registry-1.docker.io")


@dataclass(frozen=True)
class HostsConfig:
    """Where to find ``hosts.toml`` files, and the scheme to assume when nothing says."""

    config_path: str = ""
    plain_http: bool = False

    def hosts(self, domain: str) -> list[RegistryHost]:
        """The endpoints for ``domain``, in the order to try them."""
        directory = find_host_dir(self.config_path, domain)
        hosts = load_host_dir(directory) if directory else [_blank()]
        if hosts and not hosts[-1].host:
            hosts[-1] = _default_upstream(hosts[-1], domain, self.plain_http)
        return [_with_fallback(h) for h in hosts]


def _blank() -> RegistryHost:
    return RegistryHost(scheme="", host="")


def is_localhost(host: str) -> bool:
    """``localhost`` or a loopback address, with or without a port."""
    name = split_port(host)[0].strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def split_port(host: str) -> tuple[str, str]:
    """``("h", "5000")`` for ``h:5000``; IPv6 in brackets is understood."""
    if host.startswith("["):
        name, _, rest = host.partition("]")
        return name + "]", rest.removeprefix(":")
    name, _, port = host.partition(":")
    return name, port


def _default_upstream(base: RegistryHost, domain: str, plain_http: bool) -> RegistryHost:
    caps = Capability.ALL
    if domain == "docker.io":
        return replace(base, scheme="https", host="registry-1.docker.io", path="/v2", capabilities=caps)
    scheme = "http" if plain_http else "https"
    skip_verify = base.skip_verify
    if is_localhost(domain) and not plain_http:
        port = split_port(domain)[1]
        scheme = "https" if port in ("", "443") else "http"
        if port != "80":
            skip_verify = True  # a local registry's certificate is rarely one we could verify
    return replace(base, scheme=scheme, host=domain, path="/v2", capabilities=caps, skip_verify=skip_verify)


def _with_fallback(host: RegistryHost) -> RegistryHost:
    """An HTTP host that also has TLS settings is tried over HTTPS first if its port is given and not 80."""
    explicit_tls = host.skip_verify is not None or host.ca_files or host.client_pairs
    # No port is port 80 too: the scheme is not ambiguous there (containerd's rule).
    if host.scheme == "http" and explicit_tls and split_port(host.host)[1] not in ("", "80"):
        return replace(host, scheme="https", http_fallback=True)
    return host


def host_dir_candidates(root: str, domain: str) -> list[Path]:
    """The directories looked at under one root, in order."""
    names = []
    name, port = split_port(domain)
    if port:
        names.append(f"{name}_{port}_")
    names += [domain, "_default"]
    return [Path(root, n) for n in names]


def find_host_dir(config_path: str, domain: str) -> Path | None:
    """The first configuration directory for ``domain`` across the roots of ``config_path``."""
    for root in filter(None, config_path.split(os.pathsep)):
        for candidate in host_dir_candidates(root, domain):
            if candidate.is_dir():
                return candidate
    return None


def load_host_dir(directory: Path) -> list[RegistryHost]:
    """Read ``hosts.toml`` in ``directory``, or its ``certs.d``-style certificate files."""
    path = directory / "hosts.toml"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return [_cert_files(directory)]
    except OSError as exc:
        raise errors.InvalidArgument(f"{path}: cannot read: {exc}") from exc
    return parse_hosts_toml(text, directory, source=str(path))


def parse_hosts_toml(text: str, base_dir: Path, *, source: str = "hosts.toml") -> list[RegistryHost]:
    """Parse a ``hosts.toml``: the ``[host."..."]`` entries in file order, then the ``server`` entry."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise errors.InvalidArgument(f"{source}: invalid TOML: {exc}") from exc
    hosts: list[RegistryHost] = []
    table = doc.get("host", {})
    if not isinstance(table, Mapping):
        raise errors.InvalidArgument(f"{source}: host: expected tables")
    # tomllib keeps the order the tables appear in, which is the order to try them.
    for server, config in table.items():
        if not isinstance(config, Mapping):
            raise errors.InvalidArgument(f'{source}: host."{server}": expected a table')
        hosts.append(_host_entry(server, config, base_dir, f'{source}: host."{server}"'))
    server = doc.get("server", "")
    if not isinstance(server, str):
        raise errors.InvalidArgument(f"{source}: server: expected a string")
    hosts.append(_host_entry(server, doc, base_dir, source))
    return hosts


def _host_entry(server: str, config: Mapping[str, Any], base: Path, where: str) -> RegistryHost:
    scheme = host = path = ""
    override = config.get("override_path", False)
    if not isinstance(override, bool):
        raise errors.InvalidArgument(f"{where}: override_path: expected true or false")
    if server:
        parts = urlsplit(server if "://" in server else "https://" + server)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise errors.InvalidArgument(f'{where}: server "{server}": expected http(s)://host[:port][/path]')
        scheme, host = parts.scheme, parts.netloc
        path = os.path.normpath(parts.path) if parts.path else ""
        if not override and not path.endswith("/v2"):
            path = path.rstrip("/") + "/v2"
    skip = config.get("skip_verify")
    if skip is not None and not isinstance(skip, bool):
        raise errors.InvalidArgument(f"{where}: skip_verify: expected true or false")
    return RegistryHost(
        scheme=scheme,
        host=host,
        path=path,
        capabilities=_capabilities(config.get("capabilities"), where),
        skip_verify=skip,
        ca_files=tuple(_abs(p, base) for p in _str_or_list(config.get("ca"), f"{where}: ca")),
        client_pairs=_client_pairs(config.get("client"), base, where),
        headers=_headers(config.get("header"), where),
    )


def _capabilities(value: Any, where: str) -> Capability:
    if not value:
        return Capability.ALL
    caps = Capability.NONE
    for name in _str_or_list(value, f"{where}: capabilities"):
        try:
            caps |= Capability[name.upper()]
        except KeyError:
            raise errors.InvalidArgument(
                f'{where}: capabilities: unknown capability "{name}" (expected pull, resolve or push)'
            ) from None
    return caps


def _str_or_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise errors.InvalidArgument(f"{where}: expected a string or a list of strings")


def _client_pairs(value: Any, base: Path, where: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    items: Sequence[Any] = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise errors.InvalidArgument(f"{where}: client: expected a string or a list")
    pairs = []
    for item in items:
        if isinstance(item, str):
            pairs.append((_abs(item, base), ""))
        elif isinstance(item, list) and len(item) == 2 and all(isinstance(p, str) for p in item):
            pairs.append((_abs(item[0], base), _abs(item[1], base)))
        else:
            raise errors.InvalidArgument(
                f"{where}: client: {item!r} is neither a file nor a [cert, key] pair"
            )
    return tuple(pairs)


def _headers(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise errors.InvalidArgument(f"{where}: header: expected a table")
    return tuple((k, v) for k, vs in value.items() for v in _str_or_list(vs, f"{where}: header.{k}"))


def _abs(path: str, base: Path) -> str:
    return path if os.path.isabs(path) else str(base / path)


def _cert_files(directory: Path) -> RegistryHost:
    ca: list[str] = []
    pairs: list[tuple[str, str]] = []
    for entry in sorted(directory.iterdir()):
        if entry.suffix == ".crt":
            ca.append(str(entry))
        elif entry.suffix == ".cert":
            key = entry.with_suffix(".key")
            pairs.append((str(entry), str(key) if key.exists() else ""))
    return RegistryHost(scheme="", host="", ca_files=tuple(ca), client_pairs=tuple(pairs))


def _file_ids(paths: Sequence[str]) -> tuple[tuple[int, int, int], ...]:
    """Inode, mtime and size of each file (zeros if missing): what tells a file replaced on disk."""
    stamps = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            stamps.append((0, 0, 0))
        else:
            stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(stamps)


# Contexts are costly to build (the system CA bundle is parsed each time), so keep them; keyed by
# the files' identities too, so a CA or client certificate replaced on disk is read again.
@functools.lru_cache(maxsize=64)
def _build_ssl(
    host: str,
    skip_verify: bool | None,
    ca_files: tuple[str, ...],
    client_pairs: tuple[tuple[str, str], ...],
    file_ids: tuple[tuple[int, int, int], ...] = (),  # only part of the cache key
) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    try:
        for ca in ca_files:
            ctx.load_verify_locations(cafile=ca)
        for cert, key in client_pairs:
            ctx.load_cert_chain(cert, key or None)
    except (OSError, ssl.SSLError) as exc:
        raise errors.InvalidArgument(f"registry host {host}: TLS files: {exc}") from exc
    if skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
