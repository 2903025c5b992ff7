"""Pod sandboxes through the daemon's CRI socket: real runc, real CNI plugins, a real registry on 127.0.0.1.

Each test module rig (:class:`e2e.cri_support.CriRig`) has its own bridge and
/24, a pause image built from a static C program and a busybox image in its
registry. Crash and offline tests get rigs of their own.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from e2e.cri_support import PAUSE_REF, TIMEOUT, CriRig, addresses_in, image_archive, needs_root_and_runc
from wharfd.api.cri.v1 import api_pb2 as cri

pytestmark = needs_root_and_runc()


@pytest.fixture(scope="module")
def rig() -> Iterator[CriRig]:
    with CriRig() as r:
        yield r


def _code(exc: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return exc.value.code()


def _details(exc: pytest.ExceptionInfo[grpc.RpcError]) -> str:
    return str(exc.value.details())


def _stop(rig: CriRig, pod_id: str) -> None:
    rig.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=TIMEOUT)


def _remove(rig: CriRig, pod_id: str) -> None:
    rig.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=TIMEOUT)


def _leftovers(rig: CriRig) -> tuple[list[str], list[str], list[str], set[str]]:
    """netns, k8s.io container records, active snapshots (not image layers) and IPAM holds."""
    active = [k for k in rig.k8s_snapshots() if not k.startswith("sha256:")]
    return rig.netns_files(), rig.k8s_containers(), active, _ipam_files(rig)


def _ipam_files(rig: CriRig) -> set[str]:
    """Addresses host-local holds for the rig's network."""
    folder = rig.base / "ipam" / f"wharfd-test-{rig.tag}"
    if not folder.is_dir():
        return set()
    return {p.name for p in folder.iterdir() if p.name[0].isdigit()}


# --- run, status, list ------------------------------------------------------------------------


def test_pod_is_ready_with_an_address_in_the_subnet(rig: CriRig) -> None:
    pod_id = rig.run_pod("web", labels={"app": "web"}, annotations={"note": "kept"})
    reply = rig.pod_status(pod_id, verbose=True)
    status = reply.status
    assert status.state == cri.SANDBOX_READY
    assert status.metadata.name == "web" and status.labels["app"] == "web"
    assert status.annotations == {"note": "kept"}
    assert abs(status.created_at - time.time_ns()) < 120 * 10**9
    ip = ipaddress.ip_address(status.network.ip)
    assert ip in rig.subnet
    info = json.loads(reply.info["info"])
    for key in ("pid", "processStatus", "netNamespaceClosed", "image", "snapshotKey", "snapshotter",
                "runtimeHandler", "runtimeType", "runtimeOptions", "config", "runtimeSpec", "cniResult"):  # fmt: skip
        assert key in info, key
    assert info["processStatus"] == "running" and info["pid"] > 0
    assert info["runtimeType"] == "io.containerd.wharf.v2"  # the default handler runs our shim
    spec = info["runtimeSpec"]
    netns = next(n["path"] for n in spec["linux"]["namespaces"] if n["type"] == "network")
    # The address CNI reported is the one on eth0 inside the pod's netns, and lo is up.
    assert addresses_in(netns) == [status.network.ip]
    assert addresses_in(netns, "lo") == ["127.0.0.1"]
    assert spec["annotations"]["io.kubernetes.cri.sandbox-id"] == pod_id
    assert spec["linux"]["cgroupsPath"] == f"{rig.cgroup_parent}/{pod_id}"
    # The pause process runs in that cgroup.
    procs = Path(f"/sys/fs/cgroup/pids/{rig.cgroup_parent.lstrip('/')}/{pod_id}/cgroup.procs")
    if procs.exists():
        assert str(info["pid"]) in procs.read_text().split()
    _stop(rig, pod_id)
    _remove(rig, pod_id)


def test_pod_ip_is_reachable_from_the_host_and_through_a_host_port(rig: CriRig) -> None:
    port_map = cri.PortMapping(protocol=cri.TCP, container_port=8080, host_port=18080 + os.getpid() % 1000)
    pod_id = rig.run_pod("reach", port_mappings=[port_map])
    ip = rig.pod_status(pod_id).status.network.ip
    netns = rig.netns_dir / next(n for n in rig.netns_files() if pod_id.startswith(n[4:]))
    www = rig.base / "www"
    www.mkdir(exist_ok=True)
    (www / "index.html").write_text("hello from the pod\n")
    server = subprocess.Popen(
        ["nsenter", f"--net={netns}", "/bin/busybox", "httpd", "-f", "-p", "8080", "-h", str(www)]
    )
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        gateway = str(next(rig.subnet.hosts()))
        for url in (f"http://{ip}:8080/", f"http://{gateway}:{port_map.host_port}/"):
            body = ""
            for _ in range(50):
                try:
                    body = opener.open(url, timeout=2).read().decode()
                    break
                except OSError:
                    time.sleep(0.1)
            assert body == "hello from the pod\n", url
    finally:
        server.kill()
        server.wait()
    _stop(rig, pod_id)
    _remove(rig, pod_id)


