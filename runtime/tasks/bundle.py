"""The task bundle: the directory that holds one task's state, so a restarted daemon can find it.

Layout, as containerd's runtime v2 lays it out (the shim relies on it)::

    <state>/io.containerd.runtime.v2.task/<namespace>/<id>/
    ├── config.json         the container's OCI spec
    ├── rootfs/             the shim mounts the task's rootfs here
    ├── work -> <root>/io.containerd.runtime.v2.task/<namespace>/<id>   persistent scratch for the shim
    ├── log                 FIFO: the shim writes its log, the daemon reads it
    ├── shim-binary-path    the shim binary, for ``delete`` once the shim is gone
    ├── bootstrap.json      {"version", "address", "protocol"}: how to reach the shim
    ├── sandbox             (grouped tasks on a v3 shim) the sandbox whose shim serves this task
    └── address, init.pid, options.json, ...   written by the shim itself

Everything the daemon needs after a restart is here; nothing about tasks is
kept in the metadata database. Methods touch the filesystem and block: the
manager calls them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from wharfd.runtime import errors, mount, namespaces

BOOTSTRAP_FILE = "bootstrap.json"
SHIM_BINARY_FILE = "shim-binary-path"
SANDBOX_FILE = "sandbox"
LOG_FIFO = "log"
LEGACY_ADDRESS_FILE = "address"


@dataclass(frozen=True)
class ShimAddress:
    """Where a shim listens and which Task API it speaks (containerd's BootstrapResult)."""

    address: str
    version: int = 2
    protocol: str = "ttrpc"

    def to_json(self) -> str:
        """The ``bootstrap.json`` text."""
        return json.dumps({"version": self.version, "address": self.address, "protocol": self.protocol})

    @classmethod
    def from_json(cls, text: str, *, where: str = BOOTSTRAP_FILE) -> ShimAddress:
        """Parse ``bootstrap.json``; DataLoss naming the file when it is not what we wrote."""
        try:
            raw = json.loads(text)
            address = raw["address"]
            version = int(raw.get("version") or 2)
            protocol = raw.get("protocol") or "ttrpc"
        except (ValueError, KeyError, TypeError) as exc:
            raise errors.DataLoss(f"{where}: not a bootstrap result: {exc}") from exc
        if not isinstance(address, str) or not address:
            raise errors.DataLoss(f"{where}: address is empty")
        return cls(address=address, version=version, protocol=str(protocol))


@dataclass(frozen=True)
class Bundle:
    """One task's bundle directory (``path``) and its persistent work directory (``work``)."""

    namespace: str
    id: str
    path: Path
    work: Path

    @classmethod
    def at(cls, state: Path, root: Path, namespace: str, task_id: str) -> Bundle:
        """The bundle of ``namespace``/``task_id`` (whether or not it exists)."""
        namespaces.validate_identifier(namespace, what="namespace")
        namespaces.validate_identifier(task_id, what="task id")
        return cls(namespace, task_id, state / namespace / task_id, root / namespace / task_id)

    def create(self, spec_json: bytes, files: dict[str, str] | None = None) -> None:
        """Make the bundle: config.json, rootfs/, the work dir and its link, the log FIFO, and the
        daemon's ``files`` (name → text). AlreadyExists if present."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
        try:
            self.path.mkdir(mode=0o711)
        except FileExistsError:
            raise errors.AlreadyExists(f"task {self.id}: bundle {self.path} already exists") from None
        try:
            (self.path / "rootfs").mkdir(mode=0o711)
            self.work.mkdir(parents=True, exist_ok=True, mode=0o711)
            (self.path / "work").symlink_to(self.work)
            tmp = self.path / "config.json.tmp"
            tmp.write_bytes(spec_json)
            tmp.rename(self.path / "config.json")
            os.mkfifo(self.path / LOG_FIFO, 0o600)
            for name, text in (files or {}).items():
                self.write_file(name, text)
        except BaseException:
            self.remove()
            raise

    def exists(self) -> bool:
        """Whether the bundle directory is there."""
        return self.path.is_dir()

    def write_file(self, name: str, text: str) -> None:
        """Write one of the daemon's bundle files atomically."""
        tmp = self.path / f".{name}.tmp"
        tmp.write_text(text)
        tmp.rename(self.path / name)

    def read_file(self, name: str) -> str | None:
        """A bundle file's text, or None when it is missing."""
        try:
            return (self.path / name).read_text()
        except FileNotFoundError:
            return None

    def write_bootstrap(self, address: ShimAddress) -> None:
        """Record how to reach the shim (``bootstrap.json``)."""
        self.write_file(BOOTSTRAP_FILE, address.to_json())

    def read_bootstrap(self) -> ShimAddress | None:
        """How to reach the shim: ``bootstrap.json``, else a legacy ``address`` file; None if neither."""
        text = self.read_file(BOOTSTRAP_FILE)
        if text is not None:
            return ShimAddress.from_json(text, where=str(self.path / BOOTSTRAP_FILE))
        legacy = self.read_file(LEGACY_ADDRESS_FILE)
        if legacy and legacy.strip():
            return ShimAddress(address=legacy.strip(), version=2)
        return None

    @property
    def rootfs(self) -> Path:
        """Where the shim mounts the task's root filesystem."""
        return self.path / "rootfs"

    def remove(self) -> None:
        """Unmount the rootfs and delete the bundle and its work dir.

        Refuses (FailedPrecondition) while anything is still mounted inside:
        removing the tree then would delete the container's files from the
        snapshot underneath.
        """
        try:
            # An empty directory nothing is mounted on (the shim unmounted it) goes at once,
            # with no mount table read; anything else is unmounted first.
            os.rmdir(self.rootfs)
        except FileNotFoundError:
            pass
        except OSError:
            try:
                mount.unmount_all(self.rootfs)
            except OSError as exc:
                raise errors.FailedPrecondition(
                    f"task {self.id}: cannot unmount {self.rootfs}: {exc}; not removing the bundle"
                ) from exc
        shutil.rmtree(self.path, ignore_errors=True)
        shutil.rmtree(self.work, ignore_errors=True)
        for parent in (self.path.parent, self.work.parent):
            with contextlib.suppress(OSError):
                parent.rmdir()  # only when it was the namespace's last task


def annotations_of(spec_json: bytes) -> dict[str, str]:
    """The annotations of an OCI spec document ({} when it is not one)."""
    try:
        spec = json.loads(spec_json)
    except ValueError:
        return {}
    annotations = spec.get("annotations") if isinstance(spec, dict) else None
    if not isinstance(annotations, dict):
        return {}
    return {str(k): str(v) for k, v in annotations.items()}


def walk(state: Path, root: Path) -> Iterator[Bundle]:
    """Every bundle under ``state``, namespace by namespace (blocking)."""
    if not state.is_dir():
        return
    for ns_dir in sorted(state.iterdir()):
        if not ns_dir.is_dir() or ns_dir.name.startswith("."):
            continue
        for task_dir in sorted(ns_dir.iterdir()):
            if task_dir.is_dir() and not task_dir.name.startswith("."):
                try:
                    yield Bundle.at(state, root, ns_dir.name, task_dir.name)
                except errors.InvalidArgument:
                    continue  # not ours: never touch what we did not name
