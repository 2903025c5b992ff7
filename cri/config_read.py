"""Reading one file's tree: each value checked against the schema, unknown keys set aside with a warning.

:func:`clean` walks a parsed TOML tree beside the default tree and returns a
tree holding only what wharfd knows; tables whose keys the user names (the
runtimes, the plugins, timeouts, proxy plugins) have readers of their own.
Errors and warnings name the file and the key as the user wrote it, even when
a version conversion moved the key (:attr:`ConfigFile.origins`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from wharfd.cri.config_rules import RETIRED, RUNTIMES, duration_rule, matches, problem_with
from wharfd.cri.config_schema import (
    CRI,
    DEFAULT_TIMEOUTS,
    PROXY_PLUGIN,
    RUNC_LIKE_TYPES,
    RUNC_OPTIONS,
    RUNC_V2,
    STREAM_PROCESSOR,
    default_tree,
    runtime_defaults,
)
from wharfd.cri.config_toml import KeyPath, format_path
from wharfd.cri.config_values import ConfigError, describe, expected


@dataclass
class ConfigFile:
    """One file being read: where messages about it go, and where converted keys came from."""

    name: str
    warnings: list[str]
    origins: dict[KeyPath, KeyPath] = field(default_factory=dict)

    def where(self, path: KeyPath) -> str:
        """``path`` as this file wrote it."""
        # A key moved by a conversion is reported where the user wrote it.
        for cut in range(len(path), 0, -1):
            origin = self.origins.get(path[:cut])
            if origin is not None:
                return format_path(origin + path[cut:])
        return format_path(path)

    def error(self, path: KeyPath, problem: str) -> ConfigError:
        """The error to raise for ``problem`` at ``path`` of this file."""
        return ConfigError(problem, self.where(path), self.name)

    def warn(self, path: KeyPath, problem: str) -> None:
        """Record a warning about ``path`` of this file."""
        self.warnings.append(str(ConfigError(problem, self.where(path), self.name)))


def table(src: ConfigFile, value: Any, path: KeyPath) -> dict[str, Any]:
    """``value``, which must be a table."""
    if not isinstance(value, dict):
        raise src.error(path, f"expected a table, got {describe(value)}")
    return value


def _apply_rules(src: ConfigFile, value: Any, path: KeyPath) -> None:
    problem = problem_with(value, path)
    if problem:
        raise src.error(path, problem)


def _type_ok(value: Any, spec: Any) -> bool:
    if isinstance(spec, bool):
        return isinstance(value, bool)
    if isinstance(spec, int | float):
        # An integer is a fine value for a float key (pause_threshold = 0).
        allowed = (int,) if isinstance(spec, int) else (int, float)
        return isinstance(value, allowed) and not isinstance(value, bool)
    if isinstance(spec, str):
        return isinstance(value, str)
    return isinstance(value, list)


def clean_scalar(src: ConfigFile, value: Any, spec: Any, path: KeyPath) -> Any:
    """``value`` checked against the type of ``spec`` (a default) and the key's rules."""
    if not _type_ok(value, spec):
        raise src.error(path, f"expected {expected(spec)}, got {describe(value)}")
    if isinstance(spec, float):
        value = float(value)
    elif isinstance(spec, list):
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise src.error((*path, index), f"expected a string, got {describe(item)}")
        value = list(value)
    _apply_rules(src, value, path)
    return value


def _unknown(src: ConfigFile, path: KeyPath) -> None:
    hint = RETIRED.get(path)
    src.warn(path, f"no longer supported; {hint} (ignored)" if hint else "unknown key (ignored)")


def clean(src: ConfigFile, value: Any, spec: Any, path: KeyPath) -> Any:
    """Check ``value`` against the shape of ``spec`` (a default), keeping only what wharfd knows."""
    for pattern, special in _OPEN_TABLES:
        if matches(pattern, path):
            return special(src, value, path)
    if not isinstance(spec, dict):
        return clean_scalar(src, value, spec, path)
    out: dict[str, Any] = {}
    for key, item in table(src, value, path).items():
        if key in spec:
            out[key] = clean(src, item, spec[key], (*path, key))
        else:
            _unknown(src, (*path, key))
    return out


