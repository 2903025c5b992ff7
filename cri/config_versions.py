"""Config versions: files in the version 1 or 3 layout brought to version 2 before they are read.

* no ``version`` or ``version = 1``: short version 1 plugin names (``plugins.cri``)
  are renamed to their full names, with a warning;
* ``version = 3``: the split CRI sections (``io.containerd.cri.v1.images``,
  ``io.containerd.cri.v1.runtime``) fold back into ``io.containerd.grpc.v1.cri``,
  and the renamed cgroups monitor and shim manager sections move back;
* anything else is refused.

Every moved key remembers where the user wrote it (:attr:`ConfigFile.origins`),
so messages about it name the file's own key.
"""

from __future__ import annotations

from typing import Any

from wharfd.cri.config_read import ConfigFile, clean_scalar, deep_merge, table
from wharfd.cri.config_schema import (
    CGROUPS_MONITOR,
    CGROUPS_MONITOR_V3,
    CRI,
    CRI_IMAGES_V3,
    CRI_RUNTIME_V3,
    GC_SCHEDULER,
    METADATA,
    NATIVE,
    OTLP,
    OVERLAYFS,
    SHIM_MANAGER_V3,
    TASK_RUNTIME,
    TRACING,
)
from wharfd.cri.config_toml import KeyPath, quote
from wharfd.cri.config_values import describe

# Version 1 short plugin names and their full names (containerd's list).
_V1_PLUGIN_NAMES = {
    "cri": CRI,
    "cgroups": CGROUPS_MONITOR,
    "linux": "io.containerd.runtime.v1.linux",
    "scheduler": GC_SCHEDULER,
    "bolt": METADATA,
    "task": TASK_RUNTIME,
    "opt": "io.containerd.internal.v1.opt",
    "restart": "io.containerd.internal.v1.restart",
    "tracing": TRACING,
    "otlp": OTLP,
    "aufs": "io.containerd.snapshotter.v1.aufs",
    "btrfs": "io.containerd.snapshotter.v1.btrfs",
    "devmapper": "io.containerd.snapshotter.v1.devmapper",
    "native": NATIVE,
    "overlayfs": OVERLAYFS,
    "zfs": "io.containerd.snapshotter.v1.zfs",
}


def _v1_name(name: str) -> str:
    if "." in name:
        return name
    if name in _V1_PLUGIN_NAMES:
        return _V1_PLUGIN_NAMES[name]
    if name.endswith("-service"):
        return "io.containerd.service.v1." + name
    return "io.containerd.grpc.v1." + name


def _migrate_v1(src: ConfigFile, raw: dict[str, Any]) -> None:
    plugins = raw.get("plugins")
    if isinstance(plugins, dict):
        for name in list(plugins):
            full = _v1_name(name)
            if full != name:
                plugins[full] = plugins.pop(name)
                src.origins[("plugins", full)] = ("plugins", name)
                src.warn(("plugins", name), f"version 1 plugin name; read as {quote(full)}")
    for key in ("disabled_plugins", "required_plugins"):
        names = raw.get(key)
        if isinstance(names, list):
            raw[key] = [_v1_name(n) if isinstance(n, str) else n for n in names]


def _put(src: ConfigFile, dst: dict[str, Any], rel: tuple[str, ...], value: Any, origin: KeyPath) -> None:
    node = dst
    for part in rel[:-1]:
        node = node.setdefault(part, {})
    node[rel[-1]] = value
    src.origins[("plugins", CRI, *rel)] = origin


def _convert_images(src: ConfigFile, images: dict[str, Any], cri: dict[str, Any]) -> None:
    base: KeyPath = ("plugins", CRI_IMAGES_V3)
    for key, value in images.items():
        if key in ("snapshotter", "disable_snapshot_annotations", "discard_unpacked_layers"):
            _put(src, cri, ("containerd", key), value, (*base, key))
        elif key == "pinned_images":
            for name, image in table(src, value, (*base, key)).items():
                if name == "sandbox":
                    _put(src, cri, ("sandbox_image",), image, (*base, key, name))
                else:
                    src.warn((*base, key, name), "no version 2 equivalent (ignored)")
        else:
            _put(src, cri, (key,), value, (*base, key))


