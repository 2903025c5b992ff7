"""The shim's parts without runc: flags, bootstrap, states, reaper, pumps, stdio, Task API, events, cgroups."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import socket
import sys
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, cast

import pytest
from google.protobuf import any_pb2, empty_pb2
from google.protobuf.message import Message

from wharfd.api.events import task_pb2 as ev
from wharfd.api.runtime.bootstrap.v1 import bootstrap_pb2
from wharfd.api.runtime.task.v3 import shim_pb2 as api
from wharfd.api.services.ttrpc.events.v1 import events_pb2
from wharfd.api.types.cgroups.v1 import metrics_pb2 as v1
from wharfd.api.types.cgroups.v2 import metrics_pb2 as v2
from wharfd.api.types.runc.options import oci_pb2
from wharfd.runtime import errors
from wharfd.runtime.shim import cgroups, events, launch, main, options, process, wire
from wharfd.runtime.shim.events import Publisher, envelope
from wharfd.runtime.shim.pump import Pump
from wharfd.runtime.shim.reaper import Reaper
from wharfd.runtime.shim.service import TaskService
from wharfd.runtime.shim.stdio import Owner, ProcessIO, Stdio
from wharfd.runtime.ttrpc.client import TtrpcClient
from wharfd.runtime.ttrpc.server import TtrpcServer


def run(coro: Awaitable[Any]) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(30):
            return await coro

    return asyncio.run(bounded())


# -- command line and bootstrap ------------------------------------------------------------------


def test_flags_parse_like_go() -> None:
    flags, switches, rest = main.parse(
        [
            "-namespace",
            "k8s.io",
            "--address=/run/c.sock",
            "-publish-binary",
            "/bin/x",
            "-id",
            "c1",
            "-debug",
            "start",
        ]
    )
    assert (flags.namespace, flags.address, flags.publish_binary, flags.id) == (
        "k8s.io",
        "/run/c.sock",
        "/bin/x",
        "c1",
    )
    assert switches == {"debug"} and rest == ["start"]
    assert main.parse(["-v"])[1] == {"v"}
    assert main.parse(["-debug=false", "delete"])[1:] == (set(), ["delete"])
    with pytest.raises(main.UsageError, match="not defined: -bogus"):
        main.parse(["-bogus", "start"])
    with pytest.raises(main.UsageError, match="needs an argument: -id"):
        main.parse(["-id"])


def test_unknown_action_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main.main(["-id", "x", "-namespace", "n", "frobnicate"]) == 2
    assert "unknown action 'frobnicate'" in capsys.readouterr().err


def flags(cid: str = "c1", namespace: str = "ns") -> launch.Flags:
    return launch.Flags(namespace=namespace, address="/run/wharfd/wharfd.sock", id=cid)


def runc_any(opts: oci_pb2.Options, url: str = "containerd.runc.v1.Options") -> any_pb2.Any:
    return any_pb2.Any(type_url=url, value=opts.SerializeToString())


def test_bootstrap_params_carry_the_runc_options() -> None:
    params = bootstrap_pb2.BootstrapParams(instance_id="c1", namespace="ns", socket_dir="/run/x")
    params.extensions.add().value.CopyFrom(runc_any(oci_pb2.Options(root="/r", systemd_cgroup=True)))
    params.containerd_ttrpc_address = "/run/d.ttrpc"
    boot = launch.read_bootstrap(params.SerializeToString(), flags())
    assert boot.sent and (boot.socket_dir, boot.ttrpc_address) == ("/run/x", "/run/d.ttrpc")
    opts = oci_pb2.Options.FromString(boot.options)
    assert (opts.root, opts.systemd_cgroup) == ("/r", True)
    without_dir = bootstrap_pb2.BootstrapParams(instance_id="c1", namespace="ns", socket_dir="")
    assert (
        launch.read_bootstrap(without_dir.SerializeToString(), flags()).socket_dir == ""
    )  # set, though empty
    unset = bootstrap_pb2.BootstrapParams(instance_id="c1", namespace="ns")
    assert launch.read_bootstrap(unset.SerializeToString(), flags()).socket_dir is None


def test_bootstrap_params_must_match_the_flags() -> None:
    data = bootstrap_pb2.BootstrapParams(instance_id="c1", namespace="other").SerializeToString()
    with pytest.raises(errors.InvalidArgument, match="namespace 'other' does not match -namespace 'ns'"):
        launch.read_bootstrap(data, flags())
    data = bootstrap_pb2.BootstrapParams(instance_id="c2", namespace="ns").SerializeToString()
    with pytest.raises(errors.InvalidArgument, match="instance_id 'c2' does not match -id 'c1'"):
        launch.read_bootstrap(data, flags())


def test_legacy_stdin_is_options_or_nothing() -> None:
    assert not launch.read_bootstrap(b"", flags()).sent
    legacy = runc_any(oci_pb2.Options(binary_name="crun"), "type.googleapis.com/containerd.runc.v1.Options")
    boot = launch.read_bootstrap(legacy.SerializeToString(), flags())
    assert not boot.sent and oci_pb2.Options.FromString(boot.options).binary_name == "crun"
    with pytest.raises(errors.InvalidArgument, match=r"options of type 'example\.Other'"):
        launch.read_bootstrap(any_pb2.Any(type_url="example.Other").SerializeToString(), flags())


def test_generic_runtime_options_mean_no_runc_options() -> None:
    # What a stock containerd's CRI sends a runtime type it does not know as runc's (ours):
    # type_url (1) and config_path (2) of a runtime config file.
    generic = any_pb2.Any(type_url="runtimeoptions.v1.Options", value=b"\x0a\x01t\x12\x05/etc/x")
    boot = launch.read_bootstrap(generic.SerializeToString(), flags())
    assert (boot.sent, boot.options) == (False, b"")
    params = bootstrap_pb2.BootstrapParams(instance_id="c1", namespace="ns")
    params.extensions.add().value.CopyFrom(generic)
    assert launch.read_bootstrap(params.SerializeToString(), flags()).options == b""
    assert options.from_any(generic) is None
    with pytest.raises(errors.InvalidArgument, match=r"unsupported type 'example\.Other'"):
        options.from_any(any_pb2.Any(type_url="example.Other", value=b"x"))


def test_wire_matches_the_generated_classes() -> None:
    result = bootstrap_pb2.BootstrapResult.FromString(wire.encode((1, 3), (2, "unix:///s/x"), (3, "ttrpc")))
    assert (result.version, result.address, result.protocol) == (3, "unix:///s/x", "ttrpc")
    big = wire.encode((1, 2**40), (2, "é" * 200))
    message = bootstrap_pb2.BootstrapResult.FromString(big)
    assert (message.version, message.address) == (2**40 % 2**32, "é" * 200)  # int32 keeps the low bits
    params = bootstrap_pb2.BootstrapParams(instance_id="i", log_level=bootstrap_pb2.LOG_LEVEL_DEBUG)
    fields = wire.fields(params.SerializeToString())
    assert fields[0] == (1, wire.LENGTH, b"i") and fields[1][:2] == (3, wire.VARINT)
    for broken in (b"\x0a\x05ab", b"\x08", b"\x0b", b"\x00"):
        with pytest.raises(ValueError):
            wire.fields(broken)


def test_socket_path_is_containerds_hash_and_bounded() -> None:
    path = launch.socket_path("/run/wharfd/s", "/run/wharfd/wharfd.sock", "k8s.io", "sandbox1")
    digest = hashlib.sha256(b"/run/wharfd/wharfd.sock/k8s.io/sandbox1").hexdigest()
    assert path == f"/run/wharfd/s/{digest}"
    with pytest.raises(errors.InvalidArgument, match="use a shorter socket_dir"):
        launch.socket_path("/" + "d" * 60, "/a", "n", "g")


def test_group_comes_from_annotations(tmp_path: Path) -> None:
    assert launch.group_id(str(tmp_path), "c1") == "c1"
    (tmp_path / "config.json").write_text(json.dumps({"annotations": {"io.kubernetes.cri.sandbox-id": "sb"}}))
    assert launch.group_id(str(tmp_path), "c1") == "sb"
    both = {"io.kubernetes.cri.sandbox-id": "sb", "io.containerd.runc.v2.group": "g"}
    (tmp_path / "config.json").write_text(json.dumps({"annotations": both}))
    assert launch.group_id(str(tmp_path), "c1") == "g"


def test_the_runc_group_wins_over_the_sandbox_when_the_daemon_joins_a_shim(tmp_path: Path) -> None:
    """containerd's precedence in the daemon too: ``io.containerd.runc.v2.group``, then the sandbox id."""
    from wharfd.runtime.events import Exchange
    from wharfd.runtime.tasks import manager, shim
    from wharfd.runtime.tasks.bundle import SANDBOX_FILE, Bundle, ShimAddress

    both = {"io.kubernetes.cri.sandbox-id": "sb", "io.containerd.runc.v2.group": "g"}
    assert launch.group_of(both, "c1") == "g"
    assert launch.group_of({"io.kubernetes.cri.sandbox-id": "sb"}, "c1") == "sb"
    assert launch.group_of({"io.containerd.runc.v2.group": ""}, "c1") == "c1"
    launcher = shim.Launcher(
        grpc_address="/a.sock", ttrpc_address="/a.sock.ttrpc", publish_binary="/bin/true"
    )
    tasks = manager.TaskManager(tmp_path / "state", tmp_path / "root", launcher, Exchange())
    joinable = {group: ShimAddress(f"unix:///{group}", version=3) for group in ("sb", "g")}
    bundle = Bundle.at(tmp_path / "state", tmp_path / "root", "default", "c1")
    request = manager.CreateRequest(spec_json=json.dumps({"annotations": both}).encode(), runtime="io.x.v2")
    log_fd, annotations, address = tasks._make_bundle_and_launch(
        bundle, "/usr/bin/containerd-shim-runc-v2", request, joinable
    )
    os.close(log_fd)
    assert annotations == both
    assert address == joinable["g"] and bundle.read_file(SANDBOX_FILE) == "g"


