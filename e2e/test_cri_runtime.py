"""Runtime-level CRI through the real daemon: Status, RuntimeConfig, UpdateRuntimeConfig, stats, metrics, events.

Real runc pods on a CNI bridge of the test's own (see :mod:`e2e.cri_support`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
import pytest

from e2e.cri_support import BUSYBOX_REF, TIMEOUT, CriRig, needs_root_and_runc
from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.cri import metrics as cri_metrics

pytestmark = [*needs_root_and_runc(), pytest.mark.slow]

T = TypeVar("T")
CRI = '[plugins."io.containerd.grpc.v1.cri"]'
CRI_CNI = '[plugins."io.containerd.grpc.v1.cri".cni]'
BUSY = ["sh", "-c", "i=0; while [ $i -lt 4000 ]; do echo 0123456789abcdef0123456789abcdef >> /fill; i=$((i+1)); done; "
        "while :; do :; done"]  # fmt: skip


@contextlib.contextmanager
def rig_with(toml: str = "") -> Iterator[CriRig]:
    """A rig whose daemon also reads ``toml`` (a drop-in: it may set keys of tables the rig already has)."""
    r = CriRig()
    try:
        drop_in = r.base / "drop-in.toml"
        drop_in.write_text("version = 2\n" + toml)
        r.daemon.top_config = f'imports = ["{drop_in}"]\n'
        r.start()
        yield r
    finally:
        r.cleanup()


def eventually(fn: Callable[[], T | None], what: str, timeout: float = 20.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def condition(r: CriRig, kind: str) -> cri.RuntimeCondition:
    response: cri.StatusResponse = r.runtime.Status(cri.StatusRequest(), timeout=TIMEOUT)
    return next(c for c in response.status.conditions if c.type == kind)


def start_container(
    r: CriRig,
    pod_id: str,
    name: str,
    command: list[str],
    resources: cri.LinuxContainerResources | None = None,
    **kw: Any,
) -> str:
    pod_config = r.pod_status(pod_id).status
    config = r.container_config(name, command, **kw)
    if resources is not None:
        config.linux.resources.CopyFrom(resources)
    sandbox_config = r.pod_config(pod_config.metadata.name, uid=pod_config.metadata.uid)
    created = r.runtime.CreateContainer(
        cri.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=sandbox_config),
        timeout=TIMEOUT,
    )
    container_id: str = created.container_id
    r.runtime.StartContainer(cri.StartContainerRequest(container_id=container_id), timeout=TIMEOUT)
    return container_id


def send_udp(ip: str, count: int = 10) -> None:
    """Datagrams from the node to a pod (the discard port: only the pod's rx counter matters)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(count):
            s.sendto(b"x" * 200, (ip, 9))


# -- Status, RuntimeConfig, UpdateRuntimeConfig --------------------------------------------------


def test_status_follows_the_cni_conf_dir_and_runtime_config() -> None:
    with rig_with() as r:
        ready = condition(r, "NetworkReady")
        assert (ready.status, ready.reason) == (True, "")
        assert condition(r, "RuntimeReady").status is True
        conf = next(r.cni_conf_dir.iterdir())
        saved = conf.read_bytes()
        conf.unlink()
        gone = condition(r, "NetworkReady")
        assert (gone.status, gone.reason) == (False, "NetworkPluginNotReady")
        assert gone.message.startswith("Network plugin returns error: cni plugin not initialized")
        conf.write_bytes(saved)  # back without a restart
        assert condition(r, "NetworkReady").status is True

        response = r.runtime.Status(cri.StatusRequest(verbose=True), timeout=TIMEOUT)
        assert [h.name for h in response.runtime_handlers] == ["", "runc", "runc-stock", "wharf"]
        assert not any(h.features.user_namespaces for h in response.runtime_handlers)
        assert response.features.supplemental_groups_policy is True
        assert json.loads(response.info["config"])["cni"]["conf_dir"] == str(r.cni_conf_dir)
        assert json.loads(response.info["cniconfig"])["Networks"][0]["Config"]["Name"] == r.name
        assert response.info["lastCNILoadStatus"] == "OK"

        config = r.runtime.RuntimeConfig(cri.RuntimeConfigRequest(), timeout=TIMEOUT)
        assert config.linux.cgroup_driver == cri.CGROUPFS


class TemplateRig(CriRig):
    """A rig whose conf dir starts empty: the CNI config comes from ``cni.conf_template``."""

    def write_cni_conf(self) -> None:
        self.cni_conf_dir.mkdir(parents=True, exist_ok=True)


def test_update_runtime_config_renders_the_cni_template() -> None:
    r = TemplateRig()
    try:
        # The rig's own conflist, with its subnet replaced by {{ .PodCIDR }}, is the template.
        CriRig.write_cni_conf(r)
        conf = next(r.cni_conf_dir.iterdir())
        template = r.base / "cni.tmpl"
        template.write_text(conf.read_text().replace(f'"{r.subnet}"', '"{{ .PodCIDR }}"'))
        conf.unlink()
        drop_in = r.base / "drop-in.toml"
        drop_in.write_text(f'version = 2\n{CRI_CNI}\n  conf_template = "{template}"\n')
        r.daemon.top_config = f'imports = ["{drop_in}"]\n'
        r.start()

        assert condition(r, "NetworkReady").status is False
        request = cri.UpdateRuntimeConfigRequest(
            runtime_config=cri.RuntimeConfig(network_config=cri.NetworkConfig(pod_cidr=str(r.subnet)))
        )
        r.runtime.UpdateRuntimeConfig(request, timeout=TIMEOUT)
        written = json.loads((r.cni_conf_dir / "10-containerd-net.conflist").read_text())
        assert written["plugins"][0]["ipam"]["ranges"][0][0]["subnet"] == str(r.subnet)
        assert condition(r, "NetworkReady").status is True  # no restart
        bad_cidr = cri.RuntimeConfig(network_config=cri.NetworkConfig(pod_cidr="10.1.2.3/99"))
        with pytest.raises(grpc.RpcError) as bad:
            r.runtime.UpdateRuntimeConfig(
                cri.UpdateRuntimeConfigRequest(runtime_config=bad_cidr), timeout=TIMEOUT
            )
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "pod_cidr" in (bad.value.details() or "")

        pod_id = r.run_pod("templated")
        assert ipaddress.ip_address(r.pod_status(pod_id).status.network.ip) in r.subnet
        r.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=TIMEOUT)
        r.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=TIMEOUT)
    finally:
        r.cleanup()


