"""``wharf plugins``: what the daemon is made of, and how each plugin fared at start."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from wharfd.runtime.ctr import commands
from wharfd.runtime.ctr.tabwriter import Writer

if TYPE_CHECKING:
    from wharfd.runtime.ctr.commands import Subparsers

# The text of containerd's ErrSkipPlugin: an init error containing it means "not for this host".
SKIP_PLUGIN = "skip plugin"

# gRPC code names as Go's codes.Code prints them (index = code number).
_CODE_NAMES = (
    "OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
    "AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted",
    "OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated",
)  # fmt: skip


def register(subparsers: Subparsers) -> None:
    """Add ``plugins [plugin]`` and its subcommands."""
    group = commands.add_group(
        subparsers, "plugins", aliases=["plugin"], help="Provides information about wharfd plugins"
    )
    ls = commands.add_command(group, "list", _list, aliases=["ls"], help="Lists wharfd plugins")
    ls.add_argument("-q", "--quiet", action="store_true", help="Print only the plugin ids")
    ls.add_argument(
        "-d", "--detailed", action="store_true", help="Print detailed information about each plugin"
    )
    ls.add_argument("filters", nargs="*", metavar="filter")


def _list(args: argparse.Namespace) -> None:
    from wharfd.api.services.introspection.v1 import introspection_pb2 as pb

    with commands.new_client(args) as client:
        plugins = client.introspection.Plugins(pb.PluginsRequest(filters=args.filters)).plugins
    if args.quiet:
        for plugin in plugins:
            print(plugin.id)
        return
    tw = Writer(sys.stdout, 4, 8, 4)
    if args.detailed:
        _print_detailed(tw, plugins)
    else:
        tw.write("TYPE\tID\tPLATFORMS\tSTATUS\t\n")
        for plugin in plugins:
            platforms = pretty_platforms(plugin.platforms) if plugin.platforms else "-"
            tw.write(f"{plugin.type}\t{plugin.id}\t{platforms}\t{status(plugin)}\t\n")
    tw.flush()


def _print_detailed(tw: Writer, plugins: Iterable[Any]) -> None:
    # The odd spaces after tabs are ctr's: it prints these lines with Go's Println,
    # which puts a space between operands.
    for i, plugin in enumerate(plugins):
        if i:
            tw.write("\t\t\t\n")
        tw.write(f"Type:\t {plugin.type}\n")
        tw.write(f"ID:\t {plugin.id}\n")
        if plugin.requires:
            tw.write("Requires:\t\n")
            for required in plugin.requires:
                tw.write(f"\t {required}\n")
        if plugin.platforms:
            tw.write(f"Platforms:\t {pretty_platforms(plugin.platforms)}\n")
        if plugin.exports:
            tw.write("Exports:\t\n")
            # Go walks the map in random order; sorted is one of those orders, and stable.
            for key, value in sorted(plugin.exports.items()):
                tw.write(f"\t {key} \t {value}\n")
        if plugin.capabilities:
            tw.write(f"Capabilities:\t {','.join(plugin.capabilities)}\n")
        if plugin.HasField("init_err"):
            tw.write("Error:\t\n")
            tw.write(f"\t Code:\t {code_name(plugin.init_err.code)}\n")
            tw.write(f"\t Message:\t {plugin.init_err.message}\n")


def status(plugin: Any) -> str:
    """``ok``, ``skip`` (the plugin chose not to run here) or ``error``, as ctr's STATUS column."""
    if not plugin.HasField("init_err"):
        return "ok"
    return "skip" if SKIP_PLUGIN in plugin.init_err.message else "error"


def code_name(code: int) -> str:
    """A gRPC code number as Go's ``codes.Code.String`` spells it."""
    return _CODE_NAMES[code] if 0 <= code < len(_CODE_NAMES) else f"Code({code})"


def format_platform(os: str, architecture: str, variant: str) -> str:
    """containerd's ``platforms.Format``: ``os[/arch[/variant]]``, or ``unknown`` without an OS."""
    if not os:
        return "unknown"
    return "/".join(part for part in (os, architecture, variant) if part)


def pretty_platforms(platforms: Iterable[Any]) -> str:
    """Distinct platforms, sorted and joined by commas."""
    return ",".join(sorted({format_platform(p.os, p.architecture, p.variant) for p in platforms}))
