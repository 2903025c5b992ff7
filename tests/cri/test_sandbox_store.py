"""The CRI store: name reservation, id-prefix lookup, persistence and recovery on a real SQLite database."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from google.protobuf import timestamp_pb2

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.api.events import task_pb2 as events_pb2
from wharfd.api.types.task import task_pb2
from wharfd.cri import store
from wharfd.cri.recovery import ExitMonitor, recover
from wharfd.cri.store import (
    ContainerMetadata,
    ContainerStatus,
    CriState,
    NameRegistrar,
    SandboxMetadata,
    SandboxState,
    SandboxStatus,
    Store,
)
from wharfd.runtime import errors, namespaces
from wharfd.runtime.events import Exchange
from wharfd.runtime.metadata.containers import ContainerStore
from wharfd.runtime.metadata.db import Database
from wharfd.runtime.oci import spec as ocispec

T = TypeVar("T")


class FakeTask:
    """A task as the task manager hands it out: an id, a pid and a state."""

    def __init__(self, id: str, status: int, pid: int = 42, exit_status: int = 0) -> None:
        self.id, self.pid = id, pid
        self.status, self.exit_status = status, exit_status

    async def state(self) -> task_pb2.Process:
        return task_pb2.Process(id=self.id, pid=self.pid, status=self.status, exit_status=self.exit_status)  # type: ignore[arg-type]


class FakeTasks:
    """The task manager's lookup and delete, over a dict (the real one needs shims)."""

    def __init__(self, tasks: dict[str, FakeTask] | None = None) -> None:
        self.tasks = dict(tasks or {})
        self.deleted: list[str] = []

    def get(self, id: str, namespace: str | None = None) -> FakeTask:
        if id not in self.tasks:
            raise errors.NotFound(f"task {id} not found")
        return self.tasks[id]

    async def delete(self, id: str, namespace: str | None = None) -> None:
        self.get(id)
        del self.tasks[id]
        self.deleted.append(id)


def run(tmp: Path, fn: Callable[[Database], Awaitable[T]]) -> T:
    async def main() -> T:
        async with await Database.open(tmp / "metadata.db") as db:
            return await fn(db)

    return asyncio.run(main())


def make_state(tmp: Path, db: Database, tasks: FakeTasks | None = None) -> CriState:
    return CriState(
        config={},
        root=tmp / "root",
        state_dir=tmp / "state",
        meta=ContainerStore(db),
        tasks=tasks or FakeTasks(),
        snapshotters={},
        exchange=Exchange(),
    )


def pod_config(name: str = "web") -> cri.PodSandboxConfig:
    return cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name=name, uid="u1", namespace="ns", attempt=1),
        labels={"io.kubernetes.pod.uid": "u1"},
        annotations={"a": "b"},
    )


def sandbox_meta(id: str, name: str = "web") -> SandboxMetadata:
    config = pod_config(name)
    return SandboxMetadata(
        id=id,
        name=store.sandbox_name(config.metadata),
        config=config,
        runtime_handler="runc",
        runtime_type="io.containerd.runc.v2",
        netns_path="/var/run/netns/cni-x",
        ip="10.1.2.3",
        additional_ips=("fd00::3",),
        cni_result={"Interfaces": {"eth0": {}}},
        image="sha256:" + "a" * 64,
        snapshotter="overlayfs",
    )


SPEC = ocispec.to_any({"ociVersion": "1.1.0"})


# --- names and ids --------------------------------------------------------------------------


def test_name_reservation_names_the_holder() -> None:
    names = NameRegistrar("sandbox name")
    names.reserve("web_ns_u1_0", "id-1")
    names.reserve("web_ns_u1_0", "id-1")  # the same key again is fine
    with pytest.raises(errors.AlreadyExists, match='"web_ns_u1_0" is reserved for "id-1"'):
        names.reserve("web_ns_u1_0", "id-2")
    names.release("web_ns_u1_0")
    names.reserve("web_ns_u1_0", "id-2")
    names.release_key("id-2")
    assert names.holder("web_ns_u1_0") is None


