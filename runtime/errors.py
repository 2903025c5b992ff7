"""Typed errors of wharfd and their one mapping to and from gRPC status codes.

Every layer raises these; only the API boundaries (gRPC servicers, the ttrpc
server, the clients) translate them, through :func:`to_status` and
:func:`from_status`. The classes follow containerd's errdefs so that a stock
``ctr`` sees the codes it expects::

    WharfError                      base; also "unknown" (codes.UNKNOWN)
    ├── InvalidArgument             the request is malformed (bad digest, bad name)
    │   └── OutOfRange              an offset past the end of an object
    ├── NotFound                    the object named does not exist
    ├── AlreadyExists               an object with that name exists
    ├── FailedPrecondition          the object is not in a state that allows the call
    ├── Conflict                    the object changed under the caller (codes.FAILED_PRECONDITION)
    ├── Unavailable                 a dependency (shim, registry, plugin) cannot be reached now
    ├── NotImplemented              the call or option is not supported (codes.UNIMPLEMENTED)
    ├── DeadlineExceeded            a bound on time ran out
    ├── Canceled                    the caller went away
    ├── ResourceExhausted           a size or count limit was hit
    ├── PermissionDenied            the caller may not do this
    ├── Aborted                     the operation was aborted, retrying may help
    └── DataLoss                    stored data is corrupt (a blob whose digest is wrong)

Messages name the object and the field, e.g. ``namespace "k8s.io": not empty``.
"""

from __future__ import annotations

import grpc


class WharfError(Exception):
    """Base of all wharfd errors; as a status it is ``UNKNOWN``."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN


class InvalidArgument(WharfError):
    """The request itself is wrong: a malformed name, digest, option or field."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(WharfError):
    """The object named in the request does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(WharfError):
    """An object with the requested name or id already exists."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(WharfError):
    """The object exists but its state forbids the call (e.g. deleting a non-empty namespace)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Conflict(FailedPrecondition):
    """The object changed concurrently; containerd maps this to FailedPrecondition too."""


class Unavailable(WharfError):
    """Something the call depends on cannot be reached now; retrying later may work."""

    code = grpc.StatusCode.UNAVAILABLE


class NotImplemented(WharfError):
    """The call, or an option of it, is not supported by this daemon."""

    code = grpc.StatusCode.UNIMPLEMENTED


class OutOfRange(InvalidArgument):
    """An offset or size lies outside the object (a read past the end)."""

    code = grpc.StatusCode.OUT_OF_RANGE


class DeadlineExceeded(WharfError):
    """A time bound ran out before the work finished."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Canceled(WharfError):
    """The caller cancelled the call."""

    code = grpc.StatusCode.CANCELLED


class ResourceExhausted(WharfError):
    """A size or count limit was hit (message too large, too many in flight)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class PermissionDenied(WharfError):
    """The caller is not allowed to do this."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Aborted(WharfError):
    """The operation was aborted part-way; retrying may succeed."""

    code = grpc.StatusCode.ABORTED


class DataLoss(WharfError):
    """Stored data is corrupt or truncated."""

    code = grpc.StatusCode.DATA_LOSS


_BY_CODE: dict[grpc.StatusCode, type[WharfError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Unavailable,
        NotImplemented,
        OutOfRange,
        DeadlineExceeded,
        Canceled,
        ResourceExhausted,
        PermissionDenied,
        Aborted,
        DataLoss,
    )
}

# Suffixes containerd's errdefs append to messages; a stock client parses the
# code, but humans read the text, so we strip them when mapping back.
_ERRDEFS_SUFFIX = {
    grpc.StatusCode.NOT_FOUND: ": not found",
    grpc.StatusCode.ALREADY_EXISTS: ": already exists",
    grpc.StatusCode.FAILED_PRECONDITION: ": failed precondition",
    grpc.StatusCode.INVALID_ARGUMENT: ": invalid argument",
}


def to_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Map any exception to the (code, message) a server should answer with."""
    if isinstance(exc, WharfError):
        return exc.code, str(exc) or exc.__class__.__name__
    if isinstance(exc, TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, str(exc) or "deadline exceeded"
    if isinstance(exc, PermissionError):
        return grpc.StatusCode.PERMISSION_DENIED, str(exc)
    if isinstance(exc, FileNotFoundError):
        return grpc.StatusCode.NOT_FOUND, str(exc)
    return grpc.StatusCode.UNKNOWN, f"{exc.__class__.__name__}: {exc}"


def from_status(code: grpc.StatusCode, message: str) -> WharfError:
    """Rebuild the typed error a server raised from its status (client side)."""
    cls = _BY_CODE.get(code, WharfError)
    suffix = _ERRDEFS_SUFFIX.get(code)
    if suffix and message.endswith(suffix):
        message = message[: -len(suffix)]
    return cls(message)


def from_rpc_error(exc: grpc.RpcError) -> WharfError:
    """Translate a grpc client exception into the matching typed error."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return from_status(code, details or "")
