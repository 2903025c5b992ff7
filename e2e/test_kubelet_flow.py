"""A kubelet-shaped client: Pod manifests become the CRI calls kubelet makes, in kubelet's order.

The manifests are read with the ``kubernetes`` client's models (``V1Pod``).
What kubelet does is reproduced from its kuberuntime manager:

* start-up: Version (all four fields set), Status (both conditions), RuntimeConfig (cgroup driver);
* SyncPod: ImageStatus/PullImage of the pause image, RunPodSandbox with kubelet's
  labels (pod labels + ``io.kubernetes.pod.{name,namespace,uid}``), annotations,
  ``/var/log/pods``-style log directory, DNS config, port mappings and QoS cgroup
  parent; PodSandboxStatus; then per container ImageStatus/PullImage,
  CreateContainer (labels ``io.kubernetes.container.name`` + pod labels,
  annotations hash/restartCount/terminationMessagePath/…, log path
  ``<name>/<restartCount>.log``, resources from the limits) and StartContainer;
* the generic PLEG on its own thread: every second ListPodSandbox + ListContainers,
  and for each pod that changed PodSandboxStatus + ListContainers(uid) +
  ContainerStatus per container, as ``GetPodStatus`` does;
* pod deletion: StopContainer (grace period), StopPodSandbox, then the GC's
  RemoveContainer and RemovePodSandbox.

It asserts that the states converge, that labels and annotations come back
verbatim, and that the PLEG saw the transitions kubelet acts on.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml  # type: ignore[import-untyped]
from kubernetes.client import ApiClient, V1Pod

from e2e.cri_support import BUSYBOX_REF, PAUSE_REF, TIMEOUT, CriRig, needs_root_and_runc
from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.api.cri.v1 import api_pb2_grpc as cri_grpc

pytestmark = [*needs_root_and_runc(), pytest.mark.slow]

# The models type every field Optional; what a valid manifest guarantees is read as Any here.
Pod = Any
Container = Any

POD_NAME = "io.kubernetes.pod.name"
POD_NAMESPACE = "io.kubernetes.pod.namespace"
POD_UID = "io.kubernetes.pod.uid"
CONTAINER_NAME = "io.kubernetes.container.name"

MANIFESTS = f"""
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: shop
  labels: {{app: web, tier: frontend}}
  annotations: {{team.example.com/owner: payments, kubernetes.io/config.source: api}}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: server
    image: {BUSYBOX_REF}
    command: [httpd, -f, -p, "8080"]
    ports: [{{containerPort: 8080, protocol: TCP}}]
    resources:
      limits: {{cpu: 250m, memory: 64Mi}}
---
apiVersion: v1
kind: Pod
metadata:
  name: job
  namespace: batch
  labels: {{app: job}}
spec:
  restartPolicy: Never
  containers:
  - name: worker
    image: {BUSYBOX_REF}
    command: [sh, -c, "echo working; sleep 1; echo done"]
"""


def load_pods(text: str) -> list[Pod]:
    """Manifests → V1Pod models, through the client's own deserializer; uids as the API server gives them."""
    client = ApiClient()
    pods = []
    for doc in yaml.safe_load_all(text):
        doc["metadata"]["uid"] = str(uuid.uuid4())
        pods.append(client.deserialize(json.dumps(doc), "V1Pod", "application/json"))
    return pods


# -- what kubelet puts in the CRI requests ---------------------------------------------------------


def quantity_millis(value: str) -> int:
    return int(value[:-1]) if value.endswith("m") else int(float(value) * 1000)


