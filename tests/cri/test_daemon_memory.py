"""What an idle daemon keeps in memory: the modules it imports, its metrics, its malloc settings.

The daemon's start-up imports only what serving needs; the registry client
(aiohttp), the layer workers (multiprocessing), prometheus_client (metrics
off) and the CLI load when first used. These tests start a real daemon in a
fresh interpreter and read its ``sys.modules``, so an import added at the top
of a module on the daemon's path shows up here rather than as megabytes in
docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import pytest

from wharfd.runtime import malloc
from wharfd.runtime.services import lazy, plugins

# Started in a fresh interpreter: Daemon.start() as main() runs it, then the modules it holds.
_RUN = textwrap.dedent(
    """
    import asyncio, json, sys
    from wharfd.cri import config, daemon

    async def main():
        d = daemon.Daemon(config.load(sys.argv[1]))
        await d.start()
        try:
            started = sorted(p.registration.uri for p in d.plugins.plugins if p.started)
            return {"modules": sorted(sys.modules), "started": started}
        finally:
            await d.stop()

    print(json.dumps(asyncio.run(main())))
    """
)

# Loaded only by a pull, a push, an export or import, a metrics server, the CLI or tracing; never by an
# idle daemon.
HEAVY = (
    "aiohttp",
    "yarl",
    "multidict",
    "prometheus_client",
    "wsgiref",
    "http.server",
    "multiprocessing",
    "concurrent.futures.process",
    "opentelemetry",
    "kubernetes",
    "wharfd.runtime.registry.client",
    "wharfd.runtime.registry.transport",
    "wharfd.runtime.registry.push",
    "tarfile",
    "zstandard",
    "isal",
    "wharfd.runtime.images.archive",
    "wharfd.runtime.images.apply",
    "wharfd.runtime.images.push",
    "wharfd.runtime.ctr",
    "importlib.metadata",  # the version is a constant (runtime/version.py)
    "fractions",  # Go durations in the config are parsed with integers
    "decimal",
    "tempfile",  # with random and hmac: unique names come from os.urandom
    "secrets",
    "uuid",  # the installation's uuid is made from os.urandom
    # containerd's client API (ctr, wharf): each service loads on its first call (runtime/services/lazy.py)
    *(api.module for api in plugins.APIS),
    "wharfd.api.services.containers",
    "wharfd.api.services.content",
    "wharfd.api.services.diff",
    "wharfd.api.services.events",
    "wharfd.api.services.images",
    "wharfd.api.services.introspection",
    "wharfd.api.services.leases",
    "wharfd.api.services.namespaces",
    "wharfd.api.services.snapshots",
    "wharfd.api.services.streaming",
    "wharfd.api.services.tasks",
    "wharfd.api.services.transfer",
    "wharfd.api.services.version",
    "wharfd.api.types.transfer",
    "wharfd.runtime.images.transfer",
)


def _start_idle_daemon(tmp_path: Path, extra: str = "") -> dict[str, list[str]]:
    config = tmp_path / "config.toml"
    config.write_text(
        "version = 2\n"
        f'root = "{tmp_path / "root"}"\n'
        f'state = "{tmp_path / "state"}"\n'
        f'[grpc]\n  address = "{tmp_path / "run" / "wharfd.sock"}"\n' + extra
    )
    out = subprocess.run(
        [sys.executable, "-c", _RUN, str(config)], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result: dict[str, list[str]] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _loaded(modules: list[str], name: str) -> bool:
    return any(m == name or m.startswith(name + ".") for m in modules)


@pytest.fixture(scope="module")
def idle(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    return _start_idle_daemon(tmp_path_factory.mktemp("wharfd-test-idle"))


def test_an_idle_daemon_does_not_import_what_only_pulls_metrics_or_the_cli_need(
    idle: dict[str, list[str]],
) -> None:
    modules = idle["modules"]
    # The daemon did start its services (the check would be empty otherwise).
    assert "io.containerd.grpc.v1.cri" in idle["started"]
    assert any(uri.startswith("io.containerd.transfer.v1") for uri in idle["started"])
    assert "grpc" in modules and "wharfd.runtime.images.pull" in modules
    loaded = [name for name in HEAVY if _loaded(modules, name)]
    assert loaded == [], f"an idle daemon imported {loaded}"


def test_serving_metrics_imports_prometheus_client(tmp_path: Path) -> None:
    result = _start_idle_daemon(tmp_path, '[metrics]\n  address = "127.0.0.1:0"\n')
    assert "io.containerd.server.v1.metrics" in result["started"]
    assert _loaded(result["modules"], "prometheus_client")
    assert _loaded(result["modules"], "aiohttp")  # the HTTP server of /v1/metrics


def test_the_metrics_plugin_starts_before_the_plugins_whose_metrics_it_serves() -> None:
    from wharfd.cri import builtins
    from wharfd.runtime import metrics, plugin

    # It turns the metrics on (prom.enable) when it serves them: a plugin started before it
    # would count its start-up into metrics that drop updates.
    assert plugin.order(builtins.registrations())[0] is metrics.PLUGIN


def test_registry_names_load_on_first_use() -> None:
    probe = (
        "import sys\n"
        "from wharfd.runtime.registry import auth, hosts\n"
        "assert 'aiohttp' not in sys.modules, 'auth or hosts imported aiohttp'\n"
        "from wharfd.runtime.registry import Resolver, Transport\n"
        "from wharfd.runtime.registry.client import Resolver as R\n"
        "from wharfd.runtime.registry.transport import Transport as T\n"
        "assert Resolver is R and Transport is T and 'aiohttp' in sys.modules\n"
        "import wharfd.runtime.registry as registry\n"
        "try:\n"
        "    registry.NoSuchName\n"
        "except AttributeError:\n"
        "    pass\n"
        "else:\n"
        "    raise AssertionError('unknown names must raise AttributeError')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr


def test_metrics_drop_updates_until_enabled_then_are_prometheus_clients() -> None:
    probe = (
        "import sys\n"
        "from wharfd.runtime import prom\n"
        "c = prom.Counter('wharfd_test_early', 'declared before enable', ['kind'])\n"
        "h = prom.Histogram('wharfd_test_seconds', 'declared before enable', buckets=(1, 2))\n"
        "c.labels('x').inc(); c.inc(); h.observe(1.5); h.labels().observe(1)\n"
        "assert 'prometheus_client' not in sys.modules and not prom.enabled()\n"
        "prom.enable()\n"
        "late = prom.Counter('wharfd_test_late', 'declared after enable')\n"
        "c.labels('x').inc(2); h.observe(1.5); late.inc()\n"
        "from prometheus_client import REGISTRY\n"
        "assert REGISTRY.get_sample_value('wharfd_test_early_total', {'kind': 'x'}) == 2\n"
        "assert REGISTRY.get_sample_value('wharfd_test_seconds_bucket', {'le': '2.0'}) == 1\n"
        "assert REGISTRY.get_sample_value('wharfd_test_late_total') == 1\n"
        "prom.enable()  # twice: no duplicate registration\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr


def test_malloc_tuning_reaches_glibc() -> None:
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    # mallopt answers 1 on success; a wrong symbol or parameter number would answer 0.
    assert malloc.limit_arenas(8) is True
    assert malloc.trim() in (True, False)


def test_the_heap_is_trimmed_once_image_events_go_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    from wharfd.api.events import image_pb2
    from wharfd.cri import daemon
    from wharfd.runtime.events import Exchange

    monkeypatch.setattr(daemon, "TRIM_QUIET_SECONDS", 0.05)

    async def main() -> int:
        loop = asyncio.get_running_loop()
        trimmed = asyncio.Queue[None]()

        def trim() -> bool:  # runs in a worker thread, as the real one does
            loop.call_soon_threadsafe(trimmed.put_nowait, None)
            return True

        monkeypatch.setattr(malloc, "trim", trim)
        exchange = Exchange()
        task = asyncio.create_task(daemon._trim_after_images(exchange))
        await asyncio.sleep(0.01)
        assert exchange.subscribers == 1
        # Another topic, then a burst of three image events: one trim, at the burst's end.
        await exchange.publish("/snapshot/commit", image_pb2.ImageCreate(name="x"), namespace="k8s.io")
        for i in range(3):
            await exchange.publish("/images/create", image_pb2.ImageCreate(name=f"i{i}"), namespace="k8s.io")
        await asyncio.wait_for(trimmed.get(), 10)
        await exchange.publish("/images/update", image_pb2.ImageUpdate(name="i0"), namespace="k8s.io")
        await asyncio.wait_for(trimmed.get(), 10)
        await asyncio.sleep(0.2)  # nothing else is pending
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert exchange.subscribers == 0
        return trimmed.qsize()

    assert asyncio.run(main()) == 0


def test_a_task_stub_binds_only_the_methods_it_uses() -> None:
    from wharfd.runtime.tasks.task import TASK_V3
    from wharfd.runtime.ttrpc.client import TtrpcClient
    from wharfd.runtime.ttrpc.services import Stub

    # The daemon holds one stub per task; binding all 17 methods up front cost ~10 KiB each.
    stub = Stub(TtrpcClient.__new__(TtrpcClient), TASK_V3)
    assert stub._methods == {}
    state = stub.State
    assert stub.State is state and set(stub._methods) == {"State"}
    with pytest.raises(AttributeError, match="has no method Nope"):
        stub.Nope  # noqa: B018
    assert set(stub._methods) == {"State"}


def test_a_lazy_service_serves_the_methods_its_proto_declares() -> None:
    # The table is hack/protogen.py's (api/services/methods.py, kept current by `protogen.py --check`).
    api = lazy.Api("containerd.services.streaming.v1.Streaming", "wharfd.runtime.services.streaming")
    assert dict(api.methods) == {"Stream": (True, True)}
    assert dict(plugins.CONTENT.methods)["Write"] == (True, True)
    with pytest.raises(ValueError, match=r"no \.proto file"):
        lazy.Api("containerd.services.streaming.v1.Streams", "wharfd.runtime.services.streaming")


def test_the_first_calls_to_lazily_loaded_services_work_through_the_socket(tmp_path: Path) -> None:
    from google.protobuf import any_pb2, empty_pb2

    from e2e.daemon import Daemon
    from wharfd.api.services.content.v1 import content_pb2, content_pb2_grpc
    from wharfd.api.services.introspection.v1 import introspection_pb2_grpc
    from wharfd.api.services.namespaces.v1 import namespace_pb2, namespace_pb2_grpc
    from wharfd.api.services.streaming.v1 import streaming_pb2, streaming_pb2_grpc
    from wharfd.api.services.version.v1 import version_pb2_grpc
    from wharfd.runtime.services.streaming import pack

    daemon = Daemon(tmp_path / "d")
    daemon.start()
    md = (("containerd-namespace", "wharfd-test-lazy"),)

    async def calls() -> None:
        async with grpc.aio.insecure_channel(f"unix:{daemon.address}") as channel:
            version = version_pb2_grpc.VersionStub(channel)
            namespaces = namespace_pb2_grpc.NamespacesStub(channel)
            # Several unary calls arrive before the service has loaded: all wait for the one load.
            answers = await asyncio.gather(*(version.Version(empty_pb2.Empty()) for _ in range(3)))
            assert {a.version for a in answers} != {""}
            # A typed error on a service's first call keeps its status.
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await namespaces.Delete(namespace_pb2.DeleteNamespaceRequest(name="wharfd-test-none"))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            # Server streaming on a first call: an empty namespace lists no blobs.
            content = content_pb2_grpc.ContentStub(channel)
            assert [r async for r in content.List(content_pb2.ListContentRequest(), metadata=md)] == []
            # Bidi on a first call, whose servicer reads the request stream through the context.
            call = streaming_pb2_grpc.StreamingStub(channel).Stream(metadata=md)
            await call.write(pack(streaming_pb2.StreamInit(id="wharfd-test-stream")))
            ack = await call.read()
            assert isinstance(ack, any_pb2.Any) and ack.type_url == "google.protobuf.Empty"
            await call.done_writing()
            call.cancel()
            # A method the service does not have is still unimplemented.
            nope = channel.unary_unary("/containerd.services.introspection.v1.Introspection/Nope")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await nope(b"")
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
            server = await introspection_pb2_grpc.IntrospectionStub(channel).Server(empty_pb2.Empty())
            assert server.uuid and server.pid == daemon.proc.pid  # type: ignore[union-attr]

    try:
        asyncio.run(calls())
    finally:
        assert daemon.stop() == 0, daemon.log()
