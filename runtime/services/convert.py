"""Conversions between store types and protobuf messages shared by several servicers."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from wharfd.api.types import descriptor_pb2
from wharfd.runtime.metadata.images import Descriptor


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A protobuf Timestamp for ``value`` (None stays unset)."""
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value.astimezone(UTC))
    return stamp


def descriptor_to_proto(desc: Descriptor) -> descriptor_pb2.Descriptor:
    """A ``containerd.types.Descriptor``."""
    return descriptor_pb2.Descriptor(
        media_type=desc.media_type, digest=desc.digest, size=desc.size, annotations=desc.annotations
    )


def descriptor_from_proto(msg: descriptor_pb2.Descriptor) -> Descriptor:
    """A store Descriptor from ``containerd.types.Descriptor``."""
    return Descriptor(msg.media_type, msg.digest, msg.size, dict(msg.annotations))
