"""The default seccomp profile: structure, containerd's rules, and capability-gated syscalls."""

from __future__ import annotations

import json
from typing import Any

import pytest

from wharfd.runtime.oci import caps, seccomp
from wharfd.runtime.oci import process as proc
from wharfd.runtime.oci import spec as oci

NS_FLAGS = 0x7E020000  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET


def allowed(profile: dict[str, Any]) -> set[str]:
    """Names allowed without argument conditions."""
    return {
        n
        for r in profile["syscalls"]
        if r["action"] == "SCMP_ACT_ALLOW" and "args" not in r
        for n in r["names"]
    }


def rules_for(profile: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [r for r in profile["syscalls"] if name in r["names"]]


def test_default_profile_shape_and_json() -> None:
    profile = seccomp.default_profile(caps.DEFAULT, arch="x86_64", kernel=(6, 1))
    assert json.loads(json.dumps(profile)) == profile
    assert list(profile) == ["defaultAction", "architectures", "syscalls"]
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert "defaultErrnoRet" not in profile  # runc's default errno for SCMP_ACT_ERRNO is EPERM
    assert all(set(r) <= {"names", "action", "errnoRet", "args"} and r["names"] for r in profile["syscalls"])
    assert len(seccomp.ALLOWED_SYSCALLS) == len(set(seccomp.ALLOWED_SYSCALLS)) == 363


@pytest.mark.parametrize(
    ("machine", "arches"),
    [
        ("x86_64", ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]),
        ("amd64", ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]),
        ("aarch64", ["SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64"]),
        ("s390x", ["SCMP_ARCH_S390", "SCMP_ARCH_S390X"]),
        ("riscv64", ["SCMP_ARCH_RISCV64"]),
    ],
)
def test_architectures(machine: str, arches: list[str]) -> None:
    assert seccomp.default_profile([], arch=machine)["architectures"] == arches


def test_architecture_without_a_list_omits_the_key_and_host_default_works() -> None:
    assert "architectures" not in seccomp.default_profile([], arch="ppc64le")
    assert seccomp.default_profile([])["defaultAction"] == "SCMP_ACT_ERRNO"


def test_arch_specific_syscalls() -> None:
    assert {"arch_prctl", "modify_ldt"} <= allowed(seccomp.default_profile([], arch="x86_64"))
    arm = allowed(seccomp.default_profile([], arch="aarch64"))
    assert {"set_tls", "cacheflush", "arm_fadvise64_64"} <= arm and "arch_prctl" not in arm


def test_common_syscalls_allowed_and_dangerous_ones_not() -> None:
    names = allowed(seccomp.default_profile(caps.DEFAULT, arch="x86_64", kernel=(6, 1)))
    assert {"read", "write", "execve", "openat2", "clone3"} - names == {"clone3"}
    assert names.isdisjoint(
        {"mount", "umount2", "unshare", "setns", "bpf", "perf_event_open", "reboot", "kexec_load"}
    )
    assert "chroot" in names  # CAP_SYS_CHROOT is a default capability


def test_socket_excludes_af_alg_and_af_vsock() -> None:
    rules = rules_for(seccomp.default_profile([], arch="x86_64"), "socket")
    conditions = [(r["args"][0]["op"], r["args"][0]["value"]) for r in rules]
    assert conditions == [("SCMP_CMP_LT", 38), ("SCMP_CMP_EQ", 39), ("SCMP_CMP_GT", 40)]
    assert all(len(r["args"]) == 1 and r["args"][0]["index"] == 0 for r in rules)


def test_personality_values() -> None:
    rules = rules_for(seccomp.default_profile([], arch="x86_64"), "personality")
    assert [r["args"] for r in rules] == [
        [{"index": 0, "value": v, "op": "SCMP_CMP_EQ"}] for v in (0, 8, 0x20000, 0x20008, 0xFFFFFFFF)
    ]


def test_without_sys_admin_clone_is_masked_and_clone3_is_enosys() -> None:
    profile = seccomp.default_profile(caps.DEFAULT, arch="x86_64")
    clone, clone3 = rules_for(profile, "clone"), rules_for(profile, "clone3")
    assert clone == [
        {
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": NS_FLAGS, "op": "SCMP_CMP_MASKED_EQ"}],
        }
    ]
    assert clone3 == [{"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]
    s390 = rules_for(seccomp.default_profile([], arch="s390x"), "clone")
    assert s390[0]["args"][0]["index"] == 1


def test_sys_admin_allows_clone_mount_and_friends_unconditionally() -> None:
    profile = seccomp.default_profile([*caps.DEFAULT, "CAP_SYS_ADMIN"], arch="x86_64")
    assert {"clone", "clone3", "mount", "unshare", "setns", "bpf", "fsopen"} <= allowed(profile)
    assert all("args" not in r for r in rules_for(profile, "clone"))
    assert all(r["action"] == "SCMP_ACT_ALLOW" for r in rules_for(profile, "clone3"))


@pytest.mark.parametrize(
    ("capability", "syscalls"),
    [
        ("CAP_SYS_PTRACE", {"ptrace", "kcmp", "pidfd_getfd", "process_madvise"}),
        ("CAP_BPF", {"bpf"}),
        ("CAP_PERFMON", {"perf_event_open"}),
        ("CAP_SYS_MODULE", {"init_module", "finit_module", "delete_module"}),
        ("CAP_SYS_TIME", {"settimeofday", "clock_settime"}),
        ("CAP_SYS_BOOT", {"reboot"}),
        ("CAP_SYS_NICE", {"mbind", "set_mempolicy"}),
        ("CAP_SYSLOG", {"syslog"}),
        ("CAP_DAC_READ_SEARCH", {"open_by_handle_at"}),
        ("CAP_SYS_RAWIO", {"iopl", "ioperm"}),
        ("CAP_SYS_PACCT", {"acct"}),
        ("CAP_SYS_TTY_CONFIG", {"vhangup"}),
    ],
)
def test_capability_adds_its_syscalls(capability: str, syscalls: set[str]) -> None:
    without = allowed(seccomp.default_profile(caps.DEFAULT, arch="x86_64", kernel=(6, 1)))
    with_cap = allowed(seccomp.default_profile([*caps.DEFAULT, capability], arch="x86_64", kernel=(6, 1)))
    assert syscalls <= with_cap
    assert syscalls - {"ptrace"} <= with_cap - without


def test_ptrace_depends_on_kernel_version() -> None:
    assert "ptrace" in allowed(seccomp.default_profile([], arch="x86_64", kernel=(4, 8)))
    assert "ptrace" not in allowed(seccomp.default_profile([], arch="x86_64", kernel=(4, 4)))
    assert seccomp.kernel_version("6.18.44-fc-v595") == (6, 18)
    assert seccomp.kernel_version("4.19.0-rc1") == (4, 19)


def test_with_default_profile_reads_bounding_set_when_applied() -> None:
    spec = oci.generate(
        "default",
        "c1",
        proc.with_added_capabilities(["CAP_SYS_ADMIN"]),
        seccomp.with_default_profile("x86_64"),
    )
    assert "mount" in allowed(spec["linux"]["seccomp"])
    json.loads(oci.to_json(spec))
