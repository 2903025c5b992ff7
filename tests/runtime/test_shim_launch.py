"""Launching shims through ``start``: the zygote, pod grouping, readiness, -v/-info, Shutdown (no runc)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from google.protobuf import empty_pb2

from tests.runtime.test_shim_rig import NAMESPACE, SHIM, Rig, children_of, pid_alive, until, zygote
from wharfd.api.runtime.bootstrap.v1 import bootstrap_pb2
from wharfd.api.runtime.task.v3 import shim_pb2 as api
from wharfd.api.types import introspection_pb2
from wharfd.api.types.runc.options import oci_pb2
from wharfd.runtime.shim import launch

pytestmark = pytest.mark.skipif(
    not SHIM.exists(), reason="containerd-shim-wharf-v2 is not installed in the venv"
)


def bundle(rig: Rig, cid: str, annotations: dict[str, str] | None = None) -> Path:
    path = rig.root / cid
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"annotations": annotations or {}}))
    rig.bundles.append(path)
    return path


def run(body: Callable[[Rig], Awaitable[None]]) -> None:
    async def main() -> None:
        async with Rig(Path("/nonexistent")) as rig:  # no containers: no busybox needed
            await body(rig)

    asyncio.run(main())


def test_one_zygote_forks_a_shim_per_group_and_shims_exit_on_shutdown() -> None:
    async def body(rig: Rig) -> None:
        first = await rig.start("a", bundle(rig, "a"))
        second = await rig.start("b", bundle(rig, "b"))
        assert first != second
        clients = [await rig.connect(first), await rig.connect(second)]
        shims = sorted(rig.shim_pids)
        zygote_pid, _ = zygote(rig.socket_dir)
        assert len(shims) == 2 and children_of(zygote_pid) == set(shims)
        assert (rig.root / "a" / "address").read_text() == first
        for client in clients:
            connected = await rig.call(client, "Connect", api.ConnectRequest(id="a"), api.ConnectResponse)
            assert connected.task_pid == 0 and connected.version
            await rig.call(client, "Shutdown", api.ShutdownRequest(id="a"), empty_pb2.Empty)
        await until(lambda: not any(pid_alive(pid) for pid in shims))
        await until(lambda: not os.path.exists(first.removeprefix("unix://")))  # the shim removed its socket

    run(body)


def test_concurrent_starts_of_one_group_share_a_shim() -> None:
    async def body(rig: Rig) -> None:
        annotations = {"io.kubernetes.cri.sandbox-id": "pod"}
        cids = [f"c{i}" for i in range(4)]
        bundles = [bundle(rig, cid, annotations) for cid in cids]
        addresses = await asyncio.gather(*(rig.start(cid, b) for cid, b in zip(cids, bundles, strict=True)))
        assert len(set(addresses)) == 1
        await rig.connect(addresses[0])
        assert len(children_of(zygote(rig.socket_dir)[0])) == 1

    run(body)


def test_a_shim_that_cannot_start_fails_start() -> None:
    async def body(rig: Rig) -> None:
        path = bundle(rig, "bad")
        params = bootstrap_pb2.BootstrapParams(
            instance_id="bad", namespace=NAMESPACE, socket_dir=str(rig.socket_dir)
        )
        opts = oci_pb2.Options(shim_cgroup="/wharfd-test-no-such-cgroup")
        extension = params.extensions.add().value
        extension.type_url, extension.value = "containerd.runc.v1.Options", opts.SerializeToString()
        proc = await asyncio.create_subprocess_exec(
            str(SHIM), "-namespace", NAMESPACE, "-address", rig.grpc_address, "-id", "bad", "start",
            cwd=path, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate(params.SerializeToString())
        assert proc.returncode == 1 and out == b""
        assert b"shim cgroup '/wharfd-test-no-such-cgroup' does not exist" in err
        assert children_of(zygote(rig.socket_dir)[0]) == set()

    run(body)


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="creates cgroups: needs root")
def test_shim_joins_its_shim_cgroup() -> None:
    async def body(rig: Rig) -> None:
        cgroup = f"/{rig.tag}/shims"
        os.makedirs(f"/sys/fs/cgroup/memory{cgroup}")
        path = bundle(rig, "joined")
        params = bootstrap_pb2.BootstrapParams(
            instance_id="joined", namespace=NAMESPACE, socket_dir=str(rig.socket_dir)
        )
        extension = params.extensions.add().value
        extension.type_url = "containerd.runc.v1.Options"
        extension.value = oci_pb2.Options(shim_cgroup=cgroup).SerializeToString()
        out = await rig.run_shim(path, "-id", "joined", "start", stdin=params.SerializeToString())
        address = bootstrap_pb2.BootstrapResult.FromString(out).address
        await rig.connect(address)
        (shim,) = rig.shim_pids
        assert f"memory:{cgroup}\n" in cgroups_of(shim)

    run(body)


def cgroups_of(pid: int) -> str:
    with open(f"/proc/{pid}/cgroup", encoding="utf-8") as f:
        return f.read()


def test_version_and_info() -> None:
    version = subprocess.run([str(SHIM), "-v"], capture_output=True, text=True, check=True).stdout
    assert "Version:" in version and "Revision:" in version
    info = subprocess.run([str(SHIM), "-info"], input=b"", capture_output=True, check=True).stdout
    runtime = introspection_pb2.RuntimeInfo.FromString(info)
    assert runtime.name == "io.containerd.wharf.v2" and runtime.version.version
    if runtime.features.type_url:  # runc >= 1.1 reports its features
        assert json.loads(runtime.features.value)["ociVersionMax"]


def test_start_refuses_mismatched_bootstrap(tmp_path: Path) -> None:
    params = bootstrap_pb2.BootstrapParams(instance_id="other", namespace="ns").SerializeToString()
    result = subprocess.run(
        [str(SHIM), "-namespace", "ns", "-address", "/a", "-id", "mine", "start"],
        input=params, capture_output=True, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert result.returncode == 1 and b"instance_id 'other' does not match -id 'mine'" in result.stderr


def test_no_grpc_in_the_shim_and_no_protobuf_in_start() -> None:
    start = (
        "import sys, wharfd.runtime.shim.main;"
        "print(sorted(m for m in sys.modules if 'protobuf' in m or m == 'typing'))"
    )
    result = subprocess.run([sys.executable, "-c", start], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"  # the start path decodes its few messages itself
    zygote = (
        "import sys, wharfd.runtime.shim.zygote as z, wharfd.runtime.version;"
        "z.server.warm_up(2);"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'grpc'))"
    )
    result = subprocess.run([sys.executable, "-c", zygote], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_zygote_tag_covers_every_module_a_shim_runs() -> None:
    # A change to any module the zygote loaded must change its control socket (a new zygote).
    code = (
        "import sys, os, wharfd.runtime.shim.zygote as z, wharfd.runtime.version;"
        "z.server.warm_up(2);"
        "print('\\n'.join(m.__file__ for n, m in sys.modules.items()"
        " if n.startswith('wharfd.runtime') and getattr(m, '__file__', None)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    runtime_dir = Path(launch.__file__).parent.parent
    folders = {os.path.normpath(runtime_dir / d) for d in launch.CODE_DIRS}
    loaded = result.stdout.split()
    assert any(path.endswith("runtime/ttrpc/server.py") for path in loaded)
    assert {path for path in loaded if os.path.dirname(path) not in folders} == set()


def test_connect_waits_out_a_full_listen_backlog(tmp_path: Path) -> None:
    """A busy zygote (backlog full) is waited for, not taken for absent (EAGAIN at once)."""
    import socket
    import threading
    import time

    path = str(tmp_path / "busy.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(0)
        queued = []
        while True:  # fill the backlog
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(path)
            except BlockingIOError:
                s.close()
                break
            queued.append(s)
        assert launch._can_connect(path)  # full, yet alive

        def drain() -> None:
            time.sleep(0.2)
            for _ in range(len(queued) + 1):
                listener.accept()[0].close()

        drainer = threading.Thread(target=drain)
        drainer.start()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(30)
            started = time.monotonic()
            assert launch._connect(sock, path, 10.0)
            assert time.monotonic() - started >= 0.15
        drainer.join()
        for s in queued:
            s.close()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:  # nothing listens any more
        sock.settimeout(1)
        assert not launch._connect(sock, path, 1.0)


def test_daemon_starts_our_shim_in_process_as_start_would(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Launcher's fast path: no exec once the zygote runs, and the same answer as ``start``."""
    from wharfd.runtime.tasks import shim
    from wharfd.runtime.tasks.bundle import Bundle

    execs: list[str] = []
    real_run = shim._run

    async def counting_run(argv: list[str], *args: object, **kwargs: object) -> tuple[int, bytes, bytes]:
        execs.append(argv[-1])
        return await real_run(argv, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(shim, "_run", counting_run)

    async def body(rig: Rig) -> None:
        launcher = shim.Launcher(
            grpc_address=rig.grpc_address,
            ttrpc_address=rig.ttrpc_address,
            publish_binary="/bin/true",
            socket_dir=str(rig.socket_dir),
        )

        def task(cid: str) -> Bundle:
            return Bundle(NAMESPACE, cid, bundle(rig, cid), rig.root / "work" / cid)

        first = task("a")
        address = await launcher.start(str(SHIM), first, rig.options_any())
        rig.addresses.add(address.address)
        assert execs[-1] == "start"  # no zygote yet: `start` is exec'd and starts it
        execs.clear()
        second = task("b")
        fast = await launcher.start(str(SHIM), second, rig.options_any())
        rig.addresses.add(fast.address)
        assert execs == [] and fast.version == 3 and fast.protocol == "ttrpc"
        assert (second.path / "address").read_text() == fast.address != address.address
        client = await rig.connect(fast.address)
        connected = await rig.call(client, "Connect", api.ConnectRequest(id="b"), api.ConnectResponse)
        assert connected.version
        # The very answer `start` itself gives, for a new group and for an existing one.
        for cid in ("c", "b"):
            exec_bundle = task(cid) if cid == "c" else second
            params = launcher._params(exec_bundle, rig.options_any()).SerializeToString()
            by_exec = await launcher._start(str(SHIM), exec_bundle, params)
            rig.addresses.add(by_exec.address)
            written = (exec_bundle.path / "address").read_text()
            (exec_bundle.path / "address").unlink()
            in_process = await launcher.start(str(SHIM), exec_bundle, rig.options_any())
            assert in_process == by_exec and (exec_bundle.path / "address").read_text() == written

    run(body)
