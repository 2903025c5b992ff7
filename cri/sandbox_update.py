"""UpdatePodSandboxResources: record a pod's new overhead/resources, and apply them to its cgroup if we can.

kubelet calls it after it has resized the pod cgroup itself (in-place pod
resize), so this is best effort, as in containerd: the values are recorded
(status file; PodSandboxStatus verbose shows them) and, for a cgroupfs parent
that exists here, the CPU and memory limits are written to it. A write the
kernel refuses is logged, not returned: kubelet owns that cgroup.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from pathlib import Path

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.cri.store import CriState

log = logging.getLogger("wharfd.cri.sandbox")

CGROUP_ROOT = Path("/sys/fs/cgroup")


async def update_pod_sandbox_resources(
    state: CriState, request: cri.UpdatePodSandboxResourcesRequest
) -> cri.UpdatePodSandboxResourcesResponse:
    """Answer UpdatePodSandboxResources; NotFound for an unknown pod."""
    sandbox = state.sandboxes.get(request.pod_sandbox_id)
    changes: dict[str, str] = {}
    if request.HasField("overhead"):
        changes["overhead"] = _encode(request.overhead)
    if request.HasField("resources"):
        changes["resources"] = _encode(request.resources)
    async with sandbox.lock:
        if changes:
            await sandbox.update(**changes)
    parent = sandbox.metadata.config.linux.cgroup_parent
    if request.HasField("resources") and parent and not parent.endswith(".slice"):
        await asyncio.to_thread(apply_to_cgroup, parent, request.resources)
    return cri.UpdatePodSandboxResourcesResponse()


def _encode(resources: cri.LinuxContainerResources) -> str:
    return base64.b64encode(resources.SerializeToString(deterministic=True)).decode()


def cgroup_writes(
    parent: str, res: cri.LinuxContainerResources, root: Path = CGROUP_ROOT
) -> list[tuple[Path, str]]:
    """The (file, value) pairs that set ``res`` on cgroup ``parent`` (v2 if unified, else v1)."""
    rel = parent.strip("/")
    writes: list[tuple[Path, str]] = []
    if (root / "cgroup.controllers").exists():  # cgroup v2
        base = root / rel
        if res.cpu_quota or res.cpu_period:
            quota = str(res.cpu_quota) if res.cpu_quota > 0 else "max"
            writes.append((base / "cpu.max", f"{quota} {res.cpu_period or 100000}"))
        if res.memory_limit_in_bytes:
            writes.append((base / "memory.max", str(res.memory_limit_in_bytes)))
        return writes
    if res.cpu_period:
        writes.append((root / "cpu" / rel / "cpu.cfs_period_us", str(res.cpu_period)))
    if res.cpu_quota:
        writes.append((root / "cpu" / rel / "cpu.cfs_quota_us", str(res.cpu_quota)))
    if res.cpu_shares:
        writes.append((root / "cpu" / rel / "cpu.shares", str(res.cpu_shares)))
    if res.memory_limit_in_bytes:
        writes.append((root / "memory" / rel / "memory.limit_in_bytes", str(res.memory_limit_in_bytes)))
    return writes


def apply_to_cgroup(parent: str, res: cri.LinuxContainerResources, root: Path = CGROUP_ROOT) -> int:
    """Write what :func:`cgroup_writes` lists into existing cgroups (blocking); how many writes succeeded."""
    done = 0
    for path, value in cgroup_writes(parent, res, root):
        if not path.parent.is_dir():
            continue  # that cgroup is not here (another driver, or not created yet)
        try:
            path.write_text(value)
            done += 1
        except OSError as exc:
            log.warning("pod cgroup %s: writing %s to %s: %s", parent, value, path.name, exc.strerror)
    return done