def quantity_bytes(value: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    for suffix, factor in units.items():
        if value.endswith(suffix):
            return int(value[: -len(suffix)]) * factor
    return int(value)


def qos_parent(rig: CriRig, pod: Pod) -> str:
    """kubelet's pod cgroup (cgroupfs driver), under the rig's test cgroup."""
    limited = [c.resources and c.resources.limits for c in pod.spec.containers]
    uid = pod.metadata.uid.replace("-", "_")
    if all(limited):
        return f"{rig.cgroup_parent}/kubepods/pod{uid}"  # limits only: requests default to them → Guaranteed
    return f"{rig.cgroup_parent}/kubepods/besteffort/pod{uid}"


def sandbox_config(rig: CriRig, pod: Pod, attempt: int = 0) -> cri.PodSandboxConfig:
    meta = pod.metadata
    log_dir = rig.base / "var-log-pods" / f"{meta.namespace}_{meta.name}_{meta.uid}"
    log_dir.mkdir(parents=True, exist_ok=True)  # kubelet makes it before RunPodSandbox
    ports = [
        cri.PortMapping(protocol=cri.TCP, container_port=p.container_port, host_port=p.host_port or 0)
        for c in pod.spec.containers
        for p in c.ports or []
    ]
    return cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(
            name=meta.name, namespace=meta.namespace, uid=meta.uid, attempt=attempt
        ),
        hostname=meta.name,
        log_directory=str(log_dir),
        dns_config=cri.DNSConfig(
            servers=["10.96.0.10"],
            searches=[f"{meta.namespace}.svc.cluster.local", "svc.cluster.local", "cluster.local"],
            options=["ndots:5"],
        ),
        port_mappings=ports,
        labels={**(meta.labels or {}), POD_NAME: meta.name, POD_NAMESPACE: meta.namespace, POD_UID: meta.uid},
        annotations=dict(meta.annotations or {}),
        linux=cri.LinuxPodSandboxConfig(
            cgroup_parent=qos_parent(rig, pod),
            security_context=cri.LinuxSandboxSecurityContext(
                namespace_options=cri.NamespaceOption(network=cri.POD, pid=cri.CONTAINER, ipc=cri.POD)
            ),
        ),
    )


def container_hash(container: Container) -> str:
    # kubelet hashes the container spec (fnv32a of its JSON); any stable hash of it serves here.
    return format(zlib.crc32(json.dumps(container.to_dict(), sort_keys=True, default=str).encode()), "x")


def container_config(
    pod: Pod, container: Container, image_ref: str, log_dir: Path, restart_count: int = 0
) -> cri.ContainerConfig:
    meta = pod.metadata
    (log_dir / container.name).mkdir(exist_ok=True)  # kubelet makes the container's log dir
    annotations = {
        "io.kubernetes.container.hash": container_hash(container),
        "io.kubernetes.container.restartCount": str(restart_count),
        "io.kubernetes.container.terminationMessagePath": "/dev/termination-log",
        "io.kubernetes.container.terminationMessagePolicy": "File",
        "io.kubernetes.pod.terminationGracePeriod": str(pod.spec.termination_grace_period_seconds or 30),
    }
    if container.ports:
        ports = [
            {"containerPort": p.container_port, "protocol": p.protocol or "TCP"} for p in container.ports
        ]
        annotations["io.kubernetes.container.ports"] = json.dumps(ports)
    resources = cri.LinuxContainerResources(cpu_period=100000, cpu_shares=2, oom_score_adj=1000)
    limits = (container.resources.limits if container.resources else None) or {}
    if "cpu" in limits:
        millis = quantity_millis(limits["cpu"])
        resources.cpu_quota, resources.cpu_shares = millis * 100, millis * 1024 // 1000
        resources.oom_score_adj = -997
    if "memory" in limits:
        resources.memory_limit_in_bytes = quantity_bytes(limits["memory"])
    return cri.ContainerConfig(
        metadata=cri.ContainerMetadata(name=container.name, attempt=restart_count),
        image=cri.ImageSpec(image=image_ref, user_specified_image=container.image),
        command=list(container.command or []),
        args=list(container.args or []),
        labels={
            CONTAINER_NAME: container.name,
            POD_NAME: meta.name,
            POD_NAMESPACE: meta.namespace,
            POD_UID: meta.uid,
        },
        annotations=annotations,
        log_path=f"{container.name}/{restart_count}.log",
        linux=cri.LinuxContainerConfig(
            resources=resources,
            security_context=cri.LinuxContainerSecurityContext(
                namespace_options=cri.NamespaceOption(network=cri.POD, pid=cri.CONTAINER, ipc=cri.POD)
            ),
        ),
    )


# -- the kubelet -----------------------------------------------------------------------------------


