"""The persisted CRI records: pod and container metadata, their status files, and their containerd records.

Persistence, so that a daemon restart (even SIGKILL) loses nothing::

    metadata DB, namespace k8s.io, table containers (containerd's records)
      <id>  labels[io.cri-containerd.kind] = sandbox | container
            extensions[io.cri-containerd.sandbox.metadata]   JSON SandboxMetadata   (immutable)
            extensions[io.cri-containerd.container.metadata] JSON ContainerMetadata (immutable)
    <cri root>/sandboxes/<id>/status     JSON SandboxStatus   (rewritten on every change)
    <cri root>/containers/<id>/status    JSON ContainerStatus (rewritten on every change)

Both documents carry ``"version": "v1"``. Status files are replaced atomically
(write to a fresh name, then rename), so a crash leaves the old or the new
one. Everything here is re-exported by :mod:`wharfd.cri.store`.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import json
import logging
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Generic, Self, TypeVar

from google.protobuf import any_pb2

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.runtime import errors
from wharfd.runtime.atomic_file import write_atomic
from wharfd.runtime.metadata.containers import Container as Record

log = logging.getLogger("wharfd.cri.store")

KIND_LABEL = "io.cri-containerd.kind"
KIND_SANDBOX = "sandbox"
KIND_CONTAINER = "container"
SANDBOX_METADATA_EXT = "io.cri-containerd.sandbox.metadata"
CONTAINER_METADATA_EXT = "io.cri-containerd.container.metadata"
_SANDBOX_TYPE_URL = "wharfd.io/cri/store/SandboxMetadata"
_CONTAINER_TYPE_URL = "wharfd.io/cri/store/ContainerMetadata"
_VERSION = "v1"
STATUS_FILE = "status"
# containerd's values for a container whose end the daemon could not observe.
UNKNOWN_EXIT_CODE = 255
UNKNOWN_EXIT_REASON = "Unknown"
OOM_EXIT_REASON = "OOMKilled"


def now_ns() -> int:
    """Wall-clock time in nanoseconds (CRI timestamps)."""
    return time.time_ns()


# --- status files ---------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text) if text else b""


S = TypeVar("S", bound="_Status")


class _Status:
    """Shared JSON (de)serialisation of the status dataclasses."""

    def to_json(self) -> bytes:
        """The versioned JSON document stored in the status file."""
        body = asdict(self)  # type: ignore[call-overload]
        return json.dumps({"version": _VERSION, "status": body}, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Self:
        """Parse a status file; DataLoss when it is not ours or corrupt."""
        try:
            doc = json.loads(data)
            if doc.get("version") != _VERSION:
                raise ValueError(f"version {doc.get('version')!r}")
            names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
            # Unknown keys are dropped so an older daemon can read a newer file.
            return cls(**{k: v for k, v in doc["status"].items() if k in names})
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise errors.DataLoss(f"status file: {exc}") from None


class SandboxState(enum.Enum):
    """A pod's state; CRI sees UNKNOWN as NOTREADY."""

    READY = "ready"
    NOTREADY = "notready"
    UNKNOWN = "unknown"

    def to_cri(self) -> cri.PodSandboxState:
        """The CRI enum value."""
        return cri.SANDBOX_READY if self is SandboxState.READY else cri.SANDBOX_NOTREADY


@dataclass(frozen=True)
class SandboxStatus(_Status):
    """The mutable part of a pod."""

    state: str = SandboxState.UNKNOWN.value
    pid: int = 0
    created_at: int = 0  # ns
    exited_at: int = 0  # ns; 0 while the pause process runs
    exit_status: int = 0
    netns_closed: bool = False
    overhead: str = ""  # base64 LinuxContainerResources (UpdatePodSandboxResources)
    resources: str = ""

    @property
    def sandbox_state(self) -> SandboxState:
        """:attr:`state` as the enum."""
        return SandboxState(self.state)


