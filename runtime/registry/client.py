"""Resolve references and fetch content over the distribution (OCI) HTTP API.

The resolver, its fetchers and its pushers (:mod:`~wharfd.runtime.registry.push`)
share one :class:`~wharfd.runtime.registry.transport.Transport`::

    async with Transport(HostsConfig(config_path), credentials) as transport:
        resolver = Resolver(transport)
        name, desc = await resolver.resolve("docker.io/library/busybox:latest")
        fetcher = resolver.fetcher(name)
        index = await fetcher.read(desc)                  # small objects: bounded, digest-verified
        await fetcher.fetch_to(layer, ingest.write, offset=n)  # blobs: handed to a blocking writer
        await resolver.pusher(name).push_blob(layer, opener, mount_from=["library/base"])

Nothing here touches the disk: the pull pipeline pairs a fetcher with a
content-store ingest (which verifies blob digests) and resumes from the
ingest's offset. Fetch streams check the size and raise ``DeadlineExceeded``
when no byte arrives for ``progress_timeout`` seconds, and ``Unavailable`` when
the connection drops (resume from the bytes already written).

Blobs (:meth:`Fetcher.fetch_to`) are read on a thread, 1 MiB at a time, over a
connection of their own (:meth:`Transport.request_blocking`), and handed to
the caller's blocking writer on that thread: the event loop only sees the
requests, never the bytes.
"""

from __future__ import annotations

import asyncio
import http.client
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TypeVar

import aiohttp

from wharfd.runtime import errors
from wharfd.runtime.images import mediatypes
from wharfd.runtime.images.manifest import MAX_MANIFEST_SIZE, Descriptor, verify
from wharfd.runtime.images.reference import Reference
from wharfd.runtime.registry.hosts import Capability
from wharfd.runtime.registry.push import Pusher
from wharfd.runtime.registry.repository import Failures, Repository, as_ref, is_manifest_type
from wharfd.runtime.registry.transport import (
    CHUNK_SIZE,
    BlockingResponse,
    Response,
    Transport,
    error_for,
    run_blocking,
)

BlobWriter = Callable[[memoryview], object]
"""Where fetched bytes go (a content-store ingest's blocking write): told nothing but the bytes, in order.

Called from a thread; the view is reused after the call returns.
"""

R = TypeVar("R", bound=Response)
B = TypeVar("B", bytes, memoryview)


