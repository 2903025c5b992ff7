"""The CRI's view of images: records grouped by image ID, and the lookups every image RPC shares.

The image store (namespace ``k8s.io``) is the only source of truth. A pulled
image has up to three records, all pointing at one target, as containerd's
CRI keeps them::

    registry.example/app:1                          repo tag
    registry.example/app@sha256:<index or manifest> repo digest
    sha256:<config digest>                          the image ID

What a target means on this host (the chosen manifest, the config, the chain
ID, the size) never changes, since content is addressed by digest, so it is
computed once per target digest and cached. Records are read afresh on every
call, so an image removed with ``wharf -n k8s.io images rm`` disappears from
the CRI at once. Targets that do not resolve here (content missing, no manifest
for this platform, not an image) are left out, as containerd leaves them out.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.runtime import errors
from wharfd.runtime.content.store import ContentStore
from wharfd.runtime.images import chainid, manifest, mediatypes, platforms, reference, walk
from wharfd.runtime.metadata.images import Descriptor, Image, ImageStore

if TYPE_CHECKING:
    from wharfd.cri.config import Config

log = logging.getLogger("wharfd.cri.images")

# The labels containerd's CRI puts on image records (internal/cri/labels).
LABEL_IMAGE = "io.cri-containerd.image"
IMAGE_MANAGED = "managed"
LABEL_PINNED = "io.cri-containerd.pinned"
PINNED = "pinned"

_MAX_NESTING = 4  # indexes inside indexes, at most this deep


@dataclass(frozen=True)
class ImageConfig:
    """The CRI plugin's image settings (``[plugins."io.containerd.grpc.v1.cri"]``)."""

    snapshotter: str = "overlayfs"
    sandbox_image: str = "registry.k8s.io/pause:3.10"
    config_path: str = ""  # registry.config_path: hosts.toml directories
    max_concurrent_downloads: int = 3
    progress_timeout: float = 300.0  # image_pull_progress_timeout; 0 disables it
    stats_collect_period: float = 10.0
    # Runtime handlers that unpack into a snapshotter of their own.
    runtime_snapshotters: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_daemon(cls, config: Config) -> ImageConfig:
        """Read the settings from the daemon's effective configuration."""
        from wharfd.cri.config import CRI

        section = config.plugin(CRI)
        runtimes = section.get("containerd", {}).get("runtimes", {})
        return cls(
            snapshotter=section["containerd"]["snapshotter"],
            sandbox_image=section["sandbox_image"],
            config_path=section.get("registry", {}).get("config_path", ""),
            max_concurrent_downloads=int(section["max_concurrent_downloads"]),
            progress_timeout=config.duration(CRI, "image_pull_progress_timeout"),
            stats_collect_period=float(section["stats_collect_period"]),
            runtime_snapshotters={
                name: rt["snapshotter"] for name, rt in runtimes.items() if rt.get("snapshotter")
            },
        )

    def snapshotter_for(self, runtime_handler: str) -> str:
        """The snapshotter images for ``runtime_handler`` unpack into (the default one if it names none)."""
        return self.runtime_snapshotters.get(runtime_handler, "") or self.snapshotter


@dataclass(frozen=True)
class Resolved:
    """What an image target is on this host; immutable, because content is addressed by digest."""

    config_digest: str
    manifest_digest: str
    chain_id: str
    size: int  # target (if an index) + manifest + config + layers, as their descriptors say
    config: Mapping[str, Any] = field(repr=False)


@dataclass(frozen=True)
class CriImage:
    """One CRI image: every record whose target resolves to the same config."""

    id: str
    references: tuple[str, ...]
    chain_id: str
    size: int
    config: Mapping[str, Any] = field(repr=False)
    pinned: bool = False
    target: Descriptor | None = None
    # Each reference's target digest, so a removal can refuse a name re-pointed meanwhile.
    targets: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def repo_tags(self) -> list[str]:
        """The tagged references, normalized (``docker.io/library/busybox:1``)."""
        return split_references(self.references)[0]

    @property
    def repo_digests(self) -> list[str]:
        """The digested references (``docker.io/library/busybox@sha256:…``)."""
        return split_references(self.references)[1]

    @property
    def user(self) -> str:
        """The image config's ``User`` (``""`` when unset)."""
        run = self.config.get("config") or {}
        value = run.get("User", "") if isinstance(run, Mapping) else ""
        return value if isinstance(value, str) else ""


def parse_docker_ref(name: str) -> reference.Reference:
    """Normalize ``name`` as the CRI does: ``latest`` when untagged, and a digest wins over a tag."""
    ref = reference.parse_normalized(name)  # its errors name the reference
    if ref.digest and ref.tag:
        ref = ref.with_digest(ref.digest)
    return ref


