"""CreateContainer: a container in a ready pod, from an image already pulled (containerd's CRI rules).

Steps, each undone in reverse if a later one fails (an AsyncExitStack holds
the undo next to the step): reserve the name
``<name>_<pod>_<namespace>_<uid>_<attempt>``; find the image; prepare the
rootfs snapshot (key = container id) on the image's chain id with the pod
handler's snapshotter; build the spec (:mod:`wharfd.cri.container_spec`),
reading users and groups from a read-only mount of that rootfs; store the
containerd record (namespace k8s.io, label ``io.cri-containerd.kind=container``,
the CRI metadata as an extension) and the status file. The container is
CREATED; nothing runs until StartContainer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.cri import container_spec, image_volumes
from wharfd.cri.container_mounts import PodFiles
from wharfd.cri.container_spec import HostFacts, RuntimeSettings, SpecInputs
from wharfd.cri.store import (
    ContainerMetadata,
    ContainerStatus,
    CriState,
    Sandbox,
    SandboxState,
    container_name,
    container_record,
    new_id,
    now_ns,
)
from wharfd.runtime import errors, mount
from wharfd.runtime.oci import spec as oci
from wharfd.runtime.oci.image_config import RunConfig, parse_signal
from wharfd.runtime.snapshots.snapshotter import Mount


@functools.cache
def host_facts() -> HostFacts:
    """This host's facts, read once (they do not change while the daemon runs)."""
    return container_spec.probe()


async def create_container(
    state: CriState, request: cri.CreateContainerRequest
) -> cri.CreateContainerResponse:
    """Handle CreateContainer; returns the new container's id."""
    config = request.config
    if not config.HasField("metadata") or not config.metadata.name:
        raise errors.InvalidArgument("config.metadata.name: the container config must name the container")
    sandbox = state.sandboxes.get(request.pod_sandbox_id)
    if sandbox.status.sandbox_state is not SandboxState.READY:
        raise errors.FailedPrecondition(f'sandbox "{sandbox.id}": not ready (state {sandbox.status.state})')
    pod_config = (
        request.sandbox_config if request.sandbox_config.HasField("metadata") else sandbox.metadata.config
    )
    stop_signal = _stop_signal(config)
    container_id = new_id()
    name = container_name(config.metadata, pod_config.metadata)
    state.container_names.reserve(name, container_id)
    async with contextlib.AsyncExitStack() as undo:
        undo.callback(state.container_names.release, name)
        image = await state.catalog.find(config.image.image)
        run = RunConfig.from_json(image.config.get("config"), what=f'image "{image.id}" config')
        snapshotter_name = snapshotter_for(state, sandbox)
        snapshotter = state.snapshotters.get(snapshotter_name)
        if snapshotter is None:
            raise errors.FailedPrecondition(f'snapshotter "{snapshotter_name}" is not available')
        mounts = await snapshotter.prepare(container_id, image.chain_id)
        undo.push_async_callback(_quietly, snapshotter.remove, container_id)
        spec_config, config, volume_labels = await image_volumes.prepare(
            state, container_id, config, snapshotter, undo
        )
        pod_record = await state.meta.get(sandbox.id)
        image_name = config.image.user_specified_image or (image.repo_tags or [config.image.image])[0]
        inputs = SpecInputs(
            container_id=container_id,
            config=spec_config,
            sandbox_config=pod_config,
            sandbox_id=sandbox.id,
            sandbox_pid=sandbox.status.pid,
            image_name=image_name,
            image=run,
            pod_files=pod_files(state, sandbox.id),
            target_pid=_target_pid(state, sandbox, config),
            settings=RuntimeSettings.from_config(state.config, _handler(state, sandbox)),
            host=host_facts(),
        )
        scratch = state.state_dir / "tmpmounts" / container_id
        spec = await asyncio.to_thread(_build_with_rootfs, inputs, mounts, scratch)
        meta = ContainerMetadata(
            id=container_id,
            name=name,
            sandbox_id=sandbox.id,
            config=config,
            image_ref=config.image.image,
            image_id=image.id,
            log_path=log_path(pod_config, config),
            stop_signal=stop_signal or run.stop_signal,
            snapshotter=snapshotter_name,
            snapshot_key=container_id,
        )
        labels = {**run.labels, **config.labels, **volume_labels}
        record = container_record(
            meta, spec=oci.to_any(spec), runtime=pod_record.runtime_name, options=pod_record.runtime_options,
            labels=labels,
        )  # fmt: skip
        await state.meta.create(record)
        undo.push_async_callback(_quietly, state.meta.delete, container_id)
        container = state.new_container(meta, ContainerStatus(created_at=now_ns()))
        undo.callback(shutil.rmtree, state.container_root(container_id), True)
        await container.update()  # writes the status file
        state.containers.add(container)
        undo.pop_all()
    return cri.CreateContainerResponse(container_id=container_id)