def test_default_socket_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(launch.SOCKET_DIR_ENV, raising=False)
    assert launch.default_socket_dir() == launch.DEFAULT_SOCKET_DIR
    monkeypatch.setenv(launch.SOCKET_DIR_ENV, "/tmp/wharfd-test-s")
    assert launch.default_socket_dir() == "/tmp/wharfd-test-s"


def test_type_urls_name_a_message_bare_or_prefixed() -> None:
    assert launch.names_type(launch.OPTIONS_TYPE, launch.OPTIONS_TYPE)
    assert launch.names_type("type.googleapis.com/" + launch.OPTIONS_TYPE, launch.OPTIONS_TYPE)
    assert not launch.names_type("x" + launch.OPTIONS_TYPE, launch.OPTIONS_TYPE)
    assert options.from_any(any_pb2.Any(type_url="/" + launch.GENERIC_OPTIONS_TYPE, value=b"\n\x01x")) is None


def test_options_any_and_options_json(tmp_path: Path) -> None:
    opts = oci_pb2.Options(root="/r", io_uid=1000, no_pivot_root=True)
    assert options.from_any(runc_any(opts)) == opts
    assert options.from_any(any_pb2.Any()) is None
    with pytest.raises(errors.InvalidArgument, match=r"unsupported type 'x\.Y'"):
        options.from_any(any_pb2.Any(type_url="x.Y", value=b"1"))
    options.write(str(tmp_path), opts)
    assert json.loads((tmp_path / "options.json").read_text()) == {
        "no_pivot_root": True,
        "io_uid": 1000,
        "root": "/r",
    }
    assert options.read(str(tmp_path)) == opts
    assert options.root(oci_pb2.Options(), "k8s.io") == "/run/wharfd/runc/k8s.io"
    # As containerd's shim: the namespace goes under a given Root too.
    assert options.root(oci_pb2.Options(root="/r"), "k8s.io") == "/r/k8s.io"