def split_references(names: Iterable[str]) -> tuple[list[str], list[str]]:
    """Split record names into repo tags and repo digests; image IDs and junk belong to neither."""
    tags: list[str] = []
    digests: list[str] = []
    for name in names:
        rank, normalized = _classify(name)
        if rank in (0, 2):
            digests.append(normalized)
        elif rank == 1:
            tags.append(normalized)
    return tags, digests


@functools.lru_cache(maxsize=8192)
def _classify(name: str) -> tuple[int, str]:
    """``(rank, normalized name)``; ranks sort as containerd sorts references, most information first:
    0 tag and digest, 1 tag, 2 digest, 3 neither (image IDs, names that do not parse)."""
    if reference.is_digest(name):
        return 3, ""
    try:
        ref = reference.parse(name)
    except errors.InvalidArgument:
        return 3, ""
    rank = {(True, True): 0, (True, False): 1, (False, True): 2}.get((bool(ref.tag), bool(ref.digest)), 3)
    return rank, str(ref)


def user_of(userstr: str) -> tuple[int | None, str]:
    """``(uid, "")`` for a numeric user, ``(None, name)`` otherwise; a ``:group`` part is ignored."""
    user = userstr.split(":", 1)[0]
    if not user:
        return None, ""
    try:
        uid = int(user, 10)
    except ValueError:
        return None, user
    # Go's ParseInt accepts only a 64-bit range; a larger number is a name there too.
    return (uid, "") if -(2**63) <= uid < 2**63 else (None, user)


def to_cri(image: CriImage) -> cri.Image:
    """The ``runtime.v1.Image`` message of an image."""
    uid, username = user_of(image.user)
    msg = cri.Image(
        id=image.id,
        repo_tags=image.repo_tags,
        repo_digests=image.repo_digests,
        size=image.size,
        username=username,
        spec=cri.ImageSpec(image=image.id),
        pinned=image.pinned,
    )
    if uid is not None:
        msg.uid.value = uid
    return msg


class View:
    """All CRI images at one moment, with the indexes the lookups need; images are built on demand."""

    def __init__(
        self, groups: Mapping[str, list[Image]], by_name: Mapping[str, str], resolved: Mapping[str, Resolved]
    ) -> None:
        self._groups = groups  # image ID → its records
        self.by_name = by_name  # record name → image ID
        self._resolved = resolved  # target digest → what it resolved to
        self._built: dict[str, CriImage] = {}

    def images(self) -> list[CriImage]:
        """Every image, sorted by ID."""
        return [self._image(k) for k in sorted(self._groups)]

    def find(self, ref_or_id: str) -> CriImage:
        """Resolve a tag, digest reference, image ID or unambiguous ID prefix; NotFound otherwise.

        The order is containerd's ``LocalResolve``: a full digest is an ID; a
        name is normalized and looked up; anything else is tried as an ID prefix.
        """
        if not ref_or_id:
            raise errors.InvalidArgument("image: the image spec must name an image (tag, digest or ID)")
        if reference.is_digest(ref_or_id):
            return self._by_id(ref_or_id)
        try:
            image_id = self.by_name.get(str(parse_docker_ref(ref_or_id)))
        except errors.InvalidArgument:
            image_id = None
        if image_id is not None:
            return self._image(image_id)
        return self._by_prefix(ref_or_id)

    def _by_id(self, image_id: str) -> CriImage:
        if image_id not in self._groups:
            raise errors.NotFound(f'image "{image_id}": not found')
        return self._image(image_id)

    def _image(self, image_id: str) -> CriImage:
        image = self._built.get(image_id)
        if image is None:
            image = self._built[image_id] = self._merge(image_id, self._groups[image_id])
        return image

    def _merge(self, image_id: str, group: list[Image]) -> CriImage:
        resolved = self._resolved[group[0].target.digest]
        names = sorted((r.name for r in group), key=lambda n: (_classify(n)[0], n))
        return CriImage(
            id=image_id,
            references=tuple(names),
            chain_id=resolved.chain_id,
            size=resolved.size,
            config=resolved.config,
            pinned=any(r.labels.get(LABEL_PINNED) == PINNED for r in group),
            target=group[0].target,
            targets={r.name: r.target.digest for r in group},
        )

    def _by_prefix(self, prefix: str) -> CriImage:
        algorithm, sep, hex_prefix = prefix.rpartition(":")
        if not hex_prefix or any(c not in "0123456789abcdef" for c in hex_prefix):
            raise errors.NotFound(f'image "{prefix}": not found')
        matches = [
            i
            for i in self._groups
            if i.partition(":")[2].startswith(hex_prefix) and (not sep or i.partition(":")[0] == algorithm)
        ]
        if not matches:
            raise errors.NotFound(f'image "{prefix}": not found')
        if len(matches) > 1:
            raise errors.InvalidArgument(
                f'image ID prefix "{prefix}" is ambiguous: it matches {len(matches)} images'
            )
        return self._image(matches[0])


