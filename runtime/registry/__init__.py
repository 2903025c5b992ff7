"""The registry client: hosts configuration, authentication, resolve, fetch and push.

Typical use::

    from wharfd.runtime.registry import HostsConfig, Resolver, Transport

    async with Transport(HostsConfig(config_path="/etc/containerd/certs.d"), credentials) as transport:
        name, desc = await Resolver(transport).resolve("busybox")

Modules: ``hosts`` (hosts.toml and defaults), ``auth`` (challenges, credentials,
tokens), ``transport`` (the HTTP session, retries, redirects, error mapping) and
``client`` (Resolver, Fetcher, Pusher).
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wharfd.runtime.registry.auth import AuthConfig, Credentials, CredentialsFn
    from wharfd.runtime.registry.client import BlobWriter, Fetcher, Resolver
    from wharfd.runtime.registry.hosts import Capability, HostsConfig, RegistryHost
    from wharfd.runtime.registry.push import BlobSource, Pusher, PushResult
    from wharfd.runtime.registry.transport import Transport

# The names above are loaded on first use (PEP 562): the client pulls in aiohttp, which an idle
# daemon does without, while ``hosts`` and ``auth`` alone stay light.
_WHERE = {
    "AuthConfig": "auth",
    "Credentials": "auth",
    "CredentialsFn": "auth",
    "BlobWriter": "client",
    "Fetcher": "client",
    "Resolver": "client",
    "Capability": "hosts",
    "HostsConfig": "hosts",
    "RegistryHost": "hosts",
    "BlobSource": "push",
    "Pusher": "push",
    "PushResult": "push",
    "Transport": "transport",
}


async def load() -> None:
    """Import the client and push modules (and aiohttp) on a thread, the first time only: the
    loop serves other calls during that import (~0.3 s here). Pulls and pushes call it first."""
    if not all(f"{__name__}.{m}" in sys.modules for m in _NETWORK_MODULES):
        await asyncio.to_thread(
            lambda: [importlib.import_module(f"{__name__}.{m}") for m in _NETWORK_MODULES]
        )


_NETWORK_MODULES = ("client", "push")


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "AuthConfig",
    "BlobSource",
    "BlobWriter",
    "Capability",
    "Credentials",
    "CredentialsFn",
    "Fetcher",
    "HostsConfig",
    "PushResult",
    "Pusher",
    "RegistryHost",
    "Resolver",
    "Transport",
]
