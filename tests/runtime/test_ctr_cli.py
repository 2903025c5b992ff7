"""The ``wharf`` CLI: parsing, and each command's exact output against fake services on a unix socket."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2, timestamp_pb2
from google.rpc import status_pb2

from wharfd.api.services.introspection.v1 import introspection_pb2 as ipb
from wharfd.api.services.introspection.v1 import introspection_pb2_grpc as ipb_grpc
from wharfd.api.services.namespaces.v1 import namespace_pb2 as npb
from wharfd.api.services.namespaces.v1 import namespace_pb2_grpc as npb_grpc
from wharfd.api.services.version.v1 import version_pb2 as vpb
from wharfd.api.services.version.v1 import version_pb2_grpc as vpb_grpc
from wharfd.api.types import platform_pb2
from wharfd.runtime import version as wharf_version
from wharfd.runtime.client import Client, ConnectError
from wharfd.runtime.ctr import commands, main

UUID = "6b8b4567-327b-4a3c-9c1f-2d1e4a5b6c7d"


# --- fake daemon ----------------------------------------------------------------


@dataclass
class State:
    """What the fake services hold, and what they saw."""

    namespaces: dict[str, dict[str, str]] = field(
        default_factory=lambda: {"default": {}, "k8s.io": {"team": "a", "env": "prod"}}
    )
    busy: set[str] = field(default_factory=set)
    plugins: list[ipb.Plugin] = field(default_factory=list)
    server: ipb.ServerResponse = field(
        default_factory=lambda: ipb.ServerResponse(uuid=UUID, pid=4242, pidns=4026531836)
    )
    version: vpb.VersionResponse = field(
        default_factory=lambda: vpb.VersionResponse(
            version=wharf_version.version(), revision=wharf_version.revision()
        )
    )
    hang: float = 0.0
    calls: list[tuple[str, str | None]] = field(default_factory=list)
    requests: list[Any] = field(default_factory=list)

    def saw(self, method: str, context: grpc.aio.ServicerContext[Any, Any], request: Any) -> None:
        ns = dict(context.invocation_metadata() or ()).get("containerd-namespace")
        self.calls.append((method, ns if isinstance(ns, str) else None))
        self.requests.append(request)


class FakeNamespaces(npb_grpc.NamespacesServicer):
    def __init__(self, state: State) -> None:
        self.state = state

    async def Get(self, request: Any, context: Any) -> Any:
        self.state.saw("Get", context, request)
        if request.name not in self.state.namespaces:
            await context.abort(grpc.StatusCode.NOT_FOUND, f'namespace "{request.name}": not found')
        labels = self.state.namespaces[request.name]
        return npb.GetNamespaceResponse(namespace=npb.Namespace(name=request.name, labels=labels))

    async def List(self, request: Any, context: Any) -> Any:
        self.state.saw("List", context, request)
        # Names only: the CLI must fetch labels with Get, as ctr does.
        return npb.ListNamespacesResponse(namespaces=[npb.Namespace(name=n) for n in self.state.namespaces])

    async def Create(self, request: Any, context: Any) -> Any:
        self.state.saw("Create", context, request)
        name = request.namespace.name
        if name in self.state.namespaces:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, f'namespace "{name}": already exists')
        self.state.namespaces[name] = dict(request.namespace.labels)
        return npb.CreateNamespaceResponse(namespace=request.namespace)

    async def Update(self, request: Any, context: Any) -> Any:
        self.state.saw("Update", context, request)
        labels = self.state.namespaces[request.namespace.name]
        for path in request.update_mask.paths:
            key = path.removeprefix("labels.")
            value = request.namespace.labels.get(key, "")
            if value:
                labels[key] = value
            else:
                labels.pop(key, None)
        return npb.UpdateNamespaceResponse(namespace=request.namespace)

    async def Delete(self, request: Any, context: Any) -> Any:
        self.state.saw("Delete", context, request)
        if request.name in self.state.busy:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f'namespace "{request.name}" must be empty, but it still has containers',
            )
        if self.state.namespaces.pop(request.name, None) is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f'namespace "{request.name}": not found')
        return empty_pb2.Empty()


class FakeIntrospection(ipb_grpc.IntrospectionServicer):
    def __init__(self, state: State) -> None:
        self.state = state

    async def Plugins(self, request: Any, context: Any) -> Any:
        self.state.saw("Plugins", context, request)
        return ipb.PluginsResponse(plugins=self.state.plugins)

    async def Server(self, request: Any, context: Any) -> Any:
        self.state.saw("Server", context, request)
        return self.state.server


class FakeVersion(vpb_grpc.VersionServicer):
    def __init__(self, state: State) -> None:
        self.state = state

    async def Version(self, request: Any, context: Any) -> Any:
        self.state.saw("Version", context, request)
        if self.state.hang:
            await asyncio.sleep(self.state.hang)
        return self.state.version


@dataclass
class Daemon:
    address: str
    state: State

    def wharf(self, *argv: str) -> int:
        """Run the CLI in-process against this daemon."""
        return main.main(["-a", self.address, *argv])


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """Fake Namespaces/Introspection/Version services on a unix socket, served from their own thread."""
    state = State()
    address = str(tmp_path / "wharfd.sock")
    loop = asyncio.new_event_loop()
    server: list[grpc.aio.Server] = []
    started = threading.Event()

    async def serve() -> None:
        srv = grpc.aio.server()
        npb_grpc.add_NamespacesServicer_to_server(FakeNamespaces(state), srv)  # type: ignore[no-untyped-call]
        ipb_grpc.add_IntrospectionServicer_to_server(FakeIntrospection(state), srv)  # type: ignore[no-untyped-call]
        vpb_grpc.add_VersionServicer_to_server(FakeVersion(state), srv)  # type: ignore[no-untyped-call]
        srv.add_insecure_port(f"unix://{address}")
        await srv.start()
        server.append(srv)
        started.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(serve(), loop).result(timeout=10)
    assert started.wait(10)
    try:
        yield Daemon(address, state)
    finally:
        asyncio.run_coroutine_threadsafe(server[0].stop(None), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WHARF_ADDRESS", "WHARF_NAMESPACE", commands.SUPPRESS_DEPRECATIONS_ENV):
        monkeypatch.delenv(name, raising=False)


def plugin(
    type_: str,
    id_: str,
    *,
    platforms: tuple[tuple[str, str, str], ...] = (),
    requires: tuple[str, ...] = (),
    exports: dict[str, str] | None = None,
    capabilities: tuple[str, ...] = (),
    error: tuple[int, str] | None = None,
) -> ipb.Plugin:
    p = ipb.Plugin(
        type=type_,
        id=id_,
        requires=requires,
        platforms=[platform_pb2.Platform(os=o, architecture=a, variant=v) for o, a, v in platforms],
        exports=exports or {},
        capabilities=capabilities,
    )
    if error is not None:
        p.init_err.CopyFrom(status_pb2.Status(code=error[0], message=error[1]))
    return p


SAMPLE_PLUGINS = [
    plugin("io.containerd.content.v1", "content"),
    plugin(
        "io.containerd.snapshotter.v1",
        "overlayfs",
        platforms=(("linux", "amd64", ""), ("linux", "arm", "v7"), ("linux", "amd64", "")),
        requires=("io.containerd.mount-manager.v1",),
        exports={"root": "/var/lib/wharfd/io.containerd.snapshotter.v1.overlayfs"},
        capabilities=("remap-ids", "only-remap-ids"),
    ),
    plugin(
        "io.containerd.snapshotter.v1",
        "btrfs",
        platforms=(("linux", "amd64", ""),),
        error=(
            9,
            "/var/lib/wharfd is not on btrfs: skip plugin",
        ),
    ),
    plugin("io.containerd.grpc.v1", "cri", error=(2, "failed to load cni")),
]


# --- parsing ----------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    return main.build_parser().parse_args(argv)


@pytest.mark.parametrize("group", ["namespaces", "namespace", "ns"])
@pytest.mark.parametrize("command", ["list", "ls"])
def test_namespace_aliases(group: str, command: str) -> None:
    args = parse(group, command, "-q")
    assert args.func.__name__ == "_list"
    assert args.quiet


@pytest.mark.parametrize(
    ("argv", "handler"),
    [
        (["ns", "c", "x"], "_create"),
        (["ns", "create", "x"], "_create"),
        (["ns", "rm", "x"], "_remove"),
        (["ns", "remove", "-c", "x"], "_remove"),
        (["ns", "label", "x", "a=b"], "_label"),
        (["plugin", "ls"], "_list"),
        (["plugins", "list", "-d", "type==x"], "_list"),
        (["version"], "_version"),
        (["info"], "_info"),
    ],
)
def test_command_tree(argv: list[str], handler: str) -> None:
    assert parse(*argv).func.__name__ == handler


def test_global_flag_defaults() -> None:
    args = parse("ns", "ls")
    assert (args.address, args.namespace, args.timeout, args.connect_timeout, args.debug) == (
        "/run/wharfd/wharfd.sock",
        "default",
        0.0,
        0.0,
        False,
    )


def test_global_flags() -> None:
    args = parse(
        "-a",
        "/tmp/x.sock",
        "-n",
        "k8s.io",
        "--timeout",
        "1m30s",
        "--connect-timeout",
        "250ms",
        "--debug",
        "ns",
        "ls",
    )
    assert (args.address, args.namespace, args.timeout, args.connect_timeout, args.debug) == (
        "/tmp/x.sock",
        "k8s.io",
        90.0,
        0.25,
        True,
    )
    args = parse("--address=/tmp/y.sock", "--namespace=z", "info")
    assert (args.address, args.namespace) == ("/tmp/y.sock", "z")


def test_environment_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WHARF_ADDRESS", "/tmp/env.sock")
    monkeypatch.setenv("WHARF_NAMESPACE", "k8s.io")
    args = parse("ns", "ls")
    assert (args.address, args.namespace) == ("/tmp/env.sock", "k8s.io")
    # Flags win over the environment.
    args = parse("-n", "other", "ns", "ls")
    assert args.namespace == "other"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("10s", 10.0),
        ("1m30s", 90.0),
        ("1.5h", 5400.0),
        ("300ms", 0.3),
        ("2us", 2e-6),
        ("5µs", 5e-6),
        ("-1s", -1.0),
        (".5s", 0.5),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert commands.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("10", 'time: missing unit in duration "10"'),
        ("10x", 'time: unknown unit "x" in duration "10x"'),
        ("", 'time: invalid duration ""'),
        ("s", 'time: invalid duration "s"'),
        ("1s.", 'time: invalid duration "1s."'),
    ],
)
def test_parse_duration_errors(text: str, error: str) -> None:
    with pytest.raises(ValueError) as info:
        commands.parse_duration(text)
    assert str(info.value) == error


def test_label_args() -> None:
    assert commands.object_with_label_args(["ns", "a=b", "flag", "c=d=e", "empty="]) == (
        "ns",
        {"a": "b", "flag": "true", "c": "d=e", "empty": ""},
    )
    assert commands.object_with_label_args([]) == ("", {})


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    for flag in ("-v", "--version"):
        assert main.main([flag]) == 0
        assert capsys.readouterr().out == f"wharf wharfd {wharf_version.version()}\n"


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main.main([]) == 0
    assert "namespaces" in capsys.readouterr().out
    assert main.main(["ns"]) == 0
    assert "create" in capsys.readouterr().out


def test_usage_error_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main.main(["--timeout", "10", "ns", "ls"]) == 1
    err = capsys.readouterr().err
    assert err.endswith('wharf: argument --timeout: time: missing unit in duration "10"\n')
    assert main.main(["ns", "ls", "--bogus"]) == 1
    assert "wharf: unrecognized arguments: --bogus" in capsys.readouterr().err


# --- namespaces ----------------------------------------------------------------------


def test_namespaces_ls(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert daemon.wharf("namespaces", "ls") == 0
    assert capsys.readouterr().out == (
        "NAME    LABELS          \ndefault                 \nk8s.io  env=prod,team=a \n"
    )
    assert [m for m, _ in daemon.state.calls] == ["Server", "List", "Get", "Get"]


def test_namespaces_ls_quiet(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert daemon.wharf("ns", "ls", "-q") == 0
    assert capsys.readouterr().out == "default\nk8s.io\n"


def test_namespace_metadata_on_every_call(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert main.main(["-a", daemon.address, "-n", "k8s.io", "ns", "ls"]) == 0
    assert {ns for _, ns in daemon.state.calls} == {"k8s.io"}


def test_namespaces_create_and_label(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert daemon.wharf("ns", "create", "team-b", "owner=me", "gpu") == 0
    assert daemon.state.namespaces["team-b"] == {"owner": "me", "gpu": "true"}
    assert daemon.wharf("ns", "label", "team-b", "owner=", "tier=1") == 0
    assert daemon.state.namespaces["team-b"] == {"gpu": "true", "tier": "1"}
    updates = [
        r for (m, _), r in zip(daemon.state.calls, daemon.state.requests, strict=True) if m == "Update"
    ]
    assert [list(u.update_mask.paths) for u in updates] == [["labels.owner"], ["labels.tier"]]
    assert capsys.readouterr().out == ""


def test_namespaces_create_errors(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert daemon.wharf("ns", "c") == 1
    assert capsys.readouterr().err == "wharf: please specify a namespace\n"
    assert daemon.wharf("ns", "c", "default") == 1
    # The server's message is printed verbatim, as ctr does.
    assert capsys.readouterr().err == 'wharf: namespace "default": already exists\n'


def test_namespaces_remove(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.state.busy.add("k8s.io")
    assert daemon.wharf("ns", "rm", "default", "k8s.io", "missing") == 1
    captured = capsys.readouterr()
    # Not-found counts as removed; the busy one is reported and fails the command.
    assert captured.out == "default\nmissing\n"
    last = captured.err.splitlines()[-1]
    assert (
        last
        == 'wharf: unable to delete k8s.io: namespace "k8s.io" must be empty, but it still has containers'
    )
    assert "level=error" in captured.err
    assert daemon.wharf("namespace", "remove", "-c", "nonexistent-cgroup-ns") == 0
    assert capsys.readouterr().out == "nonexistent-cgroup-ns\n"


# --- plugins ------------------------------------------------------------------------


def test_plugins_ls(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.state.plugins = SAMPLE_PLUGINS
    assert daemon.wharf("plugins", "ls") == 0
    assert capsys.readouterr().out == (
        "TYPE                            ID           PLATFORMS                   STATUS    \n"
        "io.containerd.content.v1        content      -                           ok        \n"
        "io.containerd.snapshotter.v1    overlayfs    linux/amd64,linux/arm/v7    ok        \n"
        "io.containerd.snapshotter.v1    btrfs        linux/amd64                 skip      \n"
        "io.containerd.grpc.v1           cri          -                           error     \n"
    )


def test_plugins_ls_quiet_and_filters(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.state.plugins = SAMPLE_PLUGINS
    assert daemon.wharf("plugin", "list", "-q", "type==io.containerd.snapshotter.v1", "id==btrfs") == 0
    assert capsys.readouterr().out == "content\noverlayfs\nbtrfs\ncri\n"
    request = daemon.state.requests[daemon.state.calls.index(("Plugins", "default"))]
    assert list(request.filters) == ["type==io.containerd.snapshotter.v1", "id==btrfs"]


def test_plugins_ls_detailed(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.state.plugins = SAMPLE_PLUGINS[1:]
    assert daemon.wharf("plugins", "ls", "-d") == 0
    assert capsys.readouterr().out == (
        "Type:             io.containerd.snapshotter.v1\n"
        "ID:               overlayfs\n"
        "Requires:        \n"
        "                  io.containerd.mount-manager.v1\n"
        "Platforms:        linux/amd64,linux/arm/v7\n"
        "Exports:         \n"
        "                  root      /var/lib/wharfd/io.containerd.snapshotter.v1.overlayfs\n"
        "Capabilities:     remap-ids,only-remap-ids\n"
        "                         \n"
        "Type:             io.containerd.snapshotter.v1\n"
        "ID:               btrfs\n"
        "Platforms:        linux/amd64\n"
        "Error:           \n"
        "                  Code:        FailedPrecondition\n"
        "                  Message:     /var/lib/wharfd is not on btrfs: skip plugin\n"
        "                                  \n"
        "Type:             io.containerd.grpc.v1\n"
        "ID:               cri\n"
        "Error:           \n"
        "                  Code:        Unknown\n"
        "                  Message:     failed to load cni\n"
    )


# --- version and info ----------------------------------------------------------------------


def client_block() -> str:
    import platform

    return (
        "Client:\n"
        f"  Version:  {wharf_version.version()}\n"
        f"  Revision: {wharf_version.revision()}\n"
        f"  Python version: {platform.python_version()}\n"
        "\n"
    )


def test_version(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert daemon.wharf("version") == 0
    captured = capsys.readouterr()
    assert captured.out == client_block() + (
        "Server:\n"
        f"  Version:  {wharf_version.version()}\n"
        f"  Revision: {wharf_version.revision()}\n"
        f"  UUID: {UUID}\n"
    )
    assert captured.err == ""


def test_version_mismatch_warnings(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.state.version = vpb.VersionResponse(version="9.9.9", revision="")
    assert daemon.wharf("version") == 0
    captured = capsys.readouterr()
    assert captured.out.endswith(f"Server:\n  Version:  9.9.9\n  Revision: \n  UUID: {UUID}\n")
    assert captured.err == "WARNING: version mismatch\nWARNING: revision mismatch\n"


def test_version_extra_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main.main(["version", "a", "b"]) == 1
    assert capsys.readouterr().err == "wharf: extra arguments: &[a b]\n"


def test_info(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert daemon.wharf("info") == 0
    assert capsys.readouterr().out == (
        "{\n"
        '    "server": {\n'
        f'        "uuid": "{UUID}",\n'
        '        "pid": 4242,\n'
        '        "pidns": 4026531836\n'
        "    }\n"
        "}\n"
    )


def test_info_deprecations_and_omitempty(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.state.server = ipb.ServerResponse(
        uuid=UUID,
        deprecations=[
            ipb.DeprecationWarning(
                id="io.containerd.deprecation/pull-schema-1-image",
                message="Schema 1 images are deprecated & <removed>",
                last_occurrence=timestamp_pb2.Timestamp(seconds=1700000000, nanos=5),
            ),
            ipb.DeprecationWarning(id="x", last_occurrence=timestamp_pb2.Timestamp()),
            ipb.DeprecationWarning(message="no id"),
        ],
    )
    assert daemon.wharf("info") == 0
    captured = capsys.readouterr()
    assert captured.out == (
        "{\n"
        '    "server": {\n'
        f'        "uuid": "{UUID}",\n'
        '        "deprecations": [\n'
        "            {\n"
        '                "id": "io.containerd.deprecation/pull-schema-1-image",\n'
        '                "message": "Schema 1 images are deprecated \\u0026 \\u003cremoved\\u003e",\n'
        '                "last_occurrence": {\n'
        '                    "seconds": 1700000000,\n'
        '                    "nanos": 5\n'
        "                }\n"
        "            },\n"
        "            {\n"
        '                "id": "x",\n'
        '                "last_occurrence": {}\n'
        "            },\n"
        "            {\n"
        '                "message": "no id"\n'
        "            }\n"
        "        ]\n"
        "    }\n"
        "}\n"
    )
    # Every command warns about deprecated features in use, as ctr does.
    assert "DEPRECATION: Schema 1 images are deprecated & <removed>" in captured.err


def test_deprecation_warnings_can_be_suppressed(
    daemon: Daemon, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon.state.server = ipb.ServerResponse(uuid=UUID, deprecations=[ipb.DeprecationWarning(message="old")])
    monkeypatch.setenv(commands.SUPPRESS_DEPRECATIONS_ENV, "true")
    assert daemon.wharf("ns", "ls", "-q") == 0
    assert capsys.readouterr().err == ""
    assert [m for m, _ in daemon.state.calls] == ["List"]


# --- failures ----------------------------------------------------------------------------


def test_missing_socket(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    address = str(tmp_path / "nope.sock")
    assert main.main(["-a", address, "ns", "ls"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"wharf: cannot connect to wharfd at {address}: no such file or directory (is the daemon running?)\n"
    )


def test_refusing_socket(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    address = str(tmp_path / "stale.sock")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(address)  # bound but never listening: connections are refused
    assert main.main(["-a", address, "plugins", "ls"]) == 1
    assert capsys.readouterr().err == (
        f"wharf: cannot connect to wharfd at {address}: connection refused (is the daemon running?)\n"
    )


def test_silent_socket_times_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    address = str(tmp_path / "silent.sock")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(address)
        sock.listen(8)  # accepts, but never speaks HTTP/2
        started = time.monotonic()
        assert main.main(["-a", address, "--connect-timeout", "300ms", "info"]) == 1
        assert time.monotonic() - started < 5
    assert capsys.readouterr().err == (
        f"wharf: cannot connect to wharfd at {address}: "
        "no gRPC handshake within 0.3s (is the daemon running?)\n"
    )


def test_version_prints_client_half_when_daemon_is_down(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main.main(["-a", str(tmp_path / "nope.sock"), "version"]) == 1
    captured = capsys.readouterr()
    assert captured.out == client_block()
    assert captured.err.startswith("wharf: cannot connect to wharfd at ")


def test_total_timeout(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.state.hang = 5.0
    started = time.monotonic()
    assert daemon.wharf("--timeout", "200ms", "version") == 1
    assert time.monotonic() - started < 4
    assert capsys.readouterr().err == "wharf: context deadline exceeded\n"


def test_unreachable_daemon_through_console_script(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "wharf"
    argv = (
        [str(script)]
        if script.exists()
        else [sys.executable, "-c", "from wharfd.runtime.ctr.main import main; raise SystemExit(main())"]
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHARF_")}
    result = subprocess.run(
        [*argv, "-a", str(tmp_path / "nope.sock"), "ns", "ls"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"wharf: cannot connect to wharfd at {tmp_path / 'nope.sock'}: ")


def test_client_exposes_stubs_and_maps_errors(daemon: Daemon) -> None:
    from wharfd.runtime import errors

    with Client(daemon.address, namespace="k8s.io") as client:
        assert client.version.Version(empty_pb2.Empty()).version == wharf_version.version()
        with pytest.raises(errors.NotFound) as info:
            client.namespaces.Get(npb.GetNamespaceRequest(name="ghost"))
        assert isinstance(info.value.__cause__, grpc.RpcError)
    assert daemon.state.calls == [("Version", "k8s.io"), ("Get", "k8s.io")]
    with pytest.raises(ConnectError):
        Client(daemon.address + ".missing")


# --- parity with ctr itself ------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("ctr") is None, reason="containerd's ctr is not installed")
@pytest.mark.parametrize(
    "argv",
    [
        ["namespaces", "ls"],
        ["ns", "ls", "-q"],
        ["plugins", "ls"],
        ["plugins", "ls", "-q"],
        ["plugins", "ls", "-d"],
    ],
)
def test_same_output_as_ctr(daemon: Daemon, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    daemon.state.plugins = SAMPLE_PLUGINS
    ctr = subprocess.run(
        ["ctr", "-a", daemon.address, *argv], capture_output=True, text=True, timeout=30, check=False
    )
    assert ctr.returncode == 0, ctr.stderr
    assert daemon.wharf(*argv) == 0
    assert capsys.readouterr().out == ctr.stdout
