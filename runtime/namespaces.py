"""The namespace of the current call, and the rules for namespace names.

containerd's API carries the namespace in the gRPC metadata key
``containerd-namespace`` (``containerd-namespace-ttrpc`` over ttrpc). The
boundary reads it once into :data:`current` so that stores below never take it
as a parameter they could forget to check.
"""

from __future__ import annotations

import re
from contextvars import ContextVar

from wharfd.runtime import errors

GRPC_METADATA_KEY = "containerd-namespace"
TTRPC_METADATA_KEY = "containerd-namespace-ttrpc"
DEFAULT = "default"
K8S = "k8s.io"

current: ContextVar[str | None] = ContextVar("wharfd_namespace", default=None)

# containerd's identifier grammar: alphanumeric runs joined by single '.', '_' or '-'.
_IDENTIFIER = re.compile(r"^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$")
MAX_IDENTIFIER_LENGTH = 76


def validate_identifier(value: str, *, what: str = "identifier") -> str:
    """Check an object name the way containerd does; raise InvalidArgument naming the problem."""
    if not value:
        raise errors.InvalidArgument(f"{what} must not be empty")
    if len(value) > MAX_IDENTIFIER_LENGTH:
        raise errors.InvalidArgument(
            f'{what} "{value}" greater than maximum length ({MAX_IDENTIFIER_LENGTH} characters)'
        )
    if not _IDENTIFIER.match(value):
        raise errors.InvalidArgument(f'{what} "{value}" must match {_IDENTIFIER.pattern}')
    return value


def required() -> str:
    """Return the namespace of the current call, or fail as containerd does when it is missing."""
    namespace = current.get()
    if not namespace:
        raise errors.FailedPrecondition("namespace is required")
    return namespace
