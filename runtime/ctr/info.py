"""``wharf info``: the daemon's Introspection.Server answer as JSON."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from wharfd.runtime.ctr import commands

if TYPE_CHECKING:
    from wharfd.runtime.ctr.commands import Subparsers


def register(subparsers: Subparsers) -> None:
    """Add ``info``."""
    commands.add_command(subparsers, "info", _info, help="Print the server info")


def _info(args: argparse.Namespace) -> None:
    from google.protobuf import empty_pb2

    with commands.new_client(args) as client:
        server = client.introspection.Server(empty_pb2.Empty())
    commands.print_json({"server": server_json(server)})


def server_json(server: Any) -> dict[str, Any]:
    """A ServerResponse as Go's encoding/json writes the generated struct (json tags, omitempty)."""
    out: dict[str, Any] = {}
    if server.uuid:
        out["uuid"] = server.uuid
    if server.pid:
        out["pid"] = server.pid
    if server.pidns:
        out["pidns"] = server.pidns
    if server.deprecations:
        out["deprecations"] = [_deprecation_json(d) for d in server.deprecations]
    return out


def _deprecation_json(warning: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if warning.id:
        out["id"] = warning.id
    if warning.message:
        out["message"] = warning.message
    # A set Timestamp is a non-nil pointer, kept even when zero (then "{}").
    if warning.HasField("last_occurrence"):
        stamp: dict[str, int] = {}
        if warning.last_occurrence.seconds:
            stamp["seconds"] = warning.last_occurrence.seconds
        if warning.last_occurrence.nanos:
            stamp["nanos"] = warning.last_occurrence.nanos
        out["last_occurrence"] = stamp
    return out
