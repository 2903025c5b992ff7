"""``wharf snapshots``: prepare, view, commit, inspect, label, measure, diff and remove snapshots.

Every command works on one snapshotter, named by the group's
``--snapshotter`` flag (env ``WHARF_SNAPSHOTTER``); without one, the
namespace's ``containerd.io/defaults/snapshotter`` label decides, else
``overlayfs``, as ctr resolves it. ``unpack`` waits for the image pull
pipeline and is not offered yet.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from wharfd.runtime.ctr import commands
from wharfd.runtime.ctr.leases import LABEL_GC_ROOT, temporary_lease, utc_now_rfc3339
from wharfd.runtime.ctr.tabwriter import Writer

if TYPE_CHECKING:
    from wharfd.runtime.client import Client
    from wharfd.runtime.ctr.commands import Subparsers

DEFAULT_SNAPSHOTTER = "overlayfs"
SNAPSHOTTER_ENV = "WHARF_SNAPSHOTTER"
# The namespace label that names a namespace's default snapshotter.
DEFAULT_SNAPSHOTTER_LABEL = "containerd.io/defaults/snapshotter"
DEFAULT_DIFF_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
# Kind names by the API's enum number, as Go's snapshots.Kind prints them.
KINDS = ("Unknown", "View", "Active", "Committed")
_BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB")

Metadata = Sequence[tuple[str, str]]


def add_snapshotter_flag(parser: argparse.ArgumentParser) -> None:
    """ctr's ``--snapshotter`` flag; empty means the namespace's default."""
    parser.add_argument(
        "--snapshotter",
        default=os.environ.get(SNAPSHOTTER_ENV, ""),
        help=f"Snapshotter name; empty stands for the default (env ${SNAPSHOTTER_ENV})",
    )


def resolve_snapshotter(client: Client, name: str) -> str:
    """The snapshotter to use: ``name``, else the namespace's default label, else overlayfs."""
    if name:
        return name
    from wharfd.api.services.namespaces.v1 import namespace_pb2 as npb
    from wharfd.runtime import errors

    try:
        ns = client.namespaces.Get(npb.GetNamespaceRequest(name=client.namespace)).namespace
    except errors.NotFound:
        return DEFAULT_SNAPSHOTTER
    return str(ns.labels.get(DEFAULT_SNAPSHOTTER_LABEL) or DEFAULT_SNAPSHOTTER)


def bytes_size(size: int) -> str:
    """ctr's ``progress.Bytes``: ``%02.1f <unit>`` in powers of 1024 (``2.5 MiB``)."""
    value = float(size)
    unit = 0
    while value >= 1024 and unit < len(_BINARY_UNITS) - 1:
        value /= 1024
        unit += 1
    return f"{value:02.1f} {_BINARY_UNITS[unit]}"


def rfc3339_nano(stamp: Any) -> str:
    """A protobuf Timestamp as Go's encoding/json writes a UTC ``time.Time`` (RFC 3339, trimmed nanos)."""
    whole = datetime.fromtimestamp(stamp.seconds, UTC).replace(tzinfo=None).isoformat(timespec="seconds")
    fraction = f".{stamp.nanos:09d}".rstrip("0") if stamp.nanos else ""
    return f"{whole}{fraction}Z"


def info_json(info: Any) -> dict[str, Any]:
    """A snapshot Info in the shape of Go's ``snapshots.Info`` JSON."""
    out: dict[str, Any] = {"Kind": KINDS[info.kind] if 0 <= info.kind < len(KINDS) else "Unknown"}
    out["Name"] = info.name
    if info.parent:
        out["Parent"] = info.parent
    if info.labels:
        out["Labels"] = dict(sorted(info.labels.items()))
    out["Created"] = rfc3339_nano(info.created_at)
    out["Updated"] = rfc3339_nano(info.updated_at)
    return out


def mounts_json(mounts: Sequence[Any]) -> list[dict[str, Any]]:
    """Mounts in the shape of Go's ``mount.Mount`` JSON (no options is ``null``)."""
    return [
        {"Type": m.type, "Source": m.source, "Target": m.target, "Options": list(m.options) or None}
        for m in mounts
    ]


