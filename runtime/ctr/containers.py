"""``wharf containers`` (``c``, ``container``): create, delete, info, list and label containers.

Output follows ctr's: ``list`` is a tabwriter table (or ids with ``-q``),
``info`` the container as Go's JSON prints ``containers.Container`` with the
spec inlined, ``label`` every label as ``k=v`` joined by commas (sorted here;
ctr's order is Go's random map order).

``create IMAGE ID [COMMAND…]`` builds the spec as ctr does, from containerd's
default spec, the image config and the flags (:mod:`wharfd.runtime.ctr.spec_flags`);
the image must already be unpacked in the snapshotter. It looks users up in
the image's rootfs, mounted read-only from a temporary view, so it needs the
privilege to mount, like ctr. ``checkpoint`` and ``restore`` are not offered.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from wharfd.runtime.ctr import commands, spec_flags
from wharfd.runtime.ctr.tabwriter import Writer

if TYPE_CHECKING:
    from wharfd.runtime.client import Client
    from wharfd.runtime.ctr.commands import Subparsers
    from wharfd.runtime.oci.image_config import RunConfig

Metadata = Sequence[tuple[str, str]]
# Go's zero time.Time, which ctr prints for a timestamp the daemon did not set.
ZERO_TIME = "0001-01-01T00:00:00Z"
# Image config labels under these prefixes are containerd's own; ctr does not copy them.
RESERVED_LABEL_PREFIXES = ("containerd.io/", "io.cri-containerd")
# Process states a container's task may be deleted in, as Go's ProcessStatus prints them.
_TASK_STATUS = ("unknown", "created", "running", "stopped", "paused", "pausing")


def register(subparsers: Subparsers) -> None:
    """Add ``containers [c, container]`` and its subcommands, in ctr's order."""
    group = commands.add_group(subparsers, "containers", aliases=["c", "container"], help="Manage containers")
    create = commands.add_command(group, "create", _create, help="Create container")
    spec_flags.add_flags(create)
    create.add_argument("image", nargs="?", default="", metavar="Image")
    create.add_argument("id", nargs="?", default="", metavar="CONTAINER")
    create.add_argument("args", nargs=argparse.REMAINDER, metavar="[COMMAND] [ARG...]")
    delete = commands.add_command(
        group,
        "delete",
        _delete,
        aliases=["del", "remove", "rm"],
        help="Delete one or more existing containers",
    )
    delete.add_argument(
        "--keep-snapshot", action="store_true", help="Do not clean up snapshot with container"
    )
    delete.add_argument("ids", nargs="*", metavar="CONTAINER")
    info = commands.add_command(group, "info", _info, help="Get info about a container")
    info.add_argument("--spec", action="store_true", help="Only display the spec")
    info.add_argument("id", nargs="?", default="", metavar="CONTAINER")
    ls = commands.add_command(group, "list", _list, aliases=["ls"], help="List containers")
    ls.add_argument("-q", "--quiet", action="store_true", help="Print only the container id")
    ls.add_argument("filters", nargs="*", metavar="<filter>")
    label = commands.add_command(group, "label", _label, help="Set and clear labels for a container")
    label.add_argument("args", nargs="*", metavar="CONTAINER [<key>=<value>, ...]")


def containers_stub(client: Client) -> Any:
    """``containerd.services.containers.v1.Containers`` on the client's channel."""
    from wharfd.api.services.containers.v1 import containers_pb2_grpc

    # The shared Client has no property for this service yet; its channel carries the call policy.
    return containers_pb2_grpc.ContainersStub(client._channel)


def tasks_stub(client: Client) -> Any:
    """``containerd.services.tasks.v1.Tasks`` on the client's channel."""
    from wharfd.api.services.tasks.v1 import tasks_pb2_grpc

    return tasks_pb2_grpc.TasksStub(client._channel)


def list_containers(client: Client, filters: Sequence[str] = ()) -> list[Any]:
    """Containers through ListStream, falling back to List on Unimplemented as containerd's client does."""
    from wharfd.api.services.containers.v1 import containers_pb2 as pb
    from wharfd.runtime import errors

    stub = containers_stub(client)
    request = pb.ListContainersRequest(filters=filters)
    try:
        return [message.container for message in stub.ListStream(request)]
    except errors.NotImplemented:
        return list(stub.List(request).containers)


