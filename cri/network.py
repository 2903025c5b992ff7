"""Pod networking for the CRI: the CNI manager from the config, and the arguments a pod's ADD/DEL carry.

containerd's CRI passes every pod the same CNI arguments (``CNI_ARGS``)::

    K8S_POD_NAMESPACE, K8S_POD_NAME, K8S_POD_INFRA_CONTAINER_ID (the pod id), K8S_POD_UID, IgnoreUnknown=1

and these capability arguments (``runtimeConfig``), each only to plugins that declare it:
``portMappings`` (from ``port_mappings`` with a host port; protocol lower-cased),
``bandwidth`` (from the ``kubernetes.io/{ingress,egress}-bandwidth`` annotations),
``dns`` (from ``dns_config``), ``cgroupPath`` (the pod's cgroup parent) and
``io.kubernetes.cri.pod-annotations`` (all annotations).
DEL repeats the same arguments, so a plugin sees what it saw at ADD. Like
containerd (go-cni's loopback network), every pod also gets the ``loopback``
plugin on ``lo`` before the configured networks.

Pod netns come from :mod:`wharfd.cni.netns` (a short-lived thread that
unshares and pins its own netns; no fork of this many-threaded daemon).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.cni import config as cniconfig
from wharfd.cni import netns
from wharfd.cni import network as cninet
from wharfd.cni.manager import Attached, CniManager, Settings
from wharfd.cri.store import both
from wharfd.runtime import errors

POD_ANNOTATIONS_CAPABILITY = "io.kubernetes.cri.pod-annotations"
INGRESS_ANNOTATION = "kubernetes.io/ingress-bandwidth"
EGRESS_ANNOTATION = "kubernetes.io/egress-bandwidth"
DEFAULT_IFNAME = "eth0"
LOOPBACK_IFNAME = "lo"
_MAX_UINT32 = 2**32 - 1
# containerd refuses bandwidth limits outside 1 kbit .. 1 Pbit as unreasonable.
_MIN_BANDWIDTH = 1_000
_MAX_BANDWIDTH = 10**15
CNI_TIMEOUT = 60.0


async def create_netns(name: str, directory: Path) -> Path:
    """A new network namespace pinned at ``directory/name`` (Unavailable naming the path on failure)."""
    return await netns.create(name, directory=directory)


def manager_from_config(section: Mapping[str, Any], cache_dir: Path) -> CniManager:
    """The CniManager the CRI ``cni`` section describes (``bin_dir`` or ``bin_dirs``, ``conf_dir``)."""
    cni_cfg = section.get("cni") or {}
    bin_dirs = cni_cfg.get("bin_dirs") or [cni_cfg.get("bin_dir") or "/opt/cni/bin"]
    if isinstance(bin_dirs, str):
        bin_dirs = [bin_dirs]
    return CniManager(
        Settings(
            conf_dir=Path(cni_cfg.get("conf_dir") or "/etc/cni/net.d"),
            bin_dirs=tuple(str(d) for d in bin_dirs),
            cache_dir=cache_dir,
            max_conf_num=int(cni_cfg.get("max_conf_num") or 1),
            timeout=CNI_TIMEOUT,
        )
    )


def host_network(config: cri.PodSandboxConfig) -> bool:
    """Whether the pod uses the node's network namespace."""
    return config.linux.security_context.namespace_options.network == cri.NODE


def cni_args(sandbox_id: str, config: cri.PodSandboxConfig) -> list[tuple[str, str]]:
    """The ``CNI_ARGS`` pairs of a pod."""
    meta = config.metadata
    return [
        ("IgnoreUnknown", "1"),
        ("K8S_POD_NAMESPACE", meta.namespace),
        ("K8S_POD_NAME", meta.name),
        ("K8S_POD_INFRA_CONTAINER_ID", sandbox_id),
        ("K8S_POD_UID", meta.uid),
    ]


def capability_args(config: cri.PodSandboxConfig) -> dict[str, Any]:
    """The ``runtimeConfig`` capability arguments of a pod; InvalidArgument for a bad bandwidth annotation."""
    caps: dict[str, Any] = {POD_ANNOTATIONS_CAPABILITY: dict(config.annotations)}
    ports = port_mappings(config.port_mappings)
    if ports:
        caps["portMappings"] = ports
    bandwidth = bandwidth_of(config.annotations)
    if bandwidth:
        caps["bandwidth"] = bandwidth
    if config.HasField("dns_config"):
        dns = config.dns_config
        caps["dns"] = {
            "servers": list(dns.servers),
            "searches": list(dns.searches),
            "options": list(dns.options),
        }
    if config.linux.cgroup_parent:
        caps["cgroupPath"] = config.linux.cgroup_parent
    return caps


def port_mappings(mappings: Sequence[cri.PortMapping]) -> list[dict[str, Any]]:
    """CRI port mappings as the portmap plugin's ``portMappings`` (those without a host port are skipped)."""
    out: list[dict[str, Any]] = []
    for m in mappings:
        if m.host_port <= 0:
            continue
        entry: dict[str, Any] = {
            "hostPort": m.host_port,
            "containerPort": m.container_port,
            "protocol": cri.Protocol.Name(m.protocol).lower(),
        }
        if m.host_ip:
            entry["hostIP"] = m.host_ip
        out.append(entry)
    return out


