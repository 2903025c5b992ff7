"""RuntimeConfig and UpdateRuntimeConfig: the cgroup driver kubelet should use, and the node's pod CIDR.

The cgroup driver follows containerd: the runtimes are read default first, then
by name, and the first runc-type runtime decides (``SystemdCgroup = true`` →
SYSTEMD, else CGROUPFS); with no runc-type runtime the host decides (systemd
running → SYSTEMD). It is computed once: kubelet requires it to stay fixed for
the daemon's lifetime.

UpdateRuntimeConfig records the pod CIDR(s) kubelet pushes from the Node
object. When ``cni.conf_template`` is set and no network is loaded yet, the
template (see :mod:`wharfd.cri.cni_template` for the subset of Go templates
supported) is rendered with ``.PodCIDR`` (the first CIDR), ``.PodCIDRRanges``
(all of them) and ``.Routes`` (``0.0.0.0/0`` and/or ``::/0``, one per address
family present) into ``<conf_dir>/10-containerd-net.conflist`` — containerd's
file name, so node tooling that looks for it keeps working. The file is written
atomically; the CNI manager notices it at its next look at the conf dir.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.cri.cni_template import Template
from wharfd.cri.config import RUNC_LIKE_TYPES
from wharfd.runtime import errors
from wharfd.runtime.atomic_file import write_atomic

log = logging.getLogger("wharfd.cri")

GENERATED_CONF = "10-containerd-net.conflist"
_SYSTEMD_RUNNING = "/run/systemd/system"


class NetworkStatus(Protocol):
    """What UpdateRuntimeConfig needs of the CNI manager."""

    async def status(self) -> tuple[bool, str, str]:
        """(ready, reason, message) of the pod network."""


def cgroup_driver(cri_config: Mapping[str, Any], *, systemd_running: bool | None = None) -> cri.CgroupDriver:
    """SYSTEMD or CGROUPFS (``cri.CgroupDriver``) as containerd derives it from the runtimes."""
    containerd = cri_config.get("containerd", {})
    runtimes: Mapping[str, Any] = containerd.get("runtimes", {})
    default = containerd.get("default_runtime_name", "")
    for name in sorted(runtimes, key=lambda n: (n != default, n)):
        runtime = runtimes[name]
        if runtime.get("runtime_type") in RUNC_LIKE_TYPES:
            systemd = bool(runtime.get("options", {}).get("SystemdCgroup", False))
            return cri.SYSTEMD if systemd else cri.CGROUPFS
    if systemd_running is None:
        systemd_running = os.path.isdir(_SYSTEMD_RUNNING)
    return cri.SYSTEMD if systemd_running else cri.CGROUPFS


def parse_pod_cidrs(pod_cidr: str) -> list[str]:
    """The comma-separated CIDRs of ``network_config.pod_cidr``, checked; [] for an empty field."""
    if not pod_cidr.strip():
        return []
    cidrs = [c.strip() for c in pod_cidr.split(",")]
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise errors.InvalidArgument(
                f"runtime_config.network_config.pod_cidr: {cidr!r} is not a CIDR (in {pod_cidr!r})"
            ) from None
    return cidrs


def routes_for(cidrs: list[str]) -> list[str]:
    """The default routes a pod needs: one per address family among ``cidrs``, IPv4 first."""
    families = {ipaddress.ip_network(c, strict=False).version for c in cidrs}
    return [route for version, route in ((4, "0.0.0.0/0"), (6, "::/0")) if version in families]


def render_conf(template_path: Path, conf_dir: Path, cidrs: list[str]) -> Path:
    """Render the CNI config template for ``cidrs`` into ``conf_dir`` (blocking); return the file written."""
    try:
        source = template_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise errors.FailedPrecondition(
            f"cni.conf_template {str(template_path)!r}: cannot read: {exc.strerror or exc}"
        ) from exc
    text = Template(str(template_path), source).render(
        {"PodCIDR": cidrs[0], "PodCIDRRanges": list(cidrs), "Routes": routes_for(cidrs)}
    )
    target = conf_dir / GENERATED_CONF
    write_atomic(target, text.encode())
    return target


@dataclass
class RuntimeConfigService:
    """Answers RuntimeConfig and UpdateRuntimeConfig; remembers the pod CIDRs it was given."""

    cri_config: Mapping[str, Any]
    network: NetworkStatus | None = None
    pod_cidrs: list[str] = field(default_factory=list)
    _driver: cri.CgroupDriver | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def runtime_config(self) -> cri.RuntimeConfigResponse:
        """The response of RuntimeConfig (the cgroup driver, fixed at the first call)."""
        if self._driver is None:
            self._driver = cgroup_driver(self.cri_config)
        return cri.RuntimeConfigResponse(linux=cri.LinuxRuntimeConfiguration(cgroup_driver=self._driver))

    async def update(self, request: cri.UpdateRuntimeConfigRequest) -> cri.UpdateRuntimeConfigResponse:
        """Record the pod CIDRs; render the CNI config template when one is configured and needed."""
        cidrs = parse_pod_cidrs(request.runtime_config.network_config.pod_cidr)
        if not cidrs:
            return cri.UpdateRuntimeConfigResponse()
        async with self._lock:  # two updates must not interleave their writes
            self.pod_cidrs = cidrs
            template = self.cri_config.get("cni", {}).get("conf_template", "")
            if not template:
                log.info("pod CIDR %s recorded; no cni.conf_template, waiting for a CNI config", cidrs)
                return cri.UpdateRuntimeConfigResponse()
            if self.network is not None and (await self.network.status())[0]:
                log.info("CNI network ready; cni.conf_template %s not rendered", template)
                return cri.UpdateRuntimeConfigResponse()
            conf_dir = Path(self.cri_config.get("cni", {}).get("conf_dir", "/etc/cni/net.d"))
            written = await asyncio.to_thread(render_conf, Path(template), conf_dir, cidrs)
            log.info("CNI config %s generated from %s for pod CIDR %s", written, template, cidrs)
        return cri.UpdateRuntimeConfigResponse()