# --- list, info, label ---------------------------------------------------------------------------


def _list(args: argparse.Namespace) -> None:
    with commands.new_client(args) as client:
        found = list_containers(client, args.filters)
    if args.quiet:
        for c in found:
            print(c.id)
        return
    tw = Writer(sys.stdout, 4, 8, 4)
    tw.write("CONTAINER\tIMAGE\tRUNTIME\t\n")
    for c in found:
        tw.write(f"{c.id}\t{c.image or '-'}\t{c.runtime.name}\t\n")
    tw.flush()


def _info(args: argparse.Namespace) -> None:
    from wharfd.api.services.containers.v1 import containers_pb2 as pb

    if not args.id:
        raise commands.CommandError("container id must be provided")
    with commands.new_client(args) as client:
        container = containers_stub(client).Get(pb.GetContainerRequest(id=args.id)).container
    if args.spec:
        commands.print_json(spec_json(container.spec, strict=True))
        return
    commands.print_json(container_json(container))


def _label(args: argparse.Namespace) -> None:
    from google.protobuf import field_mask_pb2

    from wharfd.api.services.containers.v1 import containers_pb2 as pb

    cid, labels = commands.object_with_label_args(args.args)
    if not cid:
        raise commands.CommandError("container id must be provided")
    with commands.new_client(args) as client:
        stub = containers_stub(client)
        current = stub.Get(pb.GetContainerRequest(id=cid)).container
        if labels:
            # Only the keys given are touched; an empty value clears that key.
            mask = field_mask_pb2.FieldMask(paths=[f"labels.{key}" for key in labels])
            request = pb.UpdateContainerRequest(
                container=pb.Container(id=cid, labels=labels), update_mask=mask
            )
            current = stub.Update(request).container
    print(",".join(f"{k}={v}" for k, v in sorted(current.labels.items())))


def any_json(value: Any) -> dict[str, str]:
    """A protobuf Any as Go's encoding/json prints ``anypb.Any`` (both fields omitempty, bytes base64)."""
    out = {}
    if value.type_url:
        out["type_url"] = value.type_url
    if value.value:
        out["value"] = base64.b64encode(value.value).decode()
    return out


def spec_json(spec: Any, *, strict: bool = False) -> Any:
    """The spec as ctr prints it: the OCI spec decoded, in Go's field order.

    A spec of another type cannot be decoded: ``strict`` makes that an error
    (``info --spec``), otherwise it is shown as the Any it is.
    """
    from wharfd.runtime.ctr.specjson import go_order
    from wharfd.runtime.oci import spec as oci_spec

    if spec.type_url != oci_spec.SPEC_TYPE_URL:
        if strict:
            raise commands.CommandError(f'spec type "{spec.type_url}" is not an OCI runtime spec')
        return any_json(spec)
    return go_order(oci_spec.from_json(spec.value))


def container_json(c: Any) -> dict[str, Any]:
    """A Containers API container as ctr's ``containers info`` prints it (Go struct field order)."""
    from wharfd.runtime.ctr.snapshots import rfc3339_nano

    def stamp(name: str) -> str:
        return rfc3339_nano(getattr(c, name)) if c.HasField(name) else ZERO_TIME

    options = any_json(c.runtime.options) if c.runtime.HasField("options") else None
    out: dict[str, Any] = {
        "ID": c.id,
        "Labels": dict(sorted(c.labels.items())) or None,  # an empty Go map decodes as nil
        "Image": c.image,
        "Runtime": {"Name": c.runtime.name, "Options": options},
    }
    inline = c.HasField("spec") and bool(c.spec.value)
    if not inline:
        out["Spec"] = any_json(c.spec) if c.HasField("spec") else None
    out |= {
        "SnapshotKey": c.snapshot_key,
        "Snapshotter": c.snapshotter,
        "CreatedAt": stamp("created_at"),
        "UpdatedAt": stamp("updated_at"),
        "Extensions": {name: any_json(c.extensions[name]) for name in sorted(c.extensions)},
        "SandboxID": c.sandbox,
    }
    if inline:
        out["Spec"] = spec_json(c.spec)
    return out


