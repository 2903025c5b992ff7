"""``wharf images``: list, check, tag, label, measure and remove images.

Like ctr, the CLI works out what an image is made of itself: it reads the
index, manifest and config through ``Content.Read`` and picks the manifest
for this host's platform, so SIZE, PLATFORMS, check's STATUS and UNPACKED
mean what they mean in ctr. ``pull``, ``push``, ``import``, ``export``,
``mount``/``unmount``, ``inspect``, ``prune`` and ``convert`` belong to the
image pipeline and are not offered here yet. ``tag`` always works locally
(Images.Get/Create); without ``--local`` an existing target is overwritten,
which is what ctr's default (transfer service) tag does.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from wharfd.runtime.ctr import commands
from wharfd.runtime.ctr.plugins import format_platform
from wharfd.runtime.ctr.snapshots import (
    DEFAULT_SNAPSHOTTER,
    add_snapshotter_flag,
    bytes_size,
    resolve_snapshotter,
)
from wharfd.runtime.ctr.tabwriter import Writer

if TYPE_CHECKING:
    from wharfd.runtime.client import Client
    from wharfd.runtime.ctr.commands import Subparsers
    from wharfd.runtime.images.manifest import Descriptor
    from wharfd.runtime.images.platforms import Ordered
    from wharfd.runtime.images.reader import ImageReader

_HEX64 = re.compile(r"[a-f0-9]{64}")


def register(subparsers: Subparsers) -> None:
    """Add ``images [image, i]`` and the subcommands that need no pull pipeline, in ctr's order."""
    group = commands.add_group(subparsers, "images", aliases=["image", "i"], help="Manage images")
    check = commands.add_command(
        group, "check", _check, help="Check existing images to ensure all content is available locally"
    )
    check.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="Print only the ready image refs (fully downloaded and unpacked)",
    )
    add_snapshotter_flag(check)
    check.add_argument("filters", nargs="*", metavar="filter")
    ls = commands.add_command(group, "list", _list, aliases=["ls"], help="List images known to wharfd")
    ls.add_argument("-q", "--quiet", action="store_true", help="Print only the image refs")
    ls.add_argument("filters", nargs="*", metavar="filter")
    rm = commands.add_command(
        group,
        "delete",
        _delete,
        aliases=["del", "remove", "rm"],
        help="Remove one or more images by reference",
    )
    rm.add_argument(
        "--sync", action="store_true", help="Synchronously remove image and all associated resources"
    )
    rm.add_argument("refs", nargs="*", metavar="<ref>")
    tag = commands.add_command(group, "tag", _tag, help="Tag an image")
    tag.add_argument("--force", action="store_true", help="Force target_ref to be created, even if it exists")
    tag.add_argument(
        "--local", action="store_true", help="Keep the source's labels; refuse an existing target"
    )
    tag.add_argument(
        "--skip-reference-check", action="store_true", help="Skip the strict check for reference names"
    )
    tag.add_argument("refs", nargs="*", metavar="<source_ref> <target_ref>")
    label = commands.add_command(group, "label", _label, help="Set and clear labels for an image")
    label.add_argument("-r", "--replace-all", action="store_true", help="Replace all labels")
    label.add_argument("args", nargs="*", metavar="<name> [<key>=<value>, ...]")
    usage = commands.add_command(
        group, "usage", _usage, help="Display usage of snapshots for a given image ref"
    )
    add_snapshotter_flag(usage)
    usage.add_argument("ref", nargs="?", default="", metavar="<ref>")
    # pull, push, export, import, mount and unmount go through the Transfer service (images_transfer).
    from wharfd.runtime.ctr.images_transfer import register_transfer

    register_transfer(group)


# --- reading images through the content store --------------------------------


def image_reader(client: Client, matcher: Ordered | None = None) -> ImageReader:
    """An image reader over the daemon's ``Content.Read``, for the host's platforms unless ``matcher`` says."""
    from wharfd.runtime.ctr.content import read_blob
    from wharfd.runtime.images.reader import ImageReader

    return ImageReader(lambda digest, limit: read_blob(client, digest, limit), matcher)


def snapshot_exists(client: Client, snapshotter: str, key: str) -> bool:
    """Whether snapshot ``key`` exists: for an image's chain id, whether the image is unpacked there."""
    from wharfd.api.services.snapshots.v1 import snapshots_pb2 as spb
    from wharfd.runtime import errors

    try:
        client.snapshots.Stat(spb.StatSnapshotRequest(snapshotter=snapshotter, key=key))
    except errors.NotFound:
        return False
    return True


def target_of(image: Any) -> Descriptor:
    """An Images API image's target as a descriptor."""
    from wharfd.runtime.images.manifest import Descriptor

    t = image.target
    return Descriptor(t.media_type, t.digest, t.size, annotations=dict(t.annotations))


# --- commands ------------------------------------------------------------------