# -- process states ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "op", "message"),
    [
        (process.INIT_CREATED, "pause", "cannot pause task in created state"),
        (process.INIT_CREATED, "resume", "cannot resume task in created state"),
        (process.INIT_CREATED, "checkpoint", "cannot checkpoint a task in created state"),
        (process.INIT_RUNNING, "start", "cannot start a running process"),
        (process.INIT_RUNNING, "delete", "cannot delete a running process"),
        (process.INIT_RUNNING, "resume", "cannot resume a running process"),
        (process.INIT_PAUSED, "pause", "cannot pause a paused container"),
        (process.INIT_PAUSED, "exec", "cannot exec in a paused state"),
        (process.INIT_STOPPED, "update", "cannot update a stopped container"),
        (process.INIT_STOPPED, "start", "cannot start a stopped process"),
        (process.EXEC_STOPPED, "resize", "cannot resize a stopped container"),
        (process.DELETED, "kill", "cannot kill a deleted process"),
    ],
)
def test_states_refuse_with_containerds_words(state: process.State, op: str, message: str) -> None:
    with pytest.raises(errors.FailedPrecondition, match=f"^{message}$"):
        state.check(op)


def test_init_lifecycle_and_exit() -> None:
    async def body() -> None:
        proc = process.Process("c1", Stdio(), process.INIT_CREATED)
        proc.move("start")
        proc.move("pause")
        assert proc.state is process.INIT_PAUSED
        waiter = asyncio.create_task(proc.wait())
        proc.set_exited(137, 5)
        await waiter
        assert (proc.state, proc.exit_status, proc.exited_at_ns) == (process.INIT_STOPPED, 137, 5)
        proc.set_exited(0, 9)  # a second report changes nothing
        assert proc.exit_status == 137
        proc.move("delete")
        assert proc.state is process.DELETED

    run(body())