@dataclass
class Pleg:
    """kubelet's generic PLEG: a relist every second, GetPodStatus for the pods that changed."""

    runtime: cri_grpc.RuntimeServiceStub
    period: float = 1.0
    states: dict[str, tuple[str, int]] = field(default_factory=dict)  # id → (pod uid, state)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (pod uid, id, what happened)
    cache: dict[str, dict[str, Any]] = field(default_factory=dict)  # pod uid → last GetPodStatus
    relists: int = 0
    slowest: float = 0.0
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.relist()
            except grpc.RpcError as exc:  # kubelet logs and retries at the next tick
                self.errors.append(f"{exc.code()}: {exc.details()}")
            took = time.monotonic() - started
            self.slowest = max(self.slowest, took)
            self._stop.wait(max(0.0, self.period - took))

    def stop(self) -> None:
        self._stop.set()

    def relist(self) -> None:
        sandboxes = self.runtime.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=TIMEOUT).items
        containers = self.runtime.ListContainers(cri.ListContainersRequest(), timeout=TIMEOUT).containers
        now: dict[str, tuple[str, int]] = {s.id: (s.labels[POD_UID], 100 + s.state) for s in sandboxes}
        now.update({c.id: (c.labels[POD_UID], c.state) for c in containers})
        changed: set[str] = set()
        with self._lock:
            for id, (uid, state) in now.items():
                if self.states.get(id, ("", -1))[1] != state:
                    self.events.append((uid, id, self._describe(state)))
                    changed.add(uid)
            for id, (uid, _) in self.states.items():
                if id not in now:
                    self.events.append((uid, id, "removed"))
                    changed.add(uid)
            self.states = now
            self.relists += 1
        for uid in changed:
            self.cache[uid] = self.pod_status(uid)

    @staticmethod
    def _describe(state: int) -> str:
        if state >= 100:
            return cri.PodSandboxState.Name(state - 100)
        return cri.ContainerState.Name(state)

    def pod_status(self, uid: str) -> dict[str, Any]:
        """kubelet's GetPodStatus."""
        selector = {POD_UID: uid}
        sandboxes = self.runtime.ListPodSandbox(
            cri.ListPodSandboxRequest(filter=cri.PodSandboxFilter(label_selector=selector)), timeout=TIMEOUT
        ).items
        statuses = [
            self.runtime.PodSandboxStatus(
                cri.PodSandboxStatusRequest(pod_sandbox_id=s.id), timeout=TIMEOUT
            ).status
            for s in sandboxes
        ]
        listed = self.runtime.ListContainers(
            cri.ListContainersRequest(filter=cri.ContainerFilter(label_selector=selector)), timeout=TIMEOUT
        ).containers
        containers = []
        for c in listed:
            try:
                request = cri.ContainerStatusRequest(container_id=c.id)
                containers.append(self.runtime.ContainerStatus(request, timeout=TIMEOUT).status)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:  # removed between the list and the status
                    raise
        return {"sandboxes": statuses, "containers": containers}

    def saw(self, uid: str, what: str) -> bool:
        with self._lock:
            return any(e[0] == uid and e[2] == what for e in self.events)


@dataclass
class Kubelet:
    rig: CriRig
    pleg: Pleg
    pods: dict[str, tuple[str, list[str]]] = field(default_factory=dict)  # uid → (sandbox id, container ids)

    @property
    def runtime(self) -> cri_grpc.RuntimeServiceStub:
        return self.rig.runtime

    def ensure_image(self, image: str, config: cri.PodSandboxConfig | None = None) -> str:
        """EnsureImageExists (IfNotPresent): ImageStatus, PullImage when absent; the image id."""
        spec = cri.ImageSpec(image=image)
        status = self.rig.images.ImageStatus(cri.ImageStatusRequest(image=spec), timeout=TIMEOUT)
        if status.HasField("image"):
            image_id: str = status.image.id
            return image_id
        pulled = self.rig.images.PullImage(cri.PullImageRequest(image=spec, sandbox_config=config))
        image_ref: str = pulled.image_ref
        return image_ref

    def sync_pod(self, pod: Pod) -> None:
        self.ensure_image(PAUSE_REF)
        config = sandbox_config(self.rig, pod)
        sandbox_id = self.runtime.RunPodSandbox(
            cri.RunPodSandboxRequest(config=config, runtime_handler=""), timeout=2 * TIMEOUT
        ).pod_sandbox_id
        status = self.runtime.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id)).status
        assert status.network.ip, "the pod has an IP"
        ids = []
        for container in pod.spec.containers:
            image_ref = self.ensure_image(container.image, config)
            cconfig = container_config(pod, container, image_ref, Path(config.log_directory))
            created = self.runtime.CreateContainer(
                cri.CreateContainerRequest(pod_sandbox_id=sandbox_id, config=cconfig, sandbox_config=config),
                timeout=TIMEOUT,
            )
            self.runtime.StartContainer(
                cri.StartContainerRequest(container_id=created.container_id), timeout=TIMEOUT
            )
            ids.append(created.container_id)
        self.pods[pod.metadata.uid] = (sandbox_id, ids)

    def kill_pod(self, pod: Pod) -> None:
        sandbox_id, ids = self.pods[pod.metadata.uid]
        grace = pod.spec.termination_grace_period_seconds or 30
        for id in ids:
            self.runtime.StopContainer(
                cri.StopContainerRequest(container_id=id, timeout=grace), timeout=TIMEOUT + grace
            )
        self.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=TIMEOUT)

    def gc_pod(self, pod: Pod) -> None:
        sandbox_id, ids = self.pods.pop(pod.metadata.uid)
        for id in ids:
            self.runtime.RemoveContainer(cri.RemoveContainerRequest(container_id=id), timeout=TIMEOUT)
        self.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=TIMEOUT)