# -- stats and metrics ---------------------------------------------------------------------------


def test_container_and_pod_stats() -> None:
    with rig_with(f"{CRI}\n  stats_collect_period = 1\n") as r:
        r.pull()
        pod_id = r.run_pod("stats", labels={"tier": "web"})
        ctr_id = start_container(r, pod_id, "busy", BUSY, labels={"app": "busy"})
        idle_id = start_container(r, pod_id, "idle", ["sleep", "600"])
        time.sleep(2.5)  # a couple of CPU samples

        stats = r.runtime.ContainerStats(
            cri.ContainerStatsRequest(container_id=ctr_id[:12]), timeout=TIMEOUT
        ).stats
        assert stats.attributes.id == ctr_id
        assert stats.attributes.metadata.name == "busy"
        assert stats.attributes.labels["app"] == "busy"
        assert stats.cpu.timestamp > 0 and stats.cpu.usage_core_nano_seconds.value > 0
        assert stats.cpu.usage_nano_cores.value > 50_000_000  # a busy loop: a good part of a core
        assert stats.memory.timestamp > 0 and stats.memory.working_set_bytes.value > 0
        assert stats.memory.usage_bytes.value >= stats.memory.working_set_bytes.value
        assert stats.writable_layer.fs_id.mountpoint

        def filled() -> cri.ContainerStats | None:
            s = r.runtime.ContainerStats(
                cri.ContainerStatsRequest(container_id=ctr_id), timeout=TIMEOUT
            ).stats
            return s if s.writable_layer.used_bytes.value >= 100_000 else None

        layer = eventually(filled, "the writable layer to show /fill").writable_layer
        assert layer.inodes_used.value >= 1

        def ids(f: cri.ContainerStatsFilter | None) -> set[str]:
            request = (
                cri.ListContainerStatsRequest(filter=f) if f is not None else cri.ListContainerStatsRequest()
            )
            return {s.attributes.id for s in r.runtime.ListContainerStats(request, timeout=TIMEOUT).stats}

        assert {ctr_id, idle_id} <= ids(None)
        assert ids(cri.ContainerStatsFilter(id=idle_id[:10])) == {idle_id}
        assert ids(cri.ContainerStatsFilter(pod_sandbox_id=pod_id[:10])) == {ctr_id, idle_id}
        assert ids(cri.ContainerStatsFilter(label_selector={"app": "busy"})) == {ctr_id}
        assert ids(cri.ContainerStatsFilter(label_selector={"app": "nope"})) == set()
        streamed = r.runtime.StreamContainerStats(
            cri.StreamContainerStatsRequest(filter=cri.ContainerStatsFilter(pod_sandbox_id=pod_id)),
            timeout=TIMEOUT,
        )
        assert {s.attributes.id for chunk in streamed for s in chunk.container_stats} == {ctr_id, idle_id}

        send_udp(r.pod_status(pod_id).status.network.ip)
        pod = r.runtime.PodSandboxStats(
            cri.PodSandboxStatsRequest(pod_sandbox_id=pod_id), timeout=TIMEOUT
        ).stats
        assert pod.attributes.id == pod_id and pod.attributes.labels["tier"] == "web"
        linux = pod.linux
        assert linux.cpu.usage_core_nano_seconds.value >= stats.cpu.usage_core_nano_seconds.value
        assert linux.cpu.usage_nano_cores.value > 50_000_000
        assert linux.memory.working_set_bytes.value > 0
        assert linux.network.default_interface.name == "eth0"
        assert linux.network.default_interface.rx_bytes.value >= 2000
        assert [i.name for i in linux.network.interfaces] == ["eth0"]
        assert linux.process.process_count.value >= 3  # pause, the busy shell, sleep
        assert {c.attributes.id for c in linux.containers} == {ctr_id, idle_id}

        listed = r.runtime.ListPodSandboxStats(
            cri.ListPodSandboxStatsRequest(filter=cri.PodSandboxStatsFilter(label_selector={"tier": "web"})),
            timeout=TIMEOUT,
        )
        assert [s.attributes.id for s in listed.stats] == [pod_id]
        streamed_pods = r.runtime.StreamPodSandboxStats(cri.StreamPodSandboxStatsRequest(), timeout=TIMEOUT)
        assert [s.attributes.id for chunk in streamed_pods for s in chunk.pod_sandbox_stats] == [pod_id]

        with pytest.raises(grpc.RpcError) as missing:
            r.runtime.ContainerStats(cri.ContainerStatsRequest(container_id="f" * 64), timeout=TIMEOUT)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND

        r.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=TIMEOUT)
        assert (
            list(r.runtime.ListPodSandboxStats(cri.ListPodSandboxStatsRequest(), timeout=TIMEOUT).stats) == []
        )
        stopped = r.runtime.ListContainerStats(cri.ListContainerStatsRequest(), timeout=TIMEOUT).stats
        assert {s.attributes.id for s in stopped} == {ctr_id, idle_id}  # still listed, without CPU/memory
        assert not any(s.HasField("cpu") for s in stopped)
        r.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=TIMEOUT)


