"""The daemon configuration: how a file, its imports and the defaults become a :class:`Config`.

The file is containerd's TOML in the ``version = 2`` layout: the same key names,
the same plugin section names (``plugins."io.containerd.grpc.v1.cri"`` and so on),
so a node's existing ``config.toml`` keeps its meaning. Older and newer files are
accepted where they can be read faithfully:

* no ``version`` or ``version = 1``: read as version 2 (short version 1 plugin
  names such as ``plugins.cri`` are renamed), with a warning;
* ``version = 3``: the split CRI sections (``io.containerd.cri.v1.images`` and
  ``io.containerd.cri.v1.runtime``) are folded back into the version 2 CRI section;
* anything else is refused.

``imports`` (paths or globs, relative to the file that names them) are read
after that file, breadth first, and each file read later overrides the ones
before it, as containerd does: a drop-in in ``conf.d/`` wins over the main file.
Tables merge key by key (so two drop-ins may each set part of the CRI section),
other values are replaced; ``disabled_plugins``, ``required_plugins`` and
``imports`` accumulate. The merged files then override the defaults, and a
runtime that only a file defines starts from the runtime defaults.

Every problem is a :class:`ConfigError` whose text is one line,
``<file>: <key.path>: <problem>``. Keys wharfd does not know are not errors: they
are ignored and reported in :attr:`Config.warnings`.

This module is the entry point (:func:`load`, :class:`Config`, and the names
callers need from the parts): the schema and defaults are in
:mod:`~wharfd.cri.config_schema`, value rules in :mod:`~wharfd.cri.config_rules`,
Go durations and the error type in :mod:`~wharfd.cri.config_values`, reading one
file in :mod:`~wharfd.cri.config_read`, version conversion in
:mod:`~wharfd.cri.config_versions` and the TOML writer in :mod:`~wharfd.cri.config_toml`.
"""

from __future__ import annotations

import copy
import glob
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from wharfd.cri.config_read import ConfigFile, clean, deep_merge
from wharfd.cri.config_schema import (
    CRI,
    DEFAULT_CONFIG_PATH,
    DEFAULT_TIMEOUTS,
    PLUGIN_SECTION_ALIASES,
    RUNC_LIKE_TYPES,
    RUNC_OPTIONS,
    RUNC_V2,
    WHARF_V2,
    DebugConfig,
    GrpcConfig,
    MetricsConfig,
    TtrpcConfig,
    default_tree,
    runtime_defaults,
)
from wharfd.cri.config_toml import KeyPath, dumps, format_path, quote
from wharfd.cri.config_values import ConfigError, describe, format_duration, parse_duration
from wharfd.cri.config_versions import read_version

__all__ = [
    "CRI",
    "DEFAULT_CONFIG_PATH",
    "RUNC_LIKE_TYPES",
    "RUNC_OPTIONS",
    "RUNC_V2",
    "WHARF_V2",
    "Config",
    "ConfigError",
    "DebugConfig",
    "GrpcConfig",
    "MetricsConfig",
    "TtrpcConfig",
    "default_tree",
    "dumps",
    "format_duration",
    "load",
    "parse_duration",
]


def _default_plugins() -> dict[str, dict[str, Any]]:
    plugins: dict[str, dict[str, Any]] = default_tree()["plugins"]
    return plugins


def _default_timeouts() -> dict[str, float]:
    return {key: parse_duration(value, f"timeouts.{key}") for key, value in DEFAULT_TIMEOUTS.items()}


