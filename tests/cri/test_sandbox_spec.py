"""The pause container's spec, the pod's CNI arguments, its files and list filters (no root needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.cri import network, sandbox_files, sandbox_list, sandbox_spec, sandbox_update
from wharfd.cri.sandbox_run import validate
from wharfd.cri.sandbox_spec import SandboxSpecInput
from wharfd.cri.store import CriState, SandboxMetadata, SandboxStatus
from wharfd.runtime import errors
from wharfd.runtime.oci.image_config import RunConfig

ID = "f" * 64


def config(**kw: Any) -> cri.PodSandboxConfig:
    base = cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name="web", uid="u1", namespace="ns"),
        hostname="web-host",
        log_directory="/var/log/pods/ns_web_u1",
        annotations={"io.example/pass": "yes", "other": "no"},
        linux=cri.LinuxPodSandboxConfig(cgroup_parent="/kubepods/pod-u1"),
    )
    for key, value in kw.items():
        if isinstance(value, list):
            getattr(base, key).extend(value)
        elif hasattr(getattr(base, key), "CopyFrom"):
            getattr(base, key).CopyFrom(value)
        else:
            setattr(base, key, value)
    return base


def spec_of(cfg: cri.PodSandboxConfig, **kw: Any) -> dict[str, Any]:
    inp = SandboxSpecInput(
        id=ID,
        config=cfg,
        image=RunConfig(entrypoint=("/pause",), env=("A=1",), user=""),
        image_name="registry.k8s.io/pause:3.10",
        netns_path="/var/run/netns/cni-1",
        shm_path="/run/x/shm",
        resolv_path="/var/lib/x/resolv.conf",
        **({"pod_annotations": ("io.example/*",), "user": (0, 0, ())} | kw),
    )
    return sandbox_spec.generate(inp)


def ns_types(spec: dict[str, Any]) -> dict[str, str]:
    return {n["type"]: n.get("path", "") for n in spec["linux"]["namespaces"]}


def test_pause_spec_defaults() -> None:
    spec = spec_of(config())
    assert spec["process"]["args"] == ["/pause"]
    assert spec["hostname"] == "web-host"
    assert spec["root"] == {"path": "rootfs", "readonly": True}
    assert "rlimits" not in spec["process"] and "seccomp" not in spec["linux"]
    assert spec["linux"]["cgroupsPath"] == f"/kubepods/pod-u1/{ID}"
    assert ns_types(spec)["network"] == "/var/run/netns/cni-1"
    assert {"pid", "ipc", "uts", "mount"} <= set(ns_types(spec))
    mounts = {m["destination"]: m for m in spec["mounts"]}
    assert "/run" not in mounts
    assert mounts["/dev/shm"]["source"] == "/run/x/shm" and "ro" in mounts["/dev/shm"]["options"]
    assert mounts["/etc/resolv.conf"]["source"] == "/var/lib/x/resolv.conf"
    assert spec["linux"]["sysctl"] == {
        "net.ipv4.ip_unprivileged_port_start": "0",
        "net.ipv4.ping_group_range": "0 2147483647",
    }
    assert spec["linux"]["resources"]["cpu"]["shares"] == 2
    ann = spec["annotations"]
    assert ann["io.kubernetes.cri.container-type"] == "sandbox"
    assert ann["io.kubernetes.cri.sandbox-id"] == ID
    assert (ann["io.kubernetes.cri.sandbox-name"], ann["io.kubernetes.cri.sandbox-namespace"]) == (
        "web",
        "ns",
    )
    assert ann["io.kubernetes.cri.sandbox-uid"] == "u1"
    assert ann["io.kubernetes.cri.sandbox-log-directory"] == "/var/log/pods/ns_web_u1"
    assert ann["io.example/pass"] == "yes" and "other" not in ann


def test_host_namespaces_and_no_unprivileged_sysctls() -> None:
    sc = cri.LinuxSandboxSecurityContext(
        namespace_options=cri.NamespaceOption(network=cri.NODE, pid=cri.NODE, ipc=cri.NODE)
    )
    spec = spec_of(
        config(linux=cri.LinuxPodSandboxConfig(security_context=sc, sysctls={"kernel.shm_rmid_forced": "1"}))
    )
    assert set(ns_types(spec)) == {"mount"}
    assert "hostname" not in spec  # runc refuses a hostname without a UTS namespace
    assert spec["linux"]["sysctl"] == {"kernel.shm_rmid_forced": "1"}


def test_security_context() -> None:
    sc = cri.LinuxSandboxSecurityContext(
        privileged=True,
        supplemental_groups=[5, 6],
        seccomp=cri.SecurityProfile(profile_type=cri.SecurityProfile.RuntimeDefault),
    )
    spec = spec_of(config(linux=cri.LinuxPodSandboxConfig(security_context=sc)), user=(1000, 2000, ()))
    assert spec["process"]["user"] == {"uid": 1000, "gid": 2000, "additionalGids": [2000, 5, 6]}
    assert "seccomp" not in spec["linux"]  # privileged: never confined
    sysfs = next(m for m in spec["mounts"] if m["destination"] == "/sys")
    assert "rw" in sysfs["options"] and "ro" not in sysfs["options"]
    sc.privileged = False
    assert "seccomp" in spec_of(config(linux=cri.LinuxPodSandboxConfig(security_context=sc)))["linux"]


def test_seccomp_profiles(tmp_path: Path) -> None:
    profile = tmp_path / "p.json"
    profile.write_text('{"defaultAction": "SCMP_ACT_LOG"}')

    def seccomp(p: cri.SecurityProfile | None, legacy: str = "", unset: str = "") -> Any:
        spec: dict[str, Any] = {"linux": {}, "process": {"capabilities": {"bounding": []}}}
        for opt in sandbox_spec.seccomp_opts(p, legacy, unset, privileged=False):
            opt(spec)
        return spec["linux"].get("seccomp")

    assert seccomp(None) is None
    assert seccomp(None, unset="runtime/default")["defaultAction"] == "SCMP_ACT_ERRNO"
    local = cri.SecurityProfile(profile_type=cri.SecurityProfile.Localhost, localhost_ref=str(profile))
    assert seccomp(local) == {"defaultAction": "SCMP_ACT_LOG"}
    assert seccomp(None, legacy=f"localhost/{profile}") == {"defaultAction": "SCMP_ACT_LOG"}
    with pytest.raises(errors.InvalidArgument, match="must be an absolute path"):
        seccomp(cri.SecurityProfile(profile_type=cri.SecurityProfile.Localhost, localhost_ref="rel.json"))
    with pytest.raises(errors.InvalidArgument, match="unknown"):
        seccomp(None, legacy="bogus")


def test_user_string_and_oom_score() -> None:
    cfg = config()
    cfg.linux.security_context.run_as_user.value = 7
    assert sandbox_spec.user_string(cfg, RunConfig(user="65535")) == "7"
    cfg.linux.security_context.run_as_group.value = 8
    assert sandbox_spec.user_string(cfg, RunConfig()) == "7:8"
    assert sandbox_spec.user_string(config(), RunConfig(user="nobody")) == "nobody"
    own = int(Path("/proc/self/oom_score_adj").read_text())
    assert sandbox_spec.oom_score_adj(-998, restrict=True) == max(-998, own)


def test_cgroups_path_forms() -> None:
    assert sandbox_spec.cgroups_path("/kubepods/burstable/pod1", "c") == "/kubepods/burstable/pod1/c"
    assert (
        sandbox_spec.cgroups_path("kubepods-burstable-pod1.slice", "c")
        == "kubepods-burstable-pod1.slice:cri-containerd:c"
    )
    assert sandbox_spec.cgroups_path("/a.slice/b.slice", "c", systemd=True) == "b.slice:cri-containerd:c"


def test_empty_entrypoint_is_refused() -> None:
    inp = SandboxSpecInput(ID, config(), RunConfig(), "img", "", "/shm", "/resolv")
    with pytest.raises(errors.InvalidArgument, match="empty Entrypoint and Cmd"):
        sandbox_spec.generate(inp)


def test_metadata_validation() -> None:
    validate(config())
    for field in ("name", "uid", "namespace"):
        cfg = config()
        setattr(cfg.metadata, field, "")
        with pytest.raises(errors.InvalidArgument, match=f"metadata.{field}"):
            validate(cfg)
    with pytest.raises(errors.InvalidArgument, match="must include metadata"):
        validate(cri.PodSandboxConfig())


# --- CNI arguments ----------------------------------------------------------------------------


def test_cni_args_and_capabilities() -> None:
    cfg = config(
        port_mappings=[
            cri.PortMapping(protocol=cri.UDP, container_port=53, host_port=5353, host_ip="127.0.0.1"),
            cri.PortMapping(container_port=80),  # no host port: not mapped
        ],
        dns_config=cri.DNSConfig(servers=["10.0.0.10"], searches=["ns.svc"], options=["ndots:5"]),
    )
    cfg.annotations["kubernetes.io/ingress-bandwidth"] = "10M"
    assert dict(network.cni_args(ID, cfg)) == {
        "IgnoreUnknown": "1",
        "K8S_POD_NAMESPACE": "ns",
        "K8S_POD_NAME": "web",
        "K8S_POD_INFRA_CONTAINER_ID": ID,
        "K8S_POD_UID": "u1",
    }
    caps = network.capability_args(cfg)
    assert caps["portMappings"] == [
        {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"}
    ]
    assert caps["bandwidth"] == {"ingressRate": 10_000_000, "ingressBurst": 2**32 - 1}
    assert caps["dns"] == {"servers": ["10.0.0.10"], "searches": ["ns.svc"], "options": ["ndots:5"]}
    assert caps["cgroupPath"] == "/kubepods/pod-u1"
    assert caps[network.POD_ANNOTATIONS_CAPABILITY]["io.example/pass"] == "yes"


@pytest.mark.parametrize(
    ("value", "problem"),
    [("lots", "not a resource quantity"), ("10", "unreasonably small"), ("2E", "unreasonably large")],
)
def test_bad_bandwidth(value: str, problem: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=problem):
        network.bandwidth_of({"kubernetes.io/egress-bandwidth": value})


def test_ip_preference() -> None:
    ips = ["fd00::2", "10.0.0.2", "10.0.0.3"]
    assert network.select_ips(ips) == ("10.0.0.2", ["fd00::2", "10.0.0.3"])
    assert network.select_ips(ips, "ipv6") == ("fd00::2", ["10.0.0.2", "10.0.0.3"])
    assert network.select_ips(ips, "cni") == ("fd00::2", ["10.0.0.2", "10.0.0.3"])
    assert network.select_ips([]) == ("", [])


# --- files ------------------------------------------------------------------------------------


def test_resolv_conf() -> None:
    dns = cri.DNSConfig(servers=["1.1.1.1", "8.8.8.8"], searches=["a", "b"], options=["ndots:2"])
    assert (
        sandbox_files.resolv_conf(dns)
        == "search a b\nnameserver 1.1.1.1\nnameserver 8.8.8.8\noptions ndots:2\n"
    )
    assert sandbox_files.resolv_conf(cri.DNSConfig()) == ""


def test_files_for_host_ipc(tmp_path: Path) -> None:
    cfg = config(dns_config=cri.DNSConfig(servers=["9.9.9.9"]))
    cfg.linux.security_context.namespace_options.ipc = cri.NODE
    sandbox_files.setup(tmp_path / "root", tmp_path / "state", cfg)
    assert (tmp_path / "root" / "hostname").read_text() == "web-host\n"
    assert (tmp_path / "root" / "resolv.conf").read_text() == "nameserver 9.9.9.9\n"
    assert (tmp_path / "root" / "hosts").exists()
    assert sandbox_files.shm_path(tmp_path / "state", cfg) == "/dev/shm"
    sandbox_files.remove(tmp_path / "root", tmp_path / "state", cfg)
    assert not (tmp_path / "root").exists()


# --- list filters and resource updates -----------------------------------------------------------


def _state_with_pods(tmp_path: Path) -> CriState:
    state = CriState(config={}, root=tmp_path, state_dir=tmp_path, meta=None, tasks=None, snapshotters={})  # type: ignore[arg-type]
    for n, (id, status, labels) in enumerate(
        (
            ("aaa1", "ready", {"app": "x"}),
            ("aab2", "notready", {"app": "x", "tier": "db"}),
            ("bcc3", "ready", {}),
        )
    ):
        cfg = cri.PodSandboxConfig(
            metadata=cri.PodSandboxMetadata(name=id, uid=id, namespace="ns"), labels=labels
        )
        meta = SandboxMetadata(id=id, name=id, config=cfg, runtime_handler="")
        state.sandboxes.add(state.new_sandbox(meta, SandboxStatus(state=status, created_at=n + 1)))
    return state


def test_list_filters(tmp_path: Path) -> None:
    state = _state_with_pods(tmp_path)

    def ids(**kw: Any) -> list[str]:
        flt = cri.PodSandboxFilter(**kw)
        return [p.id for p in sandbox_list.matching(state, flt)]

    assert [p.id for p in sandbox_list.matching(state, None)] == ["aaa1", "aab2", "bcc3"]
    assert ids(id="aab") == ["aab2"]
    assert ids(id="aa") == []  # ambiguous prefix
    assert ids(id="zz") == []
    assert ids(state=cri.PodSandboxStateValue(state=cri.SANDBOX_READY)) == ["aaa1", "bcc3"]
    assert ids(label_selector={"app": "x"}) == ["aaa1", "aab2"]
    assert ids(label_selector={"app": "x", "tier": "db"}) == ["aab2"]
    assert ids(label_selector={"app": "x"}, state=cri.PodSandboxStateValue(state=cri.SANDBOX_NOTREADY)) == [
        "aab2"
    ]


def test_cgroup_writes_v1_and_v2(tmp_path: Path) -> None:
    res = cri.LinuxContainerResources(
        cpu_period=100000, cpu_quota=50000, cpu_shares=512, memory_limit_in_bytes=1 << 30
    )
    v1 = {
        (str(p.relative_to(tmp_path)), v)
        for p, v in sandbox_update.cgroup_writes("/kubepods/p1", res, tmp_path)
    }
    assert ("cpu/kubepods/p1/cpu.shares", "512") in v1
    assert ("memory/kubepods/p1/memory.limit_in_bytes", str(1 << 30)) in v1
    (tmp_path / "cpu" / "kubepods" / "p1").mkdir(parents=True)
    assert (
        sandbox_update.apply_to_cgroup("/kubepods/p1", res, tmp_path) == 3
    )  # cpu only: no memory cgroup here
    assert (tmp_path / "cpu" / "kubepods" / "p1" / "cpu.shares").read_text() == "512"
    (tmp_path / "cgroup.controllers").write_text("cpu memory")
    v2 = dict(
        (str(p.relative_to(tmp_path)), v)
        for p, v in sandbox_update.cgroup_writes("/kubepods/p1", res, tmp_path)
    )
    assert v2 == {"kubepods/p1/cpu.max": "50000 100000", "kubepods/p1/memory.max": str(1 << 30)}
