"""The content store contract: blobs named by their digest, written through ingests.

Lifecycle of a blob, as containerd defines it and every implementation keeps it:

1. ``writer(ref, expected)`` opens (or resumes) the *ingest* named ``ref`` in
   the caller's namespace. Only one writer may hold a ref at a time; a second
   one gets :class:`~wharfd.runtime.errors.Unavailable` ("ref … locked"). If
   the namespace already has the expected digest, opening fails with
   :class:`~wharfd.runtime.errors.AlreadyExists`, which callers treat as
   success.
2. ``write`` appends bytes at the writer's ``offset``. An ingest survives the
   writer's close and a daemon restart: reopening the ref resumes at the
   offset reached (``status(ref).offset``), so a client continues with an
   HTTP Range request. ``truncate(0)`` starts over.
3. ``commit(size, digest, labels)`` checks the size and the digest (those of
   the call, else those given when the ingest was opened). On a mismatch it
   fails with :class:`~wharfd.runtime.errors.FailedPrecondition` and keeps
   the ingest. Otherwise the data is synced and renamed atomically into the
   blob store and becomes visible in the namespace. Committing a digest the
   namespace already has fails with ``AlreadyExists``.
4. ``abort(ref)`` throws an ingest away.

Visibility. Until an ingest is committed, its content is not visible through
``info``, ``walk``, ``read`` or ``delete``. Blob *files* are shared by all
namespaces, but a namespace sees only the blobs committed in it. Under the
"shared" content policy (containerd's default), a writer whose expected digest
is already stored for another namespace starts at ``offset == size`` and may
commit without sending the bytes again; under "isolated", only blobs of
namespaces labelled ``containerd.io/namespace.shareable=true`` are shared.

Every method works in the namespace of :data:`wharfd.runtime.namespaces.current`
and fails with ``FailedPrecondition("namespace is required")`` without one.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

from google.protobuf.message import Message

from wharfd.runtime import errors

ALGORITHM = "sha256"
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_ANY_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")

# Events published after a change, with the event's namespace in namespaces.current.
TOPIC_CREATE = "/content/create"
TOPIC_DELETE = "/content/delete"
Publish = Callable[[str, Message], Awaitable[None]]

# Label a namespace with this to share its blobs under the "isolated" policy.
LABEL_SHAREABLE = "containerd.io/namespace.shareable"
POLICIES = ("shared", "isolated")


OutOfRange = errors.OutOfRange


def parse_digest(value: str, *, field: str = "digest") -> str:
    """Return ``value`` if it is a valid ``sha256:<64 lowercase hex>`` digest; raise InvalidArgument.

    ``field`` names the request field in the message. Other well-formed
    algorithms (``sha512:…``) are refused as unsupported rather than malformed.
    """
    if _DIGEST.match(value):
        return value
    if not value:
        raise errors.InvalidArgument(f"{field}: digest must not be empty")
    if _ANY_DIGEST.match(value) and not value.startswith(f"{ALGORITHM}:"):
        algorithm = value.partition(":")[0]
        raise errors.InvalidArgument(f'{field} "{value}": unsupported digest algorithm {algorithm!r}')
    raise errors.InvalidArgument(f'{field} "{value}": invalid digest, want sha256:<64 lowercase hex>')


def digest_hex(digest: str) -> str:
    """The encoded part of a valid digest (the file name under ``blobs/sha256/``)."""
    return parse_digest(digest).partition(":")[2]


@dataclass(frozen=True)
class Info:
    """A committed blob as one namespace sees it."""

    digest: str
    size: int
    created_at: datetime
    updated_at: datetime
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Status:
    """The progress of an ingest: ``offset`` bytes written of ``total`` (0 when unknown)."""

    ref: str
    offset: int
    total: int
    expected: str
    started_at: datetime
    updated_at: datetime


class Described(Protocol):
    """Anything descriptor-like: an OCI descriptor, a ``containerd.types.Descriptor``, ``Expected``."""

    @property
    def digest(self) -> str:
        """``sha256:…``, or empty when not known."""
        ...

    @property
    def size(self) -> int:
        """Bytes, or 0 when not known."""
        ...


@dataclass(frozen=True)
class Expected:
    """What a writer expects to receive; empty fields mean "not known yet"."""

    digest: str = ""
    size: int = 0
    media_type: str = ""


class Writer(Protocol):
    """One open ingest. Not safe for concurrent ``write`` calls from several tasks."""

    @property
    def ref(self) -> str:
        """The ingest's name."""
        ...

    @property
    def offset(self) -> int:
        """Bytes written so far (where a resumed download continues)."""
        ...

    def status(self) -> Status:
        """The ingest's progress."""
        ...

    def digest(self) -> str:
        """The digest of the bytes written so far."""
        ...

    async def write(self, data: bytes | memoryview) -> int:
        """Append ``data`` at :attr:`offset`; return the byte count."""
        ...

    async def truncate(self, size: int) -> None:
        """Start over; only ``size == 0`` is supported."""
        ...

    async def flush(self) -> None:
        """Hand bytes an implementation buffered to the ingest, so ``status(ref)`` sees them."""
        ...

    async def commit(
        self, size: int = 0, expected: str = "", labels: Mapping[str, str] | None = None
    ) -> Info:
        """Verify and publish the blob; the writer is closed afterwards, whatever the outcome."""
        ...

    async def close(self) -> None:
        """Release the ref, keeping the ingest for a later resume. Idempotent."""
        ...


@runtime_checkable
class BlobReader(Protocol):
    """Random access to a committed blob."""

    @property
    def size(self) -> int:
        """The blob's size in bytes."""
        ...

    async def read_at(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset`` (fewer at the end)."""
        ...

    async def close(self) -> None:
        """Release the file."""
        ...


class ContentStore(Protocol):
    """Blobs by digest, per namespace, written through resumable ingests (see the module docstring)."""

    async def info(self, digest: str) -> Info:
        """The blob as this namespace sees it; NotFound if the namespace does not have it."""
        ...

    async def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        """Change labels: ``labels.<key>`` paths set or (empty value) remove one key; ``labels`` or
        no paths replace all. Other paths are InvalidArgument."""
        ...

    async def walk(self, filters: Sequence[str] = ()) -> list[Info]:
        """The namespace's blobs matching containerd filters over ``digest``, ``size``, ``labels.*``."""
        ...

    async def delete(self, digest: str) -> None:
        """Remove the blob from this namespace; the file goes once no namespace or ingest needs it."""
        ...

    def writer(self, ref: str, expected: Described | None = None) -> AbstractAsyncContextManager[Writer]:
        """Open or resume ingest ``ref``; the writer is closed (not aborted) on exit."""
        ...

    async def open_writer(self, ref: str, expected: Described | None = None) -> Writer:
        """Like :meth:`writer` without the context manager; the caller must close it."""
        ...

    async def status(self, ref: str) -> Status:
        """The progress of ingest ``ref``; NotFound if there is none in this namespace."""
        ...

    async def list_statuses(self, filters: Sequence[str] = ()) -> list[Status]:
        """The namespace's ingests matching filters over ``ref``."""
        ...

    async def abort(self, ref: str) -> None:
        """Throw ingest ``ref`` away; NotFound if there is none."""
        ...

    async def open_blob(self, digest: str) -> Path:
        """The path of a blob this namespace has (read-only; it may vanish after a delete)."""
        ...

    async def reader_at(self, digest: str) -> BlobReader:
        """Open a blob this namespace has for random access."""
        ...
