"""Build small, deterministic test images in Python and push them with the registry Pusher.

Layers are tar (+gzip/zstd) archives of in-memory file specs with fixed
owners, modes and mtimes, so the same spec always gives the same digests.
Configs, manifests and indexes are compact JSON. Typical use::

    layer = build_layer(busybox_files())
    image = build_image([layer], cmd=["sh"])
    await push_image(resolver.pusher(ref), image, tag="1")
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from wharfd.runtime.images import mediatypes
from wharfd.runtime.images.manifest import Descriptor, digest_of
from wharfd.runtime.images.platforms import Platform
from wharfd.runtime.registry.push import Pusher

BUSYBOX = Path("/bin/busybox")
EPOCH = "1970-01-01T00:00:00Z"
AMD64 = Platform("linux", "amd64")


@dataclass(frozen=True)
class File:
    """One tar entry. ``kind`` is file, dir, symlink or hardlink; ``target`` is a link's target."""

    path: str
    data: bytes = b""
    mode: int = 0o644
    kind: str = "file"
    target: str = ""
    uid: int = 0
    gid: int = 0
    mtime: int = 0


def directory(path: str, mode: int = 0o755) -> File:
    """A directory entry."""
    return File(path, mode=mode, kind="dir")


def symlink(path: str, target: str) -> File:
    """A symbolic link entry."""
    return File(path, mode=0o777, kind="symlink", target=target)


def hardlink(path: str, target: str) -> File:
    """A hard link to an earlier entry of the same layer."""
    return File(path, kind="hardlink", target=target)


@dataclass(frozen=True)
class Layer:
    """A layer blob with its uncompressed digest (the diff ID)."""

    blob: bytes
    diff_id: str
    media_type: str

    @property
    def descriptor(self) -> Descriptor:
        """The blob's descriptor."""
        return Descriptor(self.media_type, digest_of(self.blob), len(self.blob))


@dataclass(frozen=True)
class Image:
    """A single-platform image: its layers, config and manifest."""

    layers: tuple[Layer, ...]
    config: bytes
    config_desc: Descriptor
    manifest: bytes
    manifest_desc: Descriptor
    platform: Platform


@dataclass(frozen=True)
class ImageIndex:
    """A multi-platform index over images."""

    data: bytes
    desc: Descriptor
    images: tuple[Image, ...] = field(default=())


