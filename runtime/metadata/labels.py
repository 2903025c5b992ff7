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


def apply_paths(
    current: Mapping[str, str], new: Mapping[str, str], paths: list[str], *, field: str
) -> dict[str, str] | None:
    """Apply the ``labels`` / ``labels.<key>`` field paths of an Update call.

    Returns the resulting labels, or None when no path touches labels (the
    caller then handles its other paths). ``labels`` replaces all labels;
    ``labels.<key>`` sets one key, or removes it when the new value is empty or
    absent. Empty values are never stored.
    """
    touched = False
    result = dict(current)
    for path in paths:
        if path == "labels":
            validate_all(new, field=field)
            result = {k: v for k, v in new.items() if v}
            touched = True
        elif path.startswith("labels.") and len(path) > len("labels."):
            key = path[len("labels.") :]
            value = new.get(key, "")
            validate(key, value, field=field)
            if value:
                result[key] = value
            else:
                result.pop(key, None)
            touched = True
    return result if touched else None
