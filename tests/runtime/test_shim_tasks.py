"""containerd-shim-wharf-v2 end to end: launched by ``start`` as a daemon would, driven over ttrpc.

Real runc, a busybox rootfs (overlay or read-only bind), cgroup v1 on this
host, events recorded by a ttrpc server standing in for the daemon. Each test
cleans up its shims, zygote, containers, mounts and cgroups (``wharfd-test-*``).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from google.protobuf import any_pb2, empty_pb2

from tests.runtime.test_shim_rig import (
    BUSYBOX,
    NAMESPACE,
    RUNC,
    SHIM,
    Rig,
    build_busybox,
    pid_alive,
    read_to_eof,
    read_until,
    unique,
    until,
)
from wharfd.api.events import task_pb2 as ev
from wharfd.api.runtime.task.v3 import shim_pb2 as api
from wharfd.api.types.cgroups.v1 import metrics_pb2
from wharfd.api.types.runc.options import oci_pb2
from wharfd.api.types.task import task_pb2
from wharfd.runtime import errors
from wharfd.runtime.ttrpc.client import TtrpcClient

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="runs containers with runc: needs root"),
    pytest.mark.skipif(RUNC is None, reason="runc is not installed"),
    pytest.mark.skipif(not BUSYBOX.exists(), reason="needs /bin/busybox (apt-get install busybox-static)"),
    pytest.mark.skipif(not SHIM.exists(), reason="containerd-shim-wharf-v2 is not installed in the venv"),
]

Body = Callable[[Rig], Awaitable[None]]
PROCESS_TYPE = "types.containerd.io/opencontainers/runtime-spec/1/Process"


@pytest.fixture(scope="module")
def busybox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_busybox(tmp_path_factory.mktemp("busybox") / "rootfs")


def run(busybox: Path, body: Body) -> None:
    async def main() -> None:
        async with Rig(busybox) as rig:
            await body(rig)

    asyncio.run(main())


async def create_started(
    rig: Rig, cid: str, args: list[str], memory_limit: int = 0
) -> tuple[TtrpcClient, Path]:
    """Bundle + start + Create + Start of a container printing nowhere; returns (client, bundle)."""
    bundle = rig.bundle(cid, args, memory_limit=memory_limit)
    client = await rig.connect(await rig.start(cid, bundle))
    request = api.CreateTaskRequest(id=cid, bundle=str(bundle), rootfs=[rig.overlay(bundle)])
    await rig.call(client, "Create", request, api.CreateTaskResponse)
    await rig.call(client, "Start", api.StartRequest(id=cid), api.StartResponse)
    return client, bundle


def test_echo_output_events_and_shutdown(busybox: Path) -> None:
    async def body(rig: Rig) -> None:
        cid = unique("echo")
        bundle = rig.bundle(cid, ["echo", "hi"])
        stdout, out_fd = rig.fifo(bundle, "stdout")
        client = await rig.connect(await rig.start(cid, bundle))
        request = api.CreateTaskRequest(
            id=cid, bundle=str(bundle), stdout=stdout, rootfs=[rig.overlay(bundle)]
        )
        created = await rig.call(client, "Create", request, api.CreateTaskResponse)
        assert created.pid > 0
        assert mounted(bundle / "rootfs")
        state = await rig.call(client, "State", api.StateRequest(id=cid), api.StateResponse)
        assert state.status == task_pb2.CREATED and state.pid == created.pid and state.stdout == stdout
        started = await rig.call(client, "Start", api.StartRequest(id=cid), api.StartResponse)
        assert started.pid == created.pid
        waited = await rig.call(client, "Wait", api.WaitRequest(id=cid), api.WaitResponse)
        assert waited.exit_status == 0 and waited.exited_at.seconds > 0
        assert await read_to_eof(out_fd) == b"hi\n"
        state = await rig.call(client, "State", api.StateRequest(id=cid), api.StateResponse)
        assert state.status == task_pb2.STOPPED
        deleted = await rig.call(client, "Delete", api.DeleteRequest(id=cid), api.DeleteResponse)
        assert (deleted.pid, deleted.exit_status) == (created.pid, 0)
        assert not mounted(bundle / "rootfs")
        events = await rig.wait_events(4)
        assert rig.topics() == ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]
        assert all(namespace == NAMESPACE for _, namespace, _ in events)
        create, start, exit_, delete = (message for _, _, message in events)
        assert (
            isinstance(create, ev.TaskCreate) and create.pid == created.pid and create.bundle == str(bundle)
        )
        assert create.io.stdout == stdout and create.rootfs[0].type == "overlay"
        assert isinstance(start, ev.TaskStart) and start.pid == created.pid
        assert isinstance(exit_, ev.TaskExit) and (exit_.id, exit_.exit_status) == (cid, 0)
        assert isinstance(delete, ev.TaskDelete) and delete.pid == created.pid
        with pytest.raises(errors.NotFound, match=f"container {cid} not found"):
            await rig.call(client, "State", api.StateRequest(id=cid), api.StateResponse)
        shim_pid = next(iter(rig.shim_pids))
        await rig.call(client, "Shutdown", api.ShutdownRequest(id=cid), empty_pb2.Empty)
        await until(lambda: not pid_alive(shim_pid))

    run(busybox, body)


def test_start_through_the_exec_fifo_and_runc_from_the_sealed_copy(busybox: Path) -> None:
    async def body(rig: Rig) -> None:
        # A runc that logs its command lines: which calls ran it, and was `runc start` one?
        calls = rig.root / "runc-calls"
        wrapper = rig.root / "runc-wrapper"
        wrapper.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexec {RUNC} "$@"\n')
        wrapper.chmod(0o755)
        state_root = rig.runc_root / NAMESPACE
        for name, binary, poststart in (
            ("sealed", "", False),
            ("fifo", str(wrapper), False),
            ("hook", str(wrapper), True),
        ):
            cid = unique(name)
            bundle = rig.bundle(cid, ["sleep", "1000"])
            if poststart:  # newer runc runs these in `start`: it must be runc that starts
                spec = json.loads((bundle / "config.json").read_text())
                spec["hooks"] = {"poststart": [{"path": "/bin/true", "args": ["true"]}]}
                (bundle / "config.json").write_text(json.dumps(spec))
            client = await rig.connect(await rig.start(cid, bundle))
            opts = oci_pb2.Options(root=str(rig.runc_root), binary_name=binary)
            request = api.CreateTaskRequest(
                id=cid,
                bundle=str(bundle),
                rootfs=[rig.bind()],
                options=any_pb2.Any(type_url="containerd.runc.v1.Options", value=opts.SerializeToString()),
            )
            created = await rig.call(client, "Create", request, api.CreateTaskResponse)
            if not binary:
                # runc init waits on its FIFO: it runs from the zygote's sealed copy (no copy of its own).
                assert os.readlink(f"/proc/{created.pid}/exe").startswith("/memfd:runc")
            assert (state_root / cid / "exec.fifo").exists()
            await rig.call(client, "Start", api.StartRequest(id=cid), api.StartResponse)
            assert not (state_root / cid / "exec.fifo").exists()
            state = await asyncio.to_thread(
                subprocess.run,
                [str(RUNC), "--root", str(state_root), "state", cid],
                capture_output=True,
                check=True,
            )
            assert json.loads(state.stdout)["status"] == "running"
            assert os.readlink(f"/proc/{created.pid}/exe").endswith("/busybox")  # the user's program
            if binary:
                started_by_runc = any(
                    line.split()[-2:-1] == ["start"] for line in calls.read_text().splitlines()
                )
                assert started_by_runc == poststart
            await rig.call(client, "Kill", api.KillRequest(id=cid, signal=signal.SIGKILL), empty_pb2.Empty)
            waited = await rig.call(client, "Wait", api.WaitRequest(id=cid), api.WaitResponse)
            assert waited.exit_status == 137
            await rig.call(client, "Delete", api.DeleteRequest(id=cid), api.DeleteResponse)

    run(busybox, body)


def test_exit_codes_and_stderr(busybox: Path) -> None:
    async def body(rig: Rig) -> None:
        cid = unique("codes")
        bundle = rig.bundle(cid, ["sh", "-c", "echo to-err >&2; exit 7"])
        stderr, err_fd = rig.fifo(bundle, "stderr")
        client = await rig.connect(await rig.start(cid, bundle))
        request = api.CreateTaskRequest(id=cid, bundle=str(bundle), stderr=stderr, rootfs=[rig.bind()])
        await rig.call(client, "Create", request, api.CreateTaskResponse)
        await rig.call(client, "Start", api.StartRequest(id=cid), api.StartResponse)
        waited = await rig.call(client, "Wait", api.WaitRequest(id=cid), api.WaitResponse)
        assert waited.exit_status == 7
        assert await read_to_eof(err_fd) == b"to-err\n"
        deleted = await rig.call(client, "Delete", api.DeleteRequest(id=cid), api.DeleteResponse)
        assert deleted.exit_status == 7

    run(busybox, body)


def test_kill_signals_and_state_errors(busybox: Path) -> None:
    async def body(rig: Rig) -> None:
        cid = unique("kill")
        # In the host pid namespace, so sleep is not a pid 1 that ignores SIGTERM.
        bundle = rig.bundle(cid, ["sleep", "1000"], pid_namespace=False)
        client = await rig.connect(await rig.start(cid, bundle))
        request = api.CreateTaskRequest(id=cid, bundle=str(bundle), rootfs=[rig.bind()])
        await rig.call(client, "Create", request, api.CreateTaskResponse)
        with pytest.raises(errors.FailedPrecondition, match="cannot pause task in created state"):
            await rig.call(client, "Pause", api.PauseRequest(id=cid), empty_pb2.Empty)
        with pytest.raises(errors.FailedPrecondition, match="cannot resume task in created state"):
            await rig.call(client, "Resume", api.ResumeRequest(id=cid), empty_pb2.Empty)
        await rig.call(client, "Start", api.StartRequest(id=cid), api.StartResponse)
        with pytest.raises(errors.FailedPrecondition, match="cannot start a running process"):
            await rig.call(client, "Start", api.StartRequest(id=cid), api.StartResponse)
        with pytest.raises(errors.FailedPrecondition, match="cannot delete a running process"):
            await rig.call(client, "Delete", api.DeleteRequest(id=cid), api.DeleteResponse)
        await rig.call(client, "Kill", api.KillRequest(id=cid, signal=signal.SIGTERM), empty_pb2.Empty)
        waited = await rig.call(client, "Wait", api.WaitRequest(id=cid), api.WaitResponse)
        assert waited.exit_status == 128 + signal.SIGTERM
        with pytest.raises(errors.NotFound, match="process already finished"):
            await rig.call(client, "Kill", api.KillRequest(id=cid, signal=signal.SIGKILL), empty_pb2.Empty)
        with pytest.raises(errors.FailedPrecondition, match="cannot pause a stopped container"):
            await rig.call(client, "Pause", api.PauseRequest(id=cid), empty_pb2.Empty)
        await rig.call(client, "Delete", api.DeleteRequest(id=cid), api.DeleteResponse)

        # SIGKILL of a second container in the same rig; a created container can be killed too.
        cid2 = unique("kill9")
        bundle2 = rig.bundle(cid2, ["sleep", "1000"])
        client2 = await rig.connect(await rig.start(cid2, bundle2))
        request = api.CreateTaskRequest(id=cid2, bundle=str(bundle2), rootfs=[rig.bind()])
        await rig.call(client2, "Create", request, api.CreateTaskResponse)
        await rig.call(client2, "Kill", api.KillRequest(id=cid2, signal=signal.SIGKILL), empty_pb2.Empty)
        waited = await rig.call(client2, "Wait", api.WaitRequest(id=cid2), api.WaitResponse)
        assert waited.exit_status == 137
        await rig.call(client2, "Delete", api.DeleteRequest(id=cid2), api.DeleteResponse)

    run(busybox, body)


def test_exec_into_running_task(busybox: Path) -> None:
    async def body(rig: Rig) -> None:
        cid = unique("exec")
        client, bundle = await create_started(rig, cid, ["sleep", "1000"])
        stdout, out_fd = rig.fifo(bundle, "exec-out")
        spec = process_spec(["sh", "-c", "echo from-exec $HOSTNAME; exit 5"])
        request = api.ExecProcessRequest(id=cid, exec_id="e1", stdout=stdout, spec=spec)
        await rig.call(client, "Exec", request, empty_pb2.Empty)
        with pytest.raises(errors.AlreadyExists):
            await rig.call(client, "Exec", request, empty_pb2.Empty)
        state = await rig.call(client, "State", api.StateRequest(id=cid, exec_id="e1"), api.StateResponse)
        assert state.status == task_pb2.CREATED
        started = await rig.call(client, "Start", api.StartRequest(id=cid, exec_id="e1"), api.StartResponse)
        waited = await rig.call(client, "Wait", api.WaitRequest(id=cid, exec_id="e1"), api.WaitResponse)
        assert waited.exit_status == 5
        assert await read_to_eof(out_fd) == f"from-exec {cid}\n".encode()
        await rig.call(client, "Delete", api.DeleteRequest(id=cid, exec_id="e1"), api.DeleteResponse)

        # A long exec shows in Pids with its exec id, and dies by Kill(exec_id).
        long = api.ExecProcessRequest(id=cid, exec_id="e2", spec=process_spec(["sleep", "1000"]))
        await rig.call(client, "Exec", long, empty_pb2.Empty)
        e2 = await rig.call(client, "Start", api.StartRequest(id=cid, exec_id="e2"), api.StartResponse)
        pids = await rig.call(client, "Pids", api.PidsRequest(id=cid), api.PidsResponse)
        details = {}
        for info in pids.processes:
            if info.info.type_url:
                assert info.info.type_url == "containerd.runc.v1.ProcessDetails"
                details[info.pid] = oci_pb2.ProcessDetails.FromString(info.info.value).exec_id
        assert details == {e2.pid: "e2"} and len(pids.processes) == 2
        await rig.call(client, "Kill", api.KillRequest(id=cid, exec_id="e2", signal=9), empty_pb2.Empty)
        waited = await rig.call(client, "Wait", api.WaitRequest(id=cid, exec_id="e2"), api.WaitResponse)
        assert waited.exit_status == 137
        await rig.call(client, "Kill", api.KillRequest(id=cid, signal=9), empty_pb2.Empty)
        await rig.call(client, "Wait", api.WaitRequest(id=cid), api.WaitResponse)
        with pytest.raises(errors.FailedPrecondition, match="cannot exec in a stopped state"):
            await rig.call(
                client, "Exec", api.ExecProcessRequest(id=cid, exec_id="e3", spec=spec), empty_pb2.Empty
            )
        await rig.call(client, "Delete", api.DeleteRequest(id=cid), api.DeleteResponse)
        await rig.wait_events(10)
        exec_topics = [t for t in rig.topics() if "exec" in t]
        assert exec_topics == ["/tasks/exec-added", "/tasks/exec-started"] * 2
        exits = [m for t, _, m in rig.events if t == "/tasks/exit"]
        assert [(e.id, e.exit_status) for e in exits] == [("e1", 5), ("e2", 137), (cid, 137)]  # type: ignore[attr-defined]
        assert started.pid == exits[0].pid  # type: ignore[attr-defined]

    run(busybox, body)


def test_tty_with_resize(busybox: Path) -> None:
    async def body(rig: Rig) -> None:
        cid = unique("tty")
        bundle = rig.bundle(cid, ["sh", "-c", "read line; stty size; echo got-$line"], terminal=True)
        stdin, _ = rig.fifo(bundle, "stdin")
        stdout, out_fd = rig.fifo(bundle, "stdout")
        client = await rig.connect(await rig.start(cid, bundle))
        request = api.CreateTaskRequest(
            id=cid,
            bundle=str(bundle),
            terminal=True,
            stdin=stdin,
            stdout=stdout,
            rootfs=[rig.overlay(bundle)],
        )
        await rig.call(client, "Create", request, api.CreateTaskResponse)
        await rig.call(client, "Start", api.StartRequest(id=cid), api.StartResponse)
        await rig.call(
            client, "ResizePty", api.ResizePtyRequest(id=cid, width=123, height=45), empty_pb2.Empty
        )
        writer = rig.writer(stdin)
        os.write(writer, b"abc\n")
        output = await read_until(out_fd, b"got-abc")
        assert b"45 123\r\n" in output
        os.close(writer)
        waited = await rig.call(client, "Wait", api.WaitRequest(id=cid), api.WaitResponse)
        assert waited.exit_status == 0
        await rig.call(client, "Delete", api.DeleteRequest(id=cid), api.DeleteResponse)

    run(busybox, body)


def test_tty_exec_with_resize(busybox: Path) -> None:
    async def body(rig: Rig) -> None:
        cid = unique("ttyexec")
        client, bundle = await create_started(rig, cid, ["sleep", "1000"])
        stdin, _ = rig.fifo(bundle, "exec-in")
        stdout, out_fd = rig.fifo(bundle, "exec-out")
        spec = process_spec(["sh", "-c", "read line; stty size"])
        request = api.ExecProcessRequest(
            id=cid, exec_id="t1", terminal=True, stdin=stdin, stdout=stdout, spec=spec
        )
        await rig.call(client, "Exec", request, empty_pb2.Empty)
        await rig.call(client, "Start", api.StartRequest(id=cid, exec_id="t1"), api.StartResponse)
        resize = api.ResizePtyRequest(id=cid, exec_id="t1", width=77, height=11)
        await rig.call(client, "ResizePty", resize, empty_pb2.Empty)
        writer = rig.writer(stdin)
        os.write(writer, b"go\n")
        assert b"11 77\r\n" in await read_until(out_fd, b"11 77")
        os.close(writer)
        waited = await rig.call(client, "Wait", api.WaitRequest(id=cid, exec_id="t1"), api.WaitResponse)
        assert waited.exit_status == 0
        with pytest.raises(errors.FailedPrecondition, match="cannot resize a stopped container"):
            await rig.call(client, "ResizePty", resize, empty_pb2.Empty)
        await rig.call(client, "Kill", api.KillRequest(id=cid, signal=9), empty_pb2.Empty)
        await rig.call(client, "Wait", api.WaitRequest(id=cid), api.WaitResponse)
        await rig.call(client, "Delete", api.DeleteRequest(id=cid), api.DeleteResponse)

    run(busybox, body)


def test_checkpoint_is_passed_to_runc(busybox: Path) -> None:
    async def body(rig: Rig) -> None:
        cid = unique("ckpt")
        bundle = rig.bundle(cid, ["sleep", "1000"])
        client = await rig.connect(await rig.start(cid, bundle))
        request = api.CreateTaskRequest(id=cid, bundle=str(bundle), rootfs=[rig.bind()])
        await rig.call(client, "Create", request, api.CreateTaskResponse)
        checkpoint = api.CheckpointTaskRequest(id=cid, path=str(rig.root / "image"))
        with pytest.raises(errors.FailedPrecondition, match="cannot checkpoint a task in created state"):
            await rig.call(client, "Checkpoint", checkpoint, empty_pb2.Empty)
        await rig.call(client, "Start", api.StartRequest(id=cid), api.StartResponse)
        # CRIU may be missing or unable to dump in this VM: then runc's own error comes back.
        try:
            await rig.call(client, "Checkpoint", checkpoint, empty_pb2.Empty, timeout=60)
        except errors.WharfError as exc:
            assert str(exc).startswith("runc checkpoint failed:") and str(rig.root / "image") in str(exc)
        else:
            assert (rig.root / "image").is_dir()  # --leave-running: the task goes on
        state = await rig.call(client, "State", api.StateRequest(id=cid), api.StateResponse)
        assert state.status == task_pb2.RUNNING
        await rig.call(client, "Kill", api.KillRequest(id=cid, signal=9), empty_pb2.Empty)
        await rig.call(client, "Wait", api.WaitRequest(id=cid), api.WaitResponse)
        await rig.call(client, "Delete", api.DeleteRequest(id=cid), api.DeleteResponse)

    run(busybox, body)


def test_stdin_and_close_io(busybox: Path) -> None:
    async def body(rig: Rig) -> None:
        cid = unique("stdin")
        bundle = rig.bundle(cid, ["cat"])
        stdin, _ = rig.fifo(bundle, "stdin")
        stdout, out_fd = rig.fifo(bundle, "stdout")
        client = await rig.connect(await rig.start(cid, bundle))
        request = api.CreateTaskRequest(
            id=cid, bundle=str(bundle), stdin=stdin, stdout=stdout, rootfs=[rig.bind()]
        )
        await rig.call(client, "Create", request, api.CreateTaskResponse)
        await rig.call(client, "Start", api.StartRequest(id=cid), api.StartResponse)
        writer = rig.writer(stdin)
        os.write(writer, b"echoed through cat\n")
        assert await read_until(out_fd, b"\n") == b"echoed through cat\n"
        await rig.call(client, "CloseIO", api.CloseIORequest(id=cid, stdin=True), empty_pb2.Empty)
        waited = await rig.call(client, "Wait", api.WaitRequest(id=cid), api.WaitResponse)
        assert waited.exit_status == 0
        os.close(writer)
        await rig.call(client, "Delete", api.DeleteRequest(id=cid), api.DeleteResponse)

    run(busybox, body)


def test_pause_resume_pids_stats_update(busybox: Path) -> None:
    async def body(rig: Rig) -> None:
        cid = unique("pause")
        client, _ = await create_started(rig, cid, ["sleep", "1000"])
        await rig.call(client, "Pause", api.PauseRequest(id=cid), empty_pb2.Empty)
        state = await rig.call(client, "State", api.StateRequest(id=cid), api.StateResponse)
        assert state.status == task_pb2.PAUSED
        with pytest.raises(errors.FailedPrecondition, match="cannot pause a paused container"):
            await rig.call(client, "Pause", api.PauseRequest(id=cid), empty_pb2.Empty)
        await rig.call(client, "Resume", api.ResumeRequest(id=cid), empty_pb2.Empty)
        state = await rig.call(client, "State", api.StateRequest(id=cid), api.StateResponse)
        assert state.status == task_pb2.RUNNING
        pids = await rig.call(client, "Pids", api.PidsRequest(id=cid), api.PidsResponse)
        assert [p.pid for p in pids.processes] == [state.pid]
        resources = b'{"memory": {"limit": 67108864, "swap": 67108864}, "pids": {"limit": 50}}'
        update = api.UpdateTaskRequest(id=cid)
        update.resources.type_url = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"
        update.resources.value = resources
        await rig.call(client, "Update", update, empty_pb2.Empty)
        stats = await rig.call(client, "Stats", api.StatsRequest(id=cid), api.StatsResponse)
        assert stats.stats.type_url == "io.containerd.cgroups.v1.Metrics"
        metrics = metrics_pb2.Metrics.FromString(stats.stats.value)
        assert metrics.memory.usage.usage > 0 and metrics.memory.usage.limit == 67108864
        assert (metrics.pids.current, metrics.pids.limit) == (1, 50)
        assert metrics.cpu.usage.total > 0
        await rig.call(client, "Kill", api.KillRequest(id=cid, signal=9), empty_pb2.Empty)
        await rig.call(client, "Wait", api.WaitRequest(id=cid), api.WaitResponse)
        await rig.call(client, "Delete", api.DeleteRequest(id=cid), api.DeleteResponse)
        await rig.wait_events(6)
        assert rig.topics()[2:4] == ["/tasks/paused", "/tasks/resumed"]

    run(busybox, body)


def test_oom_kill_publishes_task_oom(busybox: Path) -> None:
    async def body(rig: Rig) -> None:
        cid = unique("oom")
        # dd allocates its block size up front: 64 MiB against a 16 MiB limit.
        args = ["sh", "-c", "sleep 0.3; dd if=/dev/zero of=/dev/null bs=64M count=1; exit 3"]
        client, _ = await create_started(rig, cid, args, memory_limit=16 << 20)
        waited = await rig.call(client, "Wait", api.WaitRequest(id=cid), api.WaitResponse)
        assert waited.exit_status == 3  # sh survives: only dd was killed
        await until(lambda: "/tasks/oom" in rig.topics())
        oom = next(m for t, _, m in rig.events if t == "/tasks/oom")
        assert isinstance(oom, ev.TaskOOM) and oom.container_id == cid
        await rig.call(client, "Delete", api.DeleteRequest(id=cid), api.DeleteResponse)

    run(busybox, body)


def published(rig: Rig, topic: str, cid: str) -> bool:
    return (topic, cid) in [(t, getattr(m, "container_id", "")) for t, _, m in rig.events]


def test_oom_killed_init_publishes_task_oom_before_task_exit(busybox: Path) -> None:
    """The init itself OOM-killed at once, deleted right after Wait: TaskOOM still comes, first."""

    async def body(rig: Rig) -> None:
        for n in range(3):  # the race this guards against does not lose every time
            cid = unique(f"oominit{n}")
            args = ["dd", "if=/dev/zero", "of=/dev/null", "bs=128M", "count=1"]
            client, _ = await create_started(rig, cid, args, memory_limit=16 << 20)
            waited = await rig.call(client, "Wait", api.WaitRequest(id=cid), api.WaitResponse)
            assert waited.exit_status == 137
            await rig.call(client, "Delete", api.DeleteRequest(id=cid), api.DeleteResponse)
            await until(functools.partial(published, rig, "/tasks/delete", cid))
            mine = [t for t, _, m in rig.events if getattr(m, "container_id", "") == cid]
            assert mine.count("/tasks/oom") == 1, mine
            assert mine.index("/tasks/oom") < mine.index("/tasks/exit"), mine

    run(busybox, body)


def test_containers_grouped_by_sandbox_share_a_shim(busybox: Path) -> None:
    async def body(rig: Rig) -> None:
        sandbox = unique("sandbox")
        annotations = {"io.kubernetes.cri.sandbox-id": sandbox}
        addresses, pids = [], []
        for cid in (sandbox, unique("app")):
            bundle = rig.bundle(cid, ["sleep", "1000"], annotations=annotations)
            address = await rig.start(cid, bundle)
            client = await rig.connect(address)
            request = api.CreateTaskRequest(id=cid, bundle=str(bundle), rootfs=[rig.overlay(bundle)])
            await rig.call(client, "Create", request, api.CreateTaskResponse)
            await rig.call(client, "Start", api.StartRequest(id=cid), api.StartResponse)
            connected = await rig.call(client, "Connect", api.ConnectRequest(id=cid), api.ConnectResponse)
            addresses.append(address)
            pids.append(connected.shim_pid)
        assert addresses[0] == addresses[1] and pids[0] == pids[1]
        shim = pids[0]
        for index, cid in enumerate(bundle.name for bundle in rig.bundles):
            await rig.call(client, "Kill", api.KillRequest(id=cid, signal=9), empty_pb2.Empty)
            await rig.call(client, "Wait", api.WaitRequest(id=cid), api.WaitResponse)
            await rig.call(client, "Delete", api.DeleteRequest(id=cid), api.DeleteResponse)
            await rig.call(client, "Shutdown", api.ShutdownRequest(id=cid), empty_pb2.Empty)
            if index == 0:
                await asyncio.sleep(0.3)
                assert pid_alive(shim), "the shim must serve the pod's remaining container"
        await until(lambda: not pid_alive(shim))

    run(busybox, body)


def test_delete_action_after_shim_is_killed(busybox: Path) -> None:
    async def body(rig: Rig) -> None:
        cid = unique("orphan")
        bundle = rig.bundle(cid, ["sleep", "1000"])
        client = await rig.connect(await rig.start(cid, bundle))
        request = api.CreateTaskRequest(id=cid, bundle=str(bundle), rootfs=[rig.overlay(bundle)])
        created = await rig.call(client, "Create", request, api.CreateTaskResponse)
        await rig.call(client, "Start", api.StartRequest(id=cid), api.StartResponse)
        os.kill(next(iter(rig.shim_pids)), signal.SIGKILL)
        out = await rig.run_shim(bundle, "-id", cid, "-bundle", str(bundle), "delete")
        response = api.DeleteResponse.FromString(out)
        assert (response.pid, response.exit_status) == (created.pid, 137)
        assert response.exited_at.seconds > 0
        assert not mounted(bundle / "rootfs")
        await until(lambda: not pid_alive(created.pid))
        assert (rig.runc_root / NAMESPACE).is_dir()  # runc ran with --root <Root>/<namespace>
        assert not (rig.runc_root / NAMESPACE / cid).exists()

    run(busybox, body)


def test_legacy_start_protocol_and_v2_service(busybox: Path) -> None:
    async def body(rig: Rig) -> None:
        cid = unique("legacy")
        bundle = rig.bundle(cid, ["echo", "legacy"])
        stdout, out_fd = rig.fifo(bundle, "stdout")
        address = await rig.start(cid, bundle, legacy=True)
        prefix = "unix:///run/wharfd/s/"  # no socket_dir from a legacy daemon: the default one
        assert address.startswith(prefix) and len(address) == len(prefix) + 64
        client = await rig.connect(address)
        request = api.CreateTaskRequest(
            id=cid, bundle=str(bundle), stdout=stdout, options=rig.options_any(), rootfs=[rig.overlay(bundle)]
        )
        v2 = "containerd.task.v2.Task"
        await rig.call(client, "Create", request, api.CreateTaskResponse, service=v2)
        await rig.call(client, "Start", api.StartRequest(id=cid), api.StartResponse, service=v2)
        waited = await rig.call(client, "Wait", api.WaitRequest(id=cid), api.WaitResponse, service=v2)
        assert waited.exit_status == 0
        assert await read_to_eof(out_fd) == b"legacy\n"
        await rig.call(client, "Delete", api.DeleteRequest(id=cid), api.DeleteResponse, service=v2)
        shim = next(iter(rig.shim_pids))
        await rig.call(client, "Shutdown", api.ShutdownRequest(id=cid), empty_pb2.Empty, service=v2)
        await until(lambda: not pid_alive(shim))

    run(busybox, body)


# -- helpers -----------------------------------------------------------------------------------


def process_spec(args: list[str]) -> any_pb2.Any:
    """An exec's OCI process JSON, as containerd sends it."""
    body = {"args": args, "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}}
    return any_pb2.Any(type_url=PROCESS_TYPE, value=json.dumps(body).encode())


def mounted(path: Path) -> bool:
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return any(line.split()[4] == real for line in f)
