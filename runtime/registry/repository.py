"""A repository on the hosts of its registry: URLs, HEAD checks and manifest descriptions.

Shared by the :class:`~wharfd.runtime.registry.client.Resolver`, the
:class:`~wharfd.runtime.registry.client.Fetcher` and the
:class:`~wharfd.runtime.registry.push.Pusher`.
"""

from __future__ import annotations

from collections.abc import Sequence

import aiohttp
import yarl

from wharfd.runtime import errors
from wharfd.runtime.images import mediatypes
from wharfd.runtime.images.manifest import MAX_MANIFEST_SIZE, Descriptor, digest_of
from wharfd.runtime.images.reference import Reference, parse_normalized, validate_digest
from wharfd.runtime.registry.hosts import RegistryHost
from wharfd.runtime.registry.transport import Transport, error_for, read_body


def as_ref(ref: str | Reference) -> Reference:
    """``ref`` parsed and normalized (``busybox`` is ``docker.io/library/busybox:latest``)."""
    return ref if isinstance(ref, Reference) else parse_normalized(ref)


def is_manifest_type(media_type: str) -> bool:
    """Whether content of this type lives under ``/manifests/`` rather than ``/blobs/``."""
    return (
        mediatypes.is_index(media_type)
        or mediatypes.is_manifest(media_type)
        or media_type in mediatypes.SCHEMA1_TYPES
    )


class Failures:
    """Keeps the most telling error across hosts (a size refusal beats a 404 beats a network error)."""

    def __init__(self) -> None:
        self.best: errors.WharfError | None = None
        self._rank = -1

    def note(self, exc: errors.WharfError) -> None:
        """Remember ``exc`` if it says more than what was noted before."""
        if isinstance(exc, errors.ResourceExhausted):
            rank = 3
        elif isinstance(exc, errors.NotFound):
            rank = 1
        elif isinstance(exc, errors.Unavailable | errors.DeadlineExceeded | errors.PermissionDenied):
            rank = 0
        else:
            rank = 2
        if rank > self._rank:
            self.best, self._rank = exc, rank


class Repository:
    """A repository on the hosts of its domain."""

    def __init__(self, transport: Transport, ref: Reference) -> None:
        self.transport = transport
        self.ref = ref
        self.pull_scopes = [f"repository:{ref.path}:pull"]
        self.push_scopes = [f"repository:{ref.path}:pull,push"]

    def url(self, host: RegistryHost, *parts: str) -> yarl.URL:
        """The URL of ``parts`` under this repository on ``host``."""
        url = self.transport.url(host, self.ref.path, *parts)
        # A mirror learns which upstream the request is for.
        return url.update_query(ns=self.ref.domain) if host.is_mirror_for(self.ref.domain) else url

    async def describe(self, host: RegistryHost, kind: str, obj: str, *, trust_digest: bool) -> Descriptor:
        """HEAD (or GET when the headers do not say enough) ``kind/obj`` and describe it."""
        what = f'manifest "{self.ref}"'
        url = self.url(host, kind, obj)
        for method in ("HEAD", "GET"):
            async with await self.transport.request(
                host,
                method,
                url,
                what=what,
                scopes=self.pull_scopes,
                headers={"Accept": ", ".join(mediatypes.MANIFEST_ACCEPT)},
            ) as resp:
                if resp.status >= 300:
                    raise await error_for(resp, what)
                # The transport turns HEAD into GET for registries that refuse HEAD.
                if resp.method == "GET":
                    return await self._from_body(resp, what, obj if not trust_digest else "")
                digest = resp.headers.get("Docker-Content-Digest", "") if trust_digest else obj
                size = _content_length(resp)
                if digest and size >= 0:  # the headers say enough
                    _check_manifest_size(size, what)
                    digest = validate_digest(digest, what=f"{what} digest header")
                    return Descriptor(_media_type(resp), digest, size)
        raise AssertionError("unreachable: the GET above returns or raises")

    async def _from_body(self, resp: aiohttp.ClientResponse, what: str, expected: str) -> Descriptor:
        """Describe a manifest from its body (read up to the size limit); check ``expected`` if given."""
        try:
            body = await read_body(resp, MAX_MANIFEST_SIZE, wait=self.transport.progress_timeout)
        except TimeoutError as exc:
            raise errors.DeadlineExceeded(f"{what}: body stalled") from exc
        except aiohttp.ClientError as exc:
            raise errors.Unavailable(f"{what}: connection lost while reading: {exc}") from exc
        _check_manifest_size(len(body), what)
        actual = digest_of(body)
        if expected and actual != expected:
            raise errors.DataLoss(f"{what}: the registry served content with digest {actual}")
        return Descriptor(_media_type(resp), actual, len(body))

    async def exists(
        self, host: RegistryHost, kind: str, obj: str, *, what: str, scopes: Sequence[str], expect: str = ""
    ) -> bool:
        """HEAD ``kind/obj``: True if it is there (with digest ``expect`` when given)."""
        headers = {"Accept": ", ".join(mediatypes.MANIFEST_ACCEPT)} if kind == "manifests" else {}
        async with await self.transport.request(
            host, "HEAD", self.url(host, kind, obj), what=what, scopes=scopes, headers=headers
        ) as resp:
            if resp.status == 404:
                return False
            if resp.status >= 300:
                raise await error_for(resp, what)
            found = resp.headers.get("Docker-Content-Digest", "")
            return not expect or not found or found == expect


def _media_type(resp: aiohttp.ClientResponse) -> str:
    media_type = mediatypes.base(resp.headers.get("Content-Type", ""))
    # Registries that predate content types serve schema 1 as text/plain.
    return mediatypes.DOCKER_SCHEMA1_SIGNED if media_type == "text/plain" else media_type


def _content_length(resp: aiohttp.ClientResponse) -> int:
    try:
        return int(resp.headers.get("Content-Length", -1))
    except ValueError:
        return -1


def _check_manifest_size(size: int, what: str) -> None:
    if size > MAX_MANIFEST_SIZE:
        raise errors.ResourceExhausted(f"{what} is {size} bytes; the limit is {MAX_MANIFEST_SIZE}")
