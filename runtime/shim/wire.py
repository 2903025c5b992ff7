"""Just enough of the protobuf wire format for ``start``, which runs once per container.

Importing the protobuf runtime and the generated modules costs the ``start``
process ~45 ms, most of its run time; the three small messages it reads and
writes (BootstrapParams, Any, BootstrapResult) are decoded here instead.
Tests check the results against the generated classes.
"""

from __future__ import annotations

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5

Field = tuple[int, int, "int | bytes"]


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def fields(data: bytes) -> list[Field]:
    """The (field number, wire type, value) triples of a message; ValueError if it is malformed."""
    out: list[Field] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, kind = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        value: int | bytes
        if kind == VARINT:
            value, pos = _varint(data, pos)
        elif kind == LENGTH:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ValueError("truncated length-delimited field")
            value, pos = data[pos : pos + length], pos + length
        elif kind in (FIXED64, FIXED32):
            size = 8 if kind == FIXED64 else 4
            if pos + size > len(data):
                raise ValueError("truncated fixed-size field")
            value, pos = int.from_bytes(data[pos : pos + size], "little"), pos + size
        else:
            raise ValueError(f"unsupported wire type {kind}")
        out.append((number, kind, value))
    return out


def text(value: int | bytes) -> str:
    """A string field's value; ValueError if it is not length-delimited UTF-8."""
    if not isinstance(value, bytes):
        raise ValueError("expected a string field")
    return value.decode("utf-8")


def _key(number: int, kind: int) -> bytes:
    return _encode_varint(number << 3 | kind)


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def encode(*items: tuple[int, int | str | bytes]) -> bytes:
    """A message of (field number, value) pairs: ints as varints, str/bytes length-delimited."""
    out = bytearray()
    for number, value in items:
        if isinstance(value, int):
            out += _key(number, VARINT) + _encode_varint(value)
        else:
            raw = value.encode() if isinstance(value, str) else value
            out += _key(number, LENGTH) + _encode_varint(len(raw)) + raw
    return bytes(out)