@dataclass(frozen=True)
class ContainerStatus(_Status):
    """The mutable part of a container (containerd's container status, same derivation of state)."""

    pid: int = 0
    created_at: int = 0
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    starting: bool = False
    removing: bool = False
    unknown: bool = False
    resources: str = ""  # base64 LinuxContainerResources after UpdateContainerResources

    def state(self) -> cri.ContainerState:
        """The CRI state: UNKNOWN, EXITED, RUNNING or CREATED, checked in that order."""
        if self.unknown:
            return cri.CONTAINER_UNKNOWN
        if self.finished_at:
            return cri.CONTAINER_EXITED
        if self.started_at:
            return cri.CONTAINER_RUNNING
        if self.created_at:
            return cri.CONTAINER_CREATED
        return cri.CONTAINER_UNKNOWN


# --- records --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SandboxMetadata:
    """What a pod was created with; never changes after RunPodSandbox."""

    id: str
    name: str
    config: cri.PodSandboxConfig
    runtime_handler: str
    runtime_type: str = ""
    netns_path: str = ""  # "" for host network
    ip: str = ""
    additional_ips: tuple[str, ...] = ()
    cni_result: dict[str, Any] | None = None
    image: str = ""  # the sandbox image's id
    snapshotter: str = ""

    def to_any(self) -> any_pb2.Any:
        """The record extension holding this metadata."""
        body = {k: v for k, v in asdict(self).items() if k != "config"}
        body["config"] = _b64(self.config.SerializeToString(deterministic=True))
        body["additional_ips"] = list(self.additional_ips)
        doc = {"version": _VERSION, "metadata": body}
        return any_pb2.Any(type_url=_SANDBOX_TYPE_URL, value=json.dumps(doc, sort_keys=True).encode())

    @classmethod
    def from_any(cls, value: any_pb2.Any) -> SandboxMetadata:
        """Decode the extension; DataLoss when corrupt."""
        body = _metadata_body(value, _SANDBOX_TYPE_URL)
        try:
            config = cri.PodSandboxConfig.FromString(_unb64(body.pop("config", "")))
            body["additional_ips"] = tuple(body.get("additional_ips") or ())
            known = {f.name for f in fields(cls)}
            return cls(config=config, **{k: v for k, v in body.items() if k in known})
        except Exception as exc:
            raise errors.DataLoss(f"sandbox metadata: {exc}") from None


@dataclass(frozen=True, eq=False)
class ContainerMetadata:
    """What a container was created with; never changes after CreateContainer."""

    id: str
    name: str
    sandbox_id: str
    config: cri.ContainerConfig
    image_ref: str = ""  # the image as the user named it
    image_id: str = ""  # sha256:... of the image config
    log_path: str = ""
    stop_signal: str = ""
    snapshotter: str = ""
    snapshot_key: str = ""

    def to_any(self) -> any_pb2.Any:
        """The record extension holding this metadata."""
        body = {k: v for k, v in asdict(self).items() if k != "config"}
        body["config"] = _b64(self.config.SerializeToString(deterministic=True))
        doc = {"version": _VERSION, "metadata": body}
        return any_pb2.Any(type_url=_CONTAINER_TYPE_URL, value=json.dumps(doc, sort_keys=True).encode())

    @classmethod
    def from_any(cls, value: any_pb2.Any) -> ContainerMetadata:
        """Decode the extension; DataLoss when corrupt."""
        body = _metadata_body(value, _CONTAINER_TYPE_URL)
        try:
            config = cri.ContainerConfig.FromString(_unb64(body.pop("config", "")))
            known = {f.name for f in fields(cls)}
            return cls(config=config, **{k: v for k, v in body.items() if k in known})
        except Exception as exc:
            raise errors.DataLoss(f"container metadata: {exc}") from None


def _metadata_body(value: any_pb2.Any, type_url: str) -> dict[str, Any]:
    if value.type_url != type_url:
        raise errors.DataLoss(f"metadata extension has type {value.type_url!r}, want {type_url!r}")
    try:
        doc = json.loads(value.value)
    except ValueError as exc:
        raise errors.DataLoss(f"metadata extension: {exc}") from None
    if (
        not isinstance(doc, dict)
        or doc.get("version") != _VERSION
        or not isinstance(doc.get("metadata"), dict)
    ):
        raise errors.DataLoss(f"metadata extension: unsupported document (version {doc.get('version')!r})")
    return dict(doc["metadata"])


