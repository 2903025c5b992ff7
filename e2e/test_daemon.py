"""The daemon's lifecycle and its basic services, through the real socket."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import time
import tomllib
import urllib.request
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from e2e.daemon import BIN, Daemon, running
from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.api.cri.v1 import api_pb2_grpc as cri_grpc
from wharfd.api.services.introspection.v1 import introspection_pb2 as ipb
from wharfd.api.services.introspection.v1 import introspection_pb2_grpc as ipb_grpc
from wharfd.api.services.namespaces.v1 import namespace_pb2 as nspb
from wharfd.api.services.namespaces.v1 import namespace_pb2_grpc as nspb_grpc
from wharfd.api.services.streaming.v1 import streaming_pb2, streaming_pb2_grpc
from wharfd.api.services.version.v1 import version_pb2_grpc
from wharfd.runtime import version
from wharfd.runtime.services import streaming


def test_cri_version(daemon: Daemon) -> None:
    with daemon.channel() as ch:
        resp = cri_grpc.RuntimeServiceStub(ch).Version(cri.VersionRequest(version="v1"), timeout=5)
    assert resp.runtime_name == "wharfd"
    assert resp.runtime_api_version == "v1"
    assert resp.runtime_version == version.version()
    assert resp.version  # kubelet refuses an empty one


def test_cri_unbuilt_rpc_is_unimplemented(daemon: Daemon) -> None:
    with daemon.channel() as ch, pytest.raises(grpc.RpcError) as info:
        cri_grpc.RuntimeServiceStub(ch).CheckpointContainer(cri.CheckpointContainerRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "CheckpointContainer" in (info.value.details() or "")


def test_socket_mode_and_health(daemon: Daemon) -> None:
    assert stat.S_IMODE(daemon.address.stat().st_mode) == 0o660
    with daemon.channel() as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    assert Path(f"{daemon.address}.ttrpc").is_socket()


def test_version_and_server_uuid_persist(tmp_path: Path) -> None:
    with running(tmp_path / "d") as d:
        with d.channel() as ch:
            v = version_pb2_grpc.VersionStub(ch).Version(empty_pb2.Empty(), timeout=5)
            first = ipb_grpc.IntrospectionStub(ch).Server(empty_pb2.Empty(), timeout=5)
        assert v.version == version.version()
        assert first.pid == d.proc.pid  # type: ignore[union-attr]
        assert first.pidns > 0
        assert d.stop() == 0
    with running(tmp_path / "d") as d, d.channel() as ch:
        second = ipb_grpc.IntrospectionStub(ch).Server(empty_pb2.Empty(), timeout=5)
    assert second.uuid == first.uuid
    assert second.pid != first.pid


def test_plugins_report_truthful_status(daemon: Daemon) -> None:
    with daemon.channel() as ch:
        resp = ipb_grpc.IntrospectionStub(ch).Plugins(ipb.PluginsRequest(), timeout=5)
    by_uri = {f"{p.type}.{p.id}": p for p in resp.plugins}
    for uri in (
        "io.containerd.metadata.v1.sqlite",
        "io.containerd.grpc.v1.namespaces",
        "io.containerd.grpc.v1.introspection",
        "io.containerd.grpc.v1.version",
        "io.containerd.grpc.v1.cri",
    ):
        assert uri in by_uri, uri
        assert not by_uri[uri].HasField("init_err"), by_uri[uri].init_err
    with daemon.channel() as ch:
        only = ipb_grpc.IntrospectionStub(ch).Plugins(ipb.PluginsRequest(filters=["id==cri"]), timeout=5)
    assert [p.id for p in only.plugins] == ["cri"]


def test_default_namespaces_exist_and_metadata_required(daemon: Daemon) -> None:
    with daemon.channel() as ch:
        stub = nspb_grpc.NamespacesStub(ch)
        names = {n.name for n in stub.List(nspb.ListNamespacesRequest(), timeout=5).namespaces}
        assert {"default", "k8s.io"} <= names
        stub.Create(
            nspb.CreateNamespaceRequest(namespace=nspb.Namespace(name="e2e", labels={"a": "b"})), timeout=5
        )
        with pytest.raises(grpc.RpcError) as info:
            stub.Create(nspb.CreateNamespaceRequest(namespace=nspb.Namespace(name="e2e")), timeout=5)
        assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
        with pytest.raises(grpc.RpcError) as info:
            stub.Create(nspb.CreateNamespaceRequest(namespace=nspb.Namespace(name="Bad Name!")), timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "Bad Name!" in (info.value.details() or "")


def test_second_daemon_on_same_root_refused(daemon: Daemon, tmp_path: Path) -> None:
    other = Daemon(daemon.base)  # same root and socket
    other.log_path = tmp_path / "other.log"
    other.start(wait=False)
    assert other.proc is not None
    assert other.proc.wait(30) == 1
    text = other.log()
    assert "another wharfd" in text and str(daemon.root) in text
    # The first one is unharmed.
    daemon.wait_ready(5)


def test_stale_socket_removed_after_crash(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "d")
    d.start()
    d.kill()
    assert d.address.is_socket()  # left behind by the crash
    d.start()
    try:
        with d.channel() as ch:
            cri_grpc.RuntimeServiceStub(ch).Version(cri.VersionRequest(), timeout=5)
    finally:
        assert d.stop() == 0
    assert "removing stale socket" in d.log()


def test_sigterm_exits_zero_and_removes_sockets(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "d")
    d.start()
    assert d.stop(signal.SIGTERM) == 0
    assert not d.address.exists()
    assert not Path(f"{d.address}.ttrpc").exists()
    assert "stopped" in d.log()


def test_sigusr1_dumps_stacks(daemon: Daemon) -> None:
    assert daemon.proc is not None
    os.kill(daemon.proc.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while "stack dump on SIGUSR1" not in daemon.log():
        assert time.monotonic() < deadline, daemon.log()
        time.sleep(0.05)
    daemon.wait_ready(5)


def test_invalid_config_stops_startup(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('version = 2\n[grpc]\n  uid = "root"\n')
    result = subprocess.run(
        [str(BIN / "wharfd"), "--config", str(cfg)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1
    assert str(cfg) in result.stderr and "grpc.uid" in result.stderr


def test_config_default_round_trips(tmp_path: Path) -> None:
    out = subprocess.run(
        [str(BIN / "wharfd"), "config", "default"], capture_output=True, text=True, check=True
    )
    path = tmp_path / "c.toml"
    path.write_text(out.stdout)
    dump = subprocess.run(
        [str(BIN / "wharfd"), "config", "dump", "--config", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert dump.stdout == out.stdout
    # The default handler runs the shim installed with wharfd; no containerd package is needed.
    runtimes = tomllib.loads(out.stdout)["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]
    assert {name: r["runtime_type"] for name, r in runtimes.items()} == {
        "runc": "io.containerd.wharf.v2",
        "wharf": "io.containerd.wharf.v2",
    }


def test_disabled_plugin_is_absent(tmp_path: Path) -> None:
    with running(tmp_path / "d", top_config='disabled_plugins = ["io.containerd.grpc.v1.version"]\n') as d:
        with d.channel() as ch:
            with pytest.raises(grpc.RpcError) as info:
                version_pb2_grpc.VersionStub(ch).Version(empty_pb2.Empty(), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
            plugins = ipb_grpc.IntrospectionStub(ch).Plugins(ipb.PluginsRequest(), timeout=5).plugins
        assert "version" not in {p.id for p in plugins}


def _busy_port() -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, sock.getsockname()[1]


def test_failing_optional_plugin_is_reported(tmp_path: Path) -> None:
    sock, port = _busy_port()
    with sock, running(tmp_path / "d", extra_config=f'[metrics]\n  address = "127.0.0.1:{port}"\n') as d:
        rows = {
            tuple(line.split()[:2]): line.split()[-1]
            for line in d.wharf("plugins", "ls").stdout.splitlines()[1:]
        }
        assert rows[("io.containerd.server.v1", "metrics")] == "error"
        assert rows[("io.containerd.grpc.v1", "cri")] == "ok"
        assert "address already in use" in d.wharf("plugins", "ls", "-d").stdout.lower()


def test_failing_required_plugin_stops_startup(tmp_path: Path) -> None:
    sock, port = _busy_port()
    with sock:
        d = Daemon(
            tmp_path / "d",
            extra_config=f'[metrics]\n  address = "127.0.0.1:{port}"\n',
            top_config='required_plugins = ["io.containerd.server.v1.metrics"]\n',
        )
        d.start(wait=False)
        assert d.proc is not None
        assert d.proc.wait(30) == 1
    assert "required plugin io.containerd.server.v1.metrics failed to load" in d.log()


def test_metrics_endpoint(tmp_path: Path) -> None:
    sock, port = _busy_port()
    sock.close()  # a free port for the daemon
    extra = f'[metrics]\n  address = "127.0.0.1:{port}"\n  grpc_histogram = true\n'
    with running(tmp_path / "d", extra_config=extra) as d:
        with d.channel() as ch:
            cri_grpc.RuntimeServiceStub(ch).Version(cri.VersionRequest(), timeout=5)
            # A bidi call whose servicer writes through the context, not by yielding: the first call
            # loads the service, the second goes through the metrics interceptor as registered.
            for n in range(2):
                init = streaming.pack(streaming_pb2.StreamInit(id=f"wharfd-test-metrics-{n}"))
                call = streaming_pb2_grpc.StreamingStub(ch).Stream(
                    iter([init]), metadata=(("containerd-namespace", "default"),), timeout=10
                )
                assert next(call).type_url == "google.protobuf.Empty"  # the ack
                call.cancel()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/metrics", timeout=5) as resp:
            text = resp.read().decode()
    assert (
        'grpc_server_handled_total{grpc_code="OK",grpc_method="Version",'
        'grpc_service="runtime.v1.RuntimeService",grpc_type="unary"}' in text
    )
    assert "grpc_server_handling_seconds_bucket" in text
    assert "wharfd_build_info_total" in text


def test_json_logs_on_request(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "d")

    def write_config() -> None:
        d.config_path.write_text(
            f'version = 2\nroot = "{d.root}"\nstate = "{d.state}"\n[grpc]\n  address = "{d.address}"\n'
            '[debug]\n  level = "info"\n  format = "json"\n'
        )

    d.write_config = write_config  # type: ignore[method-assign]
    d.start()
    assert d.stop() == 0
    lines = [line for line in d.log().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]
    assert {"time", "level", "msg", "logger"} <= records[0].keys()
    assert any("successfully booted" in r["msg"] for r in records)
    assert all(r["level"] != "debug" for r in records)  # info level filters debug out