# --- delete --------------------------------------------------------------------------------------


def _delete(args: argparse.Namespace) -> None:
    from wharfd.runtime import errors
    from wharfd.runtime.client import describe

    if not args.ids:
        raise commands.CommandError("must specify at least one container to delete")
    failure: BaseException | None = None
    with commands.new_client(args) as client:
        for cid in args.ids:
            try:
                delete_container(client, cid, keep_snapshot=args.keep_snapshot)
            except (errors.WharfError, commands.CommandError) as exc:
                # Keep going so one bad id does not hide the others; fail with the first.
                failure = failure or exc
                commands.log.error("failed to delete container %s: %s", cid, describe(exc))
    if failure is not None:
        raise failure


def delete_container(client: Client, cid: str, *, keep_snapshot: bool = False) -> None:
    """ctr's deleteContainer: a stopped or created task goes first, then the snapshot, then the record."""
    from wharfd.api.services.containers.v1 import containers_pb2 as pb
    from wharfd.api.services.snapshots.v1 import snapshots_pb2 as spb
    from wharfd.runtime import errors

    stub = containers_stub(client)
    container = stub.Get(pb.GetContainerRequest(id=cid)).container
    _delete_task(client, cid)
    if container.snapshot_key and not keep_snapshot:
        if not container.snapshotter:
            raise commands.CommandError("container.Snapshotter must be set to cleanup rootfs snapshot")
        request = spb.RemoveSnapshotRequest(snapshotter=container.snapshotter, key=container.snapshot_key)
        with contextlib.suppress(errors.NotFound):
            client.snapshots.Remove(request)
    stub.Delete(pb.DeleteContainerRequest(id=cid))


def _delete_task(client: Client, cid: str) -> None:
    from wharfd.api.services.tasks.v1 import tasks_pb2 as tpb
    from wharfd.api.types.task import task_pb2
    from wharfd.runtime import errors

    tasks = tasks_stub(client)
    try:
        process = tasks.Get(tpb.GetRequest(container_id=cid)).process
    except (errors.NotFound, errors.NotImplemented):
        return  # no task (or no task service): nothing holds the container
    if process.status not in (task_pb2.STOPPED, task_pb2.CREATED):
        raise commands.CommandError(f"cannot delete a non stopped container: {_go_status(process)}")
    tasks.Delete(tpb.DeleteTaskRequest(container_id=cid))