class Catalog:
    """Builds :class:`View` objects from the image store and the content store (namespace ``k8s.io``)."""

    def __init__(
        self, images: ImageStore, content: ContentStore, *, matcher: platforms.Matcher | None = None
    ) -> None:
        self.images = images
        self.content = content
        self._matcher = matcher or platforms.default()
        self._resolved: dict[str, Resolved] = {}

    async def view(self) -> View:
        """Every record of the namespace, grouped by image ID."""
        records = await self.images.list()
        groups: dict[str, list[Image]] = {}
        by_name: dict[str, str] = {}
        # This view's own table: a concurrent view pruning the cache cannot take entries from it.
        resolved_here: dict[str, Resolved] = {}
        for record in records:
            resolved = await self._try_resolve(record)
            if resolved is None:
                continue
            resolved_here[record.target.digest] = resolved
            groups.setdefault(resolved.config_digest, []).append(record)
            by_name[record.name] = resolved.config_digest
        # Forget targets no record names any more (removed images); a concurrent view that
        # still wanted one merely resolves it again.
        live = {r.target.digest for r in records}
        self._resolved = {d: r for d, r in self._resolved.items() if d in live}
        return View(groups, by_name, resolved_here)

    async def find(self, ref_or_id: str) -> CriImage:
        """The image a tag, digest reference, ID or ID prefix names; NotFound otherwise."""
        return (await self.view()).find(ref_or_id)

    async def resolve(self, target: Descriptor) -> Resolved:
        """What ``target`` is on this host (cached by digest); NotFound or InvalidArgument if unusable."""
        cached = self._resolved.get(target.digest)
        if cached is not None:
            return cached
        resolved = await self._resolve(target)
        self._resolved[target.digest] = resolved
        return resolved

    async def _try_resolve(self, record: Image) -> Resolved | None:
        try:
            return await self.resolve(record.target)
        except (errors.NotFound, errors.InvalidArgument, errors.NotImplemented, errors.DataLoss) as exc:
            log.debug("image %s is not usable by the CRI: %s", record.name, exc)
            return None
        except errors.ResourceExhausted as exc:
            log.warning("image %s is not usable by the CRI: %s", record.name, exc)
            return None

    async def _resolve(self, target: Descriptor) -> Resolved:
        desc = manifest.Descriptor(target.media_type, target.digest, target.size)
        size = 0
        for _ in range(_MAX_NESTING):
            manifest.check_manifest_type(desc.media_type, f"manifest {desc.digest}")
            doc = await walk.read_index_or_manifest(self.content, desc)
            size += desc.size
            if isinstance(doc, manifest.Manifest):
                return await self._from_manifest(desc, doc, size)
            chosen = manifest.select(doc, self._matcher)
            if not chosen:
                raise errors.NotFound(
                    f"index {desc.digest}: no manifest for platform {platforms.format_platform(platforms.host())}"
                )
            desc = chosen[0]
        raise errors.InvalidArgument(f"image {target.digest}: indexes nested more than {_MAX_NESTING} deep")

    async def _from_manifest(self, desc: manifest.Descriptor, doc: manifest.Manifest, size: int) -> Resolved:
        if not mediatypes.is_config(doc.config.media_type):
            raise errors.InvalidArgument(
                f'manifest {desc.digest}: config media type "{doc.config.media_type}" is not an image config'
            )
        data = await walk.read_blob(self.content, doc.config, limit=manifest.MAX_CONFIG_SIZE)
        config = await walk.parse_sized(manifest.parse_config, data, what=f"image config {doc.config.digest}")
        diff_ids = config.diff_ids
        return Resolved(
            config_digest=doc.config.digest,
            manifest_digest=desc.digest,
            chain_id=chainid.chain_id(diff_ids) if diff_ids else "",
            size=size + doc.config.size + sum(max(layer.size, 0) for layer in doc.layers),
            config=config.raw,
        )


def verbose_info(image: CriImage) -> dict[str, str]:
    """The ``info`` map of a verbose ImageStatus: ``{"info": {"chainID", "imageSpec"}}`` as JSON."""
    body = {"chainID": image.chain_id, "imageSpec": image.config}
    return {"info": json.dumps(body, separators=(",", ":"))}