def test_pod_sandbox_metrics_match_their_descriptors() -> None:
    with rig_with() as r:
        r.pull()
        pod_id = r.run_pod("metrics")
        # The resources critest gives its metrics container (they become container_spec_*).
        resources = cri.LinuxContainerResources(
            cpu_period=100000, cpu_quota=20000, cpu_shares=1024, memory_limit_in_bytes=64 << 20,
            memory_swap_limit_in_bytes=64 << 20,
        )  # fmt: skip
        ctr_id = start_container(r, pod_id, "app", ["sleep", "600"], resources)
        send_udp(r.pod_status(pod_id).status.network.ip, 3)
        descriptors = r.runtime.ListMetricDescriptors(cri.ListMetricDescriptorsRequest(), timeout=TIMEOUT)
        keys = {d.name: list(d.label_keys) for d in descriptors.descriptors}
        assert keys == {d.name: list(d.label_keys) for d in cri_metrics.descriptors()}

        response = r.runtime.ListPodSandboxMetrics(cri.ListPodSandboxMetricsRequest(), timeout=TIMEOUT)
        (pod,) = [p for p in response.pod_metrics if p.pod_sandbox_id == pod_id]
        (ctr,) = pod.container_metrics
        assert ctr.container_id == ctr_id
        found: set[str] = set()
        for metric in [*pod.metrics, *ctr.metrics]:
            assert len(metric.label_values) == len(keys[metric.name]), metric.name
            found.add(metric.name)
        assert {m.name for m in pod.metrics} >= {"container_network_receive_bytes_total"}
        rx = next(m for m in pod.metrics if m.name == "container_network_receive_bytes_total")
        assert rx.label_values == ["metrics", "default", "", pod_id, "", "eth0"]
        assert rx.value.value >= 600
        processes = next(m for m in ctr.metrics if m.name == "container_processes")
        assert processes.label_values == ["metrics", "default", "app", ctr_id, BUSYBOX_REF]
        assert processes.value.value == 1
        # Every descriptor has values, less what critest lets a runtime leave out: blkio on virtual
        # disks, a memory reservation kubelet never sets, and ulimits the default spec has none of.
        optional = {
            n for n in keys if n.startswith(("container_fs_reads", "container_fs_writes", "container_blkio"))
        }
        optional |= {"container_spec_memory_reservation_limit_bytes", "container_ulimits_soft"}
        assert set(keys) - optional <= found
        spec = {m.name: m.value.value for m in ctr.metrics if m.name.startswith("container_spec_")}
        assert spec["container_spec_cpu_quota"] == 20000
        assert spec["container_spec_memory_limit_bytes"] == 64 << 20

        streamed = r.runtime.StreamPodSandboxMetrics(cri.StreamPodSandboxMetricsRequest(), timeout=TIMEOUT)
        assert pod_id in {p.pod_sandbox_id for chunk in streamed for p in chunk.pod_sandbox_metrics}
        r.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=TIMEOUT)
        r.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=TIMEOUT)


