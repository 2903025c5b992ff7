"""PodSandboxStatus: a pod's state, network, namespace options and metadata; ``verbose`` adds containerd's info.

The IPs are those CNI returned at RunPodSandbox, kept in the pod's metadata
(so they survive restarts); a pod on the node's network, or whose netns was
closed by StopPodSandbox, reports none. With ``verbose`` the answer carries
``info["info"]``: the JSON document ``crictl inspectp`` shows, with
containerd's keys (pid, processStatus, netNamespaceClosed, image,
snapshotKey, snapshotter, runtimeHandler, runtimeType, runtimeOptions,
config, runtimeSpec, cniResult, and overhead/resources once updated).
"""

from __future__ import annotations

import base64
import json
from typing import Any

from google.protobuf import json_format

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.api.types.task import task_pb2
from wharfd.cri import network
from wharfd.cri.store import CriState, Sandbox, in_k8s_namespace
from wharfd.runtime import errors
from wharfd.runtime.oci import spec as ocispec


async def pod_sandbox_status(
    state: CriState, request: cri.PodSandboxStatusRequest
) -> cri.PodSandboxStatusResponse:
    """Answer PodSandboxStatus; NotFound for an unknown id."""
    sandbox = state.sandboxes.get(request.pod_sandbox_id)
    status = to_cri_status(sandbox)
    info: dict[str, str] = {}
    if request.verbose:
        info["info"] = json.dumps(await verbose_info(state, sandbox))
    return cri.PodSandboxStatusResponse(status=status, info=info)


def pod_ips(sandbox: Sandbox) -> tuple[str, list[str]]:
    """(ip, additional ips) as reported now: none for host network or a closed netns."""
    meta = sandbox.metadata
    if network.host_network(meta.config) or sandbox.status.netns_closed:
        return "", []
    return meta.ip, list(meta.additional_ips)


def to_cri_status(sandbox: Sandbox) -> cri.PodSandboxStatus:
    """The CRI status message of a pod (the fields that never change are built once and copied)."""
    base = sandbox.status_base
    if base is None:
        meta = sandbox.metadata
        config = meta.config
        base = sandbox.status_base = cri.PodSandboxStatus(
            id=meta.id,
            metadata=config.metadata,
            linux=cri.LinuxPodSandboxStatus(
                namespaces=cri.Namespace(options=config.linux.security_context.namespace_options)
            ),
            labels=config.labels,
            annotations=config.annotations,
            runtime_handler=meta.runtime_handler,
        )
    out = cri.PodSandboxStatus()
    out.CopyFrom(base)
    status = sandbox.status
    out.state = status.sandbox_state.to_cri()
    out.created_at = status.created_at
    ip, extra = pod_ips(sandbox)
    if ip:
        out.network.ip = ip
        out.network.additional_ips.extend(cri.PodIP(ip=i) for i in extra)
    else:
        out.network.SetInParent()  # present but empty, as before
    return out


def _proto_dict(msg: Any) -> dict[str, Any]:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def _resources(encoded: str) -> dict[str, Any] | None:
    if not encoded:
        return None
    return _proto_dict(cri.LinuxContainerResources.FromString(base64.b64decode(encoded)))


async def verbose_info(state: CriState, sandbox: Sandbox) -> dict[str, Any]:
    """containerd's SandboxInfo document for ``crictl inspectp``."""
    meta, status = sandbox.metadata, sandbox.status
    process_status = "deleted"
    task = state.task(sandbox.id)
    if task is not None:
        try:
            proc = await task.state()
            process_status = task_pb2.Status.Name(proc.status).lower()
        except errors.WharfError:
            process_status = "unknown"
    runtime_spec: Any = None
    runtime_options: Any = None
    with in_k8s_namespace():
        try:
            record = await state.meta.get(sandbox.id)
        except errors.NotFound:
            record = None
    if record is not None:
        if record.spec is not None:
            runtime_spec = ocispec.from_any(record.spec)
        if record.runtime_options is not None and record.runtime_options.value:
            runtime_options = _runtime_options(record.runtime_options)
    info: dict[str, Any] = {
        "pid": status.pid,
        "processStatus": process_status,
        "netNamespaceClosed": status.netns_closed,
        "image": meta.image,
        "snapshotKey": sandbox.id,
        "snapshotter": meta.snapshotter,
        "runtimeHandler": meta.runtime_handler,
        "runtimeType": meta.runtime_type,
        "runtimeOptions": runtime_options,
        "config": _proto_dict(meta.config),
        "runtimeSpec": runtime_spec,
        "cniResult": meta.cni_result,
    }
    if sandbox.network_check:
        info["networkCheck"] = sandbox.network_check  # wharfd: CNI CHECK after a daemon restart
    for key, encoded in (("overhead", status.overhead), ("resources", status.resources)):
        value = _resources(encoded)
        if value is not None:
            info[key] = value
    return info


def _runtime_options(value: Any) -> Any:
    from wharfd.api.types.runc.options import oci_pb2

    if value.type_url.rsplit("/", 1)[-1] != "containerd.runc.v1.Options":
        return None
    return _proto_dict(oci_pb2.Options.FromString(value.value))