def test_one_name_per_key() -> None:
    names = NameRegistrar()
    names.reserve("a", "k")
    with pytest.raises(errors.AlreadyExists):
        names.reserve("b", "k")


def test_name_formats() -> None:
    pod = cri.PodSandboxMetadata(name="web", uid="u", namespace="ns", attempt=2)
    assert store.sandbox_name(pod) == "web_ns_u_2"
    assert store.container_name(cri.ContainerMetadata(name="c", attempt=3), pod) == "c_web_ns_u_3"
    assert len(store.new_id()) == 64


class Item:
    def __init__(self, id: str) -> None:
        self.id = id


def test_store_prefix_lookup() -> None:
    items: Store[Item] = Store("sandbox")
    for id in ("abc123", "abd456", "x"):
        items.add(Item(id))
    assert items.get("abc").id == "abc123"
    assert items.get("x").id == "x"
    with pytest.raises(errors.InvalidArgument, match="ambiguous"):
        items.get("ab")
    with pytest.raises(errors.NotFound, match='sandbox "zz"'):
        items.get("zz")
    with pytest.raises(errors.AlreadyExists):
        items.add(Item("x"))
    assert items.find("ab") is None
    items.delete("abc123")
    assert "abc123" not in items and len(items) == 2


# --- persistence ------------------------------------------------------------------------------


def test_metadata_round_trip() -> None:
    meta = sandbox_meta("s1")
    back = SandboxMetadata.from_any(meta.to_any())
    assert back.config == meta.config
    assert (back.id, back.ip, back.additional_ips, back.cni_result) == (
        "s1", "10.1.2.3", ("fd00::3",), {"Interfaces": {"eth0": {}}},
    )  # fmt: skip
    cmeta = ContainerMetadata(
        id="c1",
        name="c",
        sandbox_id="s1",
        config=cri.ContainerConfig(metadata=cri.ContainerMetadata(name="c")),
    )
    assert ContainerMetadata.from_any(cmeta.to_any()).config.metadata.name == "c"


def test_corrupt_metadata_is_data_loss() -> None:
    value = sandbox_meta("s1").to_any()
    value.value = b"{not json"
    with pytest.raises(errors.DataLoss):
        SandboxMetadata.from_any(value)
    value.value = json.dumps({"version": "v9", "metadata": {}}).encode()
    with pytest.raises(errors.DataLoss, match="v9"):
        SandboxMetadata.from_any(value)


def test_status_file_round_trip(tmp_path: Path) -> None:
    async def scenario(db: Database) -> None:
        state = make_state(tmp_path, db)
        sandbox = state.new_sandbox(sandbox_meta("s1"), SandboxStatus(state="ready", pid=7, created_at=5))
        await sandbox.update(netns_closed=True)
        path = state.sandbox_root("s1") / store.STATUS_FILE
        loaded = SandboxStatus.from_json(path.read_bytes())
        assert (loaded.state, loaded.pid, loaded.created_at, loaded.netns_closed) == ("ready", 7, 5, True)
        with pytest.raises(errors.DataLoss):
            SandboxStatus.from_json(b'{"version": "v2", "status": {}}')

    run(tmp_path, scenario)


def test_container_state_derivation() -> None:
    assert ContainerStatus(created_at=1).state() == cri.CONTAINER_CREATED
    assert ContainerStatus(created_at=1, started_at=2).state() == cri.CONTAINER_RUNNING
    assert ContainerStatus(created_at=1, started_at=2, finished_at=3).state() == cri.CONTAINER_EXITED
    assert ContainerStatus(created_at=1, unknown=True).state() == cri.CONTAINER_UNKNOWN