def test_exec_signal_errors() -> None:
    proc = process.Process("e1", Stdio(), process.EXEC_CREATED)
    with pytest.raises(errors.FailedPrecondition, match="process e1 not created"):
        proc.signal(9)
    proc.pid = 2**22 + 1  # above pid_max: no such process
    with pytest.raises(errors.NotFound, match="process already finished"):
        proc.signal(0)


# -- reaper --------------------------------------------------------------------------------------


def test_reaper_collects_exit_statuses() -> None:
    async def body() -> None:
        reaper = Reaper()
        reaper.install(asyncio.get_running_loop())
        null = os.open(os.devnull, os.O_RDWR)
        try:
            _, exited = reaper.spawn(["sh", "-c", "exit 3"], stdio=(null, null, null))
            assert (await exited).status == 3
            pid, exited = reaper.spawn(["sleep", "100"], stdio=(null, null, null))
            os.kill(pid, signal.SIGKILL)
            assert (await exited).status == 137
        finally:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGCHLD)
            os.close(null)

    run(body())


# Run in its own process: it makes itself a child subreaper, as the shim is.
EARLY_EXIT = """
import asyncio, ctypes, os, sys
from wharfd.runtime.shim.reaper import Reaper

async def main():
    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)
    reaper = Reaper()
    reaper.install(asyncio.get_running_loop())
    null = os.open(os.devnull, os.O_RDWR)
    pidfile = sys.argv[1]
    # Like runc create: the launcher exits, its child lives on (re-parented to us) and dies
    # before we have read its pid from the pid file.
    with reaper.subscribe() as early:
        _, runner = reaper.spawn(["sh", "-c", f"sh -c 'sleep 0.2; exit 7' & echo $! > {pidfile}"], stdio=(null,) * 3)
        await runner
        await asyncio.sleep(0.6)
        pid = int(open(pidfile).read())
    print(early[pid].status)

asyncio.run(main())
"""


def test_reaper_window_catches_exits_before_the_pid_is_known(tmp_path: Path) -> None:
    import subprocess

    result = subprocess.run(
        [sys.executable, "-c", EARLY_EXIT, str(tmp_path / "pid")], capture_output=True, text=True, timeout=30
    )
    assert result.stdout.strip() == "7", result.stderr


def test_reaper_resets_ignored_signals_in_children(tmp_path: Path) -> None:
    async def body() -> None:
        reaper = Reaper()
        reaper.install(asyncio.get_running_loop())
        out = os.open(tmp_path / "sigcgt", os.O_WRONLY | os.O_CREAT)
        try:
            # SIGPIPE is ignored by Python; a child must see the default disposition again.
            _, exited = reaper.spawn(["sh", "-c", "grep SigIgn /proc/self/status"], stdio=(out, out, out))
            await exited
        finally:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGCHLD)
            os.close(out)
        ignored = int((tmp_path / "sigcgt").read_text().split()[1], 16)
        assert not ignored & (1 << (signal.SIGPIPE - 1))

    run(body())


# -- pumps and stdio -----------------------------------------------------------------------------


def test_pump_copies_everything_with_backpressure() -> None:
    async def body() -> None:
        src_r, src_w = os.pipe2(os.O_NONBLOCK)
        dst_r, dst_w = os.pipe2(os.O_NONBLOCK)
        data = os.urandom(3 << 20)
        pump = Pump(src_r, dst_w)
        received = bytearray()
        offset = 0
        while len(received) < len(data):
            if offset < len(data):
                with contextlib.suppress(BlockingIOError):
                    offset += os.write(src_w, data[offset : offset + 65536])
                if offset == len(data):
                    os.close(src_w)
            try:
                received += os.read(dst_r, 1 << 16)
            except BlockingIOError:
                await asyncio.sleep(0)
        await asyncio.wait_for(pump.done, 5)
        assert bytes(received) == data
        assert os.read(dst_r, 10) == b""  # the pump closed its destination at the end
        os.close(dst_r)

    run(body())


