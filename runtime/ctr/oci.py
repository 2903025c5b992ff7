"""``wharf oci spec``: print the default OCI runtime spec as JSON, as ``ctr oci spec`` does."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from wharfd.runtime.ctr import commands

if TYPE_CHECKING:
    from wharfd.runtime.ctr.commands import Subparsers


def register(subparsers: Subparsers) -> None:
    """Add ``oci`` and ``oci spec``."""
    group = commands.add_group(subparsers, "oci", help="OCI tools")
    spec = commands.add_command(group, "spec", _spec, help="See the output of the default OCI spec")
    spec.add_argument("--platform", default="", help="Platform of the spec (only the host's, linux)")


def _spec(args: argparse.Namespace) -> None:
    from wharfd.runtime import namespaces
    from wharfd.runtime.oci import spec

    if args.platform and not args.platform.startswith("linux"):
        raise commands.CommandError(f"platform {args.platform!r}: only linux specs are generated")
    # ctr builds it for a container named after nothing: the namespace and an empty id.
    namespace = args.namespace or namespaces.DEFAULT
    document = spec.default_spec(namespace, "oci-spec")
    document["linux"]["cgroupsPath"] = f"/{namespace}/"
    commands.print_json(document)