class _Tracked(Generic[S]):
    """A record with a status that is persisted on every change, under a lock."""

    def __init__(self, status_path: Path, status: S) -> None:
        self.status_path = status_path
        self._status = status
        # Serialises lifecycle operations (start/stop/remove) on this one object.
        self.lock = asyncio.Lock()
        # Orders status writes, so the file always ends with the last change made in memory.
        self._writing = asyncio.Lock()
        self.removed = False

    @property
    def status(self) -> S:
        """The current status (immutable snapshot)."""
        return self._status

    async def update(self, **changes: Any) -> S:
        """Apply ``changes``, write the status file, then publish the new status in memory.

        After :meth:`forget` only the memory changes: a late exit must not bring
        back the directory a removal just deleted.
        """
        async with self._writing:
            new = replace(self._status, **changes)  # type: ignore[type-var]
            if not self.removed:
                await asyncio.to_thread(write_atomic, self.status_path, new.to_json())
            self._status = new
            return new

    def forget(self) -> None:
        """Mark the object as being removed: its status file is no longer written."""
        self.removed = True

    def set_memory_only(self, **changes: Any) -> None:
        """Change the in-memory status without persisting (used by recovery before the file exists)."""
        self._status = replace(self._status, **changes)  # type: ignore[type-var]


class Sandbox(_Tracked[SandboxStatus]):
    """A pod: its metadata, status, and an event set once its pause process has exited."""

    def __init__(self, metadata: SandboxMetadata, status_path: Path, status: SandboxStatus) -> None:
        super().__init__(status_path, status)
        self.metadata = metadata
        self.stopped = asyncio.Event()
        if status.exited_at or status.sandbox_state is not SandboxState.READY:
            self.stopped.set()
        # The CNI CHECK after a daemon restart (cri/recovery.py): "" not run, "ok", or the failure.
        self.network_check = ""
        # The parts of its CRI messages that never change, built on first use (wharfd.cri.sandbox_*).
        self.list_base: cri.PodSandbox | None = None
        self.status_base: cri.PodSandboxStatus | None = None

    @property
    def id(self) -> str:
        """The pod's id."""
        return self.metadata.id


class Container(_Tracked[ContainerStatus]):
    """A CRI container: its metadata, status, and an event set once its process has exited."""

    def __init__(self, metadata: ContainerMetadata, status_path: Path, status: ContainerStatus) -> None:
        super().__init__(status_path, status)
        self.metadata = metadata
        self.exited = asyncio.Event()
        if status.finished_at or status.unknown:
            self.exited.set()
        # The parts of its CRI messages that never change, built on first use, and the image as
        # ContainerStatus reports it with the image store generation it was read at
        # (wharfd.cri.container_status).
        self.list_base: cri.Container | None = None
        self.status_base: cri.ContainerStatus | None = None
        self.image_view: tuple[int, cri.ImageSpec, str] | None = None

    @property
    def id(self) -> str:
        """The container's id."""
        return self.metadata.id

    @property
    def sandbox_id(self) -> str:
        """The id of the pod it belongs to."""
        return self.metadata.sandbox_id


def sandbox_record(
    meta: SandboxMetadata,
    *,
    spec: any_pb2.Any,
    runtime: str,
    options: any_pb2.Any | None,
    snapshot_key: str,
    labels: dict[str, str],
) -> Record:
    """The containerd container record for a pod's pause container."""
    return Record(
        id=meta.id,
        image=meta.image,
        labels={**labels, KIND_LABEL: KIND_SANDBOX},
        runtime_name=runtime,
        runtime_options=options,
        spec=spec,
        snapshotter=meta.snapshotter,
        snapshot_key=snapshot_key,
        extensions={SANDBOX_METADATA_EXT: meta.to_any()},
    )


def container_record(
    meta: ContainerMetadata,
    *,
    spec: any_pb2.Any,
    runtime: str,
    options: any_pb2.Any | None,
    labels: dict[str, str],
) -> Record:
    """The containerd container record for a CRI container."""
    return Record(
        id=meta.id,
        image=meta.image_ref,
        labels={**labels, KIND_LABEL: KIND_CONTAINER},
        runtime_name=runtime,
        runtime_options=options,
        spec=spec,
        snapshotter=meta.snapshotter,
        snapshot_key=meta.snapshot_key,
        sandbox_id=meta.sandbox_id,
        extensions={CONTAINER_METADATA_EXT: meta.to_any()},
    )