async def _quietly(step: Callable[[str], Awaitable[Any]], key: str) -> None:
    """An undo step whose failure must not hide the error being raised."""
    with contextlib.suppress(errors.WharfError, OSError):
        await step(key)


def _stop_signal(config: cri.ContainerConfig) -> str:
    if config.stop_signal == cri.RUNTIME_DEFAULT:
        return ""
    try:
        name = cri.Signal.Name(config.stop_signal)
    except ValueError:
        raise errors.InvalidArgument(f"config.stop_signal {config.stop_signal}: unknown signal") from None
    parse_signal(name, what="config.stop_signal")
    return name


def log_path(pod_config: cri.PodSandboxConfig, config: cri.ContainerConfig) -> str:
    """``log_directory/log_path`` when both are set (else logging is off, as in containerd)."""
    if not pod_config.log_directory or not config.log_path:
        return ""
    if os.path.isabs(config.log_path) or ".." in Path(config.log_path).parts:
        raise errors.InvalidArgument(
            f'config.log_path "{config.log_path}": must stay inside the pod log directory'
        )
    return os.path.join(pod_config.log_directory, config.log_path)


def _handler(state: CriState, sandbox: Sandbox) -> Mapping[str, Any]:
    runtimes = (state.config.get("containerd") or {}).get("runtimes") or {}
    handler = sandbox.metadata.runtime_handler or (state.config.get("containerd") or {}).get(
        "default_runtime_name"
    )
    found = runtimes.get(handler or "")
    return found if isinstance(found, Mapping) else {}


def snapshotter_for(state: CriState, sandbox: Sandbox) -> str:
    """The pod handler's snapshotter, else the CRI default (where its images were unpacked)."""
    return str(_handler(state, sandbox).get("snapshotter") or (state.config.get("containerd") or {}).get(
        "snapshotter", "overlayfs"
    ))  # fmt: skip


def pod_files(state: CriState, sandbox_id: str) -> PodFiles:
    """The pod's hostname, hosts, resolv.conf and /dev/shm paths, where they exist."""
    root, volatile = state.sandbox_root(sandbox_id), state.sandbox_state_dir(sandbox_id)

    def existing(path: Path) -> str:
        return str(path) if path.exists() else ""

    return PodFiles(
        hostname=existing(root / "hostname"),
        hosts=existing(root / "hosts"),
        resolv_conf=existing(root / "resolv.conf"),
        shm=existing(volatile / "shm"),
    )


def _target_pid(state: CriState, sandbox: Sandbox, config: cri.ContainerConfig) -> int:
    options = config.linux.security_context.namespace_options
    if options.pid != cri.TARGET:
        return 0
    what = f'namespace_options.target_id "{options.target_id}"'
    target = state.containers.find(options.target_id) if options.target_id else None
    if target is None or target.sandbox_id != sandbox.id:
        raise errors.NotFound(f"{what}: no such container in sandbox {sandbox.id}")
    if target.status.state() != cri.CONTAINER_RUNNING or not target.status.pid:
        raise errors.FailedPrecondition(f"{what}: the container is not running")
    return target.status.pid


# --- a read-only view of the new rootfs, for user lookups --------------------------------------------


def readonly_mounts(mounts: Sequence[Mount]) -> list[Mount]:
    """The same files, read-only: an overlay's upper dir becomes its top lower dir; binds get ``ro``."""
    out: list[Mount] = []
    for m in mounts:
        if m.type == "overlay":
            opts = {k: v for k, _, v in (o.partition("=") for o in m.options if "=" in o)}
            lowers = [d for d in (opts.get("upperdir", ""), opts.get("lowerdir", "")) if d]
            rest = [
                o
                for o in m.options
                if "=" not in o or o.split("=")[0] not in ("upperdir", "lowerdir", "workdir")
            ]
            out.append(Mount(m.type, m.source, m.target, (*rest, "lowerdir=" + ":".join(lowers))))
        else:
            out.append(Mount(m.type, m.source, m.target, (*(o for o in m.options if o != "rw"), "ro")))
    return out


def _build_with_rootfs(inputs: SpecInputs, mounts: Sequence[Mount], scratch: Path) -> oci.Spec:
    """Mount the rootfs read-only at ``scratch``, build the spec, unmount (blocking)."""
    scratch.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        mount.mount_all(readonly_mounts(mounts), scratch)
    except OSError as exc:
        scratch.rmdir()
        raise errors.FailedPrecondition(
            f"container {inputs.container_id}: cannot mount its rootfs: {exc}"
        ) from exc
    try:
        return container_spec.build_spec(replace(inputs, rootfs=str(scratch)))
    finally:
        mount.unmount_all(scratch, mount.MNT_DETACH)
        with contextlib.suppress(OSError):
            scratch.rmdir()
