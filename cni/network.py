"""One network (a plugin chain) and the operations on it: ADD, DEL, CHECK, STATUS, GC.

ADD runs the plugins in order, each given the previous one's result as
``prevResult``; the final result is cached on disk so that DEL (which runs the
chain backwards with that result) still works after a daemon restart, as the
CNI spec asks of runtimes. Capability arguments (``portMappings``,
``bandwidth``, ``dns``, ``ips`` …) reach only the plugins that declare them in
``capabilities``, inside ``runtimeConfig``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wharfd.cni import exec as cniexec
from wharfd.cni.config import NetworkConfigList
from wharfd.runtime import atomic_file, errors

# Verbs newer than these versions do not exist for a network of an older version.
_CHECK_SINCE = (0, 4, 0)
_STATUS_SINCE = (1, 1, 0)


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split("."))


@dataclass(frozen=True)
class Attachment:
    """A container's attachment to a network: the arguments every verb repeats."""

    container_id: str
    netns: str
    ifname: str = "eth0"
    args: tuple[tuple[str, str], ...] = ()
    capability_args: Mapping[str, Any] = field(default_factory=dict)


class Network:
    """Runs the verbs of one network configuration."""

    def __init__(
        self,
        conf: NetworkConfigList,
        bin_dirs: Sequence[str],
        cache_dir: Path,
        *,
        timeout: float = cniexec.DEFAULT_TIMEOUT,
    ) -> None:
        self.conf = conf
        self.bin_dirs = list(bin_dirs)
        self.cache_dir = cache_dir
        self.timeout = timeout

    @property
    def name(self) -> str:
        """The network's name from its config."""
        return self.conf.name

    def _cache_path(self, att: Attachment) -> Path:
        return self.cache_dir / "results" / f"{self.name}-{att.container_id}-{att.ifname}"

    def _runtime_config(self, plugin: Mapping[str, Any], att: Attachment) -> dict[str, Any]:
        wanted = plugin.get("capabilities") or {}
        if not isinstance(wanted, dict):
            return {}
        return {k: v for k, v in att.capability_args.items() if wanted.get(k) and v is not None}

    async def _run(
        self, index: int, command: str, att: Attachment, prev: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        plugin = self.conf.plugins[index]
        extra: dict[str, Any] = {}
        runtime_config = self._runtime_config(plugin, att)
        if runtime_config:
            extra["runtimeConfig"] = runtime_config
        if prev is not None:
            extra["prevResult"] = prev
        invocation = cniexec.Invocation(command, att.container_id, att.netns, att.ifname, att.args)
        return await cniexec.invoke(
            plugin["type"],
            invocation,
            self.conf.plugin_config(index, extra),
            self.bin_dirs,
            timeout=self.timeout,
        )

    async def add(self, att: Attachment) -> dict[str, Any]:
        """Attach: run the chain forwards; cache and return the final result."""
        result: dict[str, Any] | None = None
        for index in range(len(self.conf.plugins)):
            result = await self._run(index, "ADD", att, result) or result
        if result is None:
            raise cniexec.PluginError(f"CNI network {self.name}: ADD returned no result")
        await asyncio.to_thread(self._write_cache, att, result)
        return result

    async def delete(self, att: Attachment) -> None:
        """Detach: run the chain backwards with the cached result; forget it. Safe to repeat."""
        cached = await asyncio.to_thread(self._read_cache, att)
        prev = cached if _version_tuple(self.conf.cni_version) >= _CHECK_SINCE else None
        for index in reversed(range(len(self.conf.plugins))):
            await self._run(index, "DEL", att, prev)
        await asyncio.to_thread(self._cache_path(att).unlink, missing_ok=True)

    async def check(self, att: Attachment) -> None:
        """Verify an attachment is as ADD left it (CNI ≥ 0.4.0, unless the network disables CHECK)."""
        if self.conf.disable_check or _version_tuple(self.conf.cni_version) < _CHECK_SINCE:
            return
        cached = await asyncio.to_thread(self._read_cache, att)
        if cached is None:
            raise errors.NotFound(
                f"CNI network {self.name}: no cached result for {att.container_id}/{att.ifname}"
            )
        for index in range(len(self.conf.plugins)):
            await self._run(index, "CHECK", att, cached)

    async def status(self) -> None:
        """Ask every plugin whether it can take new attachments (CNI 1.1's STATUS); raises when not."""
        if _version_tuple(self.conf.cni_version) < _STATUS_SINCE:
            return
        for index, plugin in enumerate(self.conf.plugins):
            invocation = cniexec.Invocation("STATUS", "", "", "")
            await cniexec.invoke(
                plugin["type"],
                invocation,
                self.conf.plugin_config(index, {}),
                self.bin_dirs,
                timeout=self.timeout,
            )

    async def gc(self, valid: Sequence[Attachment]) -> None:
        """Let plugins release what attachments not in ``valid`` still hold (CNI 1.1's GC)."""
        if self.conf.disable_gc or _version_tuple(self.conf.cni_version) < _STATUS_SINCE:
            return
        attachments = [{"containerID": a.container_id, "ifname": a.ifname} for a in valid]
        for index, plugin in enumerate(self.conf.plugins):
            invocation = cniexec.Invocation("GC", "", "", "")
            config = self.conf.plugin_config(index, {"cni.dev/valid-attachments": attachments})
            await cniexec.invoke(plugin["type"], invocation, config, self.bin_dirs, timeout=self.timeout)

    def _write_cache(self, att: Attachment, result: dict[str, Any]) -> None:
        path = self._cache_path(att)
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {
            "kind": "cniCacheV1",
            "containerId": att.container_id,
            "ifName": att.ifname,
            "networkName": self.name,
            "cniArgs": [list(kv) for kv in att.args],
            "capabilityArgs": dict(att.capability_args),
            "config": self.conf.raw,
            "result": result,
        }
        # A temporary name per write: two pods' entries of one network never share one (a network's
        # name may hold dots). No fsync: a cache, on the pod-start path, as libcni writes it.
        atomic_file.write_atomic(path, json.dumps(entry).encode(), sync=False)

    def _read_cache(self, att: Attachment) -> dict[str, Any] | None:
        try:
            entry = json.loads(self._cache_path(att).read_text())
        except (FileNotFoundError, ValueError):
            return None
        result = entry.get("result")
        return result if isinstance(result, dict) else None


def ips_of(result: Mapping[str, Any]) -> list[str]:
    """The addresses (without prefix length) of a result, IPv4 first, in plugin order otherwise."""
    found: list[str] = []
    for entry in result.get("ips") or []:
        address = str(entry.get("address", "")).split("/", 1)[0]
        if address:
            found.append(address)
    return sorted(found, key=lambda a: ":" in a)