def canonical_json(obj: Any) -> bytes:
    """Compact JSON with sorted keys: stable bytes for stable digests."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def tar_bytes(files: Iterable[File]) -> bytes:
    """A tar archive of ``files`` in the order given (PAX format, root-owned unless stated)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for spec in files:
            info = tarfile.TarInfo(spec.path)
            info.mode, info.uid, info.gid, info.mtime = spec.mode, spec.uid, spec.gid, spec.mtime
            info.uname = info.gname = ""
            kinds = {
                "file": tarfile.REGTYPE,
                "dir": tarfile.DIRTYPE,
                "symlink": tarfile.SYMTYPE,
                "hardlink": tarfile.LNKTYPE,
            }
            info.type = kinds[spec.kind]
            info.linkname = spec.target
            if spec.kind == "file":
                info.size = len(spec.data)
                tar.addfile(info, io.BytesIO(spec.data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def build_layer(files: Iterable[File], *, compression: str = "gzip", docker: bool = False) -> Layer:
    """A layer from ``files``: ``compression`` is gzip, zstd or none."""
    raw = tar_bytes(files)
    if compression == "gzip":
        out = io.BytesIO()
        with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="") as gz:
            gz.write(raw)
        blob = out.getvalue()
        media_type = mediatypes.DOCKER_LAYER_GZIP if docker else mediatypes.OCI_LAYER_GZIP
    elif compression == "zstd":
        blob = zstandard.ZstdCompressor(level=3).compress(raw)
        media_type = mediatypes.DOCKER_LAYER_ZSTD if docker else mediatypes.OCI_LAYER_ZSTD
    elif compression == "none":
        blob, media_type = raw, (mediatypes.DOCKER_LAYER if docker else mediatypes.OCI_LAYER)
    else:
        raise ValueError(f"unknown compression {compression!r}")
    return Layer(blob=blob, diff_id=digest_of(raw), media_type=media_type)


def busybox_files(applets: Sequence[str] = ("sh", "ls", "cat", "echo", "sleep", "true", "env")) -> list[File]:
    """A minimal root filesystem: Debian's static busybox as /bin/busybox plus applet symlinks."""
    if not BUSYBOX.exists():
        import pytest

        pytest.skip(f"{BUSYBOX} is missing (Debian package busybox-static)")
    files = [directory("bin"), File("bin/busybox", BUSYBOX.read_bytes(), mode=0o755)]
    files += [symlink(f"bin/{name}", "busybox") for name in applets]
    files += [
        directory("etc"),
        File("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
        File("etc/group", b"root:x:0:\n"),
        directory("tmp", 0o1777),
    ]
    return files


def build_image(
    layers: Sequence[Layer],
    *,
    platform: Platform = AMD64,
    cmd: Sequence[str] | None = ("sh",),
    entrypoint: Sequence[str] | None = None,
    env: Sequence[str] = ("PATH=/bin",),
    workdir: str = "",
    user: str = "",
    labels: dict[str, str] | None = None,
    docker: bool = False,
) -> Image:
    """An image config and manifest over ``layers`` (OCI media types unless ``docker``)."""
    run: dict[str, Any] = {"Env": list(env)}
    if cmd is not None:
        run["Cmd"] = list(cmd)
    if entrypoint is not None:
        run["Entrypoint"] = list(entrypoint)
    if workdir:
        run["WorkingDir"] = workdir
    if user:
        run["User"] = user
    if labels:
        run["Labels"] = labels
    config_obj = {
        **platform.to_json(),
        "config": run,
        "created": EPOCH,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created": EPOCH, "created_by": "wharfd tests"} for _ in layers],
    }
    config = canonical_json(config_obj)
    config_desc = Descriptor(
        mediatypes.DOCKER_CONFIG if docker else mediatypes.OCI_CONFIG, digest_of(config), len(config)
    )
    manifest_type = mediatypes.DOCKER_MANIFEST if docker else mediatypes.OCI_MANIFEST
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": config_desc.to_json(),
            "layers": [layer.descriptor.to_json() for layer in layers],
        }
    )
    manifest_desc = Descriptor(manifest_type, digest_of(manifest), len(manifest), platform=platform)
    return Image(tuple(layers), config, config_desc, manifest, manifest_desc, platform)


def build_index(
    images: Sequence[Image], *, docker: bool = False, annotations: dict[str, str] | None = None
) -> ImageIndex:
    """An index (or Docker manifest list) whose entries carry each image's platform."""
    media_type = mediatypes.DOCKER_MANIFEST_LIST if docker else mediatypes.OCI_INDEX
    obj: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [image.manifest_desc.to_json() for image in images],
    }
    if annotations:
        obj["annotations"] = annotations
    data = canonical_json(obj)
    return ImageIndex(data, Descriptor(media_type, digest_of(data), len(data)), tuple(images))


def without_platform(desc: Descriptor) -> Descriptor:
    """``desc`` as a manifest is pushed or resolved (descriptors of pushes carry no platform)."""
    return Descriptor(desc.media_type, desc.digest, desc.size)


async def push_image(pusher: Pusher, image: Image, *, tag: str = "") -> Descriptor:
    """Push the layers, the config, then the manifest (under ``tag`` if given)."""
    for layer in image.layers:
        await pusher.push_blob(layer.descriptor, layer.blob)
    await pusher.push_blob(image.config_desc, image.config)
    await pusher.push_manifest(image.manifest_desc, image.manifest, reference=tag)
    return without_platform(image.manifest_desc)


async def push_index(pusher: Pusher, index: ImageIndex, *, tag: str = "") -> Descriptor:
    """Push every image of ``index``, then the index itself."""
    for image in index.images:
        await push_image(pusher, image)
    await pusher.push_manifest(index.desc, index.data, reference=tag)
    return index.desc
