"""TOML text for ``wharfd config default|dump``, and the quoting of keys and key paths in messages.

The writer covers what a configuration tree holds (tables, strings, integers,
floats, booleans, dates, arrays, inline tables inside arrays) and indents nested
tables two spaces a level, as containerd's ``config default`` does.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Mapping
from typing import Any

# A key's place in the tree: table keys, and indexes into arrays.
KeyPath = tuple[str | int, ...]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def quote(text: str) -> str:
    """``text`` as a TOML basic string (also how messages quote names and values)."""
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def format_key(key: str) -> str:
    """A TOML key: bare when it may be, else quoted."""
    return key if _BARE_KEY.fullmatch(key) else quote(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        # Only reached inside arrays; tables elsewhere get [headers].
        return "{" + ", ".join(f"{format_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write a {type(value).__name__} as TOML")


def _write_table(lines: list[str], table: Mapping[str, Any], path: tuple[str, ...]) -> None:
    depth = len(path)
    if path:
        if lines:
            lines.append("")
        lines.append("  " * (depth - 1) + "[" + ".".join(format_key(part) for part in path) + "]")
    pad = "  " * depth
    for key, value in table.items():
        if not isinstance(value, Mapping):
            lines.append(f"{pad}{format_key(key)} = {_value(value)}")
    for key, value in table.items():
        if isinstance(value, Mapping):
            _write_table(lines, value, (*path, key))


def dumps(tree: Mapping[str, Any]) -> str:
    """Write a tree (the defaults, or an effective config's ``to_tree()``) as TOML text."""
    lines: list[str] = []
    _write_table(lines, tree, ())
    return "\n".join(lines) + "\n"


def format_path(path: KeyPath) -> str:
    """A key path as messages show it: ``plugins."io.containerd.grpc.v1.cri".cni.bin_dir``, ``imports[0]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + format_key(part)
    return out