async def _persist_pod(state: CriState, id: str, name: str, status: SandboxStatus) -> None:
    meta = sandbox_meta(id, name)
    namespaces.current.set(namespaces.K8S)
    await state.meta.create(
        store.sandbox_record(
            meta,
            spec=SPEC,
            runtime="io.containerd.runc.v2",
            options=None,
            snapshot_key=id,
            labels={"app": "x"},
        )
    )
    await state.new_sandbox(meta, status).update()


def test_recover_sandboxes_against_tasks(tmp_path: Path) -> None:
    """A running pause task keeps its pod READY; a dead one (or none) makes it NOTREADY, task deleted."""

    async def scenario(db: Database) -> None:
        first = make_state(tmp_path, db)
        ready = SandboxStatus(state="ready", pid=7, created_at=5)
        await _persist_pod(first, "alive", "a", ready)
        await _persist_pod(first, "exited", "b", ready)
        await _persist_pod(first, "gone", "c", ready)
        await _persist_pod(first, "stopped", "d", SandboxStatus(state="notready", created_at=5, exited_at=9))
        tasks = FakeTasks(
            {
                "alive": FakeTask("alive", task_pb2.RUNNING, pid=11),
                "exited": FakeTask("exited", task_pb2.STOPPED, exit_status=137),
            }
        )
        second = make_state(tmp_path, db, tasks)
        await recover(second)
        by_id = {s.id: s for s in second.sandboxes.list()}
        assert by_id["alive"].status.sandbox_state is SandboxState.READY and by_id["alive"].status.pid == 11
        assert by_id["exited"].status.sandbox_state is SandboxState.NOTREADY
        assert by_id["exited"].status.exit_status == 137
        assert by_id["gone"].status.exit_status == store.UNKNOWN_EXIT_CODE
        assert by_id["stopped"].status.exited_at == 9
        assert tasks.deleted == ["exited"]
        assert by_id["alive"].metadata.ip == "10.1.2.3"
        assert second.sandbox_names.holder("a_ns_u1_1") == "alive"
        assert by_id["exited"].stopped.is_set() and not by_id["alive"].stopped.is_set()

    run(tmp_path, scenario)


def test_recover_containers(tmp_path: Path) -> None:
    async def scenario(db: Database) -> None:
        first = make_state(tmp_path, db)
        namespaces.current.set(namespaces.K8S)
        config = cri.ContainerConfig(metadata=cri.ContainerMetadata(name="c"))
        for cid, status in (
            ("running", ContainerStatus(created_at=1, started_at=2, pid=5)),
            ("lost", ContainerStatus(created_at=1, started_at=2, pid=6)),
            ("created", ContainerStatus(created_at=1)),
        ):
            meta = ContainerMetadata(id=cid, name=f"{cid}_web_ns_u1_0", sandbox_id="s1", config=config)
            await first.meta.create(
                store.container_record(meta, spec=SPEC, runtime="r", options=None, labels={})
            )
            await first.new_container(meta, status).update()
        tasks = FakeTasks({"running": FakeTask("running", task_pb2.RUNNING, pid=5)})
        second = make_state(tmp_path, db, tasks)
        await recover(second)
        by_id = {c.id: c for c in second.containers.list()}
        assert by_id["running"].status.state() == cri.CONTAINER_RUNNING
        lost = by_id["lost"].status
        assert (lost.state(), lost.exit_code, lost.reason) == (cri.CONTAINER_EXITED, 255, "Unknown")
        assert by_id["created"].status.state() == cri.CONTAINER_CREATED
        assert sorted(c.id for c in second.containers_of("s1")) == ["created", "lost", "running"]

    run(tmp_path, scenario)


def test_recovery_skips_corrupt_records(tmp_path: Path) -> None:
    async def scenario(db: Database) -> None:
        state = make_state(tmp_path, db)
        namespaces.current.set(namespaces.K8S)
        meta = sandbox_meta("bad")
        record = store.sandbox_record(meta, spec=SPEC, runtime="r", options=None, snapshot_key="", labels={})
        record.extensions[store.SANDBOX_METADATA_EXT].value = b"garbage"
        await state.meta.create(record)
        await recover(state)
        assert len(state.sandboxes) == 0

    run(tmp_path, scenario)