def register(subparsers: Subparsers) -> None:
    """Add ``snapshots [snapshot]`` and its subcommands, in ctr's order."""
    group = subparsers.add_parser(
        "snapshots", aliases=["snapshot"], help="Manage snapshots", description="Manage snapshots"
    )
    add_snapshotter_flag(group)
    group.set_defaults(func=lambda _args: group.print_help())
    sub = group.add_subparsers(title="commands", metavar="COMMAND")
    commit = commands.add_command(
        sub, "commit", _commit, help="Commit an active snapshot into the provided name"
    )
    commit.add_argument("key", metavar="<key>")
    commit.add_argument("active", metavar="<active>")
    _add_diff(sub)
    info = commands.add_command(sub, "info", _info, help="Get info about a snapshot")
    info.add_argument("key", metavar="<key>")
    commands.add_command(sub, "list", _list, aliases=["ls"], help="List snapshots")
    mounts = commands.add_command(
        sub, "mounts", _mounts, aliases=["m", "mount"], help="Mount gets mount commands for the snapshots"
    )
    mounts.add_argument(
        "--temp", action="store_true", help="Accepted for ctr compatibility; wharfd has no mount manager"
    )
    mounts.add_argument("target", metavar="<target>")
    mounts.add_argument("key", metavar="<key>")
    _add_mount_flags(
        commands.add_command(sub, "prepare", _prepare, help="Prepare a snapshot from a committed snapshot")
    )
    rm = commands.add_command(
        sub, "delete", _remove, aliases=["del", "remove", "rm"], help="Remove snapshots"
    )
    rm.add_argument("keys", nargs="*", metavar="<key>")
    label = commands.add_command(sub, "label", _label, help="Add labels to a snapshot")
    label.add_argument("args", nargs="*", metavar="<name> [<label>=<value> ...]")
    commands.add_command(sub, "tree", _tree, help="Display tree view of snapshot branches")
    usage = commands.add_command(sub, "usage", _usage, help="Usage snapshots")
    usage.add_argument("-b", action="store_true", help="Display size in bytes")
    usage.add_argument("keys", nargs="*", metavar="<key>")
    _add_mount_flags(
        commands.add_command(sub, "view", _view, help="Create a read-only snapshot from a committed snapshot")
    )


def _add_diff(sub: Subparsers) -> None:
    diff = commands.add_command(
        sub, "diff", _diff, help="Get the diff of two snapshots; the second defaults to the first's parent"
    )
    diff.add_argument(
        "--media-type", default=DEFAULT_DIFF_MEDIA_TYPE, help="Media type to use for creating diff"
    )
    diff.add_argument("--ref", default="", help="Content upload reference to use")
    diff.add_argument("--keep", action="store_true", help="Keep diff content; up to the creator to delete it")
    diff.add_argument("--label", action="append", default=[], help="Labels to attach to the diff blob")
    diff.add_argument("id_a", metavar="<idA>")
    diff.add_argument("id_b", nargs="?", default="", metavar="<idB>")


