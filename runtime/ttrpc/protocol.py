"""ttrpc framing and status mapping, byte-compatible with the Go implementation.

A frame is a 10-byte header followed by its data::

    +----------------+----------------+--------+--------+
    | length: u32 BE | stream: u32 BE | type:u8| flags:u8|   then `length` bytes
    +----------------+----------------+--------+--------+

Clients open streams with odd ids, each larger than the last. A unary call is
one Request frame (a ``ttrpc.Request`` message, flags 0) answered by one
Response frame (``ttrpc.Response``: a ``google.rpc.Status`` and the payload).
Streaming calls open with a Request flagged *remote open* (the client will send
Data frames) or *remote closed* (it will not); the side that finishes sending
flags its last Data frame *remote closed*, with *no data* when the frame only
closes. A server ends a stream with a Response (a status, or the single reply
of a client-streaming call) or with a closing Data frame. Data longer than
4 MiB is refused.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass

from google.rpc import status_pb2

from wharfd.runtime import errors

HEADER = struct.Struct(">IIBB")
HEADER_SIZE = HEADER.size  # 10
MAX_DATA = 4 << 20

TYPE_REQUEST = 0x1
TYPE_RESPONSE = 0x2
TYPE_DATA = 0x3

FLAG_REMOTE_CLOSED = 0x1
FLAG_REMOTE_OPEN = 0x2
FLAG_NO_DATA = 0x4

# Metadata key containerd puts the namespace under on ttrpc calls.
NAMESPACE_KEY = "containerd-namespace-ttrpc"


class ConnectionClosed(errors.Unavailable):
    """The connection to the peer is gone; every call on it fails with this (Go's ``ErrClosed``)."""

    def __init__(self, message: str = "ttrpc: closed") -> None:
        super().__init__(message)


@dataclass(frozen=True)
class Frame:
    """One ttrpc frame."""

    stream_id: int
    type: int
    flags: int
    data: bytes


def oversize_message(length: int) -> str:
    """The text Go ttrpc uses when it refuses a message over :data:`MAX_DATA`."""
    return f"message length {length} exceed maximum message size of {MAX_DATA}"


def pack(stream_id: int, type_: int, flags: int, data: bytes) -> bytes:
    """Serialize one frame, refusing data over the 4 MiB limit with ResourceExhausted."""
    if len(data) > MAX_DATA:
        raise errors.ResourceExhausted(oversize_message(len(data)))
    return HEADER.pack(len(data), stream_id, type_, flags) + data


def encode(frame: Frame) -> bytes:
    """Serialize a frame, refusing data over the 4 MiB limit."""
    return pack(frame.stream_id, frame.type, frame.flags, frame.data)


async def read_frame(reader: asyncio.StreamReader) -> Frame:
    """Read one frame; raises asyncio.IncompleteReadError at a clean end of stream.

    An oversized frame is read past (so the stream stays usable) and reported
    as :class:`OversizedFrame`.
    """
    header = await reader.readexactly(HEADER_SIZE)
    length, stream_id, type_, flags = HEADER.unpack(header)
    if length > MAX_DATA:
        remaining = length
        while remaining:
            chunk = await reader.read(min(remaining, 1 << 16))
            if not chunk:
                raise asyncio.IncompleteReadError(b"", remaining)
            remaining -= len(chunk)
        raise OversizedFrame(stream_id, length)
    data = await reader.readexactly(length) if length else b""
    return Frame(stream_id, type_, flags, data)


class OversizedFrame(Exception):
    """A peer sent a frame larger than :data:`MAX_DATA`."""

    def __init__(self, stream_id: int, length: int) -> None:
        super().__init__(oversize_message(length))
        self.stream_id = stream_id
        self.length = length


def status_of(exc: BaseException) -> status_pb2.Status:
    """The ``google.rpc.Status`` a server answers for ``exc``."""
    code, message = errors.to_code(exc)
    return status_pb2.Status(code=code, message=message)


def error_of(status: status_pb2.Status) -> errors.WharfError:
    """The typed error a non-OK status stands for (codes unknown to gRPC map to UNKNOWN)."""
    # Numbers outside the known codes come back as the generic (UNKNOWN) error.
    return errors.from_status(status.code, status.message)
