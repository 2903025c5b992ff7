"""Reading a stored image as ctr's image helpers do: index → this platform's manifest → config, chain id.

:class:`ImageReader` walks the blobs of an image that is already in a content
store, through a function that returns a whole blob (``read(digest, limit)``):
the ``wharf`` CLI passes one that calls ``Content.Read`` on the daemon. It picks
the manifest for a platform (containerd's ``images.Manifest``), reads the image
config, and derives what ctr derives from them: the size of an image for the
host, the platforms it offers, the chain id its unpacked snapshot is named by.
Blobs are cached by digest, so one reader may answer several questions about an
image (or many images sharing blobs) for the price of one read each.

It is synchronous, for clients. The daemon's own readers are asynchronous and
read the store directly (:mod:`wharfd.runtime.images.walk`, the CRI's image index).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from wharfd.runtime import errors
from wharfd.runtime.images import chainid, manifest, mediatypes, platforms
from wharfd.runtime.images.manifest import Descriptor, Index, Manifest
from wharfd.runtime.images.platforms import Ordered, Platform

# (digest, limit) → the whole blob; NotFound when the store lacks it, ResourceExhausted over the limit.
ReadBlob = Callable[[str, int], bytes]


class ImageReader:
    """Walks an image's index/manifest/config for one platform ranking, caching what it reads."""

    def __init__(self, read: ReadBlob, matcher: Ordered | None = None) -> None:
        self._read = read
        self.matcher: Ordered = matcher if matcher is not None else platforms.default()
        self._blobs: dict[str, bytes] = {}

    def read(self, desc: Descriptor, limit: int) -> bytes:
        """The blob ``desc`` names (NotFound when the store lacks it)."""
        if desc.digest not in self._blobs:
            self._blobs[desc.digest] = self._read(desc.digest, limit)
        return self._blobs[desc.digest]

    def children(self, desc: Descriptor) -> list[Descriptor]:
        """An index's manifests, or a manifest's config and layers; nothing for other types."""
        if mediatypes.is_manifest(desc.media_type):
            return manifest.children(self.manifest(desc))
        if mediatypes.is_index(desc.media_type):
            return list(self._index(desc).manifests)
        return []

    def manifest(self, desc: Descriptor) -> Manifest:
        """The image manifest ``desc`` names."""
        data = self.read(desc, manifest.MAX_MANIFEST_SIZE)
        return manifest.parse_manifest(data, media_type=desc.media_type, what=f"manifest {desc.digest}")

    def _index(self, desc: Descriptor) -> Index:
        data = self.read(desc, manifest.MAX_MANIFEST_SIZE)
        return manifest.parse_index(data, media_type=desc.media_type, what=f"index {desc.digest}")

    def config(self, desc: Descriptor) -> dict[str, Any]:
        """An image config as plain JSON."""
        try:
            obj = json.loads(self.read(desc, manifest.MAX_CONFIG_SIZE))
        except ValueError as exc:
            raise errors.InvalidArgument(f"image config {desc.digest}: not valid JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise errors.InvalidArgument(f"image config {desc.digest}: expected a JSON object")
        return obj

    def config_platform(self, desc: Descriptor) -> Platform:
        """The normalized platform an image config declares."""
        return platforms.normalize(
            platforms.Platform.from_json(self.config(desc), what=f"image config {desc.digest}")
        )

    def size(self, target: Descriptor, add: Callable[[int], None]) -> None:
        """Feed ``add`` the size of every blob of the chosen manifest: index, manifest, config, layers."""
        if target.size < 0:
            raise errors.InvalidArgument(
                f"invalid size {target.size} in {target.digest} ({target.media_type})"
            )
        add(target.size)
        kids = [d for d in self.children(target) if d.platform is None or self.matcher.match(d.platform)]
        if mediatypes.is_index(target.media_type):
            kids = manifest.select(Index(target.media_type, tuple(kids)), self.matcher, 1)
            if not kids:
                raise errors.NotFound("no match for platform in manifest: not found")
        for kid in kids:
            self.size(kid, add)

    def platforms(self, desc: Descriptor) -> list[Platform]:
        """Every platform an image offers: its index entries', else its config's."""
        if desc.platform is not None:
            unknown = "unknown" in (desc.platform.os, desc.platform.architecture)
            return [] if unknown else [desc.platform]
        if mediatypes.is_config(desc.media_type):
            return [self.config_platform(desc)]
        return [p for kid in self.children(desc) for p in self.platforms(kid)]

    def resolve(self, target: Descriptor) -> Manifest:
        """The manifest for the platform (containerd's ``images.Manifest``); NotFound when there is none."""
        found: list[Manifest] = []
        was_index = False

        def visit(desc: Descriptor) -> None:
            nonlocal was_index
            if mediatypes.is_manifest(desc.media_type):
                mfst = self.manifest(desc)
                # The root is taken as is; an index entry must suit the platform.
                if desc.digest == target.digest or self.matcher.match(
                    desc.platform or self.config_platform(mfst.config)
                ):
                    found.append(mfst)
            elif mediatypes.is_index(desc.media_type):
                was_index = True
                for entry in manifest.select(self._index(desc), self.matcher, 1):
                    visit(entry)
            else:
                raise errors.NotFound(f"unexpected media type {desc.media_type} for {desc.digest}: not found")

        visit(target)
        if not found:
            what = "no match for platform in manifest" if was_index else "manifest"
            raise errors.NotFound(f"{what} {target.digest}: not found")
        return found[0]

    def image_config(self, target: Descriptor) -> dict[str, Any]:
        """The image config (JSON) of the manifest chosen for the platform."""
        return self.config(self.resolve(target).config)

    def chain_id(self, target: Descriptor) -> str:
        """The chain id of the chosen manifest's layers (what its unpacked snapshot is named), from its config."""
        rootfs = self.image_config(target).get("rootfs")
        diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        return chainid.chain_id([str(d) for d in diff_ids or ()])