def _list_images(client: Client, filters: Sequence[str]) -> Sequence[Any]:
    from wharfd.api.services.images.v1 import images_pb2 as pb
    from wharfd.runtime import errors
    from wharfd.runtime.client import describe

    try:
        return list(client.images.List(pb.ListImagesRequest(filters=filters)).images)
    except errors.WharfError as exc:
        raise commands.CommandError(f"failed to list images: {describe(exc)}") from exc


def _list(args: argparse.Namespace) -> None:
    with commands.new_client(args) as client:
        images = _list_images(client, args.filters)
        if args.quiet:
            for image in images:
                print(image.name)
            return
        reader = image_reader(client)
        tw = Writer(sys.stdout, 1, 8, 1)
        tw.write("REF\tTYPE\tDIGEST\tSIZE\tPLATFORMS\tLABELS\t\n")
        for image in images:
            size, platforms = _describe_image(reader, image)
            labels = commands.format_labels(dict(image.labels)) or "-"
            t = image.target
            tw.write(
                f"{image.name}\t{t.media_type}\t{t.digest}\t{bytes_size(size)}\t{platforms}\t{labels}\t\n"
            )
        tw.flush()


def _describe_image(reader: ImageReader, image: Any) -> tuple[int, str]:
    from wharfd.runtime import errors
    from wharfd.runtime.client import describe

    total = [0]
    target = target_of(image)
    try:
        reader.size(target, lambda n: total.__setitem__(0, total[0] + n))
    except errors.WharfError as exc:
        # Like ctr: report, and show what was counted before the failure.
        commands.log.error("failed calculating size for image %s: %s", image.name, describe(exc))
    column = "-"
    try:
        found = reader.platforms(target)
    except errors.WharfError as exc:
        commands.log.error("failed resolving platform for image %s: %s", image.name, describe(exc))
    else:
        if found:
            column = ",".join(sorted({format_platform(p.os, p.architecture, p.variant) for p in found}))
    return total[0], column


def _check(args: argparse.Namespace) -> None:
    from wharfd.runtime import errors
    from wharfd.runtime.client import describe

    failure: str | None = None
    with commands.new_client(args) as client:
        images = _list_images(client, args.filters)
        if not images:
            return
        snapshotter = resolve_snapshotter(client, args.snapshotter)
        reader = image_reader(client)
        tw = Writer(sys.stdout, 1, 8, 1)
        if not args.quiet:
            tw.write("REF\tTYPE\tDIGEST\tSTATUS\tSIZE\tUNPACKED\t\n")
        for image in images:
            target = target_of(image)
            try:
                status, size, complete = _check_content(client, reader, target)
            except errors.WharfError as exc:
                failure = failure or f"unable to check {image.name}: {describe(exc)}"
                commands.log.error("unable to check %s: %s", image.name, describe(exc))
                status, size, complete = "error", "-", False
            try:
                unpacked = snapshot_exists(client, snapshotter, reader.chain_id(target))
            except errors.WharfError as exc:
                failure = failure or f"unable to check unpack for {image.name}: {describe(exc)}"
                commands.log.error("unable to check unpack for %s: %s", image.name, describe(exc))
                unpacked = False
            if args.quiet:
                if complete and unpacked:
                    print(image.name)
                continue
            t = image.target
            tw.write(f"{image.name}\t{t.media_type}\t{t.digest}\t{status}\t{size}\t{str(unpacked).lower()}\n")
        tw.flush()
    if failure:
        raise commands.CommandError(failure)


def _check_content(client: Client, reader: ImageReader, target: Descriptor) -> tuple[str, str, bool]:
    """STATUS, SIZE and completeness of an image's blobs for this host, as ``images.Check`` sees them."""
    from wharfd.api.services.content.v1 import content_pb2 as cpb
    from wharfd.runtime import errors

    try:
        mfst = reader.resolve(target)
    except errors.NotFound:
        return "unavailable (0/?)", f"{bytes_size(0)}/?", False
    required = [mfst.config, *mfst.layers]
    present = []
    for desc in required:
        try:
            client.content.Info(cpb.InfoRequest(digest=desc.digest))
        except errors.NotFound:
            continue
        present.append(desc)
    complete = len(present) == len(required)
    status = f"{'complete' if complete else 'incomplete'} ({len(present)}/{len(required)})"
    size = f"{bytes_size(sum(d.size for d in present))}/{bytes_size(sum(d.size for d in required))}"
    return status, size, complete


def _delete(args: argparse.Namespace) -> None:
    from wharfd.api.services.images.v1 import images_pb2 as pb
    from wharfd.runtime import errors
    from wharfd.runtime.client import describe

    failure: str | None = None
    with commands.new_client(args) as client:
        for i, ref in enumerate(args.refs):
            # Only the last delete waits for garbage collection, which covers them all.
            sync = args.sync and i == len(args.refs) - 1
            try:
                client.images.Delete(pb.DeleteImageRequest(name=ref, sync=sync))
            except errors.NotFound:
                commands.log.warning("%s: image not found", ref)
                continue
            except errors.WharfError as exc:
                failure = failure or f"unable to delete {ref}: {describe(exc)}"
                commands.log.error("unable to delete %s: %s", ref, describe(exc))
                continue
            print(ref)
    if failure:
        raise commands.CommandError(failure)


