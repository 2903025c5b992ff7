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

# Not typing.TYPE_CHECKING: importing typing costs the shim's ``start`` (one
# process per container) ~10 ms. mypy treats any name TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:  # grpc costs ~80 ms to import; the shim must not pay it
    from typing import ClassVar

    import grpc


class WharfError(Exception):
    """Base of all wharfd errors; as a status it is ``UNKNOWN``."""

    # The status code number (google.rpc.Code, the same numbers as grpc.StatusCode).
    code: ClassVar[int] = 2  # UNKNOWN


class InvalidArgument(WharfError):
    """The request itself is wrong: a malformed name, digest, option or field."""

    code = 3  # INVALID_ARGUMENT


class NotFound(WharfError):
    """The object named in the request does not exist."""

    code = 5  # NOT_FOUND


class AlreadyExists(WharfError):
    """An object with the requested name or id already exists."""

    code = 6  # ALREADY_EXISTS


class FailedPrecondition(WharfError):
    """The object exists but its state forbids the call (e.g. deleting a non-empty namespace)."""

    code = 9  # FAILED_PRECONDITION


class Conflict(FailedPrecondition):
    """The object changed concurrently; containerd maps this to FailedPrecondition too."""


class Unavailable(WharfError):
    """Something the call depends on cannot be reached now; retrying later may work."""

    code = 14  # UNAVAILABLE


class NotImplemented(WharfError):
    """The call, or an option of it, is not supported by this daemon."""

    code = 12  # UNIMPLEMENTED


class OutOfRange(InvalidArgument):
    """An offset or size lies outside the object (a read past the end)."""

    code = 11  # OUT_OF_RANGE


class DeadlineExceeded(WharfError):
    """A time bound ran out before the work finished."""

    code = 4  # DEADLINE_EXCEEDED


class Canceled(WharfError):
    """The caller cancelled the call."""

    code = 1  # CANCELLED


class ResourceExhausted(WharfError):
    """A size or count limit was hit (message too large, too many in flight)."""

    code = 8  # RESOURCE_EXHAUSTED


class PermissionDenied(WharfError):
    """The caller is not allowed to do this."""

    code = 7  # PERMISSION_DENIED


class Aborted(WharfError):
    """The operation was aborted part-way; retrying may succeed."""

    code = 10  # ABORTED


class DataLoss(WharfError):
    """Stored data is corrupt or truncated."""

    code = 15  # DATA_LOSS


_BY_CODE: dict[int, type[WharfError]] = {
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
    NotFound.code: ": not found",
    AlreadyExists.code: ": already exists",
    FailedPrecondition.code: ": failed precondition",
    InvalidArgument.code: ": invalid argument",
}


def to_code(exc: BaseException) -> tuple[int, str]:
    """Map any exception to the (status number, message) a server should answer with."""
    if isinstance(exc, WharfError):
        return exc.code, str(exc) or exc.__class__.__name__
    if isinstance(exc, TimeoutError):
        return DeadlineExceeded.code, str(exc) or "deadline exceeded"
    if isinstance(exc, PermissionError):
        return PermissionDenied.code, str(exc)
    if isinstance(exc, FileNotFoundError):
        return NotFound.code, str(exc)
    return WharfError.code, f"{exc.__class__.__name__}: {exc}"


def grpc_code(number: int) -> grpc.StatusCode:
    """The grpc.StatusCode with that number (UNKNOWN for numbers it does not know)."""
    import grpc

    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code
    return grpc.StatusCode.UNKNOWN


def to_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Map any exception to the (grpc code, message) a gRPC server should answer with."""
    number, message = to_code(exc)
    return grpc_code(number), message


def from_status(code: int | grpc.StatusCode, message: str) -> WharfError:
    """Rebuild the typed error a server raised from its status (client side)."""
    number = code if isinstance(code, int) else code.value[0]
    cls = _BY_CODE.get(number, WharfError)
    suffix = _ERRDEFS_SUFFIX.get(number)
    if suffix and message.endswith(suffix):
        message = message[: -len(suffix)]
    return cls(message)


def from_rpc_error(exc: grpc.RpcError) -> WharfError:
    """Translate a grpc client exception into the matching typed error."""
    code = exc.code() if hasattr(exc, "code") else 2
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return from_status(code, details or "")