def test_file_outputs_go_straight_to_the_process(tmp_path: Path) -> None:
    async def body() -> None:
        log = tmp_path / "logs" / "out.log"
        stdio = Stdio(stdout=f"file://{log}", stderr=f"file://{log}")
        io = await ProcessIO.open(stdio, owner=Owner(), reaper=Reaper())
        _, stdout, stderr = io.runc_fds
        assert stdout == stderr
        os.write(stdout, b"one\n")
        io.close()
        assert log.read_text() == "one\n"

    run(body())


def read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def test_binary_logger_gets_the_output(tmp_path: Path) -> None:
    script = tmp_path / "logger"
    script.write_text('#!/bin/sh\nexec 5>&-\ncat <&3 >"$2.out" & cat <&4 >"$2.err"\nwait\n')
    script.chmod(0o755)

    async def body() -> None:
        reaper = Reaper()
        reaper.install(asyncio.get_running_loop())
        try:
            uri = f"binary://{script}?dest={tmp_path / 'log'}"
            io = await ProcessIO.open(Stdio(stdout=uri, stderr=uri), owner=Owner(), reaper=reaper)
            _, stdout, stderr = io.runc_fds
            os.write(stdout, b"to stdout\n")
            os.write(stderr, b"to stderr\n")
            io.handed_over()  # the "container" is done with its ends
            for _ in range(500):  # the logger's two cats finish in their own time
                if (
                    read(tmp_path / "log.out") == "to stdout\n"
                    and read(tmp_path / "log.err") == "to stderr\n"
                ):
                    break
                await asyncio.sleep(0.02)
        finally:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGCHLD)
        assert (tmp_path / "log.out").read_text() == "to stdout\n"
        assert (tmp_path / "log.err").read_text() == "to stderr\n"

    run(body())


def test_io_uid_and_gid_own_the_pipes(tmp_path: Path) -> None:
    fifo = tmp_path / "out"
    os.mkfifo(fifo)
    keep = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)

    async def body() -> None:
        io = await ProcessIO.open(Stdio(stdout=str(fifo)), owner=Owner(1234, 5678), reaper=Reaper())
        try:
            stat = os.fstat(io.runc_fds[1])
            assert (stat.st_uid, stat.st_gid) == (1234, 5678)
        finally:
            io.close()
            os.close(keep)

    if os.geteuid() != 0:
        pytest.skip("fchown to another user needs root")
    run(body())


def test_missing_fifo_is_not_found(tmp_path: Path) -> None:
    async def body() -> None:
        with pytest.raises(errors.NotFound, match="stdio FIFO"):
            await ProcessIO.open(Stdio(stdout=str(tmp_path / "nope")), owner=Owner(), reaper=Reaper())

    run(body())


# -- Task API over ttrpc ------------------------------------------------------------------------


def test_task_service_answers_v2_and_v3_on_an_inherited_listener(tmp_path: Path) -> None:
    async def body() -> None:
        # As the shim gets it from the zygote: a socket already bound and listening.
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(tmp_path / "s"))
        listener.listen()
        service = TaskService(
            namespace="ns", reaper=Reaper(), publisher=Publisher(""), opts=oci_pb2.Options()
        )
        server = TtrpcServer(require_same_user=True)
        service.register(server)
        await server.listen_socket(listener)
        client = await TtrpcClient.connect(tmp_path / "s")
        try:
            for name in ("containerd.task.v3.Task", "containerd.task.v2.Task"):
                reply = await client.call(name, "Connect", api.ConnectRequest(), api.ConnectResponse)
                assert (reply.shim_pid, reply.task_pid) == (os.getpid(), 0)
                with pytest.raises(errors.NotFound, match=r"^container c2 not found$"):
                    await client.call(name, "State", api.StateRequest(id="c2"), api.StateResponse)
            with pytest.raises(errors.InvalidArgument, match="error unmarshalling request"):
                await client.call("containerd.task.v3.Task", "State", _truncated(), api.StateResponse)
            with pytest.raises(errors.NotImplemented):
                await client.call("containerd.task.v3.Task", "Nope", api.StateRequest(), api.StateResponse)
        finally:
            await client.close()
            await server.close()

    run(body())


