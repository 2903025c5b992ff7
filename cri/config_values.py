"""Config values: the one error type, Go durations, and how messages describe values.

Durations are written as Go's ``time.ParseDuration`` reads them and
``time.Duration.String`` prints them, so a containerd config's ``"5m0s"`` or
``"100ms"`` means the same here and ``config dump`` prints it back unchanged.
"""

from __future__ import annotations

import re
from typing import Any

from wharfd.cri.config_toml import quote


class ConfigError(Exception):
    """A configuration that cannot be used; ``str(e)`` is ``<file>: <key.path>: <problem>`` on one line."""

    def __init__(self, problem: str, key: str = "", file: str = "") -> None:
        self.problem = " ".join(problem.split("\n"))
        self.key = key
        self.file = file
        super().__init__(str(self))

    def __str__(self) -> str:
        return ": ".join(part for part in (self.file, self.key, self.problem) if part)


# --------------------------------------------------------------------------------------------
# Go durations

_NS_PER_UNIT = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # micro sign
    "\u03bcs": 1_000,  # Greek mu
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_NUMBER = re.compile(r"([0-9]*)(?:\.([0-9]*))?")
_UNIT = re.compile(r"[^0-9.]*")
_MAX_NS = 2**63 - 1  # Go's time.Duration is an int64 of nanoseconds


def parse_duration(value: str, key: str) -> float:
    """Parse a Go duration (``"5m0s"``, ``"1h"``, ``"300ms"``, ``"1.5s"``, ``"0"``) into seconds.

    Raises :class:`ConfigError` naming ``key`` when ``value`` is not in Go's syntax.
    """
    text = value
    negative = text[:1] == "-"
    if text[:1] in "+-":
        text = text[1:]
    if text == "0":
        return 0.0
    if not text:
        raise ConfigError(_bad_duration(value, "empty"), key)
    total = 0
    while text:
        number = _NUMBER.match(text)
        assert number is not None  # the pattern matches the empty string
        whole, frac = number.group(1), number.group(2)
        if not whole and not frac:
            raise ConfigError(_bad_duration(value, "expected a number"), key)
        text = text[number.end() :]
        unit_match = _UNIT.match(text)
        assert unit_match is not None
        unit = unit_match.group(0)
        text = text[unit_match.end() :]
        if not unit:
            raise ConfigError(_bad_duration(value, "missing unit (ns, us, ms, s, m or h)"), key)
        if unit not in _NS_PER_UNIT:
            raise ConfigError(_bad_duration(value, f"unknown unit {quote(unit)}"), key)
        scale = _NS_PER_UNIT[unit]
        # Integer nanoseconds: Go truncates each component's fraction of a nanosecond.
        total += int(whole or "0") * scale + (int(frac) * scale // 10 ** len(frac) if frac else 0)
    nanoseconds = total
    if nanoseconds > _MAX_NS + (1 if negative else 0):
        raise ConfigError(_bad_duration(value, "out of range"), key)
    return (-nanoseconds if negative else nanoseconds) / 1e9


def _bad_duration(value: str, why: str) -> str:
    return f'invalid duration {quote(value)}: {why}; use Go syntax such as "300ms", "1.5s", "5m0s" or "1h"'


def _fraction(value: int, unit: int) -> str:
    whole, rest = divmod(value, unit)
    if not rest:
        return str(whole)
    digits = len(str(unit)) - 1
    return f"{whole}.{rest:0{digits}d}".rstrip("0")


def format_duration(seconds: float) -> str:
    """Write seconds as Go's ``time.Duration.String`` does: ``"5m0s"``, ``"1h0m0s"``, ``"100ms"``."""
    nanoseconds = round(seconds * 1e9)
    if nanoseconds == 0:
        return "0s"
    sign = "-" if nanoseconds < 0 else ""
    left = abs(nanoseconds)
    if left < 1_000:
        return f"{sign}{left}ns"
    if left < 1_000_000:
        return f"{sign}{_fraction(left, 1_000)}\u00b5s"
    if left < 1_000_000_000:
        return f"{sign}{_fraction(left, 1_000_000)}ms"
    whole_seconds, rest = divmod(left, 1_000_000_000)
    hours, whole_seconds = divmod(whole_seconds, 3600)
    minutes, whole_seconds = divmod(whole_seconds, 60)
    text = _fraction(whole_seconds * 1_000_000_000 + rest, 1_000_000_000) + "s"
    if hours:
        text = f"{hours}h{minutes}m{text}"
    elif minutes:
        text = f"{minutes}m{text}"
    return sign + text


# --------------------------------------------------------------------------------------------
# Value descriptions for messages


def describe(value: Any) -> str:
    """A value as messages name it: ``integer 3``, ``string "x"``, ``table``."""
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"float {value!r}"
    if isinstance(value, str):
        return f"string {quote(value)}"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    return type(value).__name__


def expected(spec: Any) -> str:
    """What a key whose default is ``spec`` takes: ``a boolean``, ``an array of strings``…"""
    if isinstance(spec, bool):
        return "a boolean"
    if isinstance(spec, int):
        return "an integer"
    if isinstance(spec, float):
        return "a number"
    if isinstance(spec, str):
        return "a string"
    if isinstance(spec, list):
        return "an array of strings"
    return "a table"
