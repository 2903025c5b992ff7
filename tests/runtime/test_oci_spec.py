"""The default spec against containerd's facts, the wire forms, and every spec option."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from google.protobuf import any_pb2

from wharfd.runtime import errors
from wharfd.runtime.oci import caps, linux
from wharfd.runtime.oci import process as proc
from wharfd.runtime.oci import spec as oci
from wharfd.runtime.oci.spec import Spec

# containerd's populateDefaultUnixSpec (pkg/oci/spec.go) and defaultMounts (pkg/oci/mounts.go) as JSON.
CONTAINERD_DEFAULT: dict[str, Any] = {
    "ociVersion": "1.1.0",
    "process": {
        "user": {"uid": 0, "gid": 0},
        "cwd": "/",
        "capabilities": {
            k: [
                "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
                "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
                "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
            ]
            for k in ("bounding", "effective", "permitted")
        },
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": True,
    },
    "root": {"path": "rootfs"},
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {
            "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts", "type": "devpts", "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {
            "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/sys", "type": "sysfs", "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        },
        {
            "destination": "/run", "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
    ],
    "linux": {
        "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        "cgroupsPath": "/k8s.io/c1",
        "namespaces": [
            {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"},
        ],
        "maskedPaths": [
            "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
            "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
            "/sys/devices/virtual/powercap", "/proc/scsi",
        ],
        "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
    },
}  # fmt: skip


def fresh() -> Spec:
    return oci.default_spec("k8s.io", "c1")


def test_default_spec_is_containerds() -> None:
    assert fresh() == CONTAINERD_DEFAULT


def test_default_spec_omits_what_go_omits() -> None:
    spec = fresh()
    assert "hostname" not in spec and "annotations" not in spec
    # No default env since containerd 1.3 (PATH comes from the image or with_default_path_env).
    assert "env" not in spec["process"] and "args" not in spec["process"]
    assert set(spec["process"]["capabilities"]) == {"bounding", "effective", "permitted"}


def test_default_specs_share_nothing() -> None:
    a, b = fresh(), fresh()
    a["mounts"][0]["options"].append("ro")
    a["process"]["capabilities"]["bounding"].clear()
    assert b == CONTAINERD_DEFAULT


@pytest.mark.parametrize(
    ("namespace", "cid"), [("..", "c1"), ("default", "../../escape"), ("", "c1"), ("ns", "a/b")]
)
def test_default_spec_rejects_names_that_would_move_the_cgroup(namespace: str, cid: str) -> None:
    with pytest.raises(errors.InvalidArgument):
        oci.default_spec(namespace, cid)


def test_json_round_trip_and_compact_form() -> None:
    spec = oci.generate("default", "c1", oci.with_annotations({"k": "ü"}))
    data = oci.to_json(spec)
    assert b" " not in data.replace("ü".encode(), b"")
    assert oci.from_json(data) == spec
    assert json.loads(oci.to_json(spec, indent=4)) == spec


@pytest.mark.parametrize(
    ("data", "field"), [(b"[]", "object"), (b"{", "JSON"), (b'{"ociVersion": 1}', "ociVersion")]
)
def test_from_json_rejects_non_specs(data: bytes, field: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=field):
        oci.from_json(data)


def test_any_carries_json_under_containerds_type_url() -> None:
    value = oci.to_any(fresh())
    assert value.type_url == "types.containerd.io/opencontainers/runtime-spec/1/Spec"
    assert json.loads(value.value) == CONTAINERD_DEFAULT
    assert oci.from_any(value) == CONTAINERD_DEFAULT
    with pytest.raises(errors.InvalidArgument, match="type_url"):
        oci.from_any(any_pb2.Any(type_url="containerd.runc.v1.Options", value=b"{}"))


# --- process options ------------------------------------------------------------------------------


def test_process_args_cwd_hostname_tty() -> None:
    spec = oci.generate(
        "default", "c1",
        proc.with_process_args("sh", "-c", "true"),
        proc.with_cwd("/work"),
        oci.with_hostname("box"),
        proc.with_tty(80, 24),
    )  # fmt: skip
    process = spec["process"]
    assert process["args"] == ["sh", "-c", "true"]
    assert process["cwd"] == "/work"
    assert spec["hostname"] == "box"
    assert process["terminal"] is True and process["env"] == ["TERM=xterm"]
    assert process["consoleSize"] == {"height": 24, "width": 80}
    oci.apply(spec, oci.with_hostname(""))
    assert "hostname" not in spec


@pytest.mark.parametrize(
    "make",
    [
        lambda: proc.with_cwd("relative"),
        lambda: oci.with_hostname("h" * 65),
        lambda: proc.with_process_args("a\0b"),
        lambda: proc.with_env(["=value"]),
        lambda: proc.with_user(-1, 0),
        lambda: proc.with_user(0, 2**31),
        lambda: proc.with_rlimit("RLIMIT_BOGUS", 1, 1),
        lambda: proc.with_rlimit("RLIMIT_NOFILE", 10, 5),
        lambda: proc.with_oom_score_adj(1001),
        lambda: proc.with_capabilities(["SYS_ADMIN"]),
        lambda: proc.with_added_capabilities(["CAP_NOPE"]),
        lambda: linux.with_masked_paths(["proc/kcore"]),
        lambda: oci.with_mounts([{"destination": "tmp"}]),
        lambda: oci.with_root_path(""),
        lambda: oci.with_annotations({"k": 1}),  # type: ignore[dict-item]
    ],
)
def test_bad_option_arguments_are_invalid_argument(make: Any) -> None:
    with pytest.raises(errors.InvalidArgument):
        make()


def test_env_replaces_by_key_appends_new_and_unsets_bare_keys() -> None:
    spec = oci.generate(
        "default", "c1", proc.with_env(["A=1", "B=2", "C=3"]), proc.with_env(["B=x", "D=4", "A"])
    )
    assert spec["process"]["env"] == ["B=x", "C=3", "D=4"]
    assert proc.merge_env(["PATH=/bin", "X=1"], ["X=2", "NOPE", "Y=3"]) == ["PATH=/bin", "X=2", "Y=3"]


def test_default_path_env_replaces_path() -> None:
    spec = oci.generate("default", "c1", proc.with_env(["PATH=/x", "A=1"]), proc.with_default_path_env())
    assert spec["process"]["env"] == [oci.DEFAULT_PATH_ENV, "A=1"]


def test_user_puts_primary_gid_first_once() -> None:
    spec = oci.generate("default", "c1", proc.with_user(1000, 100, [10, 20]))
    assert spec["process"]["user"] == {"uid": 1000, "gid": 100, "additionalGids": [100, 10, 20]}
    oci.apply(spec, proc.with_user(5, 10, [10, 20]))
    assert spec["process"]["user"]["additionalGids"] == [10, 20]


def test_rlimit_replaces_same_type_and_appends_others() -> None:
    spec = oci.generate(
        "default",
        "c1",
        proc.with_rlimit("RLIMIT_NOFILE", 4096, 8192),
        proc.with_rlimit("RLIMIT_CORE", 0, 0),
    )
    assert spec["process"]["rlimits"] == [
        {"type": "RLIMIT_NOFILE", "hard": 8192, "soft": 4096},
        {"type": "RLIMIT_CORE", "hard": 0, "soft": 0},
    ]


def test_no_new_privileges_and_oom_score() -> None:
    spec = oci.generate("default", "c1", proc.with_no_new_privileges(False), proc.with_oom_score_adj(-999))
    assert "noNewPrivileges" not in spec["process"]
    assert spec["process"]["oomScoreAdj"] == -999
    oci.apply(spec, proc.with_no_new_privileges())
    assert spec["process"]["noNewPrivileges"] is True


# --- capabilities ---------------------------------------------------------------------------------


def test_capabilities_set_add_drop_ambient() -> None:
    spec = fresh()
    oci.apply(spec, proc.with_added_capabilities(["CAP_SYS_ADMIN", "CAP_KILL"]))
    c = spec["process"]["capabilities"]
    assert c["bounding"][-1] == "CAP_SYS_ADMIN" and c["bounding"].count("CAP_KILL") == 1
    oci.apply(
        spec,
        proc.with_ambient_capabilities(["CAP_NET_RAW"]),
        proc.with_dropped_capabilities(["CAP_NET_RAW"]),
    )
    assert all("CAP_NET_RAW" not in c.get(k, []) for k in ("bounding", "effective", "permitted"))
    assert "ambient" not in c and "inheritable" not in c
    oci.apply(
        spec,
        proc.with_ambient_capabilities(["CAP_KILL", "CAP_CHOWN"]),
        proc.with_capabilities(["CAP_KILL"]),
    )
    assert c["bounding"] == c["effective"] == c["permitted"] == ["CAP_KILL"]
    assert c["inheritable"] == ["CAP_KILL"]
    oci.apply(spec, proc.with_capabilities([]))
    assert c == {"ambient": ["CAP_KILL", "CAP_CHOWN"]}


def test_capability_masks_decode_by_number() -> None:
    assert caps.from_mask(1 << 21 | 1) == ["CAP_CHOWN", "CAP_SYS_ADMIN"]
    assert caps.KNOWN.index("CAP_BPF") == 39
    assert set(caps.current()) <= set(caps.KNOWN)


# --- root, mounts, paths, annotations ---------------------------------------------------------------


def test_root_path_and_readonly() -> None:
    spec = oci.generate("default", "c1", oci.with_root_path("/abs/rootfs"), oci.with_readonly_rootfs())
    assert spec["root"] == {"path": "/abs/rootfs", "readonly": True}
    oci.apply(spec, oci.with_readonly_rootfs(False))
    assert spec["root"] == {"path": "/abs/rootfs"}


def test_mounts_append_and_remove() -> None:
    bind: dict[str, Any] = {
        "destination": "/data",
        "type": "bind",
        "source": "/srv",
        "options": ["rbind", "ro"],
    }
    spec = oci.generate("default", "c1", oci.with_mounts([bind]), oci.without_mounts("/run", "/dev/shm/"))
    destinations = [m["destination"] for m in spec["mounts"]]
    assert destinations == ["/proc", "/dev", "/dev/pts", "/dev/mqueue", "/sys", "/data"]
    assert spec["mounts"][-1] == bind
    bind["options"].append("x")
    assert spec["mounts"][-1]["options"] == ["rbind", "ro"]
    # A mount without options gets no empty "options" key (Go omits it).
    oci.apply(spec, oci.with_mounts([{"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}]))
    assert spec["mounts"][-1] == {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}


def test_masked_and_readonly_paths_replace_and_empty_removes() -> None:
    spec = oci.generate(
        "default", "c1", linux.with_masked_paths(["/proc/kcore"]), linux.with_readonly_paths([])
    )
    assert spec["linux"]["maskedPaths"] == ["/proc/kcore"]
    assert "readonlyPaths" not in spec["linux"]


def test_annotations_merge() -> None:
    spec = oci.generate(
        "default", "c1", oci.with_annotations({"a": "1", "b": "2"}), oci.with_annotations({"b": "3"})
    )
    assert spec["annotations"] == {"a": "1", "b": "3"}


# --- linux options --------------------------------------------------------------------------------


def test_namespace_path_replaces_or_adds_and_host_namespace_removes() -> None:
    spec = oci.generate(
        "default", "c1",
        linux.with_namespace_path("network", "/var/run/netns/cni-1"),
        linux.with_namespace_path("user"),
        linux.with_host_namespace("pid"),
    )  # fmt: skip
    assert spec["linux"]["namespaces"] == [
        {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
        {"type": "network", "path": "/var/run/netns/cni-1"}, {"type": "user"},
    ]  # fmt: skip
    with pytest.raises(errors.InvalidArgument, match="unknown type"):
        linux.with_host_namespace("net")
    with pytest.raises(errors.InvalidArgument, match="absolute"):
        linux.with_namespace_path("network", "netns")


def test_cgroups_path() -> None:
    spec = oci.generate("default", "c1", linux.with_cgroups_path("kubepods.slice:cri:abc"))
    assert spec["linux"]["cgroupsPath"] == "kubepods.slice:cri:abc"
    with pytest.raises(errors.InvalidArgument, match="cgroupsPath"):
        linux.with_cgroups_path("/a/../../b")


def test_resources() -> None:
    spec = oci.generate(
        "default", "c1",
        linux.with_memory_limit(64 << 20),
        linux.with_cpus(1.5),
        linux.with_cpu_shares(512),
        linux.with_cpuset("0-1,3", "0"),
    )  # fmt: skip
    resources = spec["linux"]["resources"]
    assert resources["memory"] == {"limit": 64 << 20}
    assert resources["cpu"] == {
        "quota": 150000,
        "period": 100000,
        "shares": 512,
        "cpus": "0-1,3",
        "mems": "0",
    }
    oci.apply(spec, linux.with_cpu_cfs(-1, 50000))
    assert (resources["cpu"]["quota"], resources["cpu"]["period"]) == (-1, 50000)
    bads: list[Callable[[], object]] = [
        lambda: linux.with_memory_limit(0),
        lambda: linux.with_cpus(0),
        lambda: linux.with_cpu_cfs(0),
        lambda: linux.with_cpu_shares(-2),
        lambda: linux.with_cpuset("0-"),
    ]
    for bad in bads:
        with pytest.raises(errors.InvalidArgument):
            bad()


def test_default_unix_devices_follow_deny_all() -> None:
    spec = oci.generate("default", "c1", linux.with_default_unix_devices())
    devices = spec["linux"]["resources"]["devices"]
    assert devices[0] == {"allow": False, "access": "rwm"}
    allowed = [(d["major"], d.get("minor")) for d in devices[1:]]
    assert allowed == [(1, 3), (1, 8), (1, 7), (5, 0), (1, 5), (1, 9), (5, 1), (136, None), (5, 2)]
    assert all(d["type"] == "c" and d["access"] == "rwm" and d["allow"] for d in devices[1:])


def test_privileged_unmasks_and_unconfines() -> None:
    spec = oci.generate(
        "default", "c1", linux.with_seccomp({"defaultAction": "SCMP_ACT_ERRNO"}), linux.with_privileged(),
        linux.with_all_devices_allowed(),
    )  # fmt: skip
    assert "maskedPaths" not in spec["linux"] and "readonlyPaths" not in spec["linux"]
    assert "seccomp" not in spec["linux"]
    assert next(m for m in spec["mounts"] if m["type"] == "sysfs")["options"][-1] == "rw"
    assert spec["process"]["capabilities"]["bounding"] == caps.current()
    assert spec["linux"]["resources"]["devices"] == [{"allow": True, "access": "rwm"}]


def test_seccomp_option_copies_and_none_removes() -> None:
    profile: dict[str, Any] = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": []}
    spec = oci.generate("default", "c1", linux.with_seccomp(profile))
    profile["syscalls"].append({"names": ["x"]})
    assert spec["linux"]["seccomp"] == {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": []}
    oci.apply(spec, linux.with_seccomp(None))
    assert "seccomp" not in spec["linux"]
    with pytest.raises(errors.InvalidArgument, match="defaultAction"):
        linux.with_seccomp({"syscalls": []})
