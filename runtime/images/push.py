"""Push an image from the content store to a registry repository.

The image is walked from its target (an index's entries filtered by platform
when asked), then pushed bottom-up so that a registry never sees a manifest
before what it references:

1. configs and layers, several at a time: the registry :class:`~wharfd.runtime.registry.push.Pusher`
   skips a blob the repository has (``HEAD``), else tries to mount it from the
   repositories of the same registry the blob came from (the content label
   ``containerd.io/distribution.source.<host>``), else uploads it from the
   content store, re-hashing as it reads;
2. manifests, then indexes, each after its children; the root last, under the
   reference's tag (or by digest when the reference has none).

Non-distributable (foreign) layers are not pushed, as registries refuse them.
Progress records follow containerd's push: ``waiting``, ``uploading``,
``complete`` or ``already exists`` per node, between "Pushing to …" and
"Completed push to …".
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field

from wharfd.runtime import errors
from wharfd.runtime.content.store import ContentStore
from wharfd.runtime.images import labels, mediatypes, walk
from wharfd.runtime.images.manifest import Descriptor
from wharfd.runtime.images.platforms import Matcher
from wharfd.runtime.images.progress import Progress, ProgressFn, Throttle, ref_key
from wharfd.runtime.registry.hosts import split_port
from wharfd.runtime.registry.push import Pusher, PushResult

DEFAULT_CONCURRENT_UPLOADS = 3


@dataclass(frozen=True)
class PushOptions:
    """How to push."""

    platforms: Matcher | None = None  # index entries to push; None: all
    max_concurrent_uploads: int = DEFAULT_CONCURRENT_UPLOADS
    progress: ProgressFn | None = None
    root_name: str = ""  # the progress tree's root (the image name)


@dataclass
class _Node:
    desc: Descriptor
    parents: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)


async def push_image(store: ContentStore, pusher: Pusher, target: Descriptor, opts: PushOptions) -> None:
    """Push ``target`` and everything it references to ``pusher``'s repository."""
    report = Throttle(opts.progress)
    nodes: dict[str, _Node] = {}
    await _collect(store, target, opts.root_name or ref_key(target), opts.platforms, nodes)
    for node in nodes.values():
        report(Progress("waiting", ref_key(node.desc), tuple(node.parents), 0, node.desc.size, node.desc))
    blobs = [n.desc for n in nodes.values() if not n.children and not _is_tree(n.desc)]
    limit = asyncio.Semaphore(max(1, opts.max_concurrent_uploads))

    async def one(desc: Descriptor) -> None:
        async with limit:
            await _push_blob(store, pusher, desc, nodes[desc.digest], report)

    try:
        async with asyncio.TaskGroup() as group:
            for desc in blobs:
                group.create_task(one(desc))
    except BaseExceptionGroup as failed:
        raise _first(failed) from None
    for desc in _post_order(target.digest, nodes):
        reference = pusher.ref.tag if desc.digest == target.digest else ""
        data = await walk.read_blob(store, desc)
        result = await pusher.push_manifest(desc, data, reference=reference)
        _done(report, nodes[desc.digest], result)


def _is_tree(desc: Descriptor) -> bool:
    return mediatypes.is_index(desc.media_type) or mediatypes.is_manifest(desc.media_type)


async def _collect(
    store: ContentStore, desc: Descriptor, parent: str, matcher: Matcher | None, nodes: dict[str, _Node]
) -> None:
    node = nodes.get(desc.digest)
    if node is not None:
        node.parents.append(parent)
        return
    node = nodes[desc.digest] = _Node(desc, [parent])
    kids = await walk.children(store, desc)
    if matcher is not None and mediatypes.is_index(desc.media_type):
        kids = walk.by_platform(kids, matcher)
    for kid in kids:
        if mediatypes.is_non_distributable(kid.media_type):
            continue
        node.children.append(kid.digest)
        await _collect(store, kid, ref_key(desc), matcher, nodes)


def _post_order(root: str, nodes: dict[str, _Node]) -> list[Descriptor]:
    """Manifests and indexes, every one after all its children."""
    out: list[Descriptor] = []
    seen: set[str] = set()

    def visit(digest: str) -> None:
        if digest in seen:
            return
        seen.add(digest)
        node = nodes[digest]
        for child in node.children:
            visit(child)
        if _is_tree(node.desc):
            out.append(node.desc)

    visit(root)
    return out


async def _push_blob(
    store: ContentStore, pusher: Pusher, desc: Descriptor, node: _Node, report: Throttle
) -> None:
    name, parents = ref_key(desc), tuple(node.parents)
    sent = 0

    def opener(offset: int) -> AsyncIterator[bytes]:
        return _counting(walk.blob_chunks(store, desc, offset), offset, tick)

    def tick(count: int) -> None:
        nonlocal sent
        sent = count
        report(Progress("uploading", name, parents, sent, desc.size, desc))

    info = await store.info(desc.digest)
    result = await pusher.push_blob(desc, opener, mount_from=mount_sources(info.labels, pusher))
    _done(report, node, result)


async def _counting(
    chunks: AsyncIterator[bytes], offset: int, tick: Callable[[int], None]
) -> AsyncIterator[bytes]:
    count = offset
    async for chunk in chunks:
        count += len(chunk)
        tick(count)
        yield chunk


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The failure to report for a group of uploads: the first one, as its most specific cause."""
    exc: BaseException = group.exceptions[0]
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    # The HTTP layer wraps a failing body (a blob whose stored bytes are corrupt) as Unavailable.
    cause = exc.__cause__ or exc.__context__
    while cause is not None:
        if isinstance(cause, errors.DataLoss):
            return cause
        cause = cause.__cause__ or cause.__context__
    return exc


def _done(report: Throttle, node: _Node, result: PushResult) -> None:
    desc = node.desc
    event = "already exists" if result is PushResult.EXISTS else "complete"
    report(Progress(event, ref_key(desc), tuple(node.parents), desc.size, desc.size, desc))


def mount_sources(blob_labels: Mapping[str, str], pusher: Pusher) -> list[str]:
    """Repositories of the pusher's registry a blob came from, per its distribution source labels."""
    host = pusher.ref.domain
    keys = {labels.DISTRIBUTION_SOURCE + host, labels.DISTRIBUTION_SOURCE + split_port(host)[0]}
    repos: list[str] = []
    for key in sorted(keys):
        for repo in blob_labels.get(key, "").split(","):
            if repo and repo != pusher.ref.path and repo not in repos:
                repos.append(repo)
    return repos
