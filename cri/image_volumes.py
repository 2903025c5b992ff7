"""Image volumes: an image's root filesystem mounted read-only into a container (CRI ``Mount.image``).

For each such mount CreateContainer takes a read-only View of the image's
unpacked chain (snapshot key ``<container id>-iv<index>``), mounts it under the
container's root dir, and binds it (or ``image_sub_path`` inside it) into the
container read-only. The container record carries a
``containerd.io/gc.ref.snapshot.<snapshotter>/iv<index>`` label per view so
garbage collection keeps them; RemoveContainer unmounts and removes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.runtime import errors, mount
from wharfd.runtime.gc import LABEL_REF_SNAPSHOT

VOLUMES_DIR = "image-volumes"


@dataclass(frozen=True)
class ImageVolume:
    """One prepared image volume: where it is mounted on the host, and what it is."""

    index: int
    key: str
    host_path: Path
    image_id: str


def snapshot_key(container_id: str, index: int) -> str:
    """The snapshot key of the view behind ``mounts[index]``."""
    return f"{container_id}-iv{index}"


def image_mounts(config: cri.ContainerConfig) -> list[int]:
    """Indexes of the config's mounts that are image volumes."""
    return [i for i, m in enumerate(config.mounts) if m.HasField("image") and m.image.image]


def _sub_path(root: Path, sub: str, what: str) -> Path:
    clean = os.path.normpath(sub or ".")
    if clean.startswith("/") or clean == ".." or clean.startswith("../"):
        raise errors.InvalidArgument(f"{what}: image_sub_path {sub!r} must stay inside the image")
    path = root / clean
    # Resolve symlinks inside the mounted image, and refuse what leads out of it.
    real = Path(os.path.realpath(path))
    if real != root and root not in real.parents:
        raise errors.InvalidArgument(f"{what}: image_sub_path {sub!r} leads outside the image")
    if not real.exists():
        raise errors.InvalidArgument(f"{what}: image_sub_path {sub!r} does not exist in the image")
    return real


async def prepare(
    state: Any,
    container_id: str,
    config: cri.ContainerConfig,
    snapshotter: Any,
    undo: contextlib.AsyncExitStack,
) -> tuple[cri.ContainerConfig, cri.ContainerConfig, dict[str, str]]:
    """Mount every image volume.

    Returns the config for the spec (image volumes turned into read-only host
    binds), the config to record (each image volume's ``image_ref`` set to the
    image id, which ContainerStatus reports), and the GC labels that keep the
    views. ``undo`` receives the clean-up of each step, in order.
    """
    indexes = image_mounts(config)
    if not indexes:
        return config, config, {}
    resolved = cri.ContainerConfig()
    resolved.CopyFrom(config)
    recorded = cri.ContainerConfig()
    recorded.CopyFrom(config)
    labels: dict[str, str] = {}
    for index in indexes:
        m = config.mounts[index]
        what = f"mounts[{index}] (container_path {m.container_path!r})"
        image = await state.catalog.find(m.image.image)
        key = snapshot_key(container_id, index)
        view = await snapshotter.view(key, image.chain_id)
        undo.push_async_callback(_remove_quietly, snapshotter, key)
        target = state.container_root(container_id) / VOLUMES_DIR / str(index)
        await asyncio.to_thread(target.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(mount.mount_all, view, target)
        undo.push_async_callback(asyncio.to_thread, mount.unmount_all, target, mount.MNT_DETACH)
        source = await asyncio.to_thread(_sub_path, target, m.image_sub_path, what)
        bound = resolved.mounts[index]
        bound.ClearField("image")
        bound.image_sub_path = ""
        bound.host_path = str(source)
        bound.readonly = True
        recorded.mounts[index].image.image_ref = image.id
        labels[f"{LABEL_REF_SNAPSHOT}{snapshotter.name}/iv{index}"] = key
    return resolved, recorded, labels


async def _remove_quietly(snapshotter: Any, key: str) -> None:
    with contextlib.suppress(errors.WharfError):
        await snapshotter.remove(key)


async def release(state: Any, container_id: str, config: cri.ContainerConfig, snapshotter: Any) -> None:
    """Unmount and remove a container's image volumes (idempotent)."""
    for index in image_mounts(config):
        target = state.container_root(container_id) / VOLUMES_DIR / str(index)
        with contextlib.suppress(OSError):
            await asyncio.to_thread(mount.unmount_all, target, mount.MNT_DETACH)
        if snapshotter is not None:
            await _remove_quietly(snapshotter, snapshot_key(container_id, index))
