"""``wharf version``: the client's and the daemon's versions, side by side."""

from __future__ import annotations

import argparse
import platform
import sys
from typing import TYPE_CHECKING

from wharfd.runtime.ctr import commands

if TYPE_CHECKING:
    from wharfd.runtime.ctr.commands import Subparsers


def register(subparsers: Subparsers) -> None:
    """Add ``version``."""
    cmd = commands.add_command(subparsers, "version", _version, help="Print the client and server versions")
    cmd.add_argument("extra", nargs="*", help=argparse.SUPPRESS)


def _version(args: argparse.Namespace) -> None:
    from google.protobuf import empty_pb2

    from wharfd.runtime import version

    if args.extra:
        # ctr formats its argument list with Go's %v of a slice pointer.
        raise commands.CommandError(f"extra arguments: &[{' '.join(args.extra)}]")
    # The client half is printed before dialling, so it shows even when the daemon is down.
    print("Client:")
    print("  Version: ", version.version())
    print("  Revision:", version.revision())
    print("  Python version:", platform.python_version())
    print("")
    sys.stdout.flush()
    with commands.new_client(args) as client:
        server = client.version.Version(empty_pb2.Empty())
        print("Server:")
        print("  Version: ", server.version)
        print("  Revision:", server.revision)
        info = client.introspection.Server(empty_pb2.Empty())
        print("  UUID:", info.uuid)
    if server.version != version.version():
        print("WARNING: version mismatch", file=sys.stderr)
    if server.revision != version.revision():
        print("WARNING: revision mismatch", file=sys.stderr)
