"""Linux capability names: the known set, validation, and the caller's current set.

The list is ordered by capability number (CAP_CHOWN is 0), so a bit of the
``Cap*`` masks in ``/proc/<pid>/status`` indexes it directly.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from wharfd.runtime import errors

KNOWN: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)
_KNOWN_SET = frozenset(KNOWN)

# containerd's defaultUnixCaps (pkg/oci/spec.go), in its order: the same list
# goes into the bounding, effective and permitted sets of the default spec.
DEFAULT: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)


def validate(caps: Iterable[str], *, what: str = "capabilities") -> list[str]:
    """``caps`` as a list, or InvalidArgument naming the first unknown name (``CAP_`` prefix required)."""
    out = list(caps)
    for name in out:
        if name not in _KNOWN_SET:
            hint = "" if name.startswith("CAP_") else ' (names take the "CAP_" prefix)'
            raise errors.InvalidArgument(f'{what}: unknown capability "{name}"{hint}')
    return out


def from_mask(mask: int) -> list[str]:
    """The names of the bits set in ``mask``; bits beyond the known list are left out."""
    return [name for bit, name in enumerate(KNOWN) if mask >> bit & 1]


def current(status: Path = Path("/proc/self/status")) -> list[str]:
    """The effective capabilities of this process (what a privileged container may get)."""
    for line in status.read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "CapEff":
            return from_mask(int(value.strip(), 16))
    raise errors.FailedPrecondition(f"{status}: no CapEff line")
