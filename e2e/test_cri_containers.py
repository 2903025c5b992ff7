"""CRI containers through the real daemon, with real runc, CNI plugins and registry (e2e/cri_support.py).

Covers: output in the CRI log file exactly, exit codes and reasons (Completed,
Error, OOMKilled, StartError), ExecSync (exit codes, output, timeout), stop and
remove idempotence, networking between host and pods (pod IP, hostPort),
a shared PID namespace, log lines across a daemon SIGKILL, log reopening,
resource updates, and bad input leaving nothing behind.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from e2e.cri_support import TIMEOUT, CriRig, needs_root_and_runc
from wharfd.api.cri.v1 import api_pb2 as cri

pytestmark = [*needs_root_and_runc(), pytest.mark.slow]

LINE = re.compile(rb"^(\S+) (stdout|stderr) ([PF]) (.*)$")


@pytest.fixture(scope="module")
def rig() -> Iterator[CriRig]:
    with CriRig() as r:
        r.pull()
        yield r


class Pod:
    """A running pod of the rig and helpers for its containers."""

    def __init__(self, rig: CriRig, name: str, *, handler: str = "", **kw: object) -> None:
        self.rig = rig
        self.config = rig.pod_config(name, **kw)  # type: ignore[arg-type]
        request = cri.RunPodSandboxRequest(config=self.config, runtime_handler=handler)
        self.id = rig.runtime.RunPodSandbox(request, timeout=TIMEOUT).pod_sandbox_id

    @property
    def ip(self) -> str:
        return str(self.rig.pod_status(self.id).status.network.ip)

    def create(self, config: cri.ContainerConfig) -> str:
        request = cri.CreateContainerRequest(
            pod_sandbox_id=self.id, config=config, sandbox_config=self.config
        )
        return str(self.rig.runtime.CreateContainer(request, timeout=TIMEOUT).container_id)

    def run(self, name: str, *command: str, **kw: object) -> str:
        cid = self.create(self.rig.container_config(name, command, **kw))  # type: ignore[arg-type]
        self.rig.runtime.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=TIMEOUT)
        return cid

    def log_path(self, name: str, attempt: int = 0) -> Path:
        return Path(self.config.log_directory) / f"{name}_{attempt}.log"

    def remove(self) -> None:
        self.rig.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=self.id), timeout=TIMEOUT)
        self.rig.runtime.RemovePodSandbox(
            cri.RemovePodSandboxRequest(pod_sandbox_id=self.id), timeout=TIMEOUT
        )


def status(rig: CriRig, cid: str, verbose: bool = False) -> cri.ContainerStatusResponse:
    request = cri.ContainerStatusRequest(container_id=cid, verbose=verbose)
    reply: cri.ContainerStatusResponse = rig.runtime.ContainerStatus(request, timeout=TIMEOUT)
    return reply


def wait_exited(rig: CriRig, cid: str, timeout: float = 30.0) -> cri.ContainerStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = status(rig, cid).status
        if got.state == cri.CONTAINER_EXITED:
            return got
        time.sleep(0.05)
    raise AssertionError(f"container {cid} still {cri.ContainerState.Name(got.state)} after {timeout}s")


def entries(path: Path) -> list[tuple[str, str, bytes]]:
    out = []
    for line in path.read_bytes().split(b"\n")[:-1]:
        match = LINE.match(line)
        assert match, line
        out.append((match[2].decode(), match[3].decode(), match[4]))
    return out


def exec_sync(rig: CriRig, cid: str, *cmd: str, timeout: int = 0) -> cri.ExecSyncResponse:
    request = cri.ExecSyncRequest(container_id=cid, cmd=list(cmd), timeout=timeout)
    reply: cri.ExecSyncResponse = rig.runtime.ExecSync(request, timeout=TIMEOUT)
    return reply


# --- output and exits -----------------------------------------------------------------------------


def test_output_reaches_the_log_exactly(rig: CriRig) -> None:
    pod = Pod(rig, "logs")
    script = "echo hello; echo 'to stderr' >&2; printf 'a\\r\\nb\\n'; printf 'no newline'"
    cid = pod.run("echo", "sh", "-c", script)
    got = wait_exited(rig, cid)
    assert (got.exit_code, got.reason) == (0, "Completed")
    assert got.log_path == str(pod.log_path("echo"))
    logged = entries(pod.log_path("echo"))
    assert [(t, c) for s, t, c in logged if s == "stdout"] == [
        ("F", b"hello"),
        ("F", b"a"),
        ("F", b"b"),
        ("P", b"no newline"),
    ]
    assert [(t, c) for s, t, c in logged if s == "stderr"] == [("F", b"to stderr")]
    pod.remove()


@pytest.mark.parametrize(("script", "code", "reason"), [("exit 3", 3, "Error"), ("kill -9 $$", 137, "Error")])
def test_exit_codes(rig: CriRig, script: str, code: int, reason: str) -> None:
    pod = Pod(rig, "exits")
    cid = pod.run("exit", "sh", "-c", script)
    got = wait_exited(rig, cid)
    assert (got.exit_code, got.reason) == (code, reason)
    assert got.finished_at >= got.started_at >= got.created_at > 0
    pod.remove()


def test_oom_killed(rig: CriRig) -> None:
    pod = Pod(rig, "oom")
    config = rig.container_config("hog", ["sh", "-c", "x=aaaaaaaaaaaaaaaa; while true; do x=$x$x; done"])
    config.linux.resources.memory_limit_in_bytes = 16 << 20
    cid = pod.create(config)
    rig.runtime.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=TIMEOUT)
    got = wait_exited(rig, cid)
    assert (got.exit_code, got.reason) == (137, "OOMKilled")
    assert got.resources.linux.memory_limit_in_bytes == 16 << 20
    pod.remove()


def test_add_all_capabilities(rig: CriRig) -> None:
    pod = Pod(rig, "allcaps")
    config = rig.container_config("caps", ["sh", "-c", "grep CapEff /proc/self/status"])
    config.linux.security_context.capabilities.add_capabilities.append("ALL")
    cid = pod.create(config)
    rig.runtime.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=TIMEOUT)
    got = wait_exited(rig, cid)
    # "ALL" is what the daemon holds, so runc can grant it even where root lacks some.
    assert (got.exit_code, got.reason) == (0, "Completed")
    pod.remove()


def test_recursive_read_only_mount(rig: CriRig, tmp_path: Path) -> None:
    host = tmp_path / "rro"
    (host / "sub").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "wharfd-test-rro", str(host / "sub")], check=True)
    try:
        pod = Pod(rig, "rro")
        config = rig.container_config("rro", ["sh", "-c", "touch /data/sub/x && echo wrote || echo refused"])
        config.mounts.append(
            cri.Mount(container_path="/data", host_path=str(host), readonly=True, recursive_read_only=True)
        )
        cid = pod.create(config)
        rig.runtime.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=TIMEOUT)
        assert wait_exited(rig, cid).exit_code == 0
        # Read-only all the way down: the submount under the bind is read-only too.
        # (stdout and stderr lines may land in either order in the log.)
        logged = pod.log_path("rro").read_text()
        assert " stdout F refused\n" in logged and "wrote" not in logged
        assert not (host / "sub" / "x").exists()
        pod.remove()
    finally:
        subprocess.run(["umount", "-l", str(host / "sub")], check=False)


def test_image_volume(rig: CriRig) -> None:
    image_id = rig.pull()
    pod = Pod(rig, "imgvol")
    config = rig.container_config(
        "iv",
        ["sh", "-c", "ls /vol/bin/busybox && touch /vol/x 2>/dev/null && echo writable || echo read-only"],
    )
    config.mounts.append(cri.Mount(container_path="/vol", image=cri.ImageSpec(image=image_id), readonly=True))
    sub = rig.container_config("ivsub", ["sh", "-c", "ls /one/busybox"])
    sub.mounts.append(
        cri.Mount(
            container_path="/one", image=cri.ImageSpec(image=image_id), image_sub_path="bin", readonly=True
        )
    )
    cid, sub_id = pod.create(config), pod.create(sub)
    for c in (cid, sub_id):
        rig.runtime.StartContainer(cri.StartContainerRequest(container_id=c), timeout=TIMEOUT)
        assert wait_exited(rig, c).exit_code == 0
    assert pod.log_path("iv").read_text().rstrip().endswith("read-only")
    (mount,) = [m for m in status(rig, cid).status.mounts if m.container_path == "/vol"]
    assert mount.image.image_ref == image_id
    bad = rig.container_config("ivbad", ["true"])
    bad.mounts.append(
        cri.Mount(container_path="/b", image=cri.ImageSpec(image=image_id), image_sub_path="../../etc")
    )
    with pytest.raises(grpc.RpcError) as err:
        pod.create(bad)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "image_sub_path" in (
        err.value.details() or ""
    )
    for c in (cid, sub_id):
        rig.runtime.RemoveContainer(cri.RemoveContainerRequest(container_id=c), timeout=TIMEOUT)
    assert not [
        line for line in Path("/proc/self/mounts").read_text().splitlines() if "image-volumes" in line
    ]
    assert not [k for k in rig.k8s_snapshots() if "-iv" in k]
    pod.remove()


def test_start_error(rig: CriRig) -> None:
    pod = Pod(rig, "starterr")
    cid = pod.create(rig.container_config("missing", ["/no/such/binary"]))
    with pytest.raises(grpc.RpcError):
        rig.runtime.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=TIMEOUT)
    got = status(rig, cid).status
    assert got.state == cri.CONTAINER_EXITED
    assert (got.exit_code, got.reason) == (128, "StartError")
    assert "no/such/binary" in got.message
    with pytest.raises(grpc.RpcError) as err:  # only a CREATED container starts
        rig.runtime.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    pod.remove()


# --- exec -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("handler", ["runc", "runc-stock"])  # our shim (the default), the stock one
def test_exec_sync(rig: CriRig, handler: str) -> None:
    pod = Pod(rig, f"exec-{handler}", handler=handler)
    cid = pod.run("sleeper", "sleep", "1000")
    reply = exec_sync(rig, cid, "sh", "-c", "echo out; echo err >&2; exit 5")
    assert (reply.stdout, reply.stderr, reply.exit_code) == (b"out\n", b"err\n", 5)
    big = exec_sync(
        rig,
        cid,
        "sh",
        "-c",
        "i=0; while [ $i -lt 3000 ]; do echo 0123456789012345678901234567890123456789; i=$((i+1)); done",
    )
    assert big.exit_code == 0 and big.stdout == b"0123456789012345678901234567890123456789\n" * 3000
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        exec_sync(rig, cid, "sleep", "30", timeout=1)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - start < 15
    assert "sleep 30" not in exec_sync(rig, cid, "ps").stdout.decode()  # the timed-out exec was killed
    with pytest.raises(grpc.RpcError) as err:
        exec_sync(rig, cid)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    pod.remove()


# --- stop and remove ------------------------------------------------------------------------------


def test_stop_and_remove_are_idempotent(rig: CriRig) -> None:
    pod = Pod(rig, "stop")
    term = pod.run("term", "sleep", "1000")
    stubborn = pod.run("stubborn", "sh", "-c", "trap '' TERM; while true; do sleep 1; done")
    time.sleep(0.5)  # let the trap be installed
    rig.runtime.StopContainer(cri.StopContainerRequest(container_id=term, timeout=10), timeout=TIMEOUT)
    got = status(rig, term).status
    assert (got.state, got.exit_code, got.reason) == (cri.CONTAINER_EXITED, 143, "Error")
    start = time.monotonic()
    rig.runtime.StopContainer(cri.StopContainerRequest(container_id=stubborn, timeout=2), timeout=TIMEOUT)
    assert 1.5 < time.monotonic() - start < 15  # waited for the grace period, then SIGKILL
    assert status(rig, stubborn).status.exit_code == 137
    for cid in (term, stubborn):
        rig.runtime.StopContainer(cri.StopContainerRequest(container_id=cid, timeout=1), timeout=TIMEOUT)
        rig.runtime.RemoveContainer(cri.RemoveContainerRequest(container_id=cid), timeout=TIMEOUT)
        rig.runtime.RemoveContainer(cri.RemoveContainerRequest(container_id=cid), timeout=TIMEOUT)
        with pytest.raises(grpc.RpcError) as err:
            status(rig, cid)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert cid not in rig.k8s_containers() and cid not in rig.k8s_snapshots()
        # Stopping what no longer exists is success too: StopContainer is idempotent.
        rig.runtime.StopContainer(cri.StopContainerRequest(container_id=cid, timeout=1), timeout=TIMEOUT)
    assert pod.log_path("term").exists()  # the log stays: kubelet owns it
    running = pod.run("running", "sleep", "1000")
    rig.runtime.RemoveContainer(cri.RemoveContainerRequest(container_id=running), timeout=TIMEOUT)  # force
    assert running not in rig.k8s_containers()
    pod.remove()


# --- bad input ------------------------------------------------------------------------------------


def test_bad_input_leaves_nothing_behind(rig: CriRig) -> None:
    pod = Pod(rig, "bad")
    before = (set(rig.k8s_containers()), set(rig.k8s_snapshots()))

    def code_of(config: cri.ContainerConfig, pod_id: str = pod.id) -> grpc.StatusCode:
        request = cri.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod.config)
        with pytest.raises(grpc.RpcError) as err:
            rig.runtime.CreateContainer(request, timeout=TIMEOUT)
        return err.value.code()

    assert code_of(rig.container_config("c", ["true"]), "f" * 64) == grpc.StatusCode.NOT_FOUND
    bad_mount = rig.container_config("c", ["true"])
    bad_mount.mounts.append(cri.Mount(container_path="/x", host_path="relative/path"))
    assert code_of(bad_mount) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(rig.container_config("c", ["true"], image="no.such/image:1")) == grpc.StatusCode.NOT_FOUND
    bad_user = rig.container_config("c", ["true"])  # fails after the snapshot was prepared
    bad_user.linux.security_context.run_as_username = "nobody-here"
    assert code_of(bad_user) == grpc.StatusCode.INVALID_ARGUMENT
    assert (set(rig.k8s_containers()), set(rig.k8s_snapshots())) == before
    first = pod.create(rig.container_config("c", ["true"]))  # the name was never taken
    with pytest.raises(grpc.RpcError) as err:
        pod.create(rig.container_config("c", ["true"]))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert first in (err.value.details() or "")
    pod.remove()


# --- networking -----------------------------------------------------------------------------------

HTTPD = "mkdir -p /www && echo hello-from-$(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www"


def http_get(url: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                return str(reply.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_pod_ip_reachable_from_host_and_other_pod(rig: CriRig) -> None:
    server = Pod(rig, "web", hostname="web")
    server.run("httpd", "sh", "-c", HTTPD)
    assert http_get(f"http://{server.ip}:8080/") == "hello-from-web\n"
    client = Pod(rig, "client")
    cid = client.run("client", "sleep", "1000")
    reply = exec_sync(rig, cid, "wget", "-qO-", f"http://{server.ip}:8080/", timeout=20)
    assert (reply.exit_code, reply.stdout) == (0, b"hello-from-web\n"), reply.stderr
    client.remove()
    server.remove()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_host_port(rig: CriRig) -> None:
    port = _free_port()
    mapping = cri.PortMapping(protocol=cri.TCP, container_port=8080, host_port=port)
    pod = Pod(rig, "hostport", hostname="hp", port_mappings=[mapping])
    pod.run("httpd", "sh", "-c", HTTPD)
    assert http_get(f"http://{pod.ip}:8080/") == "hello-from-hp\n"
    # portmap DNATs locally originated traffic too and sets route_localnet on the bridge.
    assert http_get(f"http://127.0.0.1:{port}/") == "hello-from-hp\n"
    pod.remove()


def test_shared_pid_namespace(rig: CriRig) -> None:
    pod = Pod(rig, "sharedpid")
    ids = {}
    for name, command, mode in (
        ("a", ["sleep", "4242"], cri.POD),
        ("b", ["sleep", "1000"], cri.POD),
        ("isolated", ["sleep", "1000"], cri.CONTAINER),
    ):
        config = rig.container_config(name, command)
        config.linux.security_context.namespace_options.pid = mode
        ids[name] = pod.create(config)
        rig.runtime.StartContainer(cri.StartContainerRequest(container_id=ids[name]), timeout=TIMEOUT)
    assert "sleep 4242" in exec_sync(rig, ids["b"], "ps", "-o", "args").stdout.decode()
    assert "sleep 4242" not in exec_sync(rig, ids["isolated"], "ps", "-o", "args").stdout.decode()
    pod.remove()


# --- logs across a daemon crash -------------------------------------------------------------------

COUNT = "i=0; while [ $i -lt {n} ]; do echo line $i; i=$((i+1)); {pause} done"


@pytest.mark.parametrize("handler", ["runc", "runc-stock"])  # our shim (the default), the stock one
def test_log_lines_survive_a_daemon_kill(rig: CriRig, handler: str) -> None:
    pod = Pod(rig, f"crash-{handler}", handler=handler)
    slow = pod.run("slow", "sh", "-c", COUNT.format(n=300, pause="sleep 0.01;"))
    # This one writes everything, and exits, while the daemon is down.
    late = pod.run("late", "sh", "-c", "sleep 1.5; " + COUNT.format(n=2000, pause=""))
    time.sleep(0.8)
    rig.crash()
    time.sleep(2.5)
    rig.restart()
    for cid, name, n in ((slow, "slow", 300), (late, "late", 2000)):
        got = wait_exited(rig, cid, timeout=60)
        assert got.exit_code == 0
        assert entries(pod.log_path(name)) == [("stdout", "F", b"line %d" % i) for i in range(n)], name
    pod.remove()


# --- log rotation, tty, updates, listing, status ------------------------------------------------


def test_reopen_container_log(rig: CriRig) -> None:
    pod = Pod(rig, "reopen")
    cid = pod.run("ticker", "sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.05; done")
    path = pod.log_path("ticker")
    deadline = time.monotonic() + 10
    while not path.exists() or len(entries(path)) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    rotated = path.with_name(path.name + ".20261128-060000")
    path.rename(rotated)
    rig.runtime.ReopenContainerLog(cri.ReopenContainerLogRequest(container_id=cid), timeout=TIMEOUT)
    time.sleep(0.5)
    rig.runtime.StopContainer(cri.StopContainerRequest(container_id=cid, timeout=5), timeout=TIMEOUT)
    old, new = entries(rotated), entries(path)
    assert old and new
    numbers = [int(c.split()[1]) for _, _, c in old + new]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # no line lost or repeated
    path.rename(rotated)
    with pytest.raises(grpc.RpcError) as err:  # not running: an error, and no new file
        rig.runtime.ReopenContainerLog(cri.ReopenContainerLogRequest(container_id=cid), timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert not path.exists()
    pod.remove()


def test_tty_output_is_stdout_only(rig: CriRig) -> None:
    pod = Pod(rig, "tty")
    cid = pod.run("tty", "sh", "-c", "echo out; echo err >&2", tty=True)
    wait_exited(rig, cid)
    assert entries(pod.log_path("tty")) == [("stdout", "F", b"out"), ("stdout", "F", b"err")]
    pod.remove()


def _cgroup(rig: CriRig, controller: str, cid: str, name: str) -> str:
    return Path(f"/sys/fs/cgroup/{controller}{rig.cgroup_parent}/{cid}/{name}").read_text().strip()


def test_update_container_resources(rig: CriRig) -> None:
    pod = Pod(rig, "update")
    config = rig.container_config("app", ["sleep", "1000"])
    config.linux.resources.memory_limit_in_bytes = 64 << 20
    cid = pod.create(config)
    created = cri.LinuxContainerResources(cpu_period=100000, cpu_quota=20000)
    rig.runtime.UpdateContainerResources(  # before start: lands in the spec
        cri.UpdateContainerResourcesRequest(container_id=cid, linux=created), timeout=TIMEOUT
    )
    rig.runtime.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=TIMEOUT)
    assert _cgroup(rig, "cpu", cid, "cpu.cfs_quota_us") == "20000"
    assert _cgroup(rig, "memory", cid, "memory.limit_in_bytes") == str(64 << 20)
    update = cri.LinuxContainerResources(memory_limit_in_bytes=128 << 20, cpu_quota=50000)
    rig.runtime.UpdateContainerResources(
        cri.UpdateContainerResourcesRequest(container_id=cid, linux=update), timeout=TIMEOUT
    )
    assert _cgroup(rig, "memory", cid, "memory.limit_in_bytes") == str(128 << 20)
    assert _cgroup(rig, "cpu", cid, "cpu.cfs_quota_us") == "50000"
    got = status(rig, cid).status.resources.linux
    assert (got.memory_limit_in_bytes, got.cpu_quota, got.cpu_period) == (128 << 20, 50000, 100000)
    bad = cri.LinuxContainerResources(cpuset_cpus="not-a-list")
    with pytest.raises(grpc.RpcError) as err:
        rig.runtime.UpdateContainerResources(
            cri.UpdateContainerResourcesRequest(container_id=cid, linux=bad), timeout=TIMEOUT
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert status(rig, cid).status.resources.linux.memory_limit_in_bytes == 128 << 20
    pod.remove()


def test_list_and_status(rig: CriRig) -> None:
    first, second = Pod(rig, "list-a"), Pod(rig, "list-b")
    running = first.run("run", "sleep", "1000", labels={"tier": "web", "app": "x"})
    created = first.create(rig.container_config("created", ["true"], labels={"tier": "web"}))
    other = second.run("other", "sleep", "1000", labels={"tier": "db"})

    def ids(**fields: object) -> set[str]:
        wanted = cri.ContainerFilter(**fields)  # type: ignore[arg-type]
        reply = rig.runtime.ListContainers(cri.ListContainersRequest(filter=wanted), timeout=TIMEOUT)
        return {c.id for c in reply.containers}

    assert {running, created, other} <= ids()
    assert ids(id=running[:12]) == {running}
    assert ids(pod_sandbox_id=first.id[:12]) == {running, created}
    assert ids(state=cri.ContainerStateValue(state=cri.CONTAINER_CREATED), pod_sandbox_id=first.id) == {
        created
    }
    assert ids(label_selector={"tier": "web"}) == {running, created}
    assert ids(label_selector={"tier": "web", "app": "x"}) == {running}
    assert ids(id="ffffffff") == set()
    streamed = {
        c.id
        for chunk in rig.runtime.StreamContainers(cri.StreamContainersRequest(), timeout=TIMEOUT)
        for c in chunk.containers
    }
    assert streamed == ids()

    reply = status(rig, running, verbose=True)
    got = reply.status
    assert got.state == cri.CONTAINER_RUNNING and got.started_at > got.created_at > 0
    assert got.metadata.name == "run" and dict(got.labels) == {"tier": "web", "app": "x"}
    assert got.image_id.startswith("sha256:") and got.image.image.endswith("e2e/busybox:1")
    assert "@sha256:" in got.image_ref
    assert (got.user.linux.uid, got.user.linux.gid) == (0, 0)
    info = __import__("json").loads(reply.info["info"])
    assert info["sandboxID"] == first.id and info["pid"] > 0 and info["snapshotKey"] == running
    assert info["runtimeType"] == "io.containerd.wharf.v2"  # the default handler runs our shim
    assert info["runtimeSpec"]["annotations"]["io.kubernetes.cri.sandbox-id"] == first.id
    assert info["config"]["metadata"]["name"] == "run"
    with pytest.raises(grpc.RpcError) as err:
        status(rig, "f" * 64)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    first.remove()
    second.remove()
