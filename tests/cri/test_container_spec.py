"""Container specs from CRI inputs (wharfd.cri.container_spec and container_mounts), checked field by field."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.cri import container_spec
from wharfd.cri.container_mounts import PodFiles
from wharfd.cri.container_spec import HostFacts, RuntimeSettings, SpecInputs, build_spec
from wharfd.runtime import errors
from wharfd.runtime.oci import caps
from wharfd.runtime.oci.image_config import RunConfig

PASSWD = """root:x:0:0:root:/root:/bin/sh
alice:x:1000:1000::/home/alice:/bin/sh
bob:x:1001:1001::/:/bin/sh
"""
GROUP = """root:x:0:
alice:x:1000:
bob:x:1001:
video:x:44:alice
staff:x:50:alice,bob
"""
HOST = HostFacts(oom_score_adj=0, sys_resource=True, swap=True, hostname="node1")
IMAGE = RunConfig(env=("PATH=/image/bin", "FROM_IMAGE=1"), entrypoint=("/entry",), cmd=("default-arg",))


@pytest.fixture
def rootfs(tmp_path: Path) -> str:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    return str(root)


def pod(
    privileged: bool = False, cgroup_parent: str = "", annotations: dict[str, str] | None = None
) -> cri.PodSandboxConfig:
    return cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name="web", namespace="ns1", uid="u-1", attempt=0),
        hostname="web-host",
        annotations=annotations or {},
        linux=cri.LinuxPodSandboxConfig(
            cgroup_parent=cgroup_parent,
            security_context=cri.LinuxSandboxSecurityContext(privileged=privileged),
        ),
    )


def config(**fields: Any) -> cri.ContainerConfig:
    base = cri.ContainerConfig(
        metadata=cri.ContainerMetadata(name="app"), image=cri.ImageSpec(image="busybox")
    )
    for key, value in fields.items():
        if key == "security":
            base.linux.security_context.CopyFrom(value)
        elif key == "resources":
            base.linux.resources.CopyFrom(value)
        elif isinstance(value, list):
            getattr(base, key).extend(value)
        elif isinstance(value, dict):
            getattr(base, key).update(value)
        else:
            setattr(base, key, value)
    return base


def build(rootfs: str, cfg: cri.ContainerConfig | None = None, **changes: Any) -> dict[str, Any]:
    inputs = SpecInputs(
        container_id="c" * 64,
        config=cfg or config(),
        sandbox_config=pod(),
        sandbox_id="s" * 64,
        sandbox_pid=4242,
        image_name="registry.test/busybox:1",
        image=IMAGE,
        rootfs=rootfs,
        host=HOST,
    )
    return build_spec(replace(inputs, **changes))


# --- process ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "args", "want"),
    [
        ([], [], ["/entry", "default-arg"]),
        ([], ["x"], ["/entry", "x"]),
        (["/bin/sh"], [], ["/bin/sh"]),
        (["/bin/sh"], ["-c", "true"], ["/bin/sh", "-c", "true"]),
    ],
)
def test_argv_from_command_args_and_image(
    rootfs: str, command: list[str], args: list[str], want: list[str]
) -> None:
    spec = build(rootfs, config(command=command, args=args))
    assert spec["process"]["args"] == want


def test_no_command_anywhere(rootfs: str) -> None:
    with pytest.raises(errors.InvalidArgument, match="no command"):
        build(rootfs, image=RunConfig())


def test_env_order_and_overrides(rootfs: str) -> None:
    envs = [cri.KeyValue(key="FROM_IMAGE", value=b"2"), cri.KeyValue(key="NEW", value=b"v")]
    spec = build(rootfs, config(envs=envs))
    assert spec["process"]["env"] == ["PATH=/image/bin", "HOSTNAME=web-host", "FROM_IMAGE=2", "NEW=v"]


def test_hostname_env_falls_back_to_the_node(rootfs: str) -> None:
    sandbox = pod()
    sandbox.hostname = ""
    spec = build(rootfs, sandbox_config=sandbox)
    assert "HOSTNAME=node1" in spec["process"]["env"]


@pytest.mark.parametrize(
    ("working_dir", "image_dir", "want"), [("/w", "/img", "/w"), ("", "/img", "/img"), ("", "", "/")]
)
def test_working_dir(rootfs: str, working_dir: str, image_dir: str, want: str) -> None:
    spec = build(rootfs, config(working_dir=working_dir), image=replace(IMAGE, working_dir=image_dir))
    assert spec["process"]["cwd"] == want


def test_tty_and_defaults(rootfs: str) -> None:
    spec = build(rootfs, config(tty=True))
    process = spec["process"]
    assert process["terminal"] is True and "TERM=xterm" in process["env"]
    assert "rlimits" not in process and "apparmorProfile" not in process
    assert "noNewPrivileges" not in process  # the CRI clears it unless asked
    assert "seccomp" not in spec["linux"]  # no profile asked: unconfined, as containerd
    assert spec["root"] == {"path": "rootfs"}
    assert all(m["destination"] != "/run" for m in spec["mounts"])


# --- user and groups ------------------------------------------------------------------------------


def sc(**fields: Any) -> cri.LinuxContainerSecurityContext:
    out = cri.LinuxContainerSecurityContext()
    for key, value in fields.items():
        if key in ("run_as_user", "run_as_group"):
            getattr(out, key).value = value
        elif isinstance(value, list):
            getattr(out, key).extend(value)
        elif isinstance(value, cri.SecurityProfile | cri.Capability | cri.NamespaceOption):
            getattr(out, key).CopyFrom(value)
        else:
            setattr(out, key, value)
    return out


@pytest.mark.parametrize(
    ("security", "image_user", "want"),
    [
        (sc(), "", (0, 0, [0])),
        (sc(run_as_user=1000), "", (1000, 1000, [44, 50, 1000])),
        (sc(run_as_username="bob"), "", (1001, 1001, [50, 1001])),
        (sc(run_as_user=1000, run_as_group=7), "", (1000, 7, [7, 44, 50])),
        (sc(), "alice", (1000, 1000, [44, 50, 1000])),
        (sc(run_as_user=1000, supplemental_groups=[5, 6]), "", (1000, 1000, [5, 6, 44, 50, 1000])),
        (
            sc(run_as_user=1000, supplemental_groups=[5], supplemental_groups_policy=cri.Strict),
            "",
            (1000, 1000, [5, 1000]),
        ),
        (sc(run_as_user=4000), "", (4000, 0, [0])),  # unknown uid: gid 0, no groups
    ],
)
def test_user_and_supplemental_groups(
    rootfs: str,
    security: cri.LinuxContainerSecurityContext,
    image_user: str,
    want: tuple[int, int, list[int]],
) -> None:
    spec = build(rootfs, config(security=security), image=replace(IMAGE, user=image_user))
    user = spec["process"]["user"]
    assert (user["uid"], user["gid"], user["additionalGids"]) == want


def test_group_without_user(rootfs: str) -> None:
    with pytest.raises(errors.InvalidArgument, match="run_as_group"):
        build(rootfs, config(security=sc(run_as_group=5)))


def test_unknown_user_name(rootfs: str) -> None:
    with pytest.raises(errors.InvalidArgument, match='no user "carol"'):
        build(rootfs, config(security=sc(run_as_username="carol")))


# --- capabilities, privilege, paths -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("add", "drop", "check"),
    [
        (["NET_ADMIN"], [], lambda b: "CAP_NET_ADMIN" in b and "CAP_CHOWN" in b),
        ([], ["CHOWN"], lambda b: "CAP_CHOWN" not in b and "CAP_KILL" in b),
        (["ALL"], ["CHOWN"], lambda b: "CAP_SYS_ADMIN" in b and "CAP_CHOWN" not in b),
        ([], ["ALL"], lambda b: b == []),
        (["SYS_TIME"], ["ALL"], lambda b: b == ["CAP_SYS_TIME"]),
        (["cap_sys_nice"], [], lambda b: "CAP_SYS_NICE" in b),
    ],
)
def test_capabilities(rootfs: str, add: list[str], drop: list[str], check: Any) -> None:
    security = sc(capabilities=cri.Capability(add_capabilities=add, drop_capabilities=drop))
    spec = build(rootfs, config(security=security))
    capabilities = spec["process"]["capabilities"]
    assert check(capabilities.get("bounding", [])), capabilities
    assert capabilities.get("bounding", []) == capabilities.get("effective", [])
    assert "ambient" not in capabilities


def test_unknown_capability(rootfs: str) -> None:
    security = sc(capabilities=cri.Capability(add_capabilities=["BOGUS"]))
    with pytest.raises(errors.InvalidArgument, match="CAP_BOGUS"):
        build(rootfs, config(security=security))


def test_privileged_needs_a_privileged_pod(rootfs: str) -> None:
    with pytest.raises(errors.InvalidArgument, match="no privileged container allowed"):
        build(rootfs, config(security=sc(privileged=True)))


def test_privileged(rootfs: str) -> None:
    security = sc(privileged=True, masked_paths=["/proc/kcore"], seccomp=cri.SecurityProfile())
    spec = build(rootfs, config(security=security), sandbox_config=pod(privileged=True))
    linux = spec["linux"]
    assert "maskedPaths" not in linux and "readonlyPaths" not in linux and "seccomp" not in linux
    assert linux["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    assert any(d["path"] == "/dev/null" for d in linux["devices"])
    assert spec["process"]["capabilities"]["bounding"] == caps.current()
    sysfs = next(m for m in spec["mounts"] if m["destination"] == "/sys")
    cgroup = next(m for m in spec["mounts"] if m["destination"] == "/sys/fs/cgroup")
    assert "rw" in sysfs["options"] and "rw" in cgroup["options"]


def test_masked_and_readonly_paths(rootfs: str) -> None:
    spec = build(rootfs, config(security=sc(masked_paths=["/proc/kcore"], readonly_paths=["/proc/sys"])))
    assert spec["linux"]["maskedPaths"] == ["/proc/kcore"]
    assert spec["linux"]["readonlyPaths"] == ["/proc/sys"]
    unmasked = build(rootfs, config(security=sc()))
    assert "maskedPaths" not in unmasked["linux"] and "readonlyPaths" not in unmasked["linux"]
    kept = build(rootfs, config(security=sc()), settings=RuntimeSettings(disable_proc_mount=True))
    assert "/proc/kcore" in kept["linux"]["maskedPaths"]


def test_no_new_privs_and_readonly_rootfs(rootfs: str) -> None:
    spec = build(rootfs, config(security=sc(no_new_privs=True, readonly_rootfs=True)))
    assert spec["process"]["noNewPrivileges"] is True
    assert spec["root"] == {"path": "rootfs", "readonly": True}


# --- seccomp and AppArmor ---------------------------------------------------------------------------


def test_seccomp_profiles(rootfs: str, tmp_path: Path) -> None:
    default = build(rootfs, config(security=sc(seccomp=cri.SecurityProfile())))
    assert default["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"
    unconfined = cri.SecurityProfile(profile_type=cri.SecurityProfile.Unconfined)
    assert "seccomp" not in build(rootfs, config(security=sc(seccomp=unconfined)))["linux"]
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_LOG"}))
    local = cri.SecurityProfile(profile_type=cri.SecurityProfile.Localhost, localhost_ref=str(profile))
    assert build(rootfs, config(security=sc(seccomp=local)))["linux"]["seccomp"] == {
        "defaultAction": "SCMP_ACT_LOG"
    }
    legacy = build(rootfs, config(security=sc(seccomp_profile_path="runtime/default")))
    assert "seccomp" in legacy["linux"]
    unset = build(rootfs, settings=RuntimeSettings(unset_seccomp_profile="runtime/default"))
    assert "seccomp" in unset["linux"]


@pytest.mark.parametrize(
    ("profile", "match"),
    [
        (
            cri.SecurityProfile(profile_type=cri.SecurityProfile.Localhost, localhost_ref="rel.json"),
            "absolute",
        ),
        (
            cri.SecurityProfile(
                profile_type=cri.SecurityProfile.Localhost, localhost_ref="/nonexistent.json"
            ),
            "No such",
        ),
        (cri.SecurityProfile(localhost_ref="/x.json"), "only for a Localhost"),
    ],
)
def test_bad_seccomp(rootfs: str, profile: cri.SecurityProfile, match: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=match):
        build(rootfs, config(security=sc(seccomp=profile)))


def test_apparmor_without_apparmor(rootfs: str) -> None:
    for kind in (cri.SecurityProfile.RuntimeDefault, cri.SecurityProfile.Unconfined):
        spec = build(rootfs, config(security=sc(apparmor=cri.SecurityProfile(profile_type=kind))))
        assert "apparmorProfile" not in spec["process"]
    local = cri.SecurityProfile(profile_type=cri.SecurityProfile.Localhost, localhost_ref="my-profile")
    with pytest.raises(errors.InvalidArgument, match="AppArmor is not enabled"):
        build(rootfs, config(security=sc(apparmor=local)))
    spec = build(rootfs, config(security=sc(apparmor=local)), host=replace(HOST, apparmor=True))
    assert spec["process"]["apparmorProfile"] == "my-profile"


# --- namespaces, resources, cgroups, annotations --------------------------------------------------


@pytest.mark.parametrize(
    ("pid_mode", "want"),
    [
        (cri.POD, "/proc/4242/ns/pid"),
        (cri.NODE, "/proc/4242/ns/pid"),
        (cri.CONTAINER, ""),
        (cri.TARGET, "/proc/77/ns/pid"),
    ],
)
def test_namespaces(rootfs: str, pid_mode: cri.NamespaceMode, want: str) -> None:
    security = sc(namespace_options=cri.NamespaceOption(pid=pid_mode, target_id="t"))
    spec = build(rootfs, config(security=security), target_pid=77)
    paths = {n["type"]: n.get("path", "") for n in spec["linux"]["namespaces"]}
    assert paths["network"] == "/proc/4242/ns/net"
    assert paths["ipc"] == "/proc/4242/ns/ipc"
    assert paths["uts"] == "/proc/4242/ns/uts"
    assert paths["mount"] == ""
    assert paths["pid"] == want


def test_resources(rootfs: str) -> None:
    resources = cri.LinuxContainerResources(
        cpu_period=100000,
        cpu_quota=50000,
        cpu_shares=512,
        memory_limit_in_bytes=64 << 20,
        cpuset_cpus="0",
        cpuset_mems="0",
        oom_score_adj=500,
        unified={"memory.high": "1"},
    )
    spec = build(rootfs, config(resources=resources))
    got = spec["linux"]["resources"]
    assert got["cpu"] == {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0", "mems": "0"}
    assert got["memory"] == {"limit": 64 << 20, "swap": 64 << 20}
    assert got["unified"] == {"memory.high": "1"}
    assert spec["process"]["oomScoreAdj"] == 500
    no_swap = build(rootfs, config(resources=resources), host=replace(HOST, swap=False))
    assert no_swap["linux"]["resources"]["memory"] == {"limit": 64 << 20}
    swap = cri.LinuxContainerResources(memory_limit_in_bytes=10, memory_swap_limit_in_bytes=20)
    assert build(rootfs, config(resources=swap))["linux"]["resources"]["memory"] == {"limit": 10, "swap": 20}


@pytest.mark.parametrize(
    ("wanted", "sys_resource", "restrict", "want"),
    [(-998, False, False, 0), (-998, True, False, -998), (-998, True, True, 0), (1000, False, False, 1000)],
)
def test_oom_score_adj_clamp(rootfs: str, wanted: int, sys_resource: bool, restrict: bool, want: int) -> None:
    spec = build(
        rootfs,
        config(resources=cri.LinuxContainerResources(oom_score_adj=wanted)),
        host=replace(HOST, sys_resource=sys_resource),
        settings=RuntimeSettings(restrict_oom_score_adj=restrict),
    )
    assert spec["process"]["oomScoreAdj"] == want
    assert container_spec.clamp_oom_score_adj(-5, 3) == 3


@pytest.mark.parametrize(
    ("parent", "want"),
    [
        ("", "/k8s.io/" + "c" * 64),
        ("/kubepods/burstable/pod1", "/kubepods/burstable/pod1/" + "c" * 64),
        ("/kubepods.slice/kubepods-pod1.slice", "kubepods-pod1.slice:cri-containerd:" + "c" * 64),
    ],
)
def test_cgroups_path(rootfs: str, parent: str, want: str) -> None:
    assert build(rootfs, sandbox_config=pod(cgroup_parent=parent))["linux"]["cgroupsPath"] == want


def test_annotations(rootfs: str) -> None:
    settings = RuntimeSettings(pod_annotations=("pass.io/*",), container_annotations=("c.io/x",))
    cfg = config(annotations={"c.io/x": "1", "c.io/y": "2"})
    spec = build(
        rootfs, cfg, sandbox_config=pod(annotations={"pass.io/a": "A", "other": "B"}), settings=settings
    )
    assert spec["annotations"] == {
        "pass.io/a": "A",
        "c.io/x": "1",
        "io.kubernetes.cri.container-type": "container",
        "io.kubernetes.cri.sandbox-id": "s" * 64,
        "io.kubernetes.cri.sandbox-name": "web",
        "io.kubernetes.cri.sandbox-namespace": "ns1",
        "io.kubernetes.cri.sandbox-uid": "u-1",
        "io.kubernetes.cri.container-name": "app",
        "io.kubernetes.cri.image-name": "registry.test/busybox:1",
    }


# --- mounts and devices ---------------------------------------------------------------------------


def binds(spec: dict[str, Any]) -> dict[str, tuple[str, list[str]]]:
    return {m["destination"]: (m["source"], m["options"]) for m in spec["mounts"] if m["type"] == "bind"}


def test_mounts(rootfs: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "link").symlink_to(data)
    missing = tmp_path / "made" / "here"
    mounts = [
        cri.Mount(container_path="/data/sub", host_path=str(tmp_path / "link")),
        cri.Mount(container_path="/data", host_path=str(data), readonly=True),
        cri.Mount(container_path="/new", host_path=str(missing)),
    ]
    spec = build(rootfs, config(mounts=mounts))
    got = binds(spec)
    assert got["/data"] == (str(data), ["rbind", "rprivate", "ro"])
    assert got["/data/sub"] == (str(data), ["rbind", "rprivate", "rw"])  # symlink resolved
    assert got["/new"] == (str(missing), ["rbind", "rprivate", "rw"]) and missing.is_dir()
    order = [m["destination"] for m in spec["mounts"] if m["type"] == "bind"]
    assert order.index("/data") < order.index("/data/sub")  # parents first
    cgroup = next(m for m in spec["mounts"] if m["destination"] == "/sys/fs/cgroup")
    assert cgroup["options"][-1] == "ro"


def test_pod_files_and_overrides(rootfs: str, tmp_path: Path) -> None:
    for name in ("hostname", "hosts", "resolv.conf"):
        (tmp_path / name).write_text("x\n")
    (tmp_path / "shm").mkdir()
    files = PodFiles(
        hostname=str(tmp_path / "hostname"),
        hosts=str(tmp_path / "hosts"),
        resolv_conf=str(tmp_path / "resolv.conf"),
        shm=str(tmp_path / "shm"),
    )
    mine = tmp_path / "myhosts"
    mine.write_text("y\n")
    cfg = config(
        mounts=[cri.Mount(container_path="/etc/hosts", host_path=str(mine))],
        security=sc(readonly_rootfs=True),
    )
    got = binds(build(rootfs, cfg, pod_files=files))
    assert got["/etc/hostname"] == (str(tmp_path / "hostname"), ["rbind", "rprivate", "ro"])
    assert got["/etc/hosts"][0] == str(mine)
    assert got["/etc/resolv.conf"][1][-1] == "ro"
    assert got["/dev/shm"] == (str(tmp_path / "shm"), ["rbind", "rprivate", "rw"])


def test_dev_mount_hides_default_dev_mounts(rootfs: str) -> None:
    spec = build(rootfs, config(mounts=[cri.Mount(container_path="/dev", host_path="/dev")]))
    assert not [m for m in spec["mounts"] if m["destination"].startswith("/dev/")]


@pytest.mark.parametrize(
    ("mount", "error", "match"),
    [
        (cri.Mount(container_path="/x", host_path="rel"), errors.InvalidArgument, "absolute"),
        (cri.Mount(container_path="x", host_path="/tmp"), errors.InvalidArgument, "container_path"),
        (
            cri.Mount(container_path="/x", host_path="/tmp", readonly=False, recursive_read_only=True),
            errors.InvalidArgument,
            "conflicts with a read-write mount",
        ),
        (
            cri.Mount(container_path="/x", host_path="/tmp", recursive_read_only=True),
            errors.InvalidArgument,
            "conflicts with a read-write",
        ),
        (
            cri.Mount(container_path="/x", image=cri.ImageSpec(image="busybox")),
            errors.InvalidArgument,
            "image volume was not prepared",
        ),
    ],
)
def test_bad_mounts(rootfs: str, mount: cri.Mount, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        build(rootfs, config(mounts=[mount]))


def test_propagation_needs_a_shared_mount(rootfs: str, tmp_path: Path) -> None:
    private = tmp_path / "private"
    subprocess.run(["mount", "--bind", str(tmp_path), str(tmp_path)], check=True)
    try:
        subprocess.run(["mount", "--make-private", str(tmp_path)], check=True)
        private.mkdir()
        for mode in (cri.PROPAGATION_BIDIRECTIONAL, cri.PROPAGATION_HOST_TO_CONTAINER):
            mount = cri.Mount(container_path="/p", host_path=str(private), propagation=mode)
            with pytest.raises(errors.FailedPrecondition, match="not shared"):
                build(rootfs, config(mounts=[mount]))
        subprocess.run(["mount", "--make-shared", str(tmp_path)], check=True)
        both = [
            cri.Mount(
                container_path="/a", host_path=str(private), propagation=cri.PROPAGATION_HOST_TO_CONTAINER
            ),
            cri.Mount(container_path="/b", host_path=str(private), propagation=cri.PROPAGATION_BIDIRECTIONAL),
        ]
        spec = build(rootfs, config(mounts=both))
        assert binds(spec)["/a"][1] == ["rbind", "rslave", "rw"]
        assert binds(spec)["/b"][1] == ["rbind", "rshared", "rw"]
        assert spec["linux"]["rootfsPropagation"] == "rshared"
    finally:
        subprocess.run(["umount", "-l", str(tmp_path)], check=False)


def test_devices(rootfs: str) -> None:
    devices = [cri.Device(container_path="/dev/mynull", host_path="/dev/null", permissions="rw")]
    spec = build(rootfs, config(devices=devices))
    info = os.stat("/dev/null")
    device = spec["linux"]["devices"][0]
    assert device["path"] == "/dev/mynull" and device["type"] == "c"
    assert (device["major"], device["minor"]) == (os.major(info.st_rdev), os.minor(info.st_rdev))
    assert spec["linux"]["resources"]["devices"][-1] == {
        "allow": True,
        "type": "c",
        "major": device["major"],
        "minor": device["minor"],
        "access": "rw",
    }


@pytest.mark.parametrize(
    ("device", "match"),
    [
        (cri.Device(container_path="/dev/x", host_path="/dev/null", permissions="rwx"), "permissions"),
        (cri.Device(container_path="/dev/x", host_path="/dev/nonexistent-device"), "nonexistent"),
    ],
)
def test_bad_devices(rootfs: str, device: cri.Device, match: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=match):
        build(rootfs, config(devices=[device]))


def test_userns_refused(rootfs: str) -> None:
    options = cri.NamespaceOption(userns_options=cri.UserNamespace(mode=cri.POD))
    with pytest.raises(errors.InvalidArgument, match="user namespaces"):
        build(rootfs, config(security=sc(namespace_options=options)))