_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([a-zA-Z]*)$")
_SUFFIXES = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def parse_quantity(text: str, *, what: str) -> int:
    """A Kubernetes resource quantity (``10M``, ``1Gi``, ``500k``) as an integer; InvalidArgument otherwise."""
    match = _QUANTITY.match(text.strip())
    if match is None or match.group(2) not in _SUFFIXES:
        raise errors.InvalidArgument(f'{what}: "{text}" is not a resource quantity (e.g. 10M, 1Gi)')
    return int(float(match.group(1)) * _SUFFIXES[match.group(2)])


def bandwidth_of(annotations: Mapping[str, str]) -> dict[str, int]:
    """The ``bandwidth`` capability from the pod's bandwidth annotations (bits/s); empty when none."""
    out: dict[str, int] = {}
    for key, rate, burst in ((INGRESS_ANNOTATION, "ingressRate", "ingressBurst"),
                             (EGRESS_ANNOTATION, "egressRate", "egressBurst")):  # fmt: skip
        if key not in annotations:
            continue
        value = parse_quantity(annotations[key], what=f"annotation {key}")
        if value < _MIN_BANDWIDTH:
            raise errors.InvalidArgument(f"annotation {key}: {value} is unreasonably small (< 1kbit)")
        if value > _MAX_BANDWIDTH:
            raise errors.InvalidArgument(f"annotation {key}: {value} is unreasonably large (> 1Pbit)")
        out[rate] = value
        out[burst] = _MAX_UINT32
    return out


def pod_ips(attached: Sequence[Attached], preference: str = "") -> tuple[str, list[str]]:
    """(ip, additional ips) of the default interface, ordered by ``ip_pref`` (ipv4 | ipv6 | cni)."""
    for att in attached:
        if att.ifname == DEFAULT_IFNAME:
            return select_ips(_ordered_ips(att.result), preference)
    return "", []


def _ordered_ips(result: Mapping[str, Any]) -> list[str]:
    # Plugin order, as cni.network.ips_of would give before its IPv4-first sort.
    return [str(e.get("address", "")).split("/", 1)[0] for e in result.get("ips") or [] if e.get("address")]


def select_ips(ips: Sequence[str], preference: str = "") -> tuple[str, list[str]]:
    """The primary IP and the rest: the first of the preferred family (ipv4 by default), or the first."""
    if not ips:
        return "", []
    if preference == "cni":
        return ips[0], list(ips[1:])
    want = 6 if preference == "ipv6" else 4
    for i, ip in enumerate(ips):
        if ipaddress.ip_address(ip).version == want:
            return ip, [*ips[:i], *ips[i + 1 :]]
    return ips[0], list(ips[1:])


def loopback(manager: CniManager) -> cninet.Network:
    """The implicit loopback network (plugin ``loopback`` on ``lo``), which containerd adds to every pod."""
    conf = cniconfig.parse(_LOOPBACK_CONF, source="<cri loopback>")
    s = manager.settings
    return cninet.Network(conf, s.bin_dirs, s.cache_dir, timeout=s.timeout)


_LOOPBACK_CONF = b'{"cniVersion": "1.0.0", "name": "cni-loopback", "plugins": [{"type": "loopback"}]}'


async def setup(
    manager: CniManager, sandbox_id: str, netns: str, config: cri.PodSandboxConfig, *, serially: bool = False
) -> list[Attached]:
    """CNI ADD of a pod: ``lo`` up through the loopback plugin, and every configured network.

    As go-cni, which counts the loopback among a pod's networks: all of them
    are attached side by side, or one after the other, loopback first, with
    ``serially`` (the ``cni.setup_serially`` setting). On failure the
    configured networks attached are detached; the loopback stays: the caller
    undoes it with :func:`teardown`.
    """
    args = tuple(cni_args(sandbox_id, config))
    lo = loopback(manager)
    lo_attachment = cninet.Attachment(sandbox_id, netns, LOOPBACK_IFNAME, args)
    caps = capability_args(config)
    if serially:
        await lo.add(lo_attachment)
        return await manager.setup(sandbox_id, netns, args, caps, serially=True)
    _, attached = await both(lo.add(lo_attachment), manager.setup(sandbox_id, netns, args, caps))
    return attached


async def teardown(manager: CniManager, sandbox_id: str, netns: str, config: cri.PodSandboxConfig) -> None:
    """CNI DEL of a pod from every network and from loopback, side by side; the first failure is raised.

    ``netns`` may be "" once the namespace is gone.
    """
    args = tuple(cni_args(sandbox_id, config))
    lo = cninet.Attachment(sandbox_id, netns, LOOPBACK_IFNAME, args)
    await both(
        manager.teardown(sandbox_id, netns, args, capability_args(config)), loopback(manager).delete(lo)
    )


async def check(manager: CniManager, sandbox_id: str, netns: str, config: cri.PodSandboxConfig) -> None:
    """CNI CHECK of a pod's attachments (loopback and every network); the first failure is raised."""
    args = tuple(cni_args(sandbox_id, config))
    lo = cninet.Attachment(sandbox_id, netns, LOOPBACK_IFNAME, args)
    await both(manager.check(sandbox_id, netns, args, capability_args(config)), loopback(manager).check(lo))


def result_summary(attached: Sequence[Attached]) -> dict[str, Any]:
    """The CNI results by interface, kept with the pod for PodSandboxStatus's verbose ``cniResult``."""
    return {
        "Interfaces": {
            att.ifname: {"network": att.network, "IPConfigs": att.result.get("ips") or []} for att in attached
        },
        "Results": [att.result for att in attached],
        "IPs": [ip for att in attached for ip in cninet.ips_of(att.result)],
    }