def converge(check: Callable[[], bool], what: str, timeout: float = 45.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not converged: {what}")
        time.sleep(0.2)


def test_kubelet_pod_lifecycle() -> None:
    web, job = load_pods(MANIFESTS)
    assert type(web).__name__ == V1Pod.__name__  # a real client model, not a dict
    assert web.spec.containers[0].ports[0].container_port == 8080
    with CriRig() as rig:
        version = rig.runtime.Version(cri.VersionRequest(version="v1"), timeout=TIMEOUT)
        assert all(
            (version.version, version.runtime_name, version.runtime_version, version.runtime_api_version)
        )
        status = rig.runtime.Status(cri.StatusRequest(), timeout=TIMEOUT).status
        assert {c.type: c.status for c in status.conditions} == {"RuntimeReady": True, "NetworkReady": True}
        config = rig.runtime.RuntimeConfig(cri.RuntimeConfigRequest(), timeout=TIMEOUT)
        assert config.linux.cgroup_driver == cri.CGROUPFS

        pleg = Pleg(cri_grpc.RuntimeServiceStub(grpc.insecure_channel(f"unix://{rig.daemon.address}")))
        thread = threading.Thread(target=pleg.run, daemon=True)
        thread.start()
        kubelet = Kubelet(rig, pleg)
        try:
            kubelet.sync_pod(web)
            kubelet.sync_pod(job)
            web_uid, job_uid = web.metadata.uid, job.metadata.uid

            def converged() -> bool:
                w, j = pleg.cache.get(web_uid), pleg.cache.get(job_uid)
                if not w or not j or not w["containers"] or not j["containers"]:
                    return False
                return bool(
                    w["sandboxes"][0].state == cri.SANDBOX_READY
                    and w["containers"][0].state == cri.CONTAINER_RUNNING
                    and j["containers"][0].state == cri.CONTAINER_EXITED
                )

            converge(converged, "web running and job completed")
            finished = pleg.cache[job_uid]["containers"][0]
            assert (finished.exit_code, finished.reason) == (0, "Completed")
            assert pleg.saw(web_uid, "CONTAINER_RUNNING") and pleg.saw(job_uid, "CONTAINER_EXITED")
            log = Path(sandbox_config(rig, job).log_directory, "worker", "0.log").read_text()
            assert [line.split(" ", 3)[1:] for line in log.splitlines()] == [
                ["stdout", "F", "working"],
                ["stdout", "F", "done"],
            ]

            # Labels and annotations come back verbatim, from every call kubelet reads them from.
            web_config = sandbox_config(rig, web)
            (listed,) = rig.runtime.ListPodSandbox(
                cri.ListPodSandboxRequest(filter=cri.PodSandboxFilter(label_selector={POD_UID: web_uid}))
            ).items
            assert dict(listed.labels) == dict(web_config.labels)
            assert dict(listed.annotations) == dict(web_config.annotations)
            (server,) = pleg.cache[web_uid]["containers"]
            expected = container_config(web, web.spec.containers[0], "", Path(web_config.log_directory))
            assert dict(server.labels) == dict(expected.labels)
            assert dict(server.annotations) == dict(expected.annotations)
            (listed_ctr,) = rig.runtime.ListContainers(
                cri.ListContainersRequest(
                    filter=cri.ContainerFilter(label_selector={CONTAINER_NAME: "server"})
                )
            ).containers
            assert dict(listed_ctr.annotations) == dict(expected.annotations)
            assert server.log_path == str(Path(web_config.log_directory, "server", "0.log"))

            # Pod deletion: stop (grace period), then the container and sandbox GC.
            for pod in (web, job):
                kubelet.kill_pod(pod)
            converge(
                lambda: (
                    pleg.cache[web_uid]["sandboxes"][0].state == cri.SANDBOX_NOTREADY
                    and pleg.cache[web_uid]["containers"][0].state == cri.CONTAINER_EXITED
                ),
                "web stopped",
            )
            for pod in (web, job):
                kubelet.gc_pod(pod)
            converge(lambda: not pleg.states, "everything removed")
            assert pleg.saw(web_uid, "removed") and pleg.saw(job_uid, "removed")
        finally:
            pleg.stop()
            thread.join(10)
    assert pleg.errors == []
    assert pleg.relists >= 5
    print(f"relists: {pleg.relists}, slowest relist incl. GetPodStatus: {pleg.slowest * 1000:.1f} ms")
