"""ttrpc framing, byte-compatible with the Go implementation.

A frame is a 10-byte header followed by its data::

    +----------------+----------------+--------+--------+
    | length: u32 BE | stream: u32 BE | type:u8| flags:u8|   then `length` bytes
    +----------------+----------------+--------+--------+

Clients open streams with odd ids. A unary call is one Request frame (a
``ttrpc.Request`` message) answered by one Response frame (``ttrpc.Response``
carrying a ``google.rpc.Status`` and the payload). Data frames and the flags
carry streaming calls. Data longer than 4 MiB is refused.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Frame:
    """One ttrpc frame."""

    stream_id: int
    type: int
    flags: int
    data: bytes


def encode(frame: Frame) -> bytes:
    """Serialize a frame, refusing data over the 4 MiB limit."""
    if len(frame.data) > MAX_DATA:
        raise errors.ResourceExhausted(
            f"ttrpc message of {len(frame.data)} bytes exceeds the {MAX_DATA} byte limit"
        )
    return HEADER.pack(len(frame.data), frame.stream_id, frame.type, frame.flags) + frame.data


async def read_frame(reader: asyncio.StreamReader) -> Frame:
    """Read one frame; raises asyncio.IncompleteReadError at a clean end of stream."""
    header = await reader.readexactly(HEADER_SIZE)
    length, stream_id, type_, flags = HEADER.unpack(header)
    if length > MAX_DATA:
        # Discard the oversized body so the connection stays usable, then refuse the message.
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
        super().__init__(
            f"ttrpc frame of {length} bytes on stream {stream_id} exceeds the {MAX_DATA} byte limit"
        )
        self.stream_id = stream_id
        self.length = length