# --- exits ------------------------------------------------------------------------------------


def test_exit_monitor_marks_pods_and_containers(tmp_path: Path) -> None:
    async def scenario(db: Database) -> None:
        tasks = FakeTasks({"s1": FakeTask("s1", task_pb2.RUNNING), "c1": FakeTask("c1", task_pb2.RUNNING)})
        state = make_state(tmp_path, db, tasks)
        sandbox = state.new_sandbox(sandbox_meta("s1"), SandboxStatus(state="ready", pid=3, created_at=1))
        state.sandboxes.add(sandbox)
        cmeta = ContainerMetadata(id="c1", name="c", sandbox_id="s1", config=cri.ContainerConfig())
        container = state.new_container(cmeta, ContainerStatus(created_at=1, started_at=2, pid=4))
        state.containers.add(container)
        monitor = ExitMonitor(state)
        monitor.start()
        await monitor.subscribed.wait()
        at = timestamp_pb2.Timestamp(seconds=100)
        await state.exchange.publish("/tasks/oom", events_pb2.TaskOOM(container_id="c1"), namespace="k8s.io")
        for tid, code in (("c1", 137), ("s1", 0)):
            event = events_pb2.TaskExit(container_id=tid, id=tid, exit_status=code, exited_at=at)
            await state.exchange.publish("/tasks/exit", event, namespace="k8s.io")
        await asyncio.wait_for(sandbox.stopped.wait(), 5)
        await asyncio.wait_for(container.exited.wait(), 5)
        await monitor.close()
        assert sandbox.status.sandbox_state is SandboxState.NOTREADY
        assert sandbox.status.exited_at == 100 * 10**9
        assert (container.status.exit_code, container.status.reason) == (137, "OOMKilled")
        assert sorted(tasks.deleted) == ["c1", "s1"]
        on_disk = ContainerStatus.from_json(container.status_path.read_bytes())
        assert on_disk.finished_at == 100 * 10**9

    run(tmp_path, scenario)


# --- runtime handlers -------------------------------------------------------------------------


def test_runtime_for() -> None:
    config: dict[str, Any] = {
        "containerd": {
            "default_runtime_name": "runc",
            "runtimes": {
                "runc": {
                    "runtime_type": "io.containerd.runc.v2",
                    "options": {"SystemdCgroup": True, "Root": "/r"},
                },
                "kata": {"runtime_type": "io.containerd.kata.v2", "runtime_path": "/bin/kata"},
            },
        }
    }
    runc = store.runtime_for(config, "")
    assert (runc.handler, runc.type, runc.systemd_cgroup) == ("runc", "io.containerd.runc.v2", True)
    assert runc.options is not None and runc.options.type_url == "containerd.runc.v1.Options"
    kata = store.runtime_for(config, "kata")
    assert (kata.path, kata.options) == ("/bin/kata", None)
    with pytest.raises(errors.NotFound, match='runtime_handler "nope"'):
        store.runtime_for(config, "nope")


def test_exit_monitor_replays_exits_missed_while_down(tmp_path: Path) -> None:
    """A container whose task stopped before the monitor subscribed gets its exit applied at start."""

    async def scenario(db: Database) -> None:
        tasks = FakeTasks({"c1": FakeTask("c1", task_pb2.STOPPED, exit_status=3)})
        state = make_state(tmp_path, db, tasks)
        cmeta = ContainerMetadata(id="c1", name="c", sandbox_id="s1", config=cri.ContainerConfig())
        container = state.new_container(cmeta, ContainerStatus(created_at=1, started_at=2, pid=4))
        state.containers.add(container)
        monitor = ExitMonitor(state)
        monitor.start()
        await asyncio.wait_for(container.exited.wait(), 5)
        await monitor.close()
        assert container.status.exit_code == 3 and tasks.deleted == ["c1"]

    run(tmp_path, scenario)