def check_reference(ref: str) -> None:
    """Refuse a tag target that is neither a reference nor a digest, with ctr's message."""
    from wharfd.runtime import errors
    from wharfd.runtime.images import reference

    if _HEX64.fullmatch(ref):
        return
    try:
        if ref.count(":") == 1 and "/" not in ref and reference.is_digest(ref):
            return
        reference.parse(ref)
    except errors.InvalidArgument as exc:
        raise commands.CommandError(
            f'error parsing reference: "{ref}" is not a valid repository/tag {exc}'
        ) from exc


def _tag(args: argparse.Namespace) -> None:
    from wharfd.api.services.images.v1 import images_pb2 as pb

    if not args.refs:
        raise commands.CommandError("please provide an image reference to tag from")
    if len(args.refs) == 1:
        raise commands.CommandError("please provide an image reference to tag to")
    source, targets = args.refs[0], args.refs[1:]
    with commands.new_client(args) as client:
        image = None
        for target in targets:
            if not args.skip_reference_check:
                check_reference(target)
            if image is None:  # after the first check, as ctr looks the source up
                image = client.images.Get(pb.GetImageRequest(name=source)).image
            _store_tag(client, image, target, local=args.local, force=args.force)
            print(target)


def _store_tag(client: Client, source: Any, name: str, *, local: bool, force: bool) -> None:
    from wharfd.api.services.images.v1 import images_pb2 as pb
    from wharfd.runtime import errors

    # ctr's local tag copies the labels; its transfer-service tag sets the target only.
    labels = dict(source.labels) if local else {}
    image = pb.Image(name=name, target=source.target, labels=labels)
    try:
        client.images.Create(pb.CreateImageRequest(image=image))
        return
    except errors.AlreadyExists:
        if local and not force:
            raise
    if local:
        client.images.Delete(pb.DeleteImageRequest(name=name))
        client.images.Create(pb.CreateImageRequest(image=image))
    else:
        client.images.Update(pb.UpdateImageRequest(image=image))


def _label(args: argparse.Namespace) -> None:
    from google.protobuf import field_mask_pb2

    from wharfd.api.services.images.v1 import images_pb2 as pb

    name, labels = commands.object_with_label_args(args.args)
    with commands.new_client(args) as client:
        if not name:
            raise commands.CommandError("please specify an image")
        paths = ["labels" if args.replace_all else f"labels.{k}" for k in labels]
        request = pb.UpdateImageRequest(image=pb.Image(name=name, labels=labels))
        if paths:
            request.update_mask.CopyFrom(field_mask_pb2.FieldMask(paths=paths))
        updated = client.images.Update(request).image
    print(commands.format_labels(dict(updated.labels)))


def _usage(args: argparse.Namespace) -> None:
    from wharfd.api.services.images.v1 import images_pb2 as pb
    from wharfd.api.services.snapshots.v1 import snapshots_pb2 as spb
    from wharfd.runtime import errors
    from wharfd.runtime.client import describe

    ref = args.ref
    if not ref:
        raise commands.CommandError("please provide an image reference to mount")
    snapshotter = args.snapshotter or DEFAULT_SNAPSHOTTER
    with commands.new_client(args) as client:
        try:
            image = client.images.Get(pb.GetImageRequest(name=ref)).image
        except errors.WharfError as exc:
            raise commands.CommandError(f"failed to ensure if image {ref} exists: {describe(exc)}") from exc
        try:
            key = image_reader(client).chain_id(target_of(image))
            unpacked = snapshot_exists(client, snapshotter, key)
        except errors.WharfError as exc:
            raise commands.CommandError(
                f"failed to ensure if image {ref} has been unpacked in snapshotter {snapshotter}: {describe(exc)}"
            ) from exc
        if not unpacked:
            raise commands.CommandError(f"image {ref} isn't unpacked in snapshotter {snapshotter}")
        tw = Writer(sys.stdout, 1, 8, 1)
        tw.write("KEY\tSIZE\tINODES\t\n")
        while key:
            try:
                usage = client.snapshots.Usage(spb.UsageRequest(snapshotter=snapshotter, key=key))
            except errors.WharfError as exc:
                raise commands.CommandError(
                    f"failed to get usage for snapshot {key}: {describe(exc)}"
                ) from exc
            tw.write(f"{key}\t{bytes_size(usage.size)}\t{usage.inodes}\t\n")
            try:
                info = client.snapshots.Stat(spb.StatSnapshotRequest(snapshotter=snapshotter, key=key)).info
            except errors.WharfError as exc:
                raise commands.CommandError(
                    f"failed to ensure if snapshot {key} has parent or not: {describe(exc)}"
                ) from exc
            key = info.parent
        tw.flush()