class Resolver:
    """Turns references into descriptors, and hands out fetchers and pushers."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def fetcher(self, ref: str | Reference) -> Fetcher:
        """A fetcher for the repository of ``ref``."""
        return Fetcher(self.transport, as_ref(ref))

    def pusher(self, ref: str | Reference) -> Pusher:
        """A pusher for the repository of ``ref``."""
        return Pusher(self.transport, as_ref(ref))

    async def resolve(self, ref: str | Reference) -> tuple[str, Descriptor]:
        """Return the normalized name and the descriptor of the manifest or index ``ref`` names."""
        ref = as_ref(ref)
        if not ref.object:
            raise errors.InvalidArgument(f'reference "{ref}": needs a tag or a digest to resolve')
        if ref.digest:
            paths, capability = [("manifests", ref.digest), ("blobs", ref.digest)], Capability.PULL
        else:
            paths, capability = [("manifests", ref.tag)], Capability.PULL | Capability.RESOLVE
        repo = Repository(self.transport, ref)
        hosts = await self.transport.hosts(ref.domain, capability)
        if not hosts:
            raise errors.NotFound(f'manifest "{ref}": no host of {ref.domain} may resolve it')
        failures = Failures()
        for kind, obj in paths:
            for host in hosts:
                try:
                    desc = await repo.describe(host, kind, obj, trust_digest=not ref.digest)
                except errors.WharfError as exc:
                    failures.note(exc)
                    continue
                if desc.media_type in mediatypes.SCHEMA1_TYPES:
                    raise errors.NotImplemented(
                        f'manifest "{ref}": Docker schema 1 images are not supported; rebuild it as '
                        f"{mediatypes.DOCKER_MANIFEST} or {mediatypes.OCI_MANIFEST}"
                    )
                return str(ref), desc
        raise failures.best or errors.NotFound(f'manifest "{ref}": not found')


class Fetcher(Repository):
    """Reads manifests and blobs of one repository."""

    async def read(self, desc: Descriptor, *, limit: int = MAX_MANIFEST_SIZE) -> bytes:
        """The whole of a small object (manifest, index, config), size-bounded and digest-verified."""
        if desc.size > limit:
            raise errors.ResourceExhausted(f"{desc.digest} is {desc.size} bytes; the limit is {limit}")
        parts = [chunk async for chunk in self.fetch(desc)]
        data = b"".join(parts)
        verify(desc, data)
        return data

    async def fetch_to(
        self, desc: Descriptor, writer: BlobWriter, *, offset: int = 0, retries: int = 0
    ) -> int:
        """Write ``desc``'s bytes from ``offset`` with ``writer`` (on a thread); resume up to ``retries`` times.

        Returns the number of bytes written. A dropped or stalled connection is
        retried from where it stopped; the last failure is raised as is.
        """
        written = [0]
        for attempt in range(retries + 1):
            try:
                await self._copy(desc, writer, offset + written[0], written)
                break
            except (errors.Unavailable, errors.DeadlineExceeded):
                if attempt == retries:
                    raise
        return written[0]

    async def _copy(self, desc: Descriptor, writer: BlobWriter, offset: int, written: list[int]) -> None:
        """Copy the blob from ``offset`` on a thread, counting bytes into ``written[0]``."""
        if not 0 <= offset <= desc.size:
            raise errors.InvalidArgument(f"{desc.digest}: offset {offset} is outside 0..{desc.size}")
        if offset == desc.size:
            return
        resp = await self._open(desc, offset, self.transport.request_blocking)
        body = self._body(desc, offset, resp)
        copying = run_blocking(self._copy_body, resp, body, writer, written)
        cancelled = False
        while not copying.done():
            try:
                await asyncio.wait([copying])
            except asyncio.CancelledError:
                # The thread must be done with the writer before the caller closes it: make its
                # read fail now, and wait for it.
                cancelled = True
                resp.abort()
        resp.release()
        if cancelled:
            copying.exception()  # the abort's doing
            raise asyncio.CancelledError
        copying.result()

    @staticmethod
    def _copy_body(resp: BlockingResponse, body: _Body, writer: BlobWriter, written: list[int]) -> None:
        """The thread's part (a registry I/O thread, transport.run_blocking): read 1 MiB at a time
        (the GIL is free meanwhile) and write it."""
        view = memoryview(bytearray(CHUNK_SIZE))
        while True:
            try:
                n = resp.readinto(view)
            except (http.client.HTTPException, OSError) as exc:
                raise body.failed(exc) from exc
            if n == 0:
                break
            if chunk := body.take(view[:n]):
                writer(chunk)
                written[0] += len(chunk)
        body.end()

    async def fetch(self, desc: Descriptor, *, offset: int = 0) -> AsyncGenerator[bytes, None]:
        """Stream ``desc``'s bytes from ``offset`` (close the iterator if you stop early)."""
        if not 0 <= offset <= desc.size:
            raise errors.InvalidArgument(f"{desc.digest}: offset {offset} is outside 0..{desc.size}")
        if offset == desc.size:
            return
        resp = await self._open(desc, offset, self.transport.request)
        body = self._body(desc, offset, resp)
        async with resp:
            chunks = resp.content.iter_chunked(CHUNK_SIZE).__aiter__()
            while True:
                try:
                    async with asyncio.timeout(self.transport.progress_timeout):
                        chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                except (aiohttp.ClientError, OSError) as exc:
                    raise body.failed(exc) from exc
                if chunk := body.take(chunk):
                    yield chunk
        body.end()

    def _what(self, desc: Descriptor) -> str:
        kind = "manifest" if is_manifest_type(desc.media_type) else "blob"
        return f"{kind} {desc.digest} of {self.ref.name}"

    def _body(self, desc: Descriptor, offset: int, resp: Response) -> _Body:
        return _Body(self._what(desc), desc.size, offset, resp.status, self.transport.progress_timeout)

    async def _open(self, desc: Descriptor, offset: int, request: Callable[..., Awaitable[R]]) -> R:
        """Request the blob from ``offset`` with ``request`` (one of the transport's); a 200 or a 206."""
        what = self._what(desc)
        kinds = ["manifests", "blobs"] if is_manifest_type(desc.media_type) else ["blobs"]
        headers = {"Accept": f"{desc.media_type}, */*" if desc.media_type else "*/*"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        hosts = await self.transport.hosts(self.ref.domain, Capability.PULL)
        failures = Failures()
        for kind in kinds:
            for host in hosts:
                try:
                    resp = await request(
                        host,
                        "GET",
                        self.url(host, kind, desc.digest),
                        what=what,
                        scopes=self.pull_scopes,
                        headers=headers,
                    )
                except errors.WharfError as exc:
                    failures.note(exc)
                    continue
                content_range = resp.headers.get("Content-Range", "")
                if resp.status == 206 and not content_range.startswith(f"bytes {offset}-"):
                    resp.release()
                    failures.note(errors.Unavailable(f"{what}: server answered a different range"))
                elif resp.status in (200, 206):
                    return resp
                else:
                    failures.note(await error_for(resp, what))
        raise failures.best or errors.NotFound(f"{what}: no host of {self.ref.domain} may serve it")


class _Body:
    """A blob's body as it arrives from ``offset``, pooled or on a thread.

    What a server that ignored Range sends again is dropped, more than the
    size is DataLoss, and a failed read or a short stream is an error naming
    the byte to resume from.
    """

    def __init__(self, what: str, size: int, offset: int, status: int, timeout: float) -> None:
        self.what = what
        self.size = size
        self.position = offset
        # A server that ignored Range (200, not 206) sends everything: skip what we already have.
        self._skip = offset if status == 200 else 0
        self._timeout = timeout

    def take(self, chunk: B) -> B:
        """The part of ``chunk`` that is new (maybe none of it); DataLoss past the size."""
        if self._skip:
            dropped = min(self._skip, len(chunk))
            chunk, self._skip = chunk[dropped:], self._skip - dropped
        if self.position + len(chunk) > self.size:
            raise errors.DataLoss(f"{self.what}: server sent more than {self.size} bytes")
        self.position += len(chunk)
        return chunk

    def failed(self, exc: Exception) -> errors.WharfError:
        """The error for a read that failed: a stall (TimeoutError) or a lost connection."""
        if isinstance(exc, TimeoutError):
            return errors.DeadlineExceeded(
                f"{self.what}: no data for {self._timeout:g}s at byte {self.position} of {self.size}"
            )
        return errors.Unavailable(
            f"{self.what}: connection lost at byte {self.position} of {self.size} ({exc}); "
            f"resume from {self.position}"
        )

    def end(self) -> None:
        """Unavailable (resumable) when the stream ended short of the size."""
        if self.position != self.size:
            raise errors.Unavailable(
                f"{self.what}: stream ended at byte {self.position} of {self.size}; resume from {self.position}"
            )
