"""runc runtime options (``containerd.runc.v1.Options``): decoding, defaults, and ``options.json``.

The options arrive as a protobuf Any in the bootstrap extensions, in
``Create``'s ``options``, or (older daemons) as the raw stdin of ``start``.
Type URLs may be bare (``containerd.runc.v1.Options``), which Python's
``Any.Unpack`` refuses, so the URL is compared here and the value parsed.
``options.json`` in the bundle uses the proto field names, as the runc shim's
JSON of the generated struct does; the ``delete`` action reads it back.
"""

from __future__ import annotations

import json
import os
from typing import Any

from google.protobuf import any_pb2

from wharfd.api.types.runc.options import oci_pb2
from wharfd.runtime import errors
from wharfd.runtime.shim.launch import GENERIC_OPTIONS_TYPE, OPTIONS_TYPE, names_type

CHECKPOINT_OPTIONS_TYPE = "containerd.runc.v1.CheckpointOptions"
DEFAULT_ROOT = "/run/wharfd/runc"
OPTIONS_FILE = "options.json"


def is_type(any_: any_pb2.Any, name: str) -> bool:
    """Whether ``any_`` carries message ``name`` (bare or ``…/name`` type URL)."""
    return names_type(any_.type_url, name)


def from_any(any_: any_pb2.Any | None) -> oci_pb2.Options | None:
    """The runc options in ``any_``; None if it is empty or generic (launch.GENERIC_OPTIONS_TYPE);
    InvalidArgument if it is something else."""
    if any_ is None or not (any_.type_url or any_.value) or is_type(any_, GENERIC_OPTIONS_TYPE):
        return None
    if not is_type(any_, OPTIONS_TYPE):
        raise errors.InvalidArgument(f"options: unsupported type {any_.type_url!r}, want {OPTIONS_TYPE}")
    opts = oci_pb2.Options()
    opts.ParseFromString(any_.value)
    return opts


def checkpoint_from_any(any_: any_pb2.Any) -> oci_pb2.CheckpointOptions:
    """The checkpoint options in ``any_`` (empty ones if none were given)."""
    opts = oci_pb2.CheckpointOptions()
    if any_.type_url or any_.value:
        if not is_type(any_, CHECKPOINT_OPTIONS_TYPE):
            raise errors.InvalidArgument(
                f"checkpoint options: unsupported type {any_.type_url!r}, want {CHECKPOINT_OPTIONS_TYPE}"
            )
        opts.ParseFromString(any_.value)
    return opts


def root(opts: oci_pb2.Options, namespace: str) -> str:
    """runc's state directory, ``<Root>/<namespace>``: as containerd's shim, the namespace
    goes under a given Root too (default Root ``/run/wharfd/runc``)."""
    return os.path.join(opts.root or DEFAULT_ROOT, namespace)


def write(bundle: str, opts: oci_pb2.Options) -> None:
    """Persist ``opts`` as ``<bundle>/options.json``."""
    data: dict[str, Any] = {field.name: value for field, value in opts.ListFields()}
    path = os.path.join(bundle, OPTIONS_FILE)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(path + ".tmp", path)


def read(bundle: str) -> oci_pb2.Options:
    """``<bundle>/options.json``; empty options if it is absent or unreadable."""
    opts = oci_pb2.Options()
    try:
        with open(os.path.join(bundle, OPTIONS_FILE), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return opts
    known = opts.DESCRIPTOR.fields_by_name
    for key, value in data.items() if isinstance(data, dict) else ():
        if key in known:
            setattr(opts, key, value)
    return opts