@dataclass
class Config:
    """The effective configuration: defaults, overridden by the files in :attr:`sources`."""

    version: int  # the layout of the effective config; always 2, whatever the files said
    root: str = "/var/lib/wharfd"
    state: str = "/run/wharfd"
    temp: str = ""
    plugin_dir: str = ""
    grpc: GrpcConfig = field(default_factory=GrpcConfig)
    ttrpc: TtrpcConfig = field(default_factory=TtrpcConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    disabled_plugins: list[str] = field(default_factory=list)
    required_plugins: list[str] = field(default_factory=list)
    imports: list[str] = field(default_factory=list)  # as absolute paths or globs
    oom_score: int = 0
    timeouts: dict[str, float] = field(default_factory=_default_timeouts)
    plugins: dict[str, dict[str, Any]] = field(default_factory=_default_plugins)
    sources: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    proxy_plugins: dict[str, dict[str, Any]] = field(default_factory=dict)
    stream_processors: dict[str, dict[str, Any]] = field(default_factory=dict)

    def plugin(self, plugin_id: str) -> dict[str, Any]:
        """Return the section of ``plugin_id`` (e.g. ``io.containerd.grpc.v1.cri``); ``{}`` if it has none.

        A wharfd plugin standing in for a containerd one (the SQLite metadata store
        for ``io.containerd.metadata.v1.bolt``) reads that plugin's section.
        """
        return self.plugins.get(PLUGIN_SECTION_ALIASES.get(plugin_id, plugin_id), {})

    def duration(self, plugin_id: str, *keys: str) -> float:
        """Return a duration key of a plugin section in seconds; an empty string reads as 0."""
        value: Any = self.plugin(plugin_id)
        for key in keys:
            value = value[key]
        key_path = format_path(("plugins", plugin_id, *keys))
        if not isinstance(value, str):
            raise ConfigError(f"expected a duration string, got {describe(value)}", key_path)
        return parse_duration(value, key_path) if value else 0.0

    def ttrpc_address(self) -> str:
        """The ttrpc socket shims connect to: ``[ttrpc] address``, else the gRPC address + ``.ttrpc``."""
        return self.ttrpc.address or self.grpc.address + ".ttrpc"

    def to_tree(self) -> dict[str, Any]:
        """The effective configuration as a TOML-ready tree, durations back in Go's notation."""
        return {
            "version": 2,
            "root": self.root,
            "state": self.state,
            "temp": self.temp,
            "plugin_dir": self.plugin_dir,
            "disabled_plugins": list(self.disabled_plugins),
            "required_plugins": list(self.required_plugins),
            "imports": list(self.imports),
            "oom_score": self.oom_score,
            "grpc": asdict(self.grpc),
            "ttrpc": asdict(self.ttrpc),
            "debug": asdict(self.debug),
            "metrics": asdict(self.metrics),
            "timeouts": {key: format_duration(value) for key, value in self.timeouts.items()},
            "plugins": copy.deepcopy(self.plugins),
            "proxy_plugins": copy.deepcopy(self.proxy_plugins),
            "stream_processors": copy.deepcopy(self.stream_processors),
        }


def _from_tree(tree: dict[str, Any], sources: list[str], warnings: list[str]) -> Config:
    return Config(
        version=2,
        root=tree["root"],
        state=tree["state"],
        temp=tree["temp"],
        plugin_dir=tree["plugin_dir"],
        grpc=GrpcConfig(**tree["grpc"]),
        ttrpc=TtrpcConfig(**tree["ttrpc"]),
        debug=DebugConfig(**tree["debug"]),
        metrics=MetricsConfig(**tree["metrics"]),
        disabled_plugins=tree["disabled_plugins"],
        required_plugins=tree["required_plugins"],
        imports=tree["imports"],
        oom_score=tree["oom_score"],
        timeouts={key: parse_duration(value, f"timeouts.{key}") for key, value in tree["timeouts"].items()},
        plugins=tree["plugins"],
        sources=sources,
        warnings=warnings,
        proxy_plugins=tree["proxy_plugins"],
        stream_processors=tree["stream_processors"],
    )


# --------------------------------------------------------------------------------------------
# Merging and loading


def _leaves(tree: Mapping[str, Any], path: KeyPath = ()) -> Iterator[KeyPath]:
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            yield from _leaves(value, (*path, key))
        else:
            yield (*path, key)


_ACCUMULATED = ("disabled_plugins", "required_plugins", "imports")
_REPLACED_ENTRIES = ("proxy_plugins", "stream_processors")  # an entry from a later file replaces it whole


def _merge_file(merged: dict[str, Any], tree: dict[str, Any]) -> None:
    for key, value in tree.items():
        if key in _ACCUMULATED:
            items = merged.setdefault(key, [])
            items.extend(item for item in value if item not in items)
        elif key in _REPLACED_ENTRIES:
            merged.setdefault(key, {}).update(copy.deepcopy(value))
        else:
            deep_merge(merged, {key: value})


_GLOB_CHARS = re.compile(r"[*?\[]")


class _Loader:
    def __init__(self) -> None:
        self.sources: list[str] = []
        self.warnings: list[str] = []
        # For each key a file set: (file, the key as that file wrote it), the last file winning.
        self.provenance: dict[KeyPath, tuple[str, str]] = {}

    def load(self, path: str) -> Config:
        merged: dict[str, Any] = {}
        pending: list[tuple[str, str, str]] = [(path, "", "")]  # (file, importing file, its imports key)
        seen: set[str] = set()
        root_version: int | None = None
        while pending:
            name, importer, import_key = pending.pop(0)
            real = os.path.realpath(name)
            if real in seen:  # a file imported twice, or a cycle
                continue
            seen.add(real)
            src = ConfigFile(name, self.warnings)
            raw = self._parse(name, importer, import_key)
            version = read_version(src, raw, root_version)
            root_version = version if root_version is None else root_version
            tree = clean(src, raw, default_tree(), ())
            tree["imports"], found = self._imports(name, tree.get("imports", []))
            pending.extend(found)
            self.sources.append(name)
            for leaf in _leaves(tree):
                self.provenance[leaf] = (name, src.where(leaf))
            _merge_file(merged, tree)
        effective = _over_defaults(merged)
        self._check(effective, path)
        return _from_tree(effective, self.sources, self.warnings)

    @staticmethod
    def _parse(name: str, importer: str, import_key: str) -> dict[str, Any]:
        try:
            with open(name, "rb") as f:
                return tomllib.load(f)
        except OSError as e:
            reason = e.strerror or str(e)
            if importer:
                problem = f"cannot read imported file {quote(name)}: {reason}"
                raise ConfigError(problem, import_key, importer) from e
            raise ConfigError(f"cannot read config file: {reason}", file=name) from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"not valid TOML: {e}", file=name) from e
        except UnicodeDecodeError as e:
            raise ConfigError("not valid TOML: the file is not UTF-8 text", file=name) from e

    @staticmethod
    def _imports(name: str, patterns: list[str]) -> tuple[list[str], list[tuple[str, str, str]]]:
        resolved: list[str] = []
        found: list[tuple[str, str, str]] = []
        base = os.path.dirname(name)
        for index, pattern in enumerate(patterns):
            # Absolute, so the dump of an effective config means the same wherever it is saved.
            target = os.path.abspath(os.path.join(base, pattern))
            resolved.append(target)
            key = f"imports[{index}]"
            if _GLOB_CHARS.search(target):
                # A glob matching nothing is fine: an empty conf.d is normal.
                found.extend((match, name, key) for match in sorted(glob.glob(target)))
            else:
                found.append((target, name, key))
        return resolved, found

    def _fail(self, path: KeyPath, problem: str, main: str) -> ConfigError:
        file, key = self.provenance.get(path, (main, format_path(path)))
        return ConfigError(problem, key, file)

    def _check(self, tree: dict[str, Any], main: str) -> None:
        """Checks that need the merged result (a key and what it refers to may sit in different files)."""
        containerd = tree["plugins"][CRI]["containerd"]
        name = containerd["default_runtime_name"]
        if name not in containerd["runtimes"]:
            configured = ", ".join(quote(n) for n in containerd["runtimes"])
            raise self._fail(
                ("plugins", CRI, "containerd", "default_runtime_name"),
                f"runtime {quote(name)} is not configured in containerd.runtimes (configured: {configured})",
                main,
            )
        pair = tree["plugins"][CRI]["x509_key_pair_streaming"]
        if bool(pair["tls_cert_file"]) != bool(pair["tls_key_file"]):
            missing = "tls_key_file" if pair["tls_cert_file"] else "tls_cert_file"
            given = "tls_cert_file" if missing == "tls_key_file" else "tls_key_file"
            raise self._fail(
                ("plugins", CRI, "x509_key_pair_streaming", given),
                f"{missing} must be set too (or neither, for a self-signed pair)",
                main,
            )