class _Truncated:
    """Stands in for a request message: a string field whose bytes end early."""

    def SerializeToString(self) -> bytes:
        return b"\x0a\xff"


def _truncated() -> Message:
    return cast(Message, _Truncated())


def test_closing_lets_calls_in_flight_answer_within_the_grace(tmp_path: Path) -> None:
    async def body() -> None:
        server = TtrpcServer()
        entered = asyncio.Event()

        async def slow(payload: bytes, metadata: dict[str, list[str]]) -> bytes:
            entered.set()
            await asyncio.sleep(0.2)
            return b""

        server.register("svc", "Slow", slow)
        await server.listen(tmp_path / "s")
        client = await TtrpcClient.connect(tmp_path / "s")
        try:
            call = asyncio.create_task(client.call("svc", "Slow", empty_pb2.Empty(), empty_pb2.Empty))
            await entered.wait()
            await server.close(grace=5)
            assert await call == empty_pb2.Empty()  # answered, then the connection was dropped
            await asyncio.wait_for(client.closed.wait(), 5)
        finally:
            await client.close()

    run(body())


# -- events --------------------------------------------------------------------------------------


class Recorder:
    def __init__(self, refuse: int = 0, error: type[errors.WharfError] = errors.InvalidArgument) -> None:
        self.topics: list[str] = []
        self.refuse = refuse
        self.error = error
        self.server = TtrpcServer()
        self.server.register("containerd.services.events.ttrpc.v1.Events", "Forward", self.forward)

    async def forward(self, payload: bytes, metadata: dict[str, list[str]]) -> bytes:
        request = events_pb2.ForwardRequest.FromString(payload)
        if self.refuse:
            self.refuse -= 1
            raise self.error("refused")
        self.topics.append(request.envelope.topic)
        return empty_pb2.Empty().SerializeToString()


def test_envelope_uses_bare_type_urls() -> None:
    request = envelope("k8s.io", ev.TaskExit(container_id="c", exit_status=3))
    assert request.envelope.topic == "/tasks/exit" and request.envelope.namespace == "k8s.io"
    assert request.envelope.event.type_url == "containerd.events.TaskExit"
    assert ev.TaskExit.FromString(request.envelope.event.value).exit_status == 3
    assert request.envelope.timestamp.seconds > 0


def test_publisher_keeps_order_while_the_daemon_is_down(tmp_path: Path) -> None:
    async def body() -> None:
        publisher = Publisher(str(tmp_path / "d.ttrpc"))
        publisher.start()
        for name in ("TaskCreate", "TaskStart", "TaskExit", "TaskDelete"):
            publisher.publish("ns", getattr(ev, name)(container_id="c"))
        await asyncio.sleep(0.5)  # no daemon yet: everything waits, in order
        recorder = Recorder()
        await recorder.server.listen(tmp_path / "d.ttrpc")
        await drain(publisher, recorder)
        assert recorder.topics == ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]

    run(body())


async def drain(publisher: Publisher, recorder: Recorder) -> None:
    """Wait (bounded) until ``publisher`` has delivered everything, then close both ends."""
    try:
        async with asyncio.timeout(10):
            await publisher.drained()
    finally:
        await publisher.close()
        await recorder.server.close()


async def deliver(recorder: Recorder, address: Path, *published: Message) -> Publisher:
    """Publish ``published`` to ``recorder`` serving on ``address``; return the drained, closed publisher."""
    await recorder.server.listen(address)
    publisher = Publisher(str(address))
    publisher.start()
    for event in published:
        publisher.publish("ns", event)
    await drain(publisher, recorder)
    return publisher


def test_publisher_drops_an_event_the_daemon_keeps_refusing(tmp_path: Path) -> None:
    recorder = Recorder(refuse=5)
    sent = (ev.TaskOOM(container_id="bad"), ev.TaskPaused(container_id="good"))
    publisher = run(deliver(recorder, tmp_path / "d.ttrpc", *sent))
    assert recorder.topics == ["/tasks/paused"] and publisher.dropped == 1


def test_publisher_retries_a_daemon_that_answers_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "MAX_REJECTIONS", 2)
    # "Come back later" is not a refusal: the event must not be dropped.
    recorder = Recorder(refuse=3, error=errors.Unavailable)
    publisher = run(deliver(recorder, tmp_path / "d.ttrpc", ev.TaskExit(container_id="c")))
    assert recorder.topics == ["/tasks/exit"] and publisher.dropped == 0


