"""The registry client: hosts configuration, authentication, resolve, fetch and push.

Typical use::

    from wharfd.runtime.registry import HostsConfig, Resolver, Transport

    async with Transport(HostsConfig(config_path="/etc/containerd/certs.d"), credentials) as transport:
        name, desc = await Resolver(transport).resolve("busybox")

Modules: ``hosts`` (hosts.toml and defaults), ``auth`` (challenges, credentials,
tokens), ``transport`` (the HTTP session, retries, redirects, error mapping) and
``client`` (Resolver, Fetcher, Pusher).
"""

from wharfd.runtime.registry.auth import AuthConfig, Credentials, CredentialsFn
from wharfd.runtime.registry.client import BlobWriter, Fetcher, Resolver
from wharfd.runtime.registry.hosts import Capability, HostsConfig, RegistryHost
from wharfd.runtime.registry.push import BlobSource, Pusher, PushResult
from wharfd.runtime.registry.transport import Transport

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
