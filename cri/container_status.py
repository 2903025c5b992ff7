"""ContainerStatus and the CRI views of a container shared with ListContainers.

Times are Unix nanoseconds; an EXITED container without a recorded reason
gets ``Completed`` (exit code 0) or ``Error``. The image is reported as its
first repo tag (else what the config named) with ``image_ref`` its first repo
digest (else its ID), and ``image_id`` the ID, as containerd reports them.
The user (uid, gid, supplemental groups) is read from the spec the
container runs with. ``verbose`` adds ``info["info"]``: a JSON object with the
keys crictl inspect shows.
"""

from __future__ import annotations

import base64
import json
import signal
from typing import Any, cast

from google.protobuf import json_format

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.api.types.runc.options import oci_pb2
from wharfd.cri.store import Container, CriState
from wharfd.runtime import errors
from wharfd.runtime.metadata.containers import Container as Record
from wharfd.runtime.oci import spec as oci
from wharfd.runtime.oci.image_config import parse_signal

REASON_COMPLETED = "Completed"
REASON_ERROR = "Error"
RUNC_OPTIONS_TYPE_URL = "containerd.runc.v1.Options"


def reason_of(container: Container) -> str:
    """The reason to report: the recorded one, else Completed/Error for an exited container."""
    status = container.status
    if status.reason or status.state() != cri.CONTAINER_EXITED:
        return status.reason
    return REASON_COMPLETED if status.exit_code == 0 else REASON_ERROR


def to_cri_container(container: Container, into: cri.Container | None = None) -> cri.Container:
    """The ``runtime.v1.Container`` of ListContainers, written into ``into`` (a response's new entry) if given.

    The fields that never change are built once per container and copied.
    """
    base = container.list_base
    if base is None:
        meta = container.metadata
        base = container.list_base = cri.Container(
            id=container.id,
            pod_sandbox_id=container.sandbox_id,
            metadata=meta.config.metadata,
            image=meta.config.image,
            image_ref=meta.image_id,
            image_id=meta.image_id,
            labels=meta.config.labels,
            annotations=meta.config.annotations,
        )
    out = cri.Container() if into is None else into
    out.CopyFrom(base)
    out.state = container.status.state()
    out.created_at = container.status.created_at
    return out


def current_resources(container: Container) -> cri.LinuxContainerResources | None:
    """The resources now in force: the last update's, else those the container was created with."""
    if container.status.resources:
        return cri.LinuxContainerResources.FromString(base64.b64decode(container.status.resources))
    config = container.metadata.config
    return config.linux.resources if config.linux.HasField("resources") else None


def stop_signal_enum(name: str) -> cri.Signal:
    """The CRI enum for a signal name or number (RUNTIME_DEFAULT when it has no enum value)."""
    if not name:
        return cri.RUNTIME_DEFAULT
    try:
        return cast("cri.Signal", cri.Signal.Value(signal.Signals(parse_signal(name)).name))
    except (errors.InvalidArgument, ValueError):
        return cri.RUNTIME_DEFAULT


def _user(spec: oci.Spec) -> cri.ContainerUser:
    user = (spec.get("process") or {}).get("user") or {}
    return cri.ContainerUser(
        linux=cri.LinuxContainerUser(
            uid=int(user.get("uid", 0)),
            gid=int(user.get("gid", 0)),
            supplemental_groups=[int(g) for g in user.get("additionalGids") or []],
        )
    )


async def _image(state: CriState, container: Container) -> tuple[cri.ImageSpec, str]:
    """The image as reported now: its first repo tag and first repo digest while it is present.

    Once the image is gone: the config's image spec, and the image ID as the reference.

    Remembered per container while the image store is unchanged (its generation), so
    the repeated calls kubelet makes are answered from memory.
    """
    generation = state.catalog.images.generation
    cached = container.image_view
    if cached is not None and cached[0] == generation:
        return cached[1], cached[2]
    config_image = container.metadata.config.image
    try:
        image = await state.catalog.find(container.metadata.image_id)
    except errors.NotFound:
        return config_image, container.metadata.image_id
    # containerd reports a tagged image by its first tag alone (the config's annotations,
    # user_specified_image and runtime_handler are not carried over), else the config's spec.
    spec = cri.ImageSpec(image=image.repo_tags[0]) if image.repo_tags else config_image
    ref = (image.repo_digests or [container.metadata.image_id])[0]
    container.image_view = (generation, spec, ref)
    return spec, ref


async def _record_and_spec(state: CriState, container: Container) -> tuple[Record, oci.Spec]:
    """The container's record and the spec it runs with (parsed from the record)."""
    record = await state.meta.get(container.id)
    return record, oci.from_any(record.spec) if record.spec is not None else {}


def _static_status(container: Container, spec: oci.Spec) -> cri.ContainerStatus:
    """The fields of a container's status that never change, built once (the user needs its spec)."""
    meta = container.metadata
    base = cri.ContainerStatus(
        id=container.id,
        metadata=meta.config.metadata,
        image_id=meta.image_id,
        labels=meta.config.labels,
        annotations=meta.config.annotations,
        mounts=meta.config.mounts,
        log_path=meta.log_path,
        user=_user(spec),
        stop_signal=stop_signal_enum(meta.stop_signal),
    )
    container.status_base = base
    return base


async def container_status(
    state: CriState, request: cri.ContainerStatusRequest
) -> cri.ContainerStatusResponse:
    """Handle ContainerStatus (NotFound for an unknown id); from memory once a container was asked for."""
    container = state.containers.get(request.container_id)
    base = container.status_base
    # The record is read and its spec parsed at most once a call: the first call needs them for
    # the static part, a verbose one for its info (a first verbose call, for both).
    loaded = None
    if base is None or request.verbose:
        loaded = await _record_and_spec(state, container)
        if base is None:
            base = _static_status(container, loaded[1])
    image, image_ref = await _image(state, container)
    response = cri.ContainerStatusResponse()
    out = response.status
    out.CopyFrom(base)
    status = container.status
    out.state = status.state()
    out.created_at = status.created_at
    out.started_at = status.started_at
    out.finished_at = status.finished_at
    out.exit_code = status.exit_code
    out.image.CopyFrom(image)
    out.image_ref = image_ref
    out.reason = reason_of(container)
    out.message = status.message
    resources = current_resources(container)
    if resources is not None:
        out.resources.linux.CopyFrom(resources)
    if request.verbose and loaded is not None:
        record, spec = loaded
        response.info["info"] = json.dumps(verbose_info(state, container, record, spec))
    return response


def verbose_info(state: CriState, container: Container, record: Record, spec: oci.Spec) -> dict[str, Any]:
    """What ``crictl inspect`` shows under ``info``."""
    options: Any = {}
    if record.runtime_options is not None and record.runtime_options.type_url.endswith(RUNC_OPTIONS_TYPE_URL):
        parsed = oci_pb2.Options.FromString(record.runtime_options.value)
        options = json_format.MessageToDict(parsed)
    return {
        "sandboxID": container.sandbox_id,
        "pid": container.status.pid,
        "removing": container.status.removing,
        "snapshotKey": container.metadata.snapshot_key,
        "snapshotter": container.metadata.snapshotter,
        "runtimeType": record.runtime_name,
        "runtimeOptions": options,
        "config": json_format.MessageToDict(container.metadata.config),
        "runtimeSpec": spec,
    }
