"""The default seccomp profile, generated in code with the rules of containerd's default profile.

The rules (contrib/seccomp/seccomp_default.go in containerd): everything not
listed fails with EPERM (``SCMP_ACT_ERRNO`` with no ``errnoRet``: runc's
default errno is EPERM); a large set of syscalls is allowed outright;
``socket`` is allowed for every address family except AF_ALG and AF_VSOCK;
``personality`` only for the harmless personas; extra syscalls come with the
capabilities in the bounding set that guard them in the kernel (CAP_SYS_ADMIN
brings mount/unshare/setns/clone with namespace flags, CAP_SYS_PTRACE brings
ptrace on any kernel, ...). Without CAP_SYS_ADMIN, ``clone`` is allowed only
without namespace flags, and ``clone3`` fails with ENOSYS so that libcs fall
back to ``clone``, whose flags the filter can inspect.

Names libseccomp does not know on a given host are skipped by runc, so newer
syscalls in the list are harmless on older kernels.
"""

from __future__ import annotations

import errno
import os
import platform
from collections.abc import Iterable
from typing import Any

from wharfd.runtime.oci.spec import Spec, SpecOpt, linux_of, process_of

ALLOW = "SCMP_ACT_ALLOW"
ERRNO = "SCMP_ACT_ERRNO"


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# Allowed for every container on every architecture.
ALLOWED_SYSCALLS = _words(
    """
    accept accept4 access adjtimex alarm bind brk cachestat capget capset chdir chmod chown chown32
    clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime clock_gettime64
    clock_nanosleep clock_nanosleep_time64 close close_range connect copy_file_range creat dup dup2
    dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait
    epoll_wait_old eventfd eventfd2 execve execveat exit exit_group faccessat faccessat2 fadvise64
    fadvise64_64 fallocate fanotify_mark fchdir fchmod fchmodat fchmodat2 fchown fchown32 fchownat
    fcntl fcntl64 fdatasync fgetxattr flistxattr flock fork fremovexattr fsetxattr fstat fstat64
    fstatat64 fstatfs fstatfs64 fsync ftruncate ftruncate64 futex futex_requeue futex_time64 futex_wait
    futex_waitv futex_wake futimesat getcpu getcwd getdents getdents64 getegid getegid32 geteuid
    geteuid32 getgid getgid32 getgroups getgroups32 getitimer getpeername getpgid getpgrp getpid
    getppid getpriority getrandom getresgid getresgid32 getresuid getresuid32 getrlimit get_robust_list
    getrusage getsid getsockname getsockopt get_thread_area gettid gettimeofday getuid getuid32
    getxattr getxattrat inotify_add_watch inotify_init inotify_init1 inotify_rm_watch io_cancel ioctl
    io_destroy io_getevents io_pgetevents io_pgetevents_time64 ioprio_get ioprio_set io_setup io_submit
    ipc kill landlock_add_rule landlock_create_ruleset landlock_restrict_self lchown lchown32 lgetxattr
    link linkat listen listmount listxattr listxattrat llistxattr _llseek lremovexattr lseek lsetxattr
    lsm_get_self_attr lsm_list_modules lsm_set_self_attr lstat lstat64 madvise membarrier memfd_create
    memfd_secret mincore mkdir mkdirat mknod mknodat mlock mlock2 mlockall map_shadow_stack mmap mmap2
    mprotect mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedreceive_time64 mq_timedsend
    mq_timedsend_time64 mq_unlink mremap mseal msgctl msgget msgrcv msgsnd msync munlock munlockall
    munmap name_to_handle_at nanosleep newfstatat _newselect open openat openat2 pause pidfd_open
    pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll ppoll_time64 prctl
    pread64 preadv preadv2 prlimit64 process_mrelease pselect6 pselect6_time64 pwrite64 pwritev
    pwritev2 read readahead readlink readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg
    remap_file_pages removexattr removexattrat rename renameat renameat2 restart_syscall rmdir rseq
    rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend
    rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_getaffinity sched_getattr
    sched_getparam sched_get_priority_max sched_get_priority_min sched_getscheduler
    sched_rr_get_interval sched_rr_get_interval_time64 sched_setaffinity sched_setattr sched_setparam
    sched_setscheduler sched_yield seccomp select semctl semget semop semtimedop semtimedop_time64 send
    sendfile sendfile64 sendmmsg sendmsg sendto setfsgid setfsgid32 setfsuid setfsuid32 setgid setgid32
    setgroups setgroups32 setitimer setpgid setpriority setregid setregid32 setresgid setresgid32
    setresuid setresuid32 setreuid setreuid32 setrlimit set_robust_list setsid setsockopt
    set_thread_area set_tid_address setuid setuid32 setxattr setxattrat shmat shmctl shmdt shmget
    shutdown sigaltstack signalfd signalfd4 sigprocmask sigreturn socketcall socketpair splice stat
    stat64 statfs statfs64 statmount statx symlink symlinkat sync sync_file_range syncfs sysinfo tee
    tgkill time timer_create timer_delete timer_getoverrun timer_gettime timer_gettime64 timer_settime
    timer_settime64 timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime timerfd_settime64
    times tkill truncate truncate64 ugetrlimit umask uname unlink unlinkat uretprobe utime utimensat
    utimensat_time64 utimes vfork vmsplice wait4 waitid waitpid write writev
"""
)