def _convert_runtime(src: ConfigFile, runtime: dict[str, Any], cri: dict[str, Any]) -> None:
    base: KeyPath = ("plugins", CRI_RUNTIME_V3)
    for key, value in runtime.items():
        here = (*base, key)
        if key == "stats_collect_period":
            # The runtime's CPU sampling period; the version 2 key of that name is the image one.
            src.warn(here, "no version 2 equivalent (ignored)")
        elif key == "cni" and isinstance(value, dict):
            for cni_key, item in value.items():
                if cni_key != "bin_dirs":
                    _put(src, cri, ("cni", cni_key), item, (*here, cni_key))
                    continue
                dirs = clean_scalar(src, item, [], (*here, cni_key))
                if dirs:
                    _put(src, cri, ("cni", "bin_dir"), dirs[0], (*here, cni_key, 0))
                if len(dirs) > 1:
                    src.warn((*here, cni_key), f"version 2 has one bin_dir; only {quote(dirs[0])} is used")
        elif key == "containerd" and isinstance(value, dict):
            for sub, item in value.items():
                if sub == "runtimes" and isinstance(item, dict):
                    for name, entry in item.items():
                        at = (*here, sub, name)
                        for rkey, rvalue in table(src, entry, at).items():
                            target = "sandbox_mode" if rkey == "sandboxer" else rkey
                            _put(src, cri, ("containerd", sub, name, target), rvalue, (*at, rkey))
                else:
                    _put(src, cri, ("containerd", sub), item, (*here, sub))
        else:
            _put(src, cri, (key,), value, here)


def _convert_v3(src: ConfigFile, raw: dict[str, Any]) -> bool:
    """Fold the version 3 sections of ``raw`` into their version 2 places; return whether there were any."""
    plugins = raw.get("plugins")
    v3_sections = (CRI_IMAGES_V3, CRI_RUNTIME_V3, CGROUPS_MONITOR_V3, SHIM_MANAGER_V3)
    if not isinstance(plugins, dict) or not any(name in plugins for name in v3_sections):
        return False
    moved: dict[str, Any] = {}
    if CRI_IMAGES_V3 in plugins:
        _convert_images(src, table(src, plugins.pop(CRI_IMAGES_V3), ("plugins", CRI_IMAGES_V3)), moved)
    if CRI_RUNTIME_V3 in plugins:
        _convert_runtime(src, table(src, plugins.pop(CRI_RUNTIME_V3), ("plugins", CRI_RUNTIME_V3)), moved)
    if moved:
        deep_merge(table(src, plugins.setdefault(CRI, {}), ("plugins", CRI)), moved)
    if CGROUPS_MONITOR_V3 in plugins:
        plugins[CGROUPS_MONITOR] = plugins.pop(CGROUPS_MONITOR_V3)
        src.origins[("plugins", CGROUPS_MONITOR)] = ("plugins", CGROUPS_MONITOR_V3)
    if SHIM_MANAGER_V3 in plugins:
        base: KeyPath = ("plugins", SHIM_MANAGER_V3)
        for key, value in table(src, plugins.pop(SHIM_MANAGER_V3), base).items():
            env = clean_scalar(src, value, [], (*base, key)) if key == "env" else None
            for index, item in enumerate(env or []):
                if item.startswith("SCHED_CORE=") and item != "SCHED_CORE=":
                    task = table(src, plugins.setdefault(TASK_RUNTIME, {}), ("plugins", TASK_RUNTIME))
                    task["sched_core"] = True
                    src.origins[("plugins", TASK_RUNTIME, "sched_core")] = (*base, key, index)
                else:
                    src.warn((*base, key, index), "no version 2 equivalent (ignored)")
            if env is None:
                src.warn((*base, key), "no version 2 equivalent (ignored)")
    return True


def read_version(src: ConfigFile, raw: dict[str, Any], root_version: int | None) -> int:
    """Bring ``raw`` to the version 2 layout in place; return the version the file is read as."""
    declared = raw.pop("version", None)
    plugins = raw.get("plugins")
    looks_v3 = isinstance(plugins, dict) and (CRI_IMAGES_V3 in plugins or CRI_RUNTIME_V3 in plugins)
    if declared is None:
        version = 3 if looks_v3 or root_version == 3 else 2
        if root_version is None:
            src.warn(("version",), f"missing; read as version {version} (add `version = {version}`)")
    elif isinstance(declared, bool) or not isinstance(declared, int):
        raise src.error(("version",), f"expected an integer, got {describe(declared)}")
    elif declared in (1, 2, 3):
        version = declared
        if version == 1:
            src.warn(("version",), "version 1 config read as version 2")
    else:
        raise src.error(
            ("version",),
            f"unsupported config version {declared}: wharfd reads version 2 (and converts 3); "
            "convert the file with `wharfd config default` as a template",
        )
    if declared is not None and root_version is not None and declared > root_version:
        problem = f"version {declared} is higher than the main file's version {root_version}"
        raise src.error(("version",), problem)
    if declared is None or declared == 1:
        _migrate_v1(src, raw)
    # A drop-in without a version follows the main file; it only earns the note if it had v3 keys.
    if version == 3 and (_convert_v3(src, raw) or declared == 3):
        src.warn(("version",), "version 3 config converted; `wharfd config dump` prints the version 2 form")
    return version
