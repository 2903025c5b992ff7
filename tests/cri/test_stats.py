"""Stats and metrics building blocks: cgroup decoding, CPU rates, real pod cgroups and netns, cAdvisor metrics."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import any_pb2

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.api.types.cgroups.v1 import metrics_pb2 as v1
from wharfd.api.types.cgroups.v2 import metrics_pb2 as v2
from wharfd.cri import metrics, stats_decode, stats_host
from wharfd.runtime import errors
from wharfd.runtime.shim import cgroups

MiB = 1 << 20
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (cgroups, netns)")

# What critest expects in a pod's metrics (cri-tools pkg/validate/pod.go), minus what it lets
# runtimes leave out, minus the pod-level network metrics (tested with a netns below).
CRITEST_CONTAINER_METRICS = {
    "container_cpu_cfs_periods_total",
    "container_cpu_cfs_throttled_periods_total",
    "container_cpu_cfs_throttled_seconds_total",
    "container_cpu_system_seconds_total",
    "container_cpu_usage_seconds_total",
    "container_cpu_user_seconds_total",
    "container_file_descriptors",
    "container_fs_inodes_free",
    "container_fs_inodes_total",
    "container_fs_limit_bytes",
    "container_fs_usage_bytes",
    "container_last_seen",
    "container_memory_cache",
    "container_memory_failcnt",
    "container_memory_failures_total",
    "container_memory_kernel_usage",
    "container_memory_mapped_file",
    "container_memory_max_usage_bytes",
    "container_memory_rss",
    "container_memory_swap",
    "container_memory_usage_bytes",
    "container_memory_working_set_bytes",
    "container_oom_events_total",
    "container_processes",
    "container_sockets",
    "container_spec_cpu_period",
    "container_spec_cpu_shares",
    "container_spec_memory_limit_bytes",
    "container_spec_memory_swap_limit_bytes",
    "container_start_time_seconds",
    "container_threads",
    "container_threads_max",
}


# -- decoding -----------------------------------------------------------------------------------


def v1_metrics() -> v1.Metrics:
    m = v1.Metrics()
    m.cpu.usage.total, m.cpu.usage.user, m.cpu.usage.kernel = 5_000_000_000, 3_000_000_000, 2_000_000_000
    m.memory.usage.usage, m.memory.usage.limit, m.memory.usage.max = 100 * MiB, 256 * MiB, 120 * MiB
    m.memory.total_inactive_file, m.memory.total_rss = 30 * MiB, 60 * MiB
    m.memory.total_pg_fault, m.memory.total_pg_maj_fault = 1000, 7
    m.memory.swap.usage, m.memory.swap.limit = 110 * MiB, 512 * MiB
    m.pids.current = 3
    return m


def test_v1_metrics_become_cri_usage() -> None:
    data = any_pb2.Any(type_url=stats_decode.V1_TYPE, value=v1_metrics().SerializeToString())
    m = stats_decode.decode(data)
    cpu = stats_decode.cpu_usage(m, 42, nano_cores=250_000_000)
    assert (cpu.timestamp, cpu.usage_core_nano_seconds.value, cpu.usage_nano_cores.value) == (
        42,
        5 * 10**9,
        25 * 10**7,
    )
    mem = stats_decode.memory_message(m, 42)
    assert mem.working_set_bytes.value == 70 * MiB
    assert mem.available_bytes.value == 186 * MiB
    assert (mem.usage_bytes.value, mem.rss_bytes.value) == (100 * MiB, 60 * MiB)
    assert (mem.page_faults.value, mem.major_page_faults.value) == (1000, 7)
    swap = stats_decode.swap_message(m, 42)
    assert swap is not None
    assert swap.swap_usage_bytes.value == 10 * MiB  # memsw counts memory too
    assert swap.swap_available_bytes.value == 256 * MiB - 10 * MiB
    assert stats_decode.io_message(m, 42) is None
    assert stats_decode.process_count(m) == 3


def test_unlimited_memory_has_no_available_figure_and_nano_cores_stays_unset() -> None:
    m = v1_metrics()
    m.memory.usage.limit = 9223372036854771712  # what the kernel reports for "no limit"
    m.memory.total_inactive_file = 200 * MiB  # more than the usage: working set is 0, not negative
    mem = stats_decode.memory_message(m, 1)
    assert (mem.working_set_bytes.value, mem.available_bytes.value) == (0, 0)
    assert not stats_decode.cpu_usage(m, 1).HasField("usage_nano_cores")
    m.memory.swap.usage = 0  # swapaccount off
    assert stats_decode.swap_message(m, 1) is None


def test_v2_metrics_with_pressure() -> None:
    m = v2.Metrics()
    m.cpu.usage_usec = 1_500_000
    m.cpu.psi.some.total, m.cpu.psi.some.avg10 = 20, 1.5
    m.memory.usage, m.memory.usage_limit, m.memory.inactive_file, m.memory.anon = (
        50 * MiB,
        100 * MiB,
        10 * MiB,
        30 * MiB,
    )
    m.memory.pgfault, m.memory.pgmajfault = 11, 2
    m.memory.swap_usage, m.memory.swap_limit = 5 * MiB, 20 * MiB
    m.io.psi.full.total = 7
    m.pids.current = 4
    data = any_pb2.Any(type_url="type.googleapis.com/" + stats_decode.V2_TYPE, value=m.SerializeToString())
    got = stats_decode.decode(data)
    cpu = stats_decode.cpu_usage(got, 9)
    assert cpu.usage_core_nano_seconds.value == 1_500_000_000
    assert (cpu.psi.Some.Total, cpu.psi.Some.Avg10) == (20_000, 1.5)  # µs become ns
    mem = stats_decode.memory_message(got, 9)
    assert (mem.working_set_bytes.value, mem.available_bytes.value, mem.rss_bytes.value) == (
        40 * MiB,
        60 * MiB,
        30 * MiB,
    )
    swap = stats_decode.swap_message(got, 9)
    assert swap is not None
    assert (swap.swap_usage_bytes.value, swap.swap_available_bytes.value) == (5 * MiB, 15 * MiB)
    io = stats_decode.io_message(got, 9)
    assert io is not None
    assert io.psi.Full.Total == 7000


def test_unknown_stats_type_is_data_loss() -> None:
    with pytest.raises(errors.DataLoss, match=r'container "c1": unexpected stats type'):
        stats_decode.decode(any_pb2.Any(type_url="io.other.Metrics"), 'container "c1"')
    with pytest.raises(errors.DataLoss, match="do not decode"):
        stats_decode.decode(any_pb2.Any(type_url=stats_decode.V1_TYPE, value=b"\xff\xff\xff"))


def test_cpu_sampler_measures_over_a_period() -> None:
    s = stats_decode.CpuSampler(period=1.0)
    sec = 1_000_000_000
    assert s.add("c", 0, 10 * sec) is None  # the first sample has no rate
    assert s.add("c", sec // 4, 10 * sec + sec // 2) == 500_000_000  # half a period: the span it has
    assert s.add("c", sec // 2, 11 * sec) == 500_000_000  # a full period back from here: from t=10
    assert s.add("c", 2 * sec, 12 * sec) == 1_500_000_000  # from t=11
    assert s.add("c", 0, 13 * sec) is None  # went backwards: a new cgroup under an old id
    s.forget({"other"})
    assert s.keys() == set()


# -- host readers --------------------------------------------------------------------------------


def test_expand_slice() -> None:
    assert stats_host.expand_slice("kubepods-besteffort-pod12.slice") == (
        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12.slice"
    )
    assert stats_host.expand_slice("kubepods.slice") == "/kubepods.slice"
    assert stats_host.expand_slice("-.slice") == "/"
    for bad in ("kubepods", "a--b.slice", "a/b.slice"):
        with pytest.raises(errors.InvalidArgument, match=r"linux\.cgroup_parent"):
            stats_host.expand_slice(bad)


@pytest.fixture
def pod_cgroup() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A real cgroup /wharfd-test-<tag> holding one process that used some CPU."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    parent = f"/wharfd-test-{uuid.uuid4().hex[:8]}"
    cg = stats_host.cgroup_at(parent)
    made = []
    # A child that waits until it is in the cgroup, burns ~0.2 s of CPU, touches memory, then sleeps.
    code = (
        "import sys,time; sys.stdin.read(1); t=time.time(); b=bytearray(8<<20)\n"
        "while time.time()-t<0.2: pass\n"
        "time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)
    try:
        # cpuset would need cpus/mems set up first; these four are what pod stats read.
        for directory in {cg.dirs[c] for c in ("cpu", "cpuacct", "memory", "pids", "") if c in cg.dirs}:
            os.makedirs(directory)
            made.append(directory)
            Path(directory, "cgroup.procs").write_text(str(proc.pid))
        assert proc.stdin is not None
        proc.stdin.write(b"x")
        proc.stdin.flush()
        time.sleep(0.4)
        yield parent, proc
    finally:
        proc.kill()
        proc.wait()
        if proc.stdin is not None:
            proc.stdin.close()
        for directory in made:
            for _ in range(50):
                try:
                    os.rmdir(directory)
                    break
                except OSError:
                    time.sleep(0.02)


@root_only
def test_pod_cgroup_metrics(pod_cgroup: tuple[str, subprocess.Popen[bytes]]) -> None:
    parent, _ = pod_cgroup
    m = stats_decode.decode(stats_host.pod_metrics(parent))
    assert stats_decode.cpu_total_ns(m) >= 20_000_000  # 0.2 s of busy loop on a loaded host
    working_set, _, usage, rss, faults, _ = stats_decode.memory_usage(m)
    assert usage >= 8 * MiB and working_set > 0 and rss > 0 and faults > 0
    assert stats_decode.process_count(m) == 1
    quick = stats_host.cpu_usage_ns(stats_host.cgroup_at(parent))
    assert quick is not None and quick >= stats_decode.cpu_total_ns(m)
    with pytest.raises(errors.NotFound, match=r'pod cgroup "/wharfd-test-none": not found'):
        stats_host.pod_metrics("/wharfd-test-none")


@root_only
def test_container_metrics_match_their_descriptors(pod_cgroup: tuple[str, subprocess.Popen[bytes]]) -> None:
    parent, proc = pod_cgroup
    m = stats_decode.decode(stats_host.pod_metrics(parent))
    fds, sockets = stats_host.open_files([proc.pid])
    capacity, inodes, free = stats_host.filesystem("/")
    spec = {
        "process": {"rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]},
        "linux": {
            "resources": {
                "cpu": {"period": 100000, "quota": 20000, "shares": 1024},
                "memory": {"limit": 64 * MiB, "swap": 64 * MiB},
            }
        },
    }
    source = metrics.ContainerInput(
        labels=["web", "default", "app", "c" * 64, "busybox:1"],
        metrics=m,
        started_at=time.time_ns(),
        spec=spec,
        fs_device="/var/lib/wharfd",
        fs_used=4096,
        fs_capacity=capacity,
        fs_inodes=inodes,
        fs_inodes_free=free,
        fds=fds,
        sockets=sockets,
    )
    values = metrics.container_metrics(source, time.time_ns())
    keys = {d.name: list(d.label_keys) for d in metrics.descriptors()}
    for value in values:
        assert value.name in keys
        assert len(value.label_values) == len(keys[value.name]), value.name
        assert value.label_values[:5] == ["web", "default", "app", "c" * 64, "busybox:1"]
    names = {v.name for v in values}
    assert names >= CRITEST_CONTAINER_METRICS
    by_name = {v.name: v for v in values}
    assert by_name["container_spec_cpu_quota"].value.value == 20000
    assert by_name["container_processes"].value.value == 1
    assert by_name["container_memory_usage_bytes"].metric_type == cri.GAUGE
    assert by_name["container_cpu_usage_seconds_total"].metric_type == cri.COUNTER
    assert by_name["container_file_descriptors"].value.value >= 3
    ulimit = by_name["container_ulimits_soft"]
    assert (ulimit.label_values[-1], ulimit.value.value) == ("RLIMIT_NOFILE", 1024)
    failures = [v for v in values if v.name == "container_memory_failures_total"]
    assert sorted(v.label_values[5] for v in failures) == ["pgfault", "pgmajfault"]


def test_descriptors_are_unique_and_complete() -> None:
    descriptors = metrics.descriptors()
    names = [d.name for d in descriptors]
    assert len(names) == len(set(names))
    assert all(d.help and d.label_keys[:5] == list(metrics.BASE) for d in descriptors)
    assert set(names) >= CRITEST_CONTAINER_METRICS
    assert "container_network_receive_bytes_total" in names


def free_slash30() -> ipaddress.IPv4Network:
    """A /30 of the benchmarking range 198.18.0.0/15 that no route on this host covers."""
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=True).stdout
    used = []
    for line in routes.splitlines():
        with contextlib.suppress(ValueError, IndexError):
            used.append(ipaddress.ip_network(line.split()[0], strict=False))
    for _ in range(100):
        net = ipaddress.IPv4Network(
            f"198.{random.randint(18, 19)}.{random.randint(0, 255)}.{random.randrange(0, 256, 4)}/30"
        )
        if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
            return net
    raise RuntimeError("no free /30 in 198.18.0.0/15")


@pytest.fixture
def netns_with_link() -> Iterator[tuple[str, str]]:
    """A netns with eth0 (a veth whose host end has an address), and the address of eth0."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    from pyroute2 import IPRoute, netns

    tag = uuid.uuid4().hex[:6]
    # A directory of its own: pyroute2 bind-mounts the netns file's parent onto itself.
    ns_dir = f"/tmp/wharfd-test-netns-{tag}"
    path = f"{ns_dir}/ns"
    host_end, peer = f"wtv{tag}", f"wtp{tag}"
    net = free_slash30()
    host_ip, pod_ip = str(net[1]), str(net[2])
    netns.create(path)
    try:
        with IPRoute() as ipr:
            ipr.link("add", ifname=host_end, kind="veth", peer={"ifname": peer})
            (peer_index,) = ipr.link_lookup(ifname=peer)
            (host_index,) = ipr.link_lookup(ifname=host_end)
            ipr.link("set", index=peer_index, net_ns_fd=path)
            ipr.addr("add", index=host_index, address=host_ip, prefixlen=30)
            ipr.link("set", index=host_index, state="up")
        with IPRoute(netns=path, flags=0) as ns:
            (index,) = ns.link_lookup(ifname=peer)
            ns.link("set", index=index, ifname="eth0")
            ns.addr("add", index=index, address=pod_ip, prefixlen=30)
            ns.link("set", index=index, state="up")
            (lo,) = ns.link_lookup(ifname="lo")
            ns.link("set", index=lo, state="up")
        yield path, pod_ip
    finally:
        subprocess.run(["ip", "link", "del", host_end], check=False, capture_output=True)
        netns.remove(path)
        subprocess.run(["umount", "-l", ns_dir], check=False, capture_output=True)
        shutil.rmtree(ns_dir, ignore_errors=True)