def _go_status(process: Any) -> str:
    # Go's %v of client.Status{Status, ExitStatus, ExitTime}.
    from datetime import UTC, datetime

    status = _TASK_STATUS[process.status] if process.status < len(_TASK_STATUS) else "unknown"
    when = "0001-01-01 00:00:00 +0000 UTC"
    if process.HasField("exited_at") and (process.exited_at.seconds or process.exited_at.nanos):
        moment = datetime.fromtimestamp(process.exited_at.seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")
        nanos = f".{process.exited_at.nanos:09d}".rstrip("0") if process.exited_at.nanos else ""
        when = f"{moment}{nanos} +0000 UTC"
    return f"{{{status} {process.exit_status} {when}}}"


# --- create --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnpackedImage:
    """An image as container creation needs it: run config, labels for the container, its rootfs snapshot."""

    name: str
    config: RunConfig
    chain_id: str
    labels: dict[str, str] = field(default_factory=dict)


def _create(args: argparse.Namespace) -> None:
    if not args.image:
        raise commands.CommandError("image ref must be provided")
    if not args.id:
        raise commands.CommandError("container id must be provided")
    with commands.new_client(args) as client:
        new_container(client, args)


def load_image(client: Client, ref: str, snapshotter: str) -> UnpackedImage:
    """Read an image's config through the content store; FailedPrecondition unless it is unpacked."""
    from wharfd.api.services.images.v1 import images_pb2 as ipb
    from wharfd.runtime import errors
    from wharfd.runtime.ctr.images import image_reader, snapshot_exists, target_of
    from wharfd.runtime.oci.image_config import RunConfig

    image = client.images.Get(ipb.GetImageRequest(name=ref)).image
    reader = image_reader(client)
    target = target_of(image)
    config = RunConfig.from_json(reader.image_config(target).get("config"), what=f"image {ref}: config")
    chain = reader.chain_id(target)
    if not snapshot_exists(client, snapshotter, chain):
        raise errors.FailedPrecondition(
            f"image {ref} is not unpacked in snapshotter {snapshotter} (pull it again to unpack it)"
        )
    # ctr's order: image config labels (not containerd's own), then the image's labels.
    labels = {k: v for k, v in config.labels.items() if not k.startswith(RESERVED_LABEL_PREFIXES)}
    return UnpackedImage(image.name, config, chain, labels | dict(image.labels))


@contextlib.contextmanager
def rootfs_view(client: Client, snapshotter: str, parent: str, md: Metadata = ()) -> Iterator[str]:
    """Mount a temporary read-only view of snapshot ``parent``; yield where it is mounted."""
    from pathlib import Path

    from wharfd.api.services.snapshots.v1 import snapshots_pb2 as spb
    from wharfd.runtime import mount
    from wharfd.runtime.snapshots.snapshotter import Mount

    key = f"wharf-rootfs-view-{os.getpid()}-{os.urandom(4).hex()}"
    view = spb.ViewSnapshotRequest(snapshotter=snapshotter, key=key, parent=parent)
    mounts = client.snapshots.View(view, metadata=md).mounts
    try:
        # Read-only even if the snapshotter handed out something writable.
        readonly = [mount.readonly(Mount(m.type, m.source, m.target, tuple(m.options))) for m in mounts]
        with contextlib.ExitStack() as stack:
            try:
                target = stack.enter_context(
                    mount.temporary_blocking(readonly, Path(tempfile.gettempdir()), "wharf-rootfs-")
                )
            except PermissionError as exc:
                raise commands.CommandError(
                    f"cannot mount the image rootfs to look users up in it (this needs root): {exc}"
                ) from exc
            yield target
    finally:
        client.snapshots.Remove(spb.RemoveSnapshotRequest(snapshotter=snapshotter, key=key), metadata=md)


def new_container(client: Client, args: argparse.Namespace) -> Any:
    """ctr's NewContainer from parsed :func:`spec_flags.add_flags` flags; returns the created container.

    ``args`` needs ``image``, ``id`` and ``args`` (the command) besides the flags.
    The snapshot is prepared under a temporary lease and removed again if the
    container cannot be created.
    """
    from wharfd.api.services.containers.v1 import containers_pb2 as pb
    from wharfd.api.services.snapshots.v1 import snapshots_pb2 as spb
    from wharfd.runtime.ctr.leases import temporary_lease
    from wharfd.runtime.ctr.snapshots import resolve_snapshotter
    from wharfd.runtime.oci import spec as oci_spec
    from wharfd.runtime.oci.image_config import STOP_SIGNAL_LABEL, stop_signal

    snapshotter = resolve_snapshotter(client, args.snapshotter)
    image = load_image(client, args.image, snapshotter)
    options = spec_flags.runtime_options(args)
    with temporary_lease(client) as md:
        with rootfs_view(client, snapshotter, image.chain_id, md) as rootfs:
            source = spec_flags.ImageRootfs(args.image, image.config, rootfs)
            spec = spec_flags.build_spec(client.namespace, args.id, args, source)
        container = pb.Container(
            id=args.id,
            image=image.name,
            # Flags override the image's labels; the stop signal label is set last, as in ctr.
            labels=image.labels
            | commands.label_args(args.label)
            | {STOP_SIGNAL_LABEL: stop_signal(image.config)},
            runtime=pb.Container.Runtime(name=args.runtime, options=options),
            spec=oci_spec.to_any(spec),
            snapshotter=snapshotter,
            snapshot_key=args.id,
        )
        prepare = spb.PrepareSnapshotRequest(
            snapshotter=snapshotter,
            key=args.id,
            parent=image.chain_id,
            labels=commands.label_args(args.snapshotter_label),
        )
        client.snapshots.Prepare(prepare, metadata=md)
        try:
            return (
                containers_stub(client)
                .Create(pb.CreateContainerRequest(container=container), metadata=md)
                .container
            )
        except BaseException:
            remove = spb.RemoveSnapshotRequest(snapshotter=snapshotter, key=args.id)
            with contextlib.suppress(Exception):
                client.snapshots.Remove(remove, metadata=md)
            raise
