"""Network configurations from the CNI conf dir: discovery, parsing and validation.

containerd's rules: files ending in ``.conf``, ``.conflist`` or ``.json`` in
``conf_dir``, in lexical order, the first ``max_conf_num`` of them that load
(0 means all). A ``.conf``/``.json`` file holds one plugin and becomes a list
of one. Each error names the file and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wharfd.runtime import errors

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
EXTENSIONS = (".conf", ".conflist", ".json")


@dataclass(frozen=True)
class NetworkConfigList:
    """One network: a name, a CNI version and the plugins that build it, in order."""

    name: str
    cni_version: str
    plugins: tuple[dict[str, Any], ...]
    source: str = ""
    disable_check: bool = False
    disable_gc: bool = False
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    def plugin_config(self, index: int, extra: dict[str, Any]) -> bytes:
        """The stdin config of plugin ``index``: its own keys, the network's name and version, then ``extra``."""
        conf = dict(self.plugins[index])
        conf["name"] = self.name
        conf["cniVersion"] = self.cni_version
        conf.update(extra)
        return json.dumps(conf).encode()


def _fail(source: str, what: str) -> errors.InvalidArgument:
    return errors.InvalidArgument(f"CNI config {source}: {what}")


def _version(value: Any, source: str) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(source, "cniVersion must be a non-empty string")
    if value not in SUPPORTED_VERSIONS:
        raise _fail(
            source, f"cniVersion {value!r} is not supported (supported: {', '.join(SUPPORTED_VERSIONS)})"
        )
    return value


def _plugin(conf: Any, source: str, where: str) -> dict[str, Any]:
    if not isinstance(conf, dict):
        raise _fail(source, f"{where} must be an object")
    kind = conf.get("type")
    if not isinstance(kind, str) or not kind or "/" in kind:
        raise _fail(source, f"{where}.type must name a plugin binary")
    return conf


def parse(data: bytes, source: str = "<bytes>") -> NetworkConfigList:
    """Parse a ``.conflist`` or a single-plugin ``.conf`` document."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _fail(source, f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _fail(source, "must be a JSON object")
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        raise _fail(source, "name must be a non-empty string")
    version = _version(doc.get("cniVersion"), source)
    if "plugins" in doc:
        plugins = doc["plugins"]
        if not isinstance(plugins, list) or not plugins:
            raise _fail(source, "plugins must be a non-empty list")
        confs = tuple(_plugin(p, source, f"plugins[{i}]") for i, p in enumerate(plugins))
    else:
        single = {k: v for k, v in doc.items() if k not in ("name", "cniVersion")}
        confs = (_plugin(single, source, "config"),)
    return NetworkConfigList(
        name=name,
        cni_version=version,
        plugins=confs,
        source=source,
        disable_check=bool(doc.get("disableCheck", False)),
        disable_gc=bool(doc.get("disableGC", False)),
        raw=doc,
    )


@dataclass
class Loaded:
    """The outcome of reading a conf dir: the networks and the files that failed, with why."""

    networks: list[NetworkConfigList]
    failures: list[str]


def load_dir(conf_dir: Path, max_conf_num: int = 1) -> Loaded:
    """Read ``conf_dir`` as containerd does (blocking; call it from a thread)."""
    networks: list[NetworkConfigList] = []
    failures: list[str] = []
    try:
        names = sorted(p for p in conf_dir.iterdir() if p.suffix in EXTENSIONS and p.is_file())
    except FileNotFoundError:
        return Loaded([], [f"{conf_dir}: no such directory"])
    except OSError as exc:
        return Loaded([], [f"{conf_dir}: {exc.strerror or exc}"])
    for path in names:
        if max_conf_num > 0 and len(networks) >= max_conf_num:
            break
        try:
            networks.append(parse(path.read_bytes(), str(path)))
        except (errors.InvalidArgument, OSError) as exc:
            failures.append(str(exc))
    return Loaded(networks, failures)
