"""Status: is the runtime ready, is the pod network ready, and what each runtime handler supports.

kubelet calls Status every 5 s. ``RuntimeReady`` is true whenever the CRI
serves; ``NetworkReady`` is false (reason ``NetworkPluginNotReady``, message
``Network plugin returns error: cni plugin not initialized``) until a CNI
config loads — the CNI manager re-reads the conf dir when its listing changes,
so the condition turns true without a restart.

Handler features come from the OCI runtime binary, as containerd learns them:
``<runc> features`` (JSON) lists the mount options and namespaces it knows.
Recursive read-only mounts need the ``rro`` option, a kernel with
``mount_setattr`` (5.12) and — unlike containerd, whose CreateContainer always
honours them — a CreateContainer that applies them
(:data:`wharfd.cri.container_mounts.RECURSIVE_READ_ONLY_SUPPORTED`): kubelet
trusts this flag, so it must never promise more than the create path does.
User namespaces need the ``user`` namespace and idmapped mounts, which runc
1.1.5 does not report. The probe runs once, at start, off the event loop. The
default handler is listed twice, under its name and as ``""``.

``verbose`` adds containerd's info keys: ``config`` (the CRI plugin config as
JSON), ``cniconfig`` (the loaded networks, shaped like go-cni's config dump) and
``lastCNILoadStatus`` (``OK`` or why the last load found nothing).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.cni.network import Network
from wharfd.cri import container_mounts
from wharfd.cri.config import RUNC_LIKE_TYPES

log = logging.getLogger("wharfd.cri")

RUNTIME_READY = "RuntimeReady"
NETWORK_READY = "NetworkReady"
_RRO_KERNEL = (5, 12)
_PROBE_TIMEOUT = 10.0


class CniStatus(Protocol):
    """What Status needs of the CNI manager."""

    async def status(self) -> tuple[bool, str, str]:
        """(ready, reason, message) of the pod network."""

    async def networks(self) -> list[Network]:
        """The networks loaded now."""


def _kernel_at_least(wanted: tuple[int, int]) -> bool:
    release = os.uname().release
    parts = []
    for piece in release.split("-")[0].split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts) >= wanted


def runtime_features(binary: str) -> dict[str, Any]:
    """The JSON of ``<binary> features`` ({} when the binary is missing or has no such command). Blocking."""
    try:
        done = subprocess.run([binary, "features"], capture_output=True, timeout=_PROBE_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.debug("%s features: %s", binary, exc)
        return {}
    if done.returncode != 0:
        log.debug("%s features: exit %d: %s", binary, done.returncode, done.stderr.decode(errors="replace"))
        return {}
    try:
        features = json.loads(done.stdout)
    except ValueError:
        return {}
    return features if isinstance(features, dict) else {}


def handler_features(
    features: Mapping[str, Any], *, rro_applied: bool | None = None
) -> cri.RuntimeHandlerFeatures:
    """What CRI asks about, from a runtime's features document.

    ``rro_applied``: whether CreateContainer applies recursive read-only mounts
    (default: what :mod:`wharfd.cri.container_mounts` says).
    """
    if rro_applied is None:
        rro_applied = container_mounts.RECURSIVE_READ_ONLY_SUPPORTED
    linux = features.get("linux") or {}
    idmap = ((linux.get("mountExtensions") or {}).get("idmap") or {}).get("enabled") is True
    return cri.RuntimeHandlerFeatures(
        recursive_read_only_mounts=rro_applied
        and "rro" in (features.get("mountOptions") or [])
        and _kernel_at_least(_RRO_KERNEL),
        user_namespaces="user" in (linux.get("namespaces") or []) and idmap,
    )


def probe_handlers(cri_config: Mapping[str, Any]) -> list[cri.RuntimeHandler]:
    """Every configured runtime handler with its features, plus the default as ``""``; sorted by name. Blocking."""
    containerd = cri_config.get("containerd", {})
    runtimes: Mapping[str, Any] = containerd.get("runtimes", {})
    default = containerd.get("default_runtime_name", "")
    probed: dict[str, dict[str, Any]] = {}  # binary → features: handlers often share one
    handlers: list[cri.RuntimeHandler] = []
    for name, runtime in runtimes.items():
        features = cri.RuntimeHandlerFeatures()
        if runtime.get("runtime_type") in RUNC_LIKE_TYPES:
            binary = runtime.get("options", {}).get("BinaryName") or "runc"
            if binary not in probed:
                probed[binary] = runtime_features(binary)
            features = handler_features(probed[binary])
        handlers.append(cri.RuntimeHandler(name=name, features=features))
        if name == default:
            handlers.append(cri.RuntimeHandler(name="", features=features))
    return sorted(handlers, key=lambda h: h.name)


def _cni_config_dump(networks: Sequence[Network], cni: Mapping[str, Any]) -> dict[str, Any]:
    """The loaded networks in the shape ``crictl info`` users know from containerd (go-cni's config)."""
    bin_dirs = cni.get("bin_dirs") or ([cni["bin_dir"]] if cni.get("bin_dir") else [])
    return {
        "PluginDirs": list(bin_dirs),
        "PluginConfDir": cni.get("conf_dir", ""),
        "PluginMaxConfNum": cni.get("max_conf_num", 1),
        "Prefix": "eth",
        "Networks": [
            {
                "Config": {
                    "Name": net.conf.name,
                    "CNIVersion": net.conf.cni_version,
                    "Plugins": [
                        {"Network": plugin, "Source": json.dumps(plugin)} for plugin in net.conf.plugins
                    ],
                    "Source": json.dumps(net.conf.raw) if net.conf.raw else "",
                },
                "IFName": f"eth{index}",
            }
            for index, net in enumerate(networks)
        ],
    }


class RuntimeStatus:
    """Answers Status from the CNI manager, the probed handlers and the CRI config."""

    def __init__(
        self,
        cni: CniStatus | None,
        cri_config: Mapping[str, Any],
        handlers: Sequence[cri.RuntimeHandler],
    ) -> None:
        self.cni = cni
        self.cri_config = cri_config
        self.handlers = list(handlers)
        # containerd's daemon-wide features: the kubelet gates SupplementalGroupsPolicy on this.
        self.features = cri.RuntimeFeatures(supplemental_groups_policy=True)

    async def _network(self) -> cri.RuntimeCondition:
        if self.cni is None:  # no CNI manager at all: the network is not ours to judge (containerd: ready)
            return cri.RuntimeCondition(type=NETWORK_READY, status=True)
        ready, reason, message = await self.cni.status()
        return cri.RuntimeCondition(type=NETWORK_READY, status=ready, reason=reason, message=message)

    async def status(self, request: cri.StatusRequest) -> cri.StatusResponse:
        """The StatusResponse; with ``verbose`` the info map too."""
        network = await self._network()
        response = cri.StatusResponse(
            status=cri.RuntimeStatus(
                conditions=[cri.RuntimeCondition(type=RUNTIME_READY, status=True), network]
            ),
            runtime_handlers=self.handlers,
            features=self.features,
        )
        if request.verbose:
            response.info.update(await self._info(network))
        return response

    async def _info(self, network: cri.RuntimeCondition) -> dict[str, str]:
        cni_config = self.cri_config.get("cni", {})
        info = {"config": json.dumps(self.cri_config, sort_keys=True, default=str)}
        if self.cni is not None:
            networks = await self.cni.networks()
            info["cniconfig"] = json.dumps(_cni_config_dump(networks, cni_config))
        info["lastCNILoadStatus"] = "OK" if network.status else network.message
        return info