# -- container events ----------------------------------------------------------------------------


class Listener:
    """One GetContainerEvents stream read on a thread."""

    def __init__(self, r: CriRig) -> None:
        self.events: queue.Queue[cri.ContainerEventResponse] = queue.Queue()
        self.call = r.runtime.GetContainerEvents(cri.GetEventsRequest())
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with contextlib.suppress(grpc.RpcError):
            for event in self.call:
                self.events.put(event)

    def next(self, timeout: float = 20.0) -> cri.ContainerEventResponse:
        return self.events.get(timeout=timeout)

    def close(self) -> None:
        self.call.cancel()
        self.thread.join(5)


def test_container_events_reach_every_subscriber() -> None:
    with rig_with() as r:
        r.pull()
        listeners = [Listener(r), Listener(r)]
        time.sleep(0.5)  # both streams are open on the server
        try:
            pod_id = r.run_pod("events")
            ctr_id = start_container(r, pod_id, "short", ["sh", "-c", "sleep 1; exit 3"])
            seen: list[list[cri.ContainerEventResponse]] = [[], []]

            def take(n: int) -> None:
                for i, listener in enumerate(listeners):
                    seen[i].extend(listener.next() for _ in range(n))

            take(5)  # pod CREATED, STARTED; container CREATED, STARTED, then STOPPED on its own
            r.runtime.RemoveContainer(cri.RemoveContainerRequest(container_id=ctr_id), timeout=TIMEOUT)
            r.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=TIMEOUT)
            take(2)
            r.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=TIMEOUT)
            take(1)
        finally:
            for listener in listeners:
                listener.close()

    expected = [
        (pod_id, cri.CONTAINER_CREATED_EVENT),
        (pod_id, cri.CONTAINER_STARTED_EVENT),
        (ctr_id, cri.CONTAINER_CREATED_EVENT),
        (ctr_id, cri.CONTAINER_STARTED_EVENT),
        (ctr_id, cri.CONTAINER_STOPPED_EVENT),
        (ctr_id, cri.CONTAINER_DELETED_EVENT),
        (pod_id, cri.CONTAINER_STOPPED_EVENT),
        (pod_id, cri.CONTAINER_DELETED_EVENT),
    ]
    for events in seen:
        assert [(e.container_id, e.container_event_type) for e in events] == expected
        assert all(e.created_at > 0 for e in events)
    events = seen[0]
    assert events[1].pod_sandbox_status.state == cri.SANDBOX_READY
    started = {s.id: s for s in events[3].containers_statuses}
    assert started[ctr_id].state == cri.CONTAINER_RUNNING
    stopped = {s.id: s for s in events[4].containers_statuses}
    assert (stopped[ctr_id].state, stopped[ctr_id].exit_code, stopped[ctr_id].reason) == (
        cri.CONTAINER_EXITED,
        3,
        "Error",
    )
    assert list(events[5].containers_statuses) == []  # the container is gone
    assert events[6].pod_sandbox_status.state == cri.SANDBOX_NOTREADY
    assert not events[7].HasField("pod_sandbox_status")
