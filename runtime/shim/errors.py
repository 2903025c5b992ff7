"""The shim's typed errors, carrying google.rpc status codes without importing grpc.

The daemon-side classes in :mod:`wharfd.runtime.errors` are keyed by
``grpc.StatusCode``; importing grpc would add ~6 MiB and ~45 ms to every shim,
so the shim keeps its own small hierarchy with the same names and the numeric
codes of ``google.rpc.Code``. A client maps them back through
``errors.from_status`` as for any other ttrpc server::

    ShimError (UNKNOWN 2)
    ├── InvalidArgument (3)      malformed request: bad spec, bad option
    ├── NotFound (5)             no such container or process
    ├── AlreadyExists (6)        container or exec id taken
    ├── FailedPrecondition (9)   the process's state forbids the call
    ├── Unavailable (14)         runc or a peer cannot be reached
    ├── NotImplemented (12)      the call or option is not supported
    └── DeadlineExceeded (4)     a bound on time ran out
"""

from __future__ import annotations


class ShimError(Exception):
    """Base of the shim's errors; as a status it is UNKNOWN."""

    code = 2


class InvalidArgument(ShimError):
    """The request is malformed."""

    code = 3


class DeadlineExceeded(ShimError):
    """A time bound ran out."""

    code = 4


class NotFound(ShimError):
    """The container or process named does not exist (or has finished)."""

    code = 5


class AlreadyExists(ShimError):
    """The container or exec id is already in use."""

    code = 6


class FailedPrecondition(ShimError):
    """The process is in a state that refuses the call."""

    code = 9


class NotImplemented(ShimError):
    """The call or one of its options is not supported by this shim."""

    code = 12


class Unavailable(ShimError):
    """A dependency cannot be reached now."""

    code = 14


def to_status(exc: BaseException) -> tuple[int, str]:
    """The (google.rpc code, message) a server answers ``exc`` with."""
    if isinstance(exc, ShimError):
        return exc.code, str(exc) or type(exc).__name__
    if isinstance(exc, TimeoutError):
        return DeadlineExceeded.code, str(exc) or "deadline exceeded"
    if isinstance(exc, FileNotFoundError):
        return NotFound.code, str(exc)
    return ShimError.code, f"{type(exc).__name__}: {exc}"