# containerd names architectures as Go's GOARCH; uname's machine names map onto them.
_GOARCH = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "i386": "386",
    "i686": "386",
    "armv7l": "arm",
    "loongarch64": "loong64",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}
ARCHITECTURES: dict[str, tuple[str, ...]] = {
    "amd64": ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
    "arm64": ("SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64"),
    "mips64": ("SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS64N32"),
    "mips64n32": ("SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS64N32"),
    "mipsel64": ("SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64", "SCMP_ARCH_MIPSEL64N32"),
    "mipsel64n32": ("SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64", "SCMP_ARCH_MIPSEL64N32"),
    "s390x": ("SCMP_ARCH_S390", "SCMP_ARCH_S390X"),
    "riscv64": ("SCMP_ARCH_RISCV64",),
    "loong64": ("SCMP_ARCH_LOONGARCH64",),
}
_ARCH_SYSCALLS: dict[str, tuple[str, ...]] = {
    "ppc64le": ("sync_file_range2", "swapcontext"),
    "arm": _words("arm_fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint cacheflush set_tls"),
    "amd64": ("arch_prctl", "modify_ldt"),
    "386": ("modify_ldt",),
    "s390x": ("s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"),
    "riscv64": ("riscv_flush_icache", "riscv_hwprobe"),
}
_ARCH_SYSCALLS["arm64"] = _ARCH_SYSCALLS["arm"]
_ARCH_SYSCALLS["s390"] = _ARCH_SYSCALLS["s390x"]

# Syscalls each capability in the bounding set unlocks, in containerd's order.
CAPABILITY_SYSCALLS: dict[str, tuple[str, ...]] = {
    "CAP_DAC_READ_SEARCH": ("open_by_handle_at",),
    "CAP_SYS_ADMIN": _words(
        "bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie mount mount_setattr "
        "move_mount open_tree perf_event_open quotactl quotactl_fd setdomainname sethostname setns syslog "
        "umount umount2 unshare"
    ),
    "CAP_SYS_BOOT": ("reboot",),
    "CAP_SYS_CHROOT": ("chroot",),
    "CAP_SYS_MODULE": ("delete_module", "init_module", "finit_module"),
    "CAP_SYS_PACCT": ("acct",),
    "CAP_SYS_PTRACE": _words("kcmp pidfd_getfd process_madvise process_vm_readv process_vm_writev ptrace"),
    "CAP_SYS_RAWIO": ("iopl", "ioperm"),
    "CAP_SYS_TIME": ("settimeofday", "stime", "clock_settime", "clock_settime64"),
    "CAP_SYS_TTY_CONFIG": ("vhangup",),
    "CAP_SYS_NICE": ("get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"),
    "CAP_SYSLOG": ("syslog",),
    "CAP_BPF": ("bpf",),
    "CAP_PERFMON": ("perf_event_open",),
}