def _add_mount_flags(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("-t", "--target", default="", help="Mount target path, will print mount, if provided")
    cmd.add_argument("--mounts", action="store_true", help="Print out snapshot mounts as JSON")
    cmd.add_argument("key", metavar="<key>")
    cmd.add_argument("parent", nargs="?", default="", metavar="<parent>")


@contextlib.contextmanager
def _session(args: argparse.Namespace) -> Iterator[tuple[Client, str]]:
    with commands.new_client(args) as client:
        yield client, resolve_snapshotter(client, args.snapshotter)


def _prepare(args: argparse.Namespace) -> None:
    from wharfd.api.services.snapshots.v1 import snapshots_pb2 as pb

    with _session(args) as (client, name):
        request = pb.PrepareSnapshotRequest(
            snapshotter=name, key=args.key, parent=args.parent, labels={LABEL_GC_ROOT: utc_now_rfc3339()}
        )
        mounts = client.snapshots.Prepare(request).mounts
    _show_mounts(args, mounts)


def _view(args: argparse.Namespace) -> None:
    from wharfd.api.services.snapshots.v1 import snapshots_pb2 as pb

    with _session(args) as (client, name):
        request = pb.ViewSnapshotRequest(snapshotter=name, key=args.key, parent=args.parent)
        mounts = client.snapshots.View(request).mounts
    _show_mounts(args, mounts)


def _show_mounts(args: argparse.Namespace, mounts: Sequence[Any]) -> None:
    if args.target:
        print_mounts(args.target, mounts)
    if args.mounts:
        commands.print_json(mounts_json(mounts))


def print_mounts(target: str, mounts: Sequence[Any]) -> None:
    """One ``mount -t <type> <source> <target> [-o <options>]`` line per mount, as ctr prints them."""
    for m in mounts:
        options = f" -o {','.join(m.options)}" if m.options else ""
        print(f"mount -t {m.type} {m.source} {go_join(target, m.target)}{options}")


def go_join(*parts: str) -> str:
    """Go's ``filepath.Join``: the non-empty parts joined by ``/`` and cleaned; "" when all are empty."""
    joined = "/".join(p for p in parts if p)
    if not joined:
        return ""
    rooted = joined.startswith("/")
    out: list[str] = []
    for part in joined.split("/"):
        if part in ("", "."):
            continue
        if part != "..":
            out.append(part)
        elif out and out[-1] != "..":
            out.pop()
        elif not rooted:
            out.append("..")
    text = "/".join(out)
    return "/" + text if rooted else text or "."


def _mounts(args: argparse.Namespace) -> None:
    from wharfd.api.services.snapshots.v1 import snapshots_pb2 as pb

    with _session(args) as (client, name):
        mounts = client.snapshots.Mounts(pb.MountsRequest(snapshotter=name, key=args.key)).mounts
    print_mounts(args.target, mounts)


def _commit(args: argparse.Namespace) -> None:
    from wharfd.api.services.snapshots.v1 import snapshots_pb2 as pb

    with _session(args) as (client, name):
        labels = {LABEL_GC_ROOT: utc_now_rfc3339()}
        client.snapshots.Commit(
            pb.CommitSnapshotRequest(snapshotter=name, name=args.key, key=args.active, labels=labels)
        )


def _info(args: argparse.Namespace) -> None:
    from wharfd.api.services.snapshots.v1 import snapshots_pb2 as pb

    with _session(args) as (client, name):
        info = client.snapshots.Stat(pb.StatSnapshotRequest(snapshotter=name, key=args.key)).info
    commands.print_json(info_json(info))


def walk(client: Client, snapshotter: str, filters: Sequence[str] = ()) -> Iterator[Any]:
    """Every snapshot's Info, in the order the daemon streams them."""
    from wharfd.api.services.snapshots.v1 import snapshots_pb2 as pb

    for response in client.snapshots.List(pb.ListSnapshotsRequest(snapshotter=snapshotter, filters=filters)):
        yield from response.info


def _list(args: argparse.Namespace) -> None:
    with _session(args) as (client, name):
        tw = Writer(sys.stdout, 1, 8, 1)
        tw.write("KEY\tPARENT\tKIND\t\n")
        for info in walk(client, name):
            tw.write(f"{info.name}\t{info.parent}\t{KINDS[info.kind]}\t\n")
        tw.flush()


def _remove(args: argparse.Namespace) -> None:
    from wharfd.api.services.snapshots.v1 import snapshots_pb2 as pb
    from wharfd.runtime import errors
    from wharfd.runtime.client import describe

    with _session(args) as (client, name):
        for key in args.keys:
            try:
                client.snapshots.Remove(pb.RemoveSnapshotRequest(snapshotter=name, key=key))
            except errors.WharfError as exc:
                raise commands.CommandError(f'failed to remove "{key}": {describe(exc)}') from exc


def _label(args: argparse.Namespace) -> None:
    from google.protobuf import field_mask_pb2

    from wharfd.api.services.snapshots.v1 import snapshots_pb2 as pb

    key, labels = commands.object_with_label_args(args.args)
    with _session(args) as (client, name):
        if not labels:
            # Nothing to change: show the labels as they are.
            info = client.snapshots.Stat(pb.StatSnapshotRequest(snapshotter=name, key=key)).info
        else:
            wanted = pb.Info(name=key, labels={k: v for k, v in labels.items() if v})
            mask = field_mask_pb2.FieldMask(paths=[f"labels.{k}" for k in labels])
            request = pb.UpdateSnapshotRequest(snapshotter=name, info=wanted, update_mask=mask)
            info = client.snapshots.Update(request).info
    print(commands.format_labels(dict(info.labels)))


def _usage(args: argparse.Namespace) -> None:
    from wharfd.api.services.snapshots.v1 import snapshots_pb2 as pb

    show = str if args.b else bytes_size
    with _session(args) as (client, name):
        keys = args.keys or [info.name for info in walk(client, name)]
        tw = Writer(sys.stdout, 1, 8, 1)
        tw.write("KEY\tSIZE\tINODES\t\n")
        for key in keys:
            usage = client.snapshots.Usage(pb.UsageRequest(snapshotter=name, key=key))
            tw.write(f"{key}\t{show(usage.size)}\t{usage.inodes}\t\n")
        tw.flush()


def _tree(args: argparse.Namespace) -> None:
    with _session(args) as (client, name):
        infos = list(walk(client, name))
    for line in tree_lines(infos):
        print(line)


def tree_lines(infos: Sequence[Any]) -> list[str]:
    """ctr's tree: each parentless snapshot, then its children indented under ``\\_``.

    A parent not listed (yet) gets a placeholder without a parent, so it shows as a root.
    """
    parents: dict[str, str] = {}
    children: dict[str, list[str]] = {}
    for info in infos:
        children.setdefault(info.name, [])
        parents[info.name] = info.parent
        if info.parent:
            parents.setdefault(info.parent, "")
            children.setdefault(info.parent, []).append(info.name)
    lines: list[str] = []

    def visit(node: str, level: int) -> None:
        prefix = "  " * level + ("\\_" if level else "")
        lines.append(f"{prefix} {node}")
        for child in children[node]:
            visit(child, level + 1)

    for node in children:  # first appearance order, as ctr's node list
        if not parents[node]:
            visit(node, 0)
    return lines


def _unique_part() -> str:
    # ctr's rootfs.uniquePart: the clock's nanoseconds and three random bytes.
    return f"{time.time_ns() % 1_000_000_000}-{base64.urlsafe_b64encode(os.urandom(3)).decode()}"


@contextlib.contextmanager
def _mounts_for(client: Client, snapshotter: str, key: str, view_key: str, md: Metadata) -> Iterator[Any]:
    """The mounts of ``key``: its own if active, else of a temporary view removed afterwards."""
    from wharfd.api.services.snapshots.v1 import snapshots_pb2 as pb

    info = client.snapshots.Stat(pb.StatSnapshotRequest(snapshotter=snapshotter, key=key), metadata=md).info
    if info.kind == pb.ACTIVE:
        yield client.snapshots.Mounts(pb.MountsRequest(snapshotter=snapshotter, key=key), metadata=md).mounts
        return
    view = pb.ViewSnapshotRequest(snapshotter=snapshotter, key=view_key, parent=key)
    mounts = client.snapshots.View(view, metadata=md).mounts
    try:
        yield mounts
    finally:
        client.snapshots.Remove(pb.RemoveSnapshotRequest(snapshotter=snapshotter, key=view_key), metadata=md)


@contextlib.contextmanager
def _parent_mounts(client: Client, snapshotter: str, key: str, md: Metadata) -> Iterator[Any]:
    """A temporary view of ``key``'s parent (rootfs.CreateDiff's lower side)."""
    from wharfd.api.services.snapshots.v1 import snapshots_pb2 as pb

    parent = client.snapshots.Stat(
        pb.StatSnapshotRequest(snapshotter=snapshotter, key=key), metadata=md
    ).info.parent
    view_key = f"{parent}-parent-view-{_unique_part()}"
    mounts = client.snapshots.View(
        pb.ViewSnapshotRequest(snapshotter=snapshotter, key=view_key, parent=parent), metadata=md
    ).mounts
    try:
        yield mounts
    finally:
        client.snapshots.Remove(pb.RemoveSnapshotRequest(snapshotter=snapshotter, key=view_key), metadata=md)


def _diff(args: argparse.Namespace) -> None:
    from wharfd.api.services.diff.v1 import diff_pb2 as dpb
    from wharfd.runtime.ctr.content import copy_blob

    labels = commands.label_args(args.label)
    if args.keep:
        labels[LABEL_GC_ROOT] = utc_now_rfc3339()
    request = dpb.DiffRequest(media_type=args.media_type, ref=args.ref, labels=labels)
    if epoch := os.environ.get("SOURCE_DATE_EPOCH"):
        # Reproducible layers: every mtime in the diff is clamped to this time.
        if not epoch.isdigit():
            raise commands.CommandError(f"invalid SOURCE_DATE_EPOCH value {epoch!r}: expected Unix seconds")
        request.source_date_epoch.FromSeconds(int(epoch))
    with _session(args) as (client, name), temporary_lease(client) as md:
        if args.id_b:
            lower = _mounts_for(client, name, args.id_a, f"{args.id_a}-view-key", md)
            upper = _mounts_for(client, name, args.id_b, f"{args.id_b}-view-key", md)
        else:
            lower = _parent_mounts(client, name, args.id_a, md)
            upper = _mounts_for(client, name, args.id_a, f"{args.id_a}-view-{_unique_part()}", md)
        with lower as left, upper as right:
            request.left.extend(left)
            request.right.extend(right)
            desc = client.diff.Diff(request, metadata=md).diff
        copy_blob(client, desc.digest, sys.stdout.buffer, metadata=md)