def _over_defaults(merged: dict[str, Any]) -> dict[str, Any]:
    effective = default_tree()
    runtimes = effective["plugins"][CRI]["containerd"]["runtimes"]
    user_runtimes = merged.get("plugins", {}).get(CRI, {}).get("containerd", {}).get("runtimes", {})
    for name, entry in user_runtimes.items():
        if name not in runtimes:
            # A runtime only the files define starts complete, from the runtime defaults.
            runtimes[name] = runtime_defaults(entry.get("runtime_type", RUNC_V2))
    for key, value in merged.items():
        if key in _ACCUMULATED or key in _REPLACED_ENTRIES:
            effective[key] = copy.deepcopy(value)
        else:
            deep_merge(effective, {key: value})
    return effective


def load(path: str | None = None) -> Config:
    """Load the configuration from ``path`` and its imports, over the defaults.

    With ``path=None`` the file :data:`DEFAULT_CONFIG_PATH` is read if it exists,
    else the defaults are returned. A named file that cannot be read, or any
    invalid value, raises :class:`ConfigError`.
    """
    if path is None:
        if not os.path.exists(DEFAULT_CONFIG_PATH):
            return _from_tree(default_tree(), [], [])
        path = DEFAULT_CONFIG_PATH
    return _Loader().load(path)