AF_ALG = 38
AF_VSOCK = 40
# Personas a container may switch to: Linux, Linux32, UNAME26 (with and without Linux32), and the query.
PERSONALITIES = (0x0, 0x0008, 0x20000, 0x20008, 0xFFFFFFFF)
# No new namespaces without CAP_SYS_ADMIN: CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET.
CLONE_NAMESPACE_FLAGS = sum((0x20000, 0x2000000, 0x4000000, 0x8000000, 0x10000000, 0x20000000, 0x40000000))


def goarch(machine: str | None = None) -> str:
    """The Go architecture name of ``machine`` (default: this host's ``uname -m``)."""
    machine = machine or platform.machine()
    return _GOARCH.get(machine, machine)


def kernel_version(release: str | None = None) -> tuple[int, int]:
    """(major, minor) of a kernel release string such as ``6.1.0-18-amd64`` (default: this host)."""
    release = release or os.uname().release
    parts = release.split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1][:3] if c.isdigit()) or 0)
    except (IndexError, ValueError):
        return (0, 0)


def _rule(names: Iterable[str], action: str = ALLOW, **extra: Any) -> dict[str, Any]:
    rule: dict[str, Any] = {"names": list(names), "action": action}
    rule.update(extra)
    return rule


def _arg(index: int, value: int, op: str) -> dict[str, Any]:
    return {"index": index, "value": value, "op": op}


def _base_rules() -> list[dict[str, Any]]:
    rules = [_rule(ALLOWED_SYSCALLS)]
    # Three single-condition ranges, not one rule with two "!=": runc turns repeated
    # conditions on one argument into separate rules (an OR), which would allow both families.
    rules += [
        _rule(["socket"], args=[_arg(0, AF_ALG, "SCMP_CMP_LT")]),
        _rule(["socket"], args=[_arg(0, AF_ALG + 1, "SCMP_CMP_EQ")]),
        _rule(["socket"], args=[_arg(0, AF_VSOCK, "SCMP_CMP_GT")]),
    ]
    rules += [_rule(["personality"], args=[_arg(0, p, "SCMP_CMP_EQ")]) for p in PERSONALITIES]
    return rules


def default_profile(
    bounding: Iterable[str], *, arch: str | None = None, kernel: tuple[int, int] | None = None
) -> dict[str, Any]:
    """containerd's default profile for a process whose bounding capability set is ``bounding``.

    ``arch`` is a Go or uname architecture name and ``kernel`` a (major, minor)
    version; both default to this host's, as containerd's do.
    """
    arch = goarch(arch)
    rules = _base_rules()
    if (kernel or kernel_version()) >= (4, 8):
        # From 4.8 ptrace can no longer be used to bypass seccomp, so it is safe to allow.
        rules.append(_rule(["process_vm_readv", "process_vm_writev", "ptrace"]))
    if arch in _ARCH_SYSCALLS:
        rules.append(_rule(_ARCH_SYSCALLS[arch]))
    capabilities = list(bounding)
    rules += [_rule(CAPABILITY_SYSCALLS[c]) for c in capabilities if c in CAPABILITY_SYSCALLS]
    if "CAP_SYS_ADMIN" not in capabilities:
        flags_arg = 1 if arch in ("s390", "s390x") else 0  # s390 swaps clone's first two arguments
        rules.append(_rule(["clone"], args=[_arg(flags_arg, CLONE_NAMESPACE_FLAGS, "SCMP_CMP_MASKED_EQ")]))
        # ENOSYS rather than EPERM makes libcs fall back to clone, whose flags the rule above checks.
        rules.append(_rule(["clone3"], ERRNO, errnoRet=errno.ENOSYS))
    profile: dict[str, Any] = {"defaultAction": ERRNO}
    if ARCHITECTURES.get(arch):
        profile["architectures"] = list(ARCHITECTURES[arch])
    profile["syscalls"] = rules
    return profile


def with_default_profile(arch: str | None = None) -> SpecOpt:
    """Install the default profile for the spec's bounding set as it is when the option runs.

    Apply it after the capability options, as containerd's WithDefaultProfile.
    """

    def opt(spec: Spec) -> None:
        bounding = process_of(spec).get("capabilities", {}).get("bounding", [])
        linux_of(spec)["seccomp"] = default_profile(bounding, arch=arch)

    return opt
