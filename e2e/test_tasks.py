"""Tasks through the real daemon socket, with real runc, for the stock shim and ours.

Each test gets a daemon on a fresh base (:class:`e2e.task_support.TaskRig`) and
a busybox snapshot; it drives the Tasks service with the generated gRPC
stubs. Every test is run against Debian's containerd-shim-runc-v2 (1.6,
legacy start protocol, task API v2) and against containerd-shim-wharf-v2
(bootstrap protocol, task API v3).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from e2e.task_support import (
    OUR_SHIM_SOURCE,
    OURS,
    RUNC,
    STOCK,
    STOCK_SHIM,
    Stdio,
    TaskRig,
    leftovers,
    shim_pids,
    started_rig,
)
from wharfd.api.events import task_pb2 as ev
from wharfd.api.services.events.v1 import events_pb2, events_pb2_grpc
from wharfd.api.services.tasks.v1 import tasks_pb2 as tpb
from wharfd.api.types.cgroups.v1 import metrics_pb2 as v1metrics
from wharfd.api.types.runc.options import oci_pb2
from wharfd.api.types.task import task_pb2
from wharfd.runtime.oci import linux, process
from wharfd.runtime.oci import spec as ocispec

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="tasks need root (mounts, runc)"),
    pytest.mark.skipif(RUNC is None, reason="runc is not installed"),
    pytest.mark.skipif(not Path("/bin/busybox").exists(), reason="/bin/busybox (busybox-static) is missing"),
    pytest.mark.timeout(180),
]


def _shims() -> list[Any]:
    stock = pytest.param(
        STOCK,
        id="stock",
        marks=pytest.mark.skipif(not STOCK_SHIM.exists(), reason=f"{STOCK_SHIM} is not installed"),
    )
    ours = pytest.param(
        OURS,
        id="wharf",
        marks=pytest.mark.skipif(not OUR_SHIM_SOURCE.exists(), reason="runtime/shim/main.py is missing"),
    )
    return [stock, ours]


@pytest.fixture(params=_shims())
def runtime(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# Known gaps of containerd-shim-wharf-v2 (runtime/shim), found by these tests; drop an entry once fixed.
OUR_SHIM_GAPS: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _our_shim_gaps(request: pytest.FixtureRequest) -> None:
    callspec = getattr(request.node, "callspec", None)
    reason = OUR_SHIM_GAPS.get(request.node.originalname)
    if reason and callspec is not None and callspec.params.get("runtime") == OURS:
        request.applymarker(pytest.mark.xfail(reason=reason, strict=False))


@pytest.fixture
def rig() -> Iterator[TaskRig]:
    with started_rig() as r:
        yield r


class Events:
    """Events.Subscribe in a thread; :meth:`wait_for` a topic."""

    def __init__(self, rig: TaskRig) -> None:
        stub = events_pb2_grpc.EventsStub(grpc.insecure_channel(f"unix://{rig.daemon.address}"))
        self.call = stub.Subscribe(events_pb2.SubscribeRequest(filters=[f'namespace=="{rig.ns}"']))
        self.seen: list[Any] = []
        threading.Thread(target=self._read, daemon=True).start()
        time.sleep(0.2)  # let the subscription reach the exchange

    def _read(self) -> None:
        try:
            for envelope in self.call:
                self.seen.append(envelope)
        except grpc.RpcError:
            pass

    def wait_for(self, topic: str, timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for envelope in self.seen:
                if envelope.topic == topic:
                    return envelope
            time.sleep(0.05)
        raise AssertionError(f"no {topic} event; saw {[e.topic for e in self.seen]}")

    def close(self) -> None:
        self.call.cancel()


def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def start_sleeper(rig: TaskRig, cid: str, runtime: str, **kw: Any) -> Any:
    rig.create_container(cid, ["sleep", "1000"], runtime=runtime, **kw)
    rig.create_task(cid)
    rig.tasks.Start(tpb.StartRequest(container_id=cid))
    return rig.tasks.Get(tpb.GetRequest(container_id=cid)).process


def kill_and_delete(rig: TaskRig, cid: str) -> int:
    rig.tasks.Kill(tpb.KillRequest(container_id=cid, signal=signal.SIGKILL, all=True))
    status = rig.tasks.Wait(tpb.WaitRequest(container_id=cid)).exit_status
    rig.tasks.Delete(tpb.DeleteTaskRequest(container_id=cid))
    return int(status)


# --- lifecycle -----------------------------------------------------------------------------------


def test_echo_through_fifos(rig: TaskRig, runtime: str) -> None:
    events = Events(rig)
    try:
        assert rig.run("echo", ["echo", "hi"], runtime=runtime) == (0, b"hi\n", b"")
        for topic in ("/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"):
            events.wait_for(topic)
    finally:
        events.close()
    bundle = rig.daemon.state / "io.containerd.runtime.v2.task" / rig.ns / "echo"
    assert not bundle.exists()
    with pytest.raises(grpc.RpcError) as err:
        rig.tasks.Get(tpb.GetRequest(container_id="echo"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_exit_codes(rig: TaskRig, runtime: str) -> None:
    assert rig.run("three", ["sh", "-c", "echo out; echo err >&2; exit 3"], runtime=runtime) == (
        3,
        b"out\n",
        b"err\n",
    )
    assert rig.run("false", ["false"], runtime=runtime)[0] == 1


def test_kill_signals_and_state_errors(rig: TaskRig, runtime: str) -> None:
    proc = start_sleeper(rig, "sleeper", runtime)
    assert proc.status == task_pb2.RUNNING and proc.pid > 0
    listed = rig.tasks.List(tpb.ListTasksRequest()).tasks
    assert [(t.id, t.status) for t in listed] == [("sleeper", task_pb2.RUNNING)]
    with pytest.raises(grpc.RpcError) as err:
        rig.tasks.Delete(tpb.DeleteTaskRequest(container_id="sleeper"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as err:
        rig.create_task("sleeper")
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    rig.tasks.Kill(tpb.KillRequest(container_id="sleeper", signal=signal.SIGKILL))
    assert rig.tasks.Wait(tpb.WaitRequest(container_id="sleeper")).exit_status == 128 + signal.SIGKILL
    got = rig.tasks.Get(tpb.GetRequest(container_id="sleeper")).process
    assert (got.status, got.exit_status) == (task_pb2.STOPPED, 137)
    deleted = rig.tasks.Delete(tpb.DeleteTaskRequest(container_id="sleeper"))
    assert (deleted.id, deleted.exit_status, deleted.pid) == ("sleeper", 137, proc.pid)
    with pytest.raises(grpc.RpcError) as err:
        rig.tasks.Kill(tpb.KillRequest(container_id="sleeper", signal=signal.SIGKILL))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # PID 1 ignores signals it has no handler for: a trap makes SIGTERM count.
    rig.create_container(
        "trapper", ["sh", "-c", "trap 'exit 42' TERM; while :; do sleep 0.1; done"], runtime=runtime
    )
    rig.create_task("trapper")
    rig.tasks.Start(tpb.StartRequest(container_id="trapper"))
    time.sleep(0.3)  # the trap is set once sh runs
    rig.tasks.Kill(tpb.KillRequest(container_id="trapper", signal=signal.SIGTERM))
    assert rig.tasks.Wait(tpb.WaitRequest(container_id="trapper")).exit_status == 42
    rig.tasks.Delete(tpb.DeleteTaskRequest(container_id="trapper"))


def test_exec_and_list_pids(rig: TaskRig, runtime: str) -> None:
    start_sleeper(rig, "host", runtime)
    spec = ocispec.generate(
        rig.ns, "host", process.with_process_args("sleep", "30"), process.with_env(["PATH=/bin"])
    )
    sleeper = dict(spec["process"])
    any_spec = {"type_url": ocispec.PROCESS_TYPE_URL, "value": json.dumps(sleeper).encode()}
    rig.tasks.Exec(tpb.ExecProcessRequest(container_id="host", exec_id="nap", spec=any_spec))
    nap = rig.tasks.Start(tpb.StartRequest(container_id="host", exec_id="nap")).pid
    pids = rig.tasks.ListPids(tpb.ListPidsRequest(container_id="host")).processes
    assert nap in [p.pid for p in pids] and len(pids) >= 2
    details = [oci_pb2.ProcessDetails.FromString(p.info.value).exec_id for p in pids if p.pid == nap]
    assert details == ["nap"]
    # Other processes carry no info at all: a stock ctr unpacks any info that is present.
    assert all(not p.HasField("info") for p in pids if p.pid != nap)
    echo = dict(sleeper, args=["sh", "-c", "echo from-exec; exit 5"])
    io = Stdio(rig.base / "fifo", "echo", stdin=False)
    with io.reading():
        rig.tasks.Exec(
            tpb.ExecProcessRequest(
                container_id="host",
                exec_id="echo",
                stdout=io.stdout,
                stderr=io.stderr,
                spec={"type_url": ocispec.PROCESS_TYPE_URL, "value": json.dumps(echo).encode()},
            )
        )
        waiter = rig.tasks.Wait.future(tpb.WaitRequest(container_id="host", exec_id="echo"))
        rig.tasks.Start(tpb.StartRequest(container_id="host", exec_id="echo"))
        assert waiter.result().exit_status == 5
    assert io.out == b"from-exec\n"
    assert (
        rig.tasks.DeleteProcess(tpb.DeleteProcessRequest(container_id="host", exec_id="echo")).exit_status
        == 5
    )
    assert kill_and_delete(rig, "host") == 137


def test_tty_resize(rig: TaskRig, runtime: str) -> None:
    rig.create_container("tty", ["sh", "-c", "read x; stty size"], runtime=runtime, opts=[process.with_tty()])
    io = Stdio(rig.base / "fifo", "tty", terminal=True)
    with io.reading():
        rig.create_task("tty", stdio=io, terminal=True)
        rig.tasks.Start(tpb.StartRequest(container_id="tty"))
        rig.tasks.ResizePty(tpb.ResizePtyRequest(container_id="tty", width=123, height=45))
        with open(io.stdin, "wb") as stdin:
            stdin.write(b"\n")
        assert rig.tasks.Wait(tpb.WaitRequest(container_id="tty")).exit_status == 0
    assert b"45 123" in io.out
    rig.tasks.Delete(tpb.DeleteTaskRequest(container_id="tty"))


def test_pause_resume_metrics(rig: TaskRig, runtime: str) -> None:
    events = Events(rig)
    try:
        start_sleeper(rig, "pausable", runtime)
        rig.tasks.Pause(tpb.PauseTaskRequest(container_id="pausable"))
        assert rig.tasks.Get(tpb.GetRequest(container_id="pausable")).process.status == task_pb2.PAUSED
        events.wait_for("/tasks/paused")
        rig.tasks.Resume(tpb.ResumeTaskRequest(container_id="pausable"))
        assert rig.tasks.Get(tpb.GetRequest(container_id="pausable")).process.status == task_pb2.RUNNING
        events.wait_for("/tasks/resumed")
    finally:
        events.close()
    metrics = rig.tasks.Metrics(tpb.MetricsRequest(filters=["id==pausable"])).metrics
    assert [m.id for m in metrics] == ["pausable"]
    assert metrics[0].data.type_url.endswith("io.containerd.cgroups.v1.Metrics")
    data = v1metrics.Metrics.FromString(metrics[0].data.value)
    assert data.pids.current >= 1 and data.memory.usage.usage > 0
    assert rig.tasks.Metrics(tpb.MetricsRequest(filters=["id==other"])).metrics == []
    assert kill_and_delete(rig, "pausable") == 137


def test_memory_limit_oom(rig: TaskRig, runtime: str) -> None:
    events = Events(rig)
    try:
        limit = linux.with_memory_limit(16 << 20)
        args = ["dd", "if=/dev/zero", "of=/dev/null", "bs=128M", "count=1"]
        if runtime == STOCK:
            # The 1.6 stock shim starts watching for OOM only after Start has answered: an init
            # killed at once races it (and the event is lost). Ours watches from Create on.
            args = ["sh", "-c", "sleep 0.5; exec " + " ".join(args)]
        rig.create_container("oom", args, runtime=runtime, opts=[limit])
        rig.create_task("oom")
        rig.tasks.Start(tpb.StartRequest(container_id="oom"))
        assert rig.tasks.Wait(tpb.WaitRequest(container_id="oom")).exit_status == 137
        oom = events.wait_for("/tasks/oom")
        assert ev.TaskOOM.FromString(oom.event.value).container_id == "oom"
    finally:
        events.close()
    rig.tasks.Delete(tpb.DeleteTaskRequest(container_id="oom"))


def test_fifty_concurrent(rig: TaskRig, runtime: str) -> None:
    ids = [f"c{i:02d}" for i in range(50)]

    def one(cid: str) -> tuple[int, bytes]:
        status, out, _ = rig.run(cid, ["sh", "-c", f"echo {cid}"], runtime=runtime)
        return status, out

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(one, ids))
    assert results == [(0, f"{cid}\n".encode()) for cid in ids]
    assert rig.tasks.List(tpb.ListTasksRequest()).tasks == []


# --- failures and recovery -----------------------------------------------------------------------


def test_daemon_sigkill_recovery(rig: TaskRig, runtime: str) -> None:
    start_sleeper(rig, "stays", runtime)
    rig.create_container("quits", ["sh", "-c", "sleep 1; exit 7"], runtime=runtime)
    rig.create_task("quits")
    rig.tasks.Start(tpb.StartRequest(container_id="quits"))
    rig.crash()
    time.sleep(2.5)  # "quits" exits while no daemon is there
    rig.restart()
    states = {t.id: (t.status, t.exit_status) for t in rig.tasks.List(tpb.ListTasksRequest()).tasks}
    assert states == {"stays": (task_pb2.RUNNING, 0), "quits": (task_pb2.STOPPED, 7)}
    assert rig.tasks.Wait(tpb.WaitRequest(container_id="quits")).exit_status == 7
    assert rig.tasks.Delete(tpb.DeleteTaskRequest(container_id="quits")).exit_status == 7
    assert kill_and_delete(rig, "stays") == 137


def test_shim_sigkill(rig: TaskRig, runtime: str) -> None:
    events = Events(rig)
    try:
        proc = start_sleeper(rig, "victim", runtime)
        shim_pid = int(Path(f"/proc/{proc.pid}/stat").read_text().rpartition(")")[2].split()[1])
        assert shim_pid in shim_pids(str(rig.daemon.address), rig.daemon.state / "s")
        waiter = rig.tasks.Wait.future(tpb.WaitRequest(container_id="victim"))
        os.kill(shim_pid, signal.SIGKILL)
        assert waiter.result().exit_status == 137
        exit_event = ev.TaskExit.FromString(events.wait_for("/tasks/exit").event.value)
        assert (exit_event.container_id, exit_event.exit_status) == ("victim", 137)
    finally:
        events.close()
    got = rig.tasks.Get(tpb.GetRequest(container_id="victim")).process
    assert (got.status, got.exit_status) == (task_pb2.STOPPED, 137)
    bundle = rig.daemon.state / "io.containerd.runtime.v2.task" / rig.ns / "victim"
    until(lambda: not bundle.exists())
    assert not leftovers(rig.base, rig.ns)
    assert (
        not Path(f"/proc/{proc.pid}").exists() or "Z" in Path(f"/proc/{proc.pid}/stat").read_text().split()[2]
    )
    assert rig.tasks.Delete(tpb.DeleteTaskRequest(container_id="victim")).exit_status == 137


def test_runc_binary_missing(rig: TaskRig, runtime: str) -> None:
    rig.create_container(
        "nobin", ["true"], runtime=runtime, options=rig.options(binary_name="/nonexistent/runc")
    )
    with pytest.raises(grpc.RpcError) as err:
        rig.create_task("nobin")
    assert "/nonexistent/runc" in (err.value.details() or "")
    assert rig.tasks.List(tpb.ListTasksRequest()).tasks == []
    bundle = rig.daemon.state / "io.containerd.runtime.v2.task" / rig.ns / "nobin"
    assert not bundle.exists()
    # The shim started for it was told to shut down: none is left serving this daemon.
    until(lambda: not shim_pids(str(rig.daemon.address), rig.daemon.state / "s"))


def test_unknown_runtime(rig: TaskRig) -> None:
    rig.create_container("noshim", ["true"], runtime="io.containerd.nosuch.v1")
    with pytest.raises(grpc.RpcError) as err:
        rig.create_task("noshim")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "containerd-shim-nosuch-v1" in (err.value.details() or "")


def test_pod_grouping(rig: TaskRig, runtime: str) -> None:
    sandbox = start_sleeper(rig, "sandbox", runtime)
    member = start_sleeper(rig, "member", runtime, annotations={"io.kubernetes.cri.sandbox-id": "sandbox"})

    def parent(pid: int) -> int:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])

    assert parent(sandbox.pid) == parent(member.pid)
    state = rig.daemon.state / "io.containerd.runtime.v2.task" / rig.ns
    boot = [
        json.loads((state / cid / "bootstrap.json").read_text())["address"] for cid in ("sandbox", "member")
    ]
    assert boot[0] == boot[1]
    # A v3 shim of a known sandbox is joined directly, without running start again.
    assert (state / "member" / "sandbox").exists() == (runtime == OURS)
    assert kill_and_delete(rig, "member") == 137
    assert rig.tasks.Get(tpb.GetRequest(container_id="sandbox")).process.status == task_pb2.RUNNING
    assert kill_and_delete(rig, "sandbox") == 137