# -- cgroups -------------------------------------------------------------------------------------


def write_tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_v1_metrics_from_cgroupfs_files(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "pids/pids.current": "3\n",
            "pids/pids.max": "max\n",
            "cpuacct/cpuacct.usage": "123456\n",
            "cpuacct/cpuacct.usage_percpu": "100 200\n",
            "cpuacct/cpuacct.stat": "user 10\nsystem 5\n",
            "cpu/cpu.stat": "nr_periods 4\nnr_throttled 1\nthrottled_time 99\n",
            "memory/memory.stat": "cache 10\nrss 20\nswap 0\npgfault 7\ntotal_pgmajfault 2\n"
            "hierarchical_memsw_limit 9\n",
            "memory/memory.usage_in_bytes": "4096\n",
            "memory/memory.limit_in_bytes": "8192\n",
            "memory/memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
            "blkio/blkio.io_service_bytes_recursive": "8:0 Read 512\n8:0 Write 1024\nTotal 1536\n",
        },
    )
    cg = cgroups.Cgroup(
        {c: str(tmp_path / c) for c in ("pids", "cpuacct", "cpu", "memory", "blkio")}, unified=False
    )
    packed = cgroups.metrics(cg)
    assert packed.type_url == "io.containerd.cgroups.v1.Metrics"
    m = v1.Metrics.FromString(packed.value)
    assert (m.pids.current, m.pids.limit) == (3, 0)
    assert (m.cpu.usage.total, list(m.cpu.usage.per_cpu)) == (123456, [100, 200])
    assert m.cpu.usage.user == 10 * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    assert (m.cpu.throttling.periods, m.cpu.throttling.throttled_time) == (4, 99)
    assert (m.memory.cache, m.memory.rss, m.memory.pg_fault, m.memory.total_pg_maj_fault) == (10, 20, 7, 2)
    assert m.memory.hierarchical_swap_limit == 9
    assert (m.memory.usage.usage, m.memory.usage.limit, m.memory_oom_control.oom_kill) == (4096, 8192, 2)
    blkio = [(e.op, e.major, e.value) for e in m.blkio.io_service_bytes_recursive]
    assert blkio == [("Read", 8, 512), ("Write", 8, 1024)]


def test_v2_metrics_from_unified_files(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "pids.current": "2\n",
            "pids.max": "100\n",
            "cpu.stat": "usage_usec 50\nuser_usec 30\nsystem_usec 20\nnr_periods 0\n",
            "memory.stat": "anon 4096\nfile 8192\npgfault 3\n",
            "memory.current": "12288\n",
            "memory.max": "max\n",
            "memory.events": "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n",
            "io.stat": "8:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n",
        },
    )
    m = v2.Metrics.FromString(cgroups.metrics(cgroups.Cgroup({"": str(tmp_path)}, unified=True)).value)
    assert (m.pids.current, m.pids.limit, m.cpu.usage_usec) == (2, 100, 50)
    assert (m.memory.anon, m.memory.usage, m.memory.usage_limit) == (4096, 12288, 0)
    assert (m.memory_events.max, m.memory_events.oom_kill) == (4, 1)
    assert (m.io.usage[0].rbytes, m.io.usage[0].wios) == (10, 2)


def test_v2_oom_watcher_fires_on_new_oom_kills(tmp_path: Path) -> None:
    events = tmp_path / "memory.events"
    events.write_text("oom 0\noom_kill 0\n")

    async def body() -> list[str]:
        seen: list[str] = []
        watcher = cgroups.OomWatcher(seen.append)
        watcher.add("c1", cgroups.Cgroup({"": str(tmp_path)}, unified=True))
        try:
            events.write_text("oom 0\noom_kill 0\nlow 1\n")  # a change that is not an OOM kill
            await asyncio.sleep(0.2)
            events.write_text("oom 1\noom_kill 1\n")
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.02)
        finally:
            watcher.close()
        return seen

    assert run(body()) == ["c1"]


def test_own_cgroups_are_found() -> None:
    cg = cgroups.of_pid(os.getpid())
    assert cg.dirs and all(os.path.isdir(d) for d in cg.dirs.values())
    assert cgroups.of_pid(2**22 + 1).dirs == {}