@root_only
def test_netns_link_counters(netns_with_link: tuple[str, str]) -> None:
    path, pod_ip = netns_with_link
    before = {link.name: link for link in stats_host.netns_links(path)}
    assert set(before) == {"eth0"}  # lo is left out
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(5):
            s.sendto(b"x" * 500, (pod_ip, 9))  # discard port: only eth0's rx counter matters
    time.sleep(0.2)
    after = {link.name: link for link in stats_host.netns_links(path)}
    assert after["eth0"].rx_bytes >= before["eth0"].rx_bytes + 5 * 500
    assert after["eth0"].rx_packets >= before["eth0"].rx_packets + 5
    net = metrics.network_metrics(["p", "ns", "", "pod-id", ""], after.values(), 1)
    keys = {d.name: len(d.label_keys) for d in metrics.descriptors()}
    assert len(net) == 8
    assert all(len(m.label_values) == keys[m.name] and m.label_values[-1] == "eth0" for m in net)


@root_only
def test_netns_links_never_creates_a_namespace() -> None:
    missing = f"/tmp/wharfd-test-nons-{uuid.uuid4().hex[:6]}"
    with pytest.raises(errors.NotFound, match="network namespace"):
        stats_host.netns_links(missing)
    assert not os.path.exists(missing)


def test_open_files_filesystem_and_devices() -> None:
    fds, _ = stats_host.open_files([os.getpid(), 2**22 + 1])  # a pid that cannot exist counts 0
    assert fds >= 3
    capacity, inodes, _free = stats_host.filesystem("/")
    assert capacity > 0 and inodes > 0
    assert stats_host.filesystem("/nonexistent/wharfd-test") == (0, 0, 0)
    st = os.stat("/")
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    names = stats_host.block_devices({(major, minor), (4095, 4095)})
    assert (4095, 4095) not in names
    if Path(f"/sys/dev/block/{major}:{minor}").exists():
        assert names[(major, minor)].startswith("/dev/")


def test_cgroup_at_uses_the_hosts_hierarchy() -> None:
    cg = stats_host.cgroup_at("/wharfd-test-x/pod")
    assert cg.unified == cgroups.UNIFIED
    assert all(d.endswith("/wharfd-test-x/pod") for d in cg.dirs.values())
    if not cgroups.UNIFIED:
        assert "" not in cg.dirs and "memory" in cg.dirs
