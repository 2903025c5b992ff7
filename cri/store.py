"""The CRI's in-memory view of pods and containers: stores, names, runtime handlers and the shared state.

Every CRI handler works on a :class:`CriState`: two :class:`Store` tables
(sandboxes, containers) with id-prefix lookup, two :class:`NameRegistrar`
(pod names ``<name>_<namespace>_<uid>_<attempt>`` and container names
``<name>_<pod name>_<pod namespace>_<pod uid>_<attempt>``), and the daemon's
collaborators (metadata, tasks, snapshotters, images, CNI, events).

The records themselves (metadata, status files, containerd records) live in
:mod:`wharfd.cri.records` and are re-exported here; rebuilding the stores
after a restart and following task exits is :mod:`wharfd.cri.recovery`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from google.protobuf import any_pb2

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.cri.config import RUNC_LIKE_TYPES
from wharfd.cri.records import (
    CONTAINER_METADATA_EXT,
    KIND_CONTAINER,
    KIND_LABEL,
    KIND_SANDBOX,
    OOM_EXIT_REASON,
    SANDBOX_METADATA_EXT,
    STATUS_FILE,
    UNKNOWN_EXIT_CODE,
    UNKNOWN_EXIT_REASON,
    Container,
    ContainerMetadata,
    ContainerStatus,
    Sandbox,
    SandboxMetadata,
    SandboxState,
    SandboxStatus,
    container_record,
    now_ns,
    sandbox_record,
)
from wharfd.runtime import errors, namespaces, steps
from wharfd.runtime.metadata.containers import ContainerStore

log = logging.getLogger("wharfd.cri.store")

# --- names and ids --------------------------------------------------------------------------------


class NameRegistrar:
    """Names reserved for keys (ids): one key per name, so two pods cannot share a name."""

    def __init__(self, what: str = "name") -> None:
        self._what = what
        self._by_name: dict[str, str] = {}
        self._by_key: dict[str, str] = {}

    def reserve(self, name: str, key: str) -> None:
        """Reserve ``name`` for ``key``; AlreadyExists naming the holder when another key has it."""
        if not name or not key:
            raise errors.InvalidArgument(f"{self._what} reservation needs a name and a key")
        holder = self._by_name.get(name)
        if holder is not None and holder != key:
            raise errors.AlreadyExists(f'{self._what} "{name}" is reserved for "{holder}"')
        held = self._by_key.get(key)
        if held is not None and held != name:
            raise errors.AlreadyExists(f'key "{key}" already holds {self._what} "{held}"')
        self._by_name[name] = key
        self._by_key[key] = name

    def holder(self, name: str) -> str | None:
        """The key holding ``name``, if any."""
        return self._by_name.get(name)

    def release(self, name: str) -> None:
        """Free ``name`` (no-op if free)."""
        key = self._by_name.pop(name, None)
        if key is not None:
            self._by_key.pop(key, None)

    def release_key(self, key: str) -> None:
        """Free whatever name ``key`` holds (no-op if none)."""
        name = self._by_key.pop(key, None)
        if name is not None:
            self._by_name.pop(name, None)


def sandbox_name(meta: cri.PodSandboxMetadata) -> str:
    """The unique name of a pod: ``<name>_<namespace>_<uid>_<attempt>`` (containerd's makeSandboxName)."""
    return f"{meta.name}_{meta.namespace}_{meta.uid}_{meta.attempt}"


def container_name(meta: cri.ContainerMetadata, pod: cri.PodSandboxMetadata) -> str:
    """The unique name of a container in its pod (containerd's makeContainerName)."""
    return f"{meta.name}_{pod.name}_{pod.namespace}_{pod.uid}_{meta.attempt}"


def new_id() -> str:
    """A random 64-hex-digit id, as containerd generates for pods and containers."""
    return os.urandom(32).hex()


class _HasId(Protocol):
    @property
    def id(self) -> str: ...


R = TypeVar("R", bound=_HasId)
T = TypeVar("T")
T1 = TypeVar("T1")
T2 = TypeVar("T2")


class Store(Generic[R]):
    """Records by id; lookup by full id or by a unique id prefix."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._items: dict[str, R] = {}

    def add(self, item: R) -> None:
        """Insert ``item``; AlreadyExists if its id is present."""
        if item.id in self._items:
            raise errors.AlreadyExists(f'{self._what} "{item.id}": already exists')
        self._items[item.id] = item

    def resolve(self, id_or_prefix: str) -> str:
        """The full id for an id or a unique prefix; NotFound, or InvalidArgument when ambiguous."""
        if not id_or_prefix:
            raise errors.InvalidArgument(f"{self._what} id must not be empty")
        if id_or_prefix in self._items:
            return id_or_prefix
        found = [k for k in self._items if k.startswith(id_or_prefix)]
        if not found:
            raise errors.NotFound(f'{self._what} "{id_or_prefix}": not found')
        if len(found) > 1:
            raise errors.InvalidArgument(f'{self._what} id prefix "{id_or_prefix}" is ambiguous')
        return found[0]

    def get(self, id_or_prefix: str) -> R:
        """The record for an id or unique prefix (see :meth:`resolve`)."""
        return self._items[self.resolve(id_or_prefix)]

    def find(self, id_or_prefix: str) -> R | None:
        """Like :meth:`get` but None when absent or ambiguous."""
        try:
            return self.get(id_or_prefix)
        except (errors.NotFound, errors.InvalidArgument):
            return None

    def list(self) -> list[R]:
        """Every record, in insertion order."""
        return list(self._items.values())

    def delete(self, id: str) -> None:
        """Drop the record with exactly this id (no-op if absent)."""
        self._items.pop(id, None)

    def __contains__(self, id: object) -> bool:
        return id in self._items

    def __len__(self) -> int:
        return len(self._items)


# --- runtime handlers -----------------------------------------------------------------------------

# The runc options' config keys (containerd's TOML names) and their proto fields.
_RUNC_OPTION_FIELDS = {
    "BinaryName": "binary_name",
    "Root": "root",
    "SystemdCgroup": "systemd_cgroup",
    "NoPivotRoot": "no_pivot_root",
    "NoNewKeyring": "no_new_keyring",
    "ShimCgroup": "shim_cgroup",
    "IoUid": "io_uid",
    "IoGid": "io_gid",
    "CriuImagePath": "criu_image_path",
    "CriuWorkPath": "criu_work_path",
}
RUNC_OPTIONS_TYPE_URL = "containerd.runc.v1.Options"


@dataclass(frozen=True)
class Runtime:
    """A configured runtime handler (``containerd.runtimes.<handler>``)."""

    handler: str  # the name in the config (the default's name when the request named none)
    type: str  # io.containerd.runc.v2 …
    path: str = ""
    options: any_pb2.Any | None = None
    systemd_cgroup: bool = False
    pod_annotations: tuple[str, ...] = ()
    container_annotations: tuple[str, ...] = ()
    snapshotter: str = ""
    privileged_without_host_devices: bool = False


def runtime_for(config: dict[str, Any], handler: str) -> Runtime:
    """Resolve a CRI ``runtime_handler`` ("" = the default runtime); NotFound naming an unknown handler."""
    section = config.get("containerd") or {}
    runtimes: dict[str, Any] = section.get("runtimes") or {}
    name = handler or str(section.get("default_runtime_name") or "")
    entry = runtimes.get(name)
    if entry is None:
        known = ", ".join(sorted(runtimes)) or "none"
        raise errors.NotFound(
            f'runtime_handler "{name}": no runtime for this handler is configured (have: {known})'
        )
    options = entry.get("options") or {}
    return Runtime(
        handler=name,
        type=str(entry.get("runtime_type") or ""),
        path=str(entry.get("runtime_path") or ""),
        options=_runc_options(options) if entry.get("runtime_type") in RUNC_LIKE_TYPES else None,
        systemd_cgroup=bool(options.get("SystemdCgroup", False)),
        pod_annotations=tuple(entry.get("pod_annotations") or ()),
        container_annotations=tuple(entry.get("container_annotations") or ()),
        snapshotter=str(entry.get("snapshotter") or ""),
        privileged_without_host_devices=bool(entry.get("privileged_without_host_devices", False)),
    )


def _runc_options(options: dict[str, Any]) -> any_pb2.Any:
    from wharfd.api.types.runc.options import oci_pb2

    msg = oci_pb2.Options(**{f: options[k] for k, f in _RUNC_OPTION_FIELDS.items() if options.get(k)})
    return any_pb2.Any(type_url=RUNC_OPTIONS_TYPE_URL, value=msg.SerializeToString(deterministic=True))


# --- the shared state -----------------------------------------------------------------------------


@dataclass
class CriState:
    """Stores plus the collaborators every CRI handler needs."""

    config: dict[str, Any]  # the io.containerd.grpc.v1.cri section
    root: Path  # persistent: sandboxes/<id>/, containers/<id>/
    state_dir: Path  # volatile: sandboxes/<id>/shm, containers/<id>/ fifos
    meta: ContainerStore
    tasks: Any  # wharfd.runtime.tasks.manager.TaskManager
    snapshotters: dict[str, Any]  # id -> NamespacedSnapshotter
    catalog: Any = None  # wharfd.cri.images.Catalog
    puller: Any = None  # wharfd.cri.image_pull.ImagePuller
    cni: Any = None  # wharfd.cni.manager.CniManager, None when networking is off
    exchange: Any = None  # wharfd.runtime.events.Exchange
    publish: Any = None  # async (topic, message) -> None, for CRI container events
    sandboxes: Store[Sandbox] = field(default_factory=lambda: Store[Sandbox]("sandbox"))
    containers: Store[Container] = field(default_factory=lambda: Store[Container]("container"))
    sandbox_names: NameRegistrar = field(default_factory=lambda: NameRegistrar("sandbox name"))
    container_names: NameRegistrar = field(default_factory=lambda: NameRegistrar("container name"))
    # Container id -> wharfd.cri.container_io.ContainerIO: the stdio copies of started containers.
    ios: dict[str, Any] = field(default_factory=dict)
    # Task deletions in flight, by id (wharfd.cri.recovery.delete_task joins them).
    task_deletions: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    def sandbox_root(self, id: str) -> Path:
        """Persistent directory of a pod (hostname, hosts, resolv.conf, status)."""
        return self.root / "sandboxes" / id

    def sandbox_state_dir(self, id: str) -> Path:
        """Volatile directory of a pod (/dev/shm mount)."""
        return self.state_dir / "sandboxes" / id

    def container_root(self, id: str) -> Path:
        """Persistent directory of a container (status)."""
        return self.root / "containers" / id

    def container_state_dir(self, id: str) -> Path:
        """Volatile directory of a container (stdio FIFOs)."""
        return self.state_dir / "containers" / id

    def new_sandbox(self, metadata: SandboxMetadata, status: SandboxStatus) -> Sandbox:
        """A Sandbox object whose status file lives in its root (not yet added to the store)."""
        return Sandbox(metadata, self.sandbox_root(metadata.id) / STATUS_FILE, status)

    def new_container(self, metadata: ContainerMetadata, status: ContainerStatus) -> Container:
        """A Container object whose status file lives in its root (not yet added to the store)."""
        return Container(metadata, self.container_root(metadata.id) / STATUS_FILE, status)

    def containers_of(self, sandbox_id: str) -> list[Container]:
        """The containers of one pod."""
        return [c for c in self.containers.list() if c.sandbox_id == sandbox_id]

    def task(self, id: str) -> Any | None:
        """The task of a pod or container, or None."""
        try:
            return self.tasks.get(id, namespaces.K8S)
        except errors.NotFound:
            return None


@contextlib.contextmanager
def in_k8s_namespace() -> Iterator[None]:
    """Run the body in namespace k8s.io (for work outside a request: recovery, monitors)."""
    token = namespaces.current.set(namespaces.K8S)
    try:
        yield
    finally:
        namespaces.current.reset(token)


async def wait_stopped(event: asyncio.Event, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``event``; whether it was set."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        return False
    return True


async def both(
    first: Awaitable[T1], second: Awaitable[T2], *, failed: Callable[[], None] | None = None
) -> tuple[T1, T2]:
    """Run two independent steps side by side, each to its end, and return both results.

    :func:`wharfd.runtime.steps.to_their_end` for two: a failure does not cancel
    the other step, ``failed`` is called as soon as either fails, and once both
    have ended the first failure is raised.
    """
    one, two = await steps.to_their_end([first, second], failed=failed)
    return one, two


async def aiter_chunks(items: list[R], size: int = 100) -> AsyncIterator[list[R]]:
    """``items`` in chunks (for the Stream* RPCs)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


# The records are re-exported: handlers import everything CRI-state from here.
__all__ = [
    "CONTAINER_METADATA_EXT",
    "KIND_CONTAINER",
    "KIND_LABEL",
    "KIND_SANDBOX",
    "OOM_EXIT_REASON",
    "RUNC_OPTIONS_TYPE_URL",
    "SANDBOX_METADATA_EXT",
    "STATUS_FILE",
    "UNKNOWN_EXIT_CODE",
    "UNKNOWN_EXIT_REASON",
    "Container",
    "ContainerMetadata",
    "ContainerStatus",
    "CriState",
    "NameRegistrar",
    "Runtime",
    "Sandbox",
    "SandboxMetadata",
    "SandboxState",
    "SandboxStatus",
    "Store",
    "aiter_chunks",
    "both",
    "container_name",
    "container_record",
    "in_k8s_namespace",
    "new_id",
    "now_ns",
    "runtime_for",
    "sandbox_name",
    "sandbox_record",
    "wait_stopped",
]
