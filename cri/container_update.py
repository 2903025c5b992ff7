"""UpdateContainerResources: change a container's limits in its spec and, if it runs, in its cgroup.

As containerd: the new values are laid over the spec's (a zero field keeps
the old value), the record's spec is replaced first so a container started
later gets them, and a running task is updated through the shim with the
spec's whole ``linux.resources`` (type URL
``types.containerd.io/opencontainers/runtime-spec/1/LinuxResources``). If the
shim refuses, the old spec is put back and the error returned: the call is
all or nothing. The status then reports the merged resources.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
from dataclasses import replace

from google.protobuf import any_pb2

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.cri.container_create import host_facts
from wharfd.cri.container_spec import RuntimeSettings, with_resources
from wharfd.cri.container_status import current_resources
from wharfd.cri.store import CriState
from wharfd.runtime import errors
from wharfd.runtime.metadata.containers import Container as Record
from wharfd.runtime.oci import spec as oci
from wharfd.runtime.oci.spec import LINUX_RESOURCES_TYPE_URL

_SCALARS = (
    "cpu_period",
    "cpu_quota",
    "cpu_shares",
    "memory_limit_in_bytes",
    "cpuset_cpus",
    "cpuset_mems",
    "memory_swap_limit_in_bytes",
)


def merge(
    old: cri.LinuxContainerResources | None, new: cri.LinuxContainerResources
) -> cri.LinuxContainerResources:
    """``old`` with every non-zero field of ``new`` laid over it (the status after an update).

    ``oom_score_adj`` is not updatable (it belongs to the process), so it keeps the old value.
    """
    out = cri.LinuxContainerResources()
    if old is not None:
        out.CopyFrom(old)
    for name in _SCALARS:
        value = getattr(new, name)
        if value:
            setattr(out, name, value)
    if new.hugepage_limits:
        del out.hugepage_limits[:]
        out.hugepage_limits.extend(new.hugepage_limits)
    out.unified.update(dict(new.unified))
    return out


async def update_container_resources(
    state: CriState, request: cri.UpdateContainerResourcesRequest
) -> cri.UpdateContainerResourcesResponse:
    """Handle UpdateContainerResources."""
    container = state.containers.get(request.container_id)
    if not request.HasField("linux"):
        return cri.UpdateContainerResourcesResponse()
    async with container.lock:
        status = container.status
        if status.removing:
            raise errors.FailedPrecondition(f'container "{container.id}": being removed')
        if status.state() not in (cri.CONTAINER_CREATED, cri.CONTAINER_RUNNING):
            name = cri.ContainerState.Name(status.state())
            raise errors.FailedPrecondition(
                f'container "{container.id}": cannot update resources in state {name}'
            )
        record = await state.meta.get(container.id)
        if record.spec is None:
            raise errors.DataLoss(f'container "{container.id}": its record has no spec')
        old_spec = oci.from_any(record.spec)
        new_spec = copy.deepcopy(old_spec)
        with_resources(request.linux, host_facts(), RuntimeSettings.from_config(state.config, {}))(new_spec)
        await state.meta.update(_with_spec(record, new_spec), ["spec"])
        try:
            await _apply(state, container.id, new_spec, dict(request.annotations))
        except BaseException:
            with contextlib.suppress(errors.WharfError):
                await state.meta.update(_with_spec(record, old_spec), ["spec"])
            raise
        merged = merge(current_resources(container), request.linux)
        await container.update(resources=base64.b64encode(merged.SerializeToString()).decode())
    return cri.UpdateContainerResourcesResponse()


def _with_spec(record: Record, spec: oci.Spec) -> Record:
    return replace(record, spec=oci.to_any(spec))


async def _apply(state: CriState, container_id: str, spec: oci.Spec, annotations: dict[str, str]) -> None:
    task = state.task(container_id)
    if task is None:
        return  # not started (or already gone): the spec is what counts
    resources = (spec.get("linux") or {}).get("resources") or {}
    value = any_pb2.Any(type_url=LINUX_RESOURCES_TYPE_URL, value=json.dumps(resources).encode())
    try:
        await task.update(value, annotations)
    except errors.NotFound:
        return  # it exited meanwhile
