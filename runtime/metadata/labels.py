"""containerd's label limits, checked by every store before a label is written.

A key and its value together may be at most 4096 bytes of UTF-8; the error
names the field and the first 64 bytes of the key, as containerd's
``labels.Validate`` does, so a stock client sees the same message.
"""

from __future__ import annotations

from collections.abc import Mapping

from wharfd.runtime import errors

MAX_SIZE = 4096
_KEY_IN_MESSAGE = 64


def validate(key: str, value: str, *, field: str) -> None:
    """Raise InvalidArgument if ``key`` plus ``value`` exceed :data:`MAX_SIZE` bytes."""
    raw_key = key.encode()
    total = len(raw_key) + len(value.encode())
    if total > MAX_SIZE:
        shown = raw_key[:_KEY_IN_MESSAGE].decode(errors="replace")
        raise errors.InvalidArgument(
            f"{field}: label key and value length ({total} bytes) greater than maximum size "
            f"({MAX_SIZE} bytes), key: {shown}: invalid argument"
        )


def validate_all(labels: Mapping[str, str], *, field: str) -> None:
    """Validate every label of ``labels``; the first offender raises."""
    for key, value in labels.items():
        validate(key, value, field=field)