def _clean_plugins(src: ConfigFile, value: Any, path: KeyPath) -> dict[str, Any]:
    known = default_tree()["plugins"]
    out: dict[str, Any] = {}
    for plugin_id, section in table(src, value, path).items():
        here = (*path, plugin_id)
        if plugin_id in known:
            out[plugin_id] = clean(src, section, known[plugin_id], here)
        else:
            # Kept so `config dump` shows it; nothing in wharfd reads it.
            out[plugin_id] = copy.deepcopy(table(src, section, here))
            src.warn(here, "unknown plugin (kept)")
    return out


def _clean_runtimes(src: ConfigFile, value: Any, path: KeyPath) -> dict[str, Any]:
    defaults = default_tree()["plugins"][CRI]["containerd"]["runtimes"]
    out: dict[str, Any] = {}
    for name, raw in table(src, value, path).items():
        here = (*path, name)
        entry = dict(table(src, raw, here))
        options = entry.pop("options", None)
        cleaned = clean(src, entry, runtime_defaults(RUNC_V2), here)
        if options is not None:
            # Without a type here the entry keeps the default's (or runc's, for a new runtime).
            default_type = defaults[name]["runtime_type"] if name in defaults else RUNC_V2
            runc_like = cleaned.get("runtime_type", default_type) in RUNC_LIKE_TYPES
            cleaned["options"] = _clean_options(src, options, (*here, "options"), runc_like)
        out[name] = cleaned
    return out


def _clean_options(src: ConfigFile, value: Any, path: KeyPath, runc_like: bool) -> dict[str, Any]:
    # Options go to the shim; only runc's are known here, other shims define their own.
    out: dict[str, Any] = {}
    for key, item in table(src, value, path).items():
        if key in RUNC_OPTIONS:
            out[key] = clean_scalar(src, item, RUNC_OPTIONS[key], (*path, key))
        elif runc_like:
            src.warn((*path, key), "unknown runc option (ignored)")
        else:
            out[key] = copy.deepcopy(item)
    return out


def _clean_timeouts(src: ConfigFile, value: Any, path: KeyPath) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in table(src, value, path).items():
        here = (*path, key)
        if not isinstance(item, str):
            raise src.error(here, f'expected a duration string such as "5s", got {describe(item)}')
        problem = duration_rule(allow_empty=False)(item, here)
        if problem:
            raise src.error(here, problem)
        if key not in DEFAULT_TIMEOUTS:
            src.warn(here, "unknown timeout (kept)")
        out[key] = item
    return out


def _entries(spec: dict[str, Any]) -> Callable[[ConfigFile, Any, KeyPath], dict[str, Any]]:
    def read_entries(src: ConfigFile, value: Any, path: KeyPath) -> dict[str, Any]:
        entries = table(src, value, path)
        return {name: clean(src, entry, spec, (*path, name)) for name, entry in entries.items()}

    return read_entries


def _string_map(src: ConfigFile, value: Any, path: KeyPath) -> dict[str, Any]:
    return {key: clean_scalar(src, item, "", (*path, key)) for key, item in table(src, value, path).items()}


# Tables whose keys are names the user chooses, each with its own reader.
_OPEN_TABLES: list[tuple[KeyPath, Callable[[ConfigFile, Any, KeyPath], dict[str, Any]]]] = [
    (("plugins",), _clean_plugins),
    (RUNTIMES, _clean_runtimes),
    (("timeouts",), _clean_timeouts),
    (("proxy_plugins",), _entries(PROXY_PLUGIN)),
    (("proxy_plugins", "*", "exports"), _string_map),
    (("stream_processors",), _entries(STREAM_PROCESSOR)),
]


def deep_merge(dst: dict[str, Any], src: Mapping[str, Any]) -> None:
    """Merge ``src`` into ``dst``: tables key by key, any other value replaced (copied)."""
    for key, value in src.items():
        if isinstance(value, Mapping) and isinstance(dst.get(key), dict):
            deep_merge(dst[key], value)
        else:
            dst[key] = copy.deepcopy(value)
