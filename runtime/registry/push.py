"""Upload blobs and manifests: skip what exists, mount across repositories, PUT or PATCH in chunks.

The distribution API's upload flow: ``HEAD`` the blob (done if present);
``POST .../blobs/uploads/?mount=<digest>&from=<repo>`` for each repository
that may hold it (201 means mounted, 202 starts an ordinary upload); otherwise
``POST .../blobs/uploads/``; then either one ``PUT <location>?digest=`` with
the whole body, or ``PATCH`` requests with ``Content-Range`` and a final empty
``PUT``. Manifests go last, with ``PUT .../manifests/<tag or digest>``.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable, Sequence

import aiohttp
import yarl

from wharfd.runtime import errors
from wharfd.runtime.images.manifest import Descriptor, verify
from wharfd.runtime.registry.hosts import Capability, RegistryHost
from wharfd.runtime.registry.repository import Repository
from wharfd.runtime.registry.transport import CHUNK_SIZE, error_for

# Opens a blob's bytes from an offset: how a pusher reads what it uploads (again, on retry).
BlobSource = bytes | Callable[[int], AsyncIterator[bytes]]


class PushResult(enum.Enum):
    """What a push did."""

    EXISTS = "exists"
    MOUNTED = "mounted"
    UPLOADED = "uploaded"


class Pusher(Repository):
    """Uploads blobs and manifests to one repository (on the first host allowed to push)."""

    async def _host(self) -> RegistryHost:
        hosts = await self.transport.hosts(self.ref.domain, Capability.PUSH)
        if not hosts:
            raise errors.FailedPrecondition(f"{self.ref.name}: no host of {self.ref.domain} accepts pushes")
        return hosts[0]

    async def push_blob(
        self,
        desc: Descriptor,
        source: BlobSource,
        *,
        mount_from: Sequence[str] = (),
        chunk_size: int | None = None,
    ) -> PushResult:
        """Upload a blob unless the repository has it; try to mount it from ``mount_from`` repositories first.

        ``mount_from`` holds repository paths on the same registry (``team/base``).
        ``chunk_size`` switches from one PUT to a series of PATCH requests.
        """
        host = await self._host()
        what = f"blob {desc.digest} to {self.ref.name}"
        scopes = self.push_scopes + [f"repository:{repo}:pull" for repo in mount_from]
        if await self.exists(host, "blobs", desc.digest, what=what, scopes=scopes):
            return PushResult.EXISTS
        location = None
        for repo in mount_from:
            url = self.url(host, "blobs", "uploads/").update_query({"mount": desc.digest, "from": repo})
            async with await self._post(host, url, what, scopes) as resp:
                if resp.status == 201:
                    return PushResult.MOUNTED
                if resp.status == 202:  # not mountable: the answer is a fresh upload session
                    location = _location(resp, url, what)
                    break
        if location is None:
            url = self.url(host, "blobs", "uploads/")
            async with await self._post(host, url, what, scopes) as resp:
                if resp.status != 202:
                    raise await error_for(resp, what)
                location = _location(resp, url, what)
        opener = source if callable(source) else _bytes_opener(source)
        if chunk_size:
            location = await self._patch_chunks(
                host, location, desc, opener=opener, chunk_size=chunk_size, what=what, scopes=scopes
            )
            await self._finish(host, location, desc, body=b"", what=what, scopes=scopes)
        else:
            await self._finish(host, location, desc, body=lambda: opener(0), what=what, scopes=scopes)
        return PushResult.UPLOADED

    async def push_manifest(self, desc: Descriptor, data: bytes, *, reference: str = "") -> PushResult:
        """PUT a manifest or index under ``reference`` (a tag; the digest when empty)."""
        verify(desc, data)
        host = await self._host()
        target = reference or desc.digest
        separator = "@" if target == desc.digest else ":"
        what = f'manifest {desc.digest} to "{self.ref.name}{separator}{target}"'
        scopes = self.push_scopes
        if await self.exists(host, "manifests", target, what=what, scopes=scopes, expect=desc.digest):
            return PushResult.EXISTS
        url = self.url(host, "manifests", target)
        async with await self.transport.request(
            host,
            "PUT",
            url,
            what=what,
            scopes=self.push_scopes,
            headers={"Content-Type": desc.media_type},
            body=data,
        ) as resp:
            if resp.status != 201:
                raise await error_for(resp, what)
            _check_digest(resp, desc, what)
        return PushResult.UPLOADED

    async def _post(
        self, host: RegistryHost, url: yarl.URL, what: str, scopes: Sequence[str]
    ) -> aiohttp.ClientResponse:
        return await self.transport.request(
            host, "POST", url, what=what, scopes=scopes, headers={"Content-Length": "0"}
        )

    async def _patch_chunks(
        self,
        host: RegistryHost,
        location: yarl.URL,
        desc: Descriptor,
        *,
        opener: Callable[[int], AsyncIterator[bytes]],
        chunk_size: int,
        what: str,
        scopes: Sequence[str],
    ) -> yarl.URL:
        offset = 0
        async for piece in _rechunk(opener(0), chunk_size):
            end = offset + len(piece) - 1
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{offset}-{end}",
                "Content-Length": str(len(piece)),
            }
            async with await self.transport.request(
                host, "PATCH", location, what=what, scopes=scopes, headers=headers, body=piece, wait=None
            ) as resp:
                if resp.status != 202:
                    raise await error_for(resp, what)
                location = _location(resp, location, what)
            offset = end + 1
        if offset != desc.size:
            raise errors.InvalidArgument(
                f"{what}: the source gave {offset} bytes, the descriptor says {desc.size}"
            )
        return location

    async def _finish(
        self,
        host: RegistryHost,
        location: yarl.URL,
        desc: Descriptor,
        *,
        body: bytes | Callable[[], AsyncIterator[bytes]],
        what: str,
        scopes: Sequence[str],
    ) -> None:
        size = 0 if isinstance(body, bytes) else desc.size
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        url = location.extend_query({"digest": desc.digest})
        async with await self.transport.request(
            host, "PUT", url, what=what, scopes=scopes, headers=headers, body=body, wait=None
        ) as resp:
            if resp.status != 201:
                raise await error_for(resp, what)
            _check_digest(resp, desc, what)


def _location(resp: aiohttp.ClientResponse, base: yarl.URL, what: str) -> yarl.URL:
    location = resp.headers.get("Location")
    if not location:
        raise errors.Unavailable(f"{what}: the registry gave no upload location")
    return base.join(yarl.URL(location, encoded=True))


def _check_digest(resp: aiohttp.ClientResponse, desc: Descriptor, what: str) -> None:
    stored = resp.headers.get("Docker-Content-Digest")
    if stored and stored != desc.digest:
        raise errors.DataLoss(f"{what}: the registry stored it as {stored}")


def _bytes_opener(data: bytes) -> Callable[[int], AsyncIterator[bytes]]:
    async def opener(offset: int) -> AsyncIterator[bytes]:
        view = memoryview(data)
        for start in range(offset, len(data), CHUNK_SIZE):
            yield bytes(view[start : start + CHUNK_SIZE])

    return opener


async def _rechunk(stream: AsyncIterator[bytes], size: int) -> AsyncIterator[bytes]:
    buffer = bytearray()
    async for data in stream:
        buffer += data
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)