@pytest.mark.parametrize(
    ("handler", "runtime_type"),
    [("wharf", "io.containerd.wharf.v2"), ("runc-stock", "io.containerd.runc.v2")],
)
def test_pod_with_another_runtime_handler(rig: CriRig, handler: str, runtime_type: str) -> None:
    """The handler picks the runtime: ``wharf`` runs our shim, ``runc-stock`` containerd's shim."""
    request = cri.RunPodSandboxRequest(config=rig.pod_config(f"h-{handler}"), runtime_handler=handler)
    pod_id = rig.runtime.RunPodSandbox(request, timeout=TIMEOUT).pod_sandbox_id
    reply = rig.pod_status(pod_id, verbose=True)
    assert reply.status.state == cri.SANDBOX_READY and reply.status.runtime_handler == handler
    info = json.loads(reply.info["info"])
    assert info["runtimeType"] == runtime_type
    # The pause process's parent is the shim (a subreaper): the stock one is the Go binary.
    shim = int(Path(f"/proc/{info['pid']}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert os.readlink(f"/proc/{shim}/exe").endswith("containerd-shim-runc-v2") == (handler == "runc-stock")
    assert ipaddress.ip_address(reply.status.network.ip) in rig.subnet
    _stop(rig, pod_id)
    assert rig.pod_status(pod_id).status.state == cri.SANDBOX_NOTREADY
    _remove(rig, pod_id)


def test_host_network_pod(rig: CriRig) -> None:
    before = rig.netns_files()
    pod_id = rig.run_pod("hostnet", host_network=True)
    reply = rig.pod_status(pod_id, verbose=True)
    assert reply.status.state == cri.SANDBOX_READY
    assert reply.status.network.ip == ""
    assert reply.status.linux.namespaces.options.network == cri.NODE
    assert rig.netns_files() == before
    spec = json.loads(reply.info["info"])["runtimeSpec"]
    kinds = {n["type"] for n in spec["linux"]["namespaces"]}
    assert "network" not in kinds and "uts" not in kinds
    assert "net.ipv4.ip_unprivileged_port_start" not in spec["linux"].get("sysctl", {})
    _stop(rig, pod_id)
    _remove(rig, pod_id)


def test_security_context_user_and_sysctls(rig: CriRig) -> None:
    """run_as_user alone is looked up in the image (mounting the new rootfs); sysctls reach runc."""
    config = rig.pod_config("secure")
    sc = config.linux.security_context
    sc.run_as_user.value = 1000
    sc.supplemental_groups.extend([2000])
    config.linux.sysctls["net.ipv4.ip_local_port_range"] = "20000 30000"
    pod_id = rig.runtime.RunPodSandbox(
        cri.RunPodSandboxRequest(config=config), timeout=TIMEOUT
    ).pod_sandbox_id
    info = json.loads(rig.pod_status(pod_id, verbose=True).info["info"])
    assert info["runtimeSpec"]["process"]["user"] == {"uid": 1000, "gid": 0, "additionalGids": [0, 2000]}
    status = Path(f"/proc/{info['pid']}/status").read_text()
    assert "\nUid:\t1000\t" in status
    netns = next(n["path"] for n in info["runtimeSpec"]["linux"]["namespaces"] if n["type"] == "network")
    out = subprocess.run(["nsenter", f"--net={netns}", "cat", "/proc/sys/net/ipv4/ip_local_port_range"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert out.split() == ["20000", "30000"]
    _stop(rig, pod_id)
    _remove(rig, pod_id)


def test_sandbox_files(rig: CriRig) -> None:
    dns = cri.DNSConfig(servers=["10.96.0.10"], searches=["default.svc.cluster.local"], options=["ndots:5"])
    pod_id = rig.run_pod("files", hostname="files-host", dns=dns)
    root = rig.daemon.root / "io.containerd.grpc.v1.cri" / "sandboxes" / pod_id
    assert (root / "hostname").read_text() == "files-host\n"
    assert (root / "resolv.conf").read_text() == (
        "search default.svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
    )
    assert (root / "hosts").read_text() == Path("/etc/hosts").read_text()
    shm = rig.daemon.state / "io.containerd.grpc.v1.cri" / "sandboxes" / pod_id / "shm"
    assert os.path.ismount(shm)
    _stop(rig, pod_id)
    assert not os.path.ismount(shm)
    _remove(rig, pod_id)
    assert not root.exists()


def test_list_and_stream_filters(rig: CriRig) -> None:
    ids = [rig.run_pod(f"list-{i}", labels={"group": "g1" if i < 2 else "g2"}) for i in range(3)]
    _stop(rig, ids[2])

    def listed(flt: cri.PodSandboxFilter) -> set[str]:
        items = rig.runtime.ListPodSandbox(cri.ListPodSandboxRequest(filter=flt), timeout=TIMEOUT).items
        return {p.id for p in items} & set(ids)

    assert listed(cri.PodSandboxFilter()) == set(ids)
    assert listed(cri.PodSandboxFilter(id=ids[0][:12])) == {ids[0]}
    assert listed(cri.PodSandboxFilter(label_selector={"group": "g1"})) == set(ids[:2])
    ready = cri.PodSandboxStateValue(state=cri.SANDBOX_READY)
    assert listed(cri.PodSandboxFilter(state=ready)) == set(ids[:2])
    assert listed(cri.PodSandboxFilter(state=ready, label_selector={"group": "g2"})) == set()
    streamed = [p.id for chunk in rig.runtime.StreamPodSandboxes(cri.StreamPodSandboxesRequest(), timeout=TIMEOUT)
                for p in chunk.pod_sandboxes]  # fmt: skip
    assert len(streamed) == len(set(streamed)) and set(ids) <= set(streamed)
    for pod_id in ids:
        _stop(rig, pod_id)
        _remove(rig, pod_id)


# --- errors and idempotence -------------------------------------------------------------------


def test_duplicate_name_names_the_holder(rig: CriRig) -> None:
    config = rig.pod_config("dup", uid="dup-uid")
    first = rig.runtime.RunPodSandbox(cri.RunPodSandboxRequest(config=config), timeout=TIMEOUT).pod_sandbox_id
    with pytest.raises(grpc.RpcError) as exc:
        rig.runtime.RunPodSandbox(cri.RunPodSandboxRequest(config=config), timeout=TIMEOUT)
    assert _code(exc) == grpc.StatusCode.ALREADY_EXISTS
    assert first in _details(exc) and "dup_default_dup-uid_0" in _details(exc)
    config.metadata.attempt = 1  # the next attempt is a different name
    second = rig.runtime.RunPodSandbox(
        cri.RunPodSandboxRequest(config=config), timeout=TIMEOUT
    ).pod_sandbox_id
    for pod_id in (first, second):
        _stop(rig, pod_id)
        _remove(rig, pod_id)


def test_bad_requests_leave_nothing_behind(rig: CriRig) -> None:
    before = _leftovers(rig)
    bad_handler = cri.RunPodSandboxRequest(config=rig.pod_config("bad-handler"), runtime_handler="no-such")
    with pytest.raises(grpc.RpcError) as exc:
        rig.runtime.RunPodSandbox(bad_handler, timeout=TIMEOUT)
    assert _code(exc) == grpc.StatusCode.NOT_FOUND and '"no-such"' in _details(exc)
    no_uid = rig.pod_config("no-uid")
    no_uid.metadata.uid = ""
    with pytest.raises(grpc.RpcError) as exc:
        rig.runtime.RunPodSandbox(cri.RunPodSandboxRequest(config=no_uid), timeout=TIMEOUT)
    assert _code(exc) == grpc.StatusCode.INVALID_ARGUMENT and "metadata.uid" in _details(exc)
    bandwidth = rig.pod_config("bw", annotations={"kubernetes.io/ingress-bandwidth": "plenty"})
    with pytest.raises(grpc.RpcError) as exc:
        rig.runtime.RunPodSandbox(cri.RunPodSandboxRequest(config=bandwidth), timeout=TIMEOUT)
    assert _code(exc) == grpc.StatusCode.INVALID_ARGUMENT and "ingress-bandwidth" in _details(exc)
    # A failure late in the pipeline (runc refuses an unknown sysctl when it creates the task)
    # undoes the netns, the CNI address, the files, the snapshot and the record.
    late = rig.pod_config("late", uid="late-uid")
    late.linux.sysctls["net.ipv4.no_such_sysctl"] = "1"
    with pytest.raises(grpc.RpcError) as exc:
        rig.runtime.RunPodSandbox(cri.RunPodSandboxRequest(config=late), timeout=TIMEOUT)
    assert _leftovers(rig) == before
    sandboxes = rig.daemon.root / "io.containerd.grpc.v1.cri" / "sandboxes"
    assert not any(sandboxes.iterdir())
    # ... and releases the name: the same pod runs once fixed.
    del late.linux.sysctls["net.ipv4.no_such_sysctl"]
    pod_id = rig.runtime.RunPodSandbox(cri.RunPodSandboxRequest(config=late), timeout=TIMEOUT).pod_sandbox_id
    _stop(rig, pod_id)
    _remove(rig, pod_id)


def test_stop_and_remove_are_idempotent(rig: CriRig) -> None:
    before_ipam = _ipam_files(rig)
    pod_id = rig.run_pod("idem")
    assert len(_ipam_files(rig)) == len(before_ipam) + 1
    _stop(rig, pod_id)
    _stop(rig, pod_id)
    reply = rig.pod_status(pod_id, verbose=True)
    assert reply.status.state == cri.SANDBOX_NOTREADY
    assert reply.status.network.ip == ""
    info = json.loads(reply.info["info"])
    assert info["netNamespaceClosed"] is True and info["processStatus"] == "deleted"
    assert not any(pod_id.startswith(n[4:]) for n in rig.netns_files())
    assert _ipam_files(rig) == before_ipam  # CNI DEL released the address
    _remove(rig, pod_id)
    _remove(rig, pod_id)
    _stop(rig, pod_id)  # Stop after Remove is success too
    with pytest.raises(grpc.RpcError) as exc:
        rig.pod_status(pod_id)
    assert _code(exc) == grpc.StatusCode.NOT_FOUND
    assert pod_id not in rig.k8s_containers() and pod_id not in rig.k8s_snapshots()


def test_remove_stops_a_ready_pod(rig: CriRig) -> None:
    pod_id = rig.run_pod("remove-ready")
    _remove(rig, pod_id)
    assert not any(pod_id.startswith(n[4:]) for n in rig.netns_files())
    assert pod_id not in rig.k8s_containers()


def test_pause_death_makes_the_pod_not_ready(rig: CriRig) -> None:
    pod_id = rig.run_pod("dies")
    pid = json.loads(rig.pod_status(pod_id, verbose=True).info["info"])["pid"]
    os.kill(pid, 9)
    for _ in range(100):
        if rig.pod_status(pod_id).status.state == cri.SANDBOX_NOTREADY:
            break
        time.sleep(0.05)
    assert rig.pod_status(pod_id).status.state == cri.SANDBOX_NOTREADY
    _stop(rig, pod_id)
    _remove(rig, pod_id)
    # Stop racing the exit monitor: the pause dies and Stop comes at once.
    pod_id = rig.run_pod("dies-and-stops")
    os.kill(json.loads(rig.pod_status(pod_id, verbose=True).info["info"])["pid"], 9)
    _stop(rig, pod_id)
    assert rig.pod_status(pod_id).status.state == cri.SANDBOX_NOTREADY
    _remove(rig, pod_id)


def test_update_pod_sandbox_resources(rig: CriRig) -> None:
    pod_id = rig.run_pod("resize")
    res = cri.LinuxContainerResources(cpu_shares=512, cpu_quota=50000, cpu_period=100000)
    request = cri.UpdatePodSandboxResourcesRequest(pod_sandbox_id=pod_id, resources=res, overhead=res)
    rig.runtime.UpdatePodSandboxResources(request, timeout=TIMEOUT)
    info = json.loads(rig.pod_status(pod_id, verbose=True).info["info"])
    assert info["resources"]["cpu_shares"] == "512" and "overhead" in info
    shares = Path(f"/sys/fs/cgroup/cpu/{rig.cgroup_parent.lstrip('/')}/cpu.shares")
    if shares.exists():
        assert shares.read_text().strip() == "512"
    missing = cri.UpdatePodSandboxResourcesRequest(pod_sandbox_id="0" * 64, resources=res)
    with pytest.raises(grpc.RpcError) as exc:
        rig.runtime.UpdatePodSandboxResources(missing, timeout=TIMEOUT)
    assert _code(exc) == grpc.StatusCode.NOT_FOUND
    _stop(rig, pod_id)
    _remove(rig, pod_id)


# --- scale -------------------------------------------------------------------------------------


def test_twenty_pods_at_once(rig: CriRig) -> None:
    configs = [rig.pod_config(f"many-{i}") for i in range(20)]
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        ids = list(pool.map(
            lambda c: rig.runtime.RunPodSandbox(cri.RunPodSandboxRequest(config=c), timeout=TIMEOUT).pod_sandbox_id,
            configs,
        ))  # fmt: skip
        took = time.monotonic() - started
        statuses = [rig.pod_status(pod_id).status for pod_id in ids]
        assert all(s.state == cri.SANDBOX_READY for s in statuses)
        ips = {s.network.ip for s in statuses}
        assert len(ips) == 20 and all(ipaddress.ip_address(ip) in rig.subnet for ip in ips)
        started = time.monotonic()
        list(pool.map(lambda pod_id: _remove(rig, pod_id), ids))
        removed = time.monotonic() - started
    print(f"20 pods: RunPodSandbox concurrently in {took:.2f}s, RemovePodSandbox in {removed:.2f}s")
    assert not set(ids) & set(rig.k8s_containers())


# --- restart and offline -----------------------------------------------------------------------


def test_daemon_sigkill_keeps_pods_and_addresses() -> None:
    with CriRig() as rig:
        ready = rig.run_pod("survivor")
        stopped = rig.run_pod("stopped")
        _stop(rig, stopped)
        before = {pod_id: rig.pod_status(pod_id, verbose=True) for pod_id in (ready, stopped)}
        rig.crash()
        rig.restart()
        after = {pod_id: rig.pod_status(pod_id, verbose=True) for pod_id in (ready, stopped)}
        assert after[ready].status.state == cri.SANDBOX_READY
        assert after[ready].status.network.ip == before[ready].status.network.ip
        assert after[ready].status.created_at == before[ready].status.created_at
        pid = json.loads(before[ready].info["info"])["pid"]
        assert json.loads(after[ready].info["info"])["pid"] == pid
        assert after[stopped].status.state == cri.SANDBOX_NOTREADY
        # The name stays reserved across the restart.
        with pytest.raises(grpc.RpcError) as exc:
            rig.runtime.RunPodSandbox(
                cri.RunPodSandboxRequest(
                    config=rig.pod_config("survivor", uid=before[ready].status.metadata.uid)
                ),
                timeout=TIMEOUT,
            )
        assert _code(exc) == grpc.StatusCode.ALREADY_EXISTS
        # CNI DEL works from the cached result after the restart.
        before_ipam = _ipam_files(rig)
        _stop(rig, ready)
        assert len(_ipam_files(rig)) == len(before_ipam) - 1
        for pod_id in (ready, stopped):
            _remove(rig, pod_id)


def test_a_restart_checks_the_networks_of_running_pods() -> None:
    with CriRig() as rig:
        intact = rig.run_pod("intact")
        broken = rig.run_pod("broken")
        info = json.loads(rig.pod_status(broken, verbose=True).info["info"])
        assert "networkCheck" not in info  # only a restart checks
        netns = next(n["path"] for n in info["runtimeSpec"]["linux"]["namespaces"] if n["type"] == "network")
        rig.crash()
        # While the daemon is away the pod loses its interface.
        subprocess.run(["nsenter", f"--net={netns}", "ip", "link", "del", "eth0"], check=True)
        rig.restart()

        def checked(pod_id: str) -> str:
            deadline = time.monotonic() + 30
            while True:
                found = json.loads(rig.pod_status(pod_id, verbose=True).info["info"]).get("networkCheck", "")
                if found or time.monotonic() > deadline:
                    return str(found)
                time.sleep(0.1)

        assert checked(intact) == "ok"
        failure = checked(broken)
        assert failure.startswith("failed: ") and "eth0" in failure, failure
        # The pod is left to kubelet: still ready, and it stops and goes as any other.
        assert rig.pod_status(broken).status.state == cri.SANDBOX_READY
        for pod_id in (intact, broken):
            _stop(rig, pod_id)
            _remove(rig, pod_id)


def test_offline_node_with_an_imported_pause_image() -> None:
    with CriRig(registry=False) as rig:
        archive = rig.base / "pause.tar"
        archive.write_bytes(image_archive(rig.pause, PAUSE_REF))
        rig.wharf("images", "import", str(archive))
        pod_id = rig.run_pod("offline")
        assert rig.pod_status(pod_id).status.state == cri.SANDBOX_READY
        _stop(rig, pod_id)
        _remove(rig, pod_id)


def test_offline_node_without_the_pause_image_fails_cleanly() -> None:
    with CriRig(registry=False) as rig:
        with pytest.raises(grpc.RpcError) as exc:
            rig.run_pod("no-pause")
        assert PAUSE_REF in _details(exc)
        assert rig.netns_files() == [] and rig.k8s_containers() == []
