"""``wharf images mount`` / ``unmount``: an image's root filesystem on a directory, as ctr does it.

Mount: the daemon unpacks the image if needed (a Transfer from the image
store to itself listing the unpack); the snapshot ``<target>`` is a view (or,
with ``--rw``, an active snapshot) on the image's chain id, taken under a
lease that expires in an hour, so an abandoned mount does not pin the
snapshot forever; its mounts are performed here, in the CLI's process.
Unmount undoes the mounts and, with ``rm``, drops the lease and the snapshot.

ctr names the lease after the target path; lease ids here must be
identifiers, so the lease is ``wharf-mount-<hash of the path>`` instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from typing import TYPE_CHECKING, Any

from wharfd.runtime.ctr import commands

if TYPE_CHECKING:
    from wharfd.runtime.client import Client

EXPIRATION = 3600.0


def lease_id(target: str) -> str:
    """The lease a mount on ``target`` is held by."""
    return "wharf-mount-" + hashlib.sha256(os.path.abspath(target).encode()).hexdigest()[:24]


def mount(client: Client, ref: str, target: str, snapshotter: str, *, platform: str, rw: bool) -> str:
    """Mount ``ref``'s rootfs on ``target``; return the chain id (printed by ctr before the target)."""
    from wharfd.api.services.images.v1 import images_pb2 as ipb
    from wharfd.runtime.ctr.images import image_reader, snapshot_exists, target_of
    from wharfd.runtime.ctr.leases import LEASE_METADATA_KEY
    from wharfd.runtime.images import platforms

    lease = _lease(client, target)
    metadata = ((LEASE_METADATA_KEY, lease),)
    try:
        image = client.images.Get(ipb.GetImageRequest(name=ref)).image
        reader = image_reader(client, platforms.only(platforms.parse(platform)) if platform else None)
        chain = reader.chain_id(target_of(image))
        if not snapshot_exists(client, snapshotter, chain):
            _unpack(client, image.name, platform, snapshotter, metadata)
        print(chain)
        _attach(client, target, chain, snapshotter, rw=rw, metadata=metadata)
    except BaseException:
        _drop_lease(client, lease)
        raise
    return chain


def _lease(client: Client, target: str) -> str:
    from wharfd.api.services.leases.v1 import leases_pb2 as lpb
    from wharfd.runtime import errors
    from wharfd.runtime.ctr.leases import LABEL_EXPIRE, expiry_label

    lid = lease_id(target)
    # AlreadyExists: mounted before on this target; the lease is reused.
    with contextlib.suppress(errors.AlreadyExists):
        client.leases.Create(lpb.CreateRequest(id=lid, labels={LABEL_EXPIRE: expiry_label(EXPIRATION)}))
    return lid


def _drop_lease(client: Client, lease: str) -> None:
    from wharfd.api.services.leases.v1 import leases_pb2 as lpb
    from wharfd.runtime import errors

    try:
        client.leases.Delete(lpb.DeleteRequest(id=lease))
    except errors.NotFound:
        pass
    except errors.WharfError as exc:
        commands.log.warning("failed to delete lease %s: %s", lease, exc)


def _unpack(client: Client, name: str, platform: str, snapshotter: str, metadata: Any) -> None:
    from wharfd.api.services.transfer.v1 import transfer_pb2 as tpb
    from wharfd.api.types import platform_pb2
    from wharfd.api.types.transfer import imagestore_pb2 as ipb
    from wharfd.runtime.ctr.transfer_client import transfer_stub
    from wharfd.runtime.images import platforms
    from wharfd.runtime.services.streaming import pack

    p = platforms.parse(platform) if platform else platforms.host()
    wanted = platform_pb2.Platform(os=p.os, architecture=p.architecture, variant=p.variant)
    source = ipb.ImageStore(name=name)
    dest = ipb.ImageStore(
        name=name, unpacks=[ipb.UnpackConfiguration(platform=wanted, snapshotter=snapshotter)]
    )
    request = tpb.TransferRequest(source=pack(source), destination=pack(dest))
    transfer_stub(client).Transfer(request, metadata=metadata)


def _attach(client: Client, target: str, chain: str, snapshotter: str, *, rw: bool, metadata: Any) -> None:
    from wharfd.api.services.snapshots.v1 import snapshots_pb2 as spb
    from wharfd.runtime import errors, mount
    from wharfd.runtime.snapshots.snapshotter import Mount

    try:
        if rw:
            found = client.snapshots.Prepare(
                spb.PrepareSnapshotRequest(snapshotter=snapshotter, key=target, parent=chain),
                metadata=metadata,
            ).mounts
        else:
            found = client.snapshots.View(
                spb.ViewSnapshotRequest(snapshotter=snapshotter, key=target, parent=chain), metadata=metadata
            ).mounts
    except errors.AlreadyExists:
        found = client.snapshots.Mounts(spb.MountsRequest(snapshotter=snapshotter, key=target)).mounts
    mounts = [Mount(m.type, m.source, m.target, tuple(m.options)) for m in found]
    try:
        mount.mount_all(mounts, target)
    except OSError as exc:
        try:
            client.snapshots.Remove(spb.RemoveSnapshotRequest(snapshotter=snapshotter, key=target))
        except errors.WharfError as cleanup:
            commands.log.error("Error cleaning up snapshot after mount error: %s", cleanup)
        raise commands.CommandError(f"failed to mount {target}: {exc}") from exc


def unmount(client: Client, target: str, snapshotter: str, *, remove: bool) -> None:
    """Unmount everything on ``target``; with ``remove``, drop the lease and the snapshot too."""
    from wharfd.api.services.snapshots.v1 import snapshots_pb2 as spb
    from wharfd.runtime import errors, mount

    mount.unmount_all(target)
    if not remove:
        return
    _drop_lease(client, lease_id(target))
    with contextlib.suppress(errors.NotFound):
        client.snapshots.Remove(spb.RemoveSnapshotRequest(snapshotter=snapshotter, key=target))
