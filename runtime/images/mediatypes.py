"""Media types of OCI and Docker image objects, and predicates over them.

The strings are wire facts (OCI image-spec v1.1 and Docker's schema 2); the
grouping helpers answer the questions the puller asks: is this an index, a
manifest, a config or a layer, and how is a layer compressed.
"""

from __future__ import annotations

# OCI image-spec
OCI_DESCRIPTOR = "application/vnd.oci.descriptor.v1+json"
OCI_LAYOUT_HEADER = "application/vnd.oci.layout.header.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDIST = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_NONDIST_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
# Withdrawn before image-spec v1.1 was released; still seen in the wild.
OCI_ARTIFACT_MANIFEST = "application/vnd.oci.artifact.manifest.v1+json"

# Docker schema 2
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"
DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar"
DOCKER_LAYER_FOREIGN_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_PLUGIN_CONFIG = "application/vnd.docker.plugin.v1+json"
# Docker schema 1 is refused (as containerd 2.x refuses it); named so the error can say so.
DOCKER_SCHEMA1_MANIFEST = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

# containerd's own types that can appear in images it produced (checkpoints).
CONTAINERD_CHECKPOINT = "application/vnd.containerd.container.criu.checkpoint.criu.tar"
CONTAINERD_CHECKPOINT_CONFIG = "application/vnd.containerd.container.checkpoint.config.v1+proto"
IN_TOTO = "application/vnd.in-toto+json"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})
SCHEMA1_TYPES = frozenset({DOCKER_SCHEMA1_MANIFEST, DOCKER_SCHEMA1_SIGNED})

# The Accept header sent when resolving a tag or digest: the types we can
# handle, preferred in this order, then anything (the type is checked later).
MANIFEST_ACCEPT = (DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX, "*/*")

_DOCKER_LAYERS = frozenset(
    {DOCKER_LAYER, DOCKER_LAYER_GZIP, DOCKER_LAYER_ZSTD, DOCKER_LAYER_FOREIGN, DOCKER_LAYER_FOREIGN_GZIP}
)


def base(media_type: str) -> str:
    """The media type without parameters (``; charset=...``) or surrounding blanks, lower-cased."""
    return media_type.split(";", 1)[0].strip().lower()


def is_index(media_type: str) -> bool:
    """An OCI index or a Docker manifest list."""
    return media_type in INDEX_TYPES


def is_manifest(media_type: str) -> bool:
    """An OCI or Docker schema 2 image manifest (schema 1 is not one)."""
    return media_type in MANIFEST_TYPES


def is_config(media_type: str) -> bool:
    """An OCI or Docker image configuration."""
    return media_type in CONFIG_TYPES


def is_layer(media_type: str) -> bool:
    """A filesystem layer of any supported compression (``+encrypted`` included)."""
    if media_type.startswith("application/vnd.oci.image.layer."):
        return True
    return media_type.split("+", 1)[0] in _DOCKER_LAYERS


def is_non_distributable(media_type: str) -> bool:
    """Layers the registry may refuse to serve or accept (Windows base layers)."""
    return media_type.startswith(
        ("application/vnd.oci.image.layer.nondistributable.", "application/vnd.docker.image.rootfs.foreign.")
    )


def is_encrypted(media_type: str) -> bool:
    """Whether the layer is wrapped in ocicrypt encryption (which we do not unwrap)."""
    return media_type.endswith("+encrypted")


def layer_compression(media_type: str) -> str:
    """``"gzip"``, ``"zstd"``, ``""`` (plain tar) or ``"unknown"`` (Docker's plain type, often gzip anyway).

    Raises ValueError for something that is not a layer.
    """
    if media_type in (DOCKER_LAYER, DOCKER_LAYER_FOREIGN):
        return "unknown"
    if media_type in (DOCKER_LAYER_GZIP, DOCKER_LAYER_FOREIGN_GZIP):
        return "gzip"
    if media_type == DOCKER_LAYER_ZSTD:
        return "zstd"
    if media_type.startswith("application/vnd.oci.image.layer."):
        suffix = media_type.rsplit("+", 1)[1] if "+" in media_type else ""
        return suffix if suffix in ("gzip", "zstd") else ""
    raise ValueError(f"{media_type!r} is not a layer media type")
