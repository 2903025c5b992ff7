"""``wharf namespaces``: create, list, remove and label namespaces."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import TYPE_CHECKING

from wharfd.runtime.ctr import commands
from wharfd.runtime.ctr.tabwriter import Writer

if TYPE_CHECKING:
    from wharfd.runtime.ctr.commands import Subparsers

# ctr's -c removes the namespace's cgroup, which tasks are placed under as /<namespace>/<id>.
CGROUP_ROOT = "/sys/fs/cgroup"


def register(subparsers: Subparsers) -> None:
    """Add ``namespaces [namespace, ns]`` and its subcommands."""
    group = commands.add_group(
        subparsers, "namespaces", aliases=["namespace", "ns"], help="Manage namespaces"
    )
    create = commands.add_command(group, "create", _create, aliases=["c"], help="Create a new namespace")
    create.add_argument("args", nargs="*", metavar="<name> [<key>=<value>]")
    ls = commands.add_command(group, "list", _list, aliases=["ls"], help="List namespaces")
    ls.add_argument("-q", "--quiet", action="store_true", help="Print only the namespace name")
    rm = commands.add_command(group, "remove", _remove, aliases=["rm"], help="Remove one or more namespaces")
    rm.add_argument("-c", "--cgroup", action="store_true", help="Delete the namespace's cgroup")
    rm.add_argument("names", nargs="*", metavar="<name>")
    label = commands.add_command(group, "label", _label, help="Set and clear labels for a namespace")
    label.add_argument("args", nargs="*", metavar="<name> [<key>=<value>, ...]")


def _create(args: argparse.Namespace) -> None:
    from wharfd.api.services.namespaces.v1 import namespace_pb2 as pb

    name, labels = commands.object_with_label_args(args.args)
    if not name:
        raise commands.CommandError("please specify a namespace")
    with commands.new_client(args) as client:
        client.namespaces.Create(pb.CreateNamespaceRequest(namespace=pb.Namespace(name=name, labels=labels)))


def _list(args: argparse.Namespace) -> None:
    from wharfd.api.services.namespaces.v1 import namespace_pb2 as pb

    with commands.new_client(args) as client:
        names = [ns.name for ns in client.namespaces.List(pb.ListNamespacesRequest()).namespaces]
        if args.quiet:
            for name in names:
                print(name)
            return
        tw = Writer(sys.stdout, 1, 8, 1)
        tw.write("NAME\tLABELS\t\n")
        for name in names:
            # Labels come from Get, one call per namespace, as ctr fetches them.
            ns = client.namespaces.Get(pb.GetNamespaceRequest(name=name)).namespace
            tw.write(f"{name}\t{commands.format_labels(dict(ns.labels))}\t\n")
        tw.flush()


def _remove(args: argparse.Namespace) -> None:
    from wharfd.api.services.namespaces.v1 import namespace_pb2 as pb
    from wharfd.runtime import errors
    from wharfd.runtime.client import describe

    failure: str | None = None
    with commands.new_client(args) as client:
        for name in args.names:
            try:
                if args.cgroup:
                    _remove_cgroup(name)
                client.namespaces.Delete(pb.DeleteNamespaceRequest(name=name))
            except errors.NotFound:
                pass  # already gone: reported as removed, as ctr does
            except (errors.WharfError, OSError) as exc:
                # Keep going so one bad name does not hide the others; fail at the end.
                failure = failure or f"unable to delete {name}: {describe(exc)}"
                commands.log.error("unable to delete %s: %s", name, describe(exc))
                continue
            print(name)
    if failure:
        raise commands.CommandError(failure)


def _remove_cgroup(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(os.path.join(CGROUP_ROOT, name))


def _label(args: argparse.Namespace) -> None:
    from google.protobuf import field_mask_pb2

    from wharfd.api.services.namespaces.v1 import namespace_pb2 as pb

    name, labels = commands.object_with_label_args(args.args)
    if not name:
        raise commands.CommandError("please specify a namespace")
    with commands.new_client(args) as client:
        # One update per key: an empty value clears that label only.
        for key, value in labels.items():
            client.namespaces.Update(
                pb.UpdateNamespaceRequest(
                    namespace=pb.Namespace(name=name, labels={key: value}),
                    update_mask=field_mask_pb2.FieldMask(paths=[f"labels.{key}"]),
                )
            )
