"""The OCI runtime spec of a pod's pause ("sandbox") container, as containerd's podsandbox controller builds it.

From the default spec: no ``/run`` mount, no default seccomp/AppArmor/rlimits,
read-only rootfs, the image's Env and Entrypoint+Cmd (one of them required),
the pod hostname, ``cgroupsPath`` under the pod's cgroup parent, namespaces
per ``namespace_options`` (NODE network also drops UTS), the pod's /dev/shm and
resolv.conf bind-mounted read-only, supplemental groups, sysctls (plus the
unprivileged port/ICMP ones outside host network), CPU shares 2, OOM score
-998 (never below the daemon's own when it may not lower it), seccomp per the
security context, the user (``run_as_user``/``run_as_group``, else the image's),
passthrough annotations and the CRI annotations the containers and the task
manager key on (``io.kubernetes.cri.sandbox-id`` groups the pod in one shim).

:func:`seccomp_opts`, :func:`cgroups_path`, :func:`oom_score_adj` and
:func:`passthrough_annotations` are shared with the container spec.
"""

from __future__ import annotations

import fnmatch
import json
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.runtime import errors, namespaces
from wharfd.runtime.oci import caps, linux, process, seccomp, spec
from wharfd.runtime.oci.image_config import RunConfig, image_env
from wharfd.runtime.oci.spec import Spec, SpecOpt

# Annotations (containerd's internal/cri/annotations names).
CONTAINER_TYPE = "io.kubernetes.cri.container-type"
CONTAINER_TYPE_SANDBOX = "sandbox"
SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
SANDBOX_NAME = "io.kubernetes.cri.sandbox-name"
SANDBOX_NAMESPACE = "io.kubernetes.cri.sandbox-namespace"
SANDBOX_UID = "io.kubernetes.cri.sandbox-uid"
SANDBOX_LOG_DIR = "io.kubernetes.cri.sandbox-log-directory"
IMAGE_NAME = "io.kubernetes.cri.image-name"
SANDBOX_CPU_PERIOD = "io.kubernetes.cri.sandbox-cpu-period"
SANDBOX_CPU_QUOTA = "io.kubernetes.cri.sandbox-cpu-quota"
SANDBOX_CPU_SHARES = "io.kubernetes.cri.sandbox-cpu-shares"
SANDBOX_MEMORY = "io.kubernetes.cri.sandbox-memory"

DEFAULT_SANDBOX_OOM_ADJ = -998
DEFAULT_SANDBOX_CPU_SHARES = 2
RESOLV_CONF = "/etc/resolv.conf"
SYSTEMD_CGROUP_PREFIX = "cri-containerd"
_UNPRIVILEGED_PORT = "net.ipv4.ip_unprivileged_port_start"
_PING_GROUP_RANGE = "net.ipv4.ping_group_range"
_RO_BIND = ["rbind", "ro", "nosuid", "nodev", "noexec"]


@dataclass(frozen=True)
class SandboxSpecInput:
    """Everything the pause container's spec depends on (no I/O happens while building it)."""

    id: str
    config: cri.PodSandboxConfig
    image: RunConfig
    image_name: str
    netns_path: str  # "" for host network
    shm_path: str
    resolv_path: str
    systemd_cgroup: bool = False
    pod_annotations: Sequence[str] = ()
    enable_unprivileged_ports: bool = True
    enable_unprivileged_icmp: bool = True
    restrict_oom_score_adj: bool = False
    unset_seccomp_profile: str = ""
    user: tuple[int, int, tuple[int, ...]] | None = None  # resolved (uid, gid, gids) if any user applies


def generate(inp: SandboxSpecInput) -> Spec:
    """The pause container's spec; InvalidArgument naming the field for bad input."""
    cfg = inp.config
    sc = cfg.linux.security_context
    args = [*inp.image.entrypoint, *inp.image.cmd]
    if not args:
        raise errors.InvalidArgument(
            f'sandbox image "{inp.image_name}": empty Entrypoint and Cmd in its config'
        )
    opts: list[SpecOpt] = [
        spec.without_mounts("/run"),
        _without_default_security,
        spec.with_root_path(spec.DEFAULT_ROOTFS),
        process.with_env(image_env(inp.image)),
        spec.with_readonly_rootfs(True),
        process.with_process_args(*args),
    ]
    if cfg.hostname and sc.namespace_options.network != cri.NODE:
        # A host-network pod shares the node's UTS namespace: runc refuses a hostname there.
        opts.append(spec.with_hostname(cfg.hostname))
    if inp.image.working_dir:
        opts.append(process.with_cwd(inp.image.working_dir))
    if cfg.linux.cgroup_parent:
        opts.append(
            linux.with_cgroups_path(cgroups_path(cfg.linux.cgroup_parent, inp.id, inp.systemd_cgroup))
        )
    opts += _namespace_opts(inp)
    opts += [
        spec.without_mounts("/dev/shm"),
        spec.with_mounts(
            [
                {"source": inp.shm_path, "destination": "/dev/shm", "type": "bind", "options": _RO_BIND},
                {"source": inp.resolv_path, "destination": RESOLV_CONF, "type": "bind", "options": _RO_BIND},
            ]
        ),
        _with_sysctls(_sysctls(inp)),
        linux.with_cpu_shares(DEFAULT_SANDBOX_CPU_SHARES),
        process.with_oom_score_adj(oom_score_adj(DEFAULT_SANDBOX_OOM_ADJ, inp.restrict_oom_score_adj)),
    ]
    if cfg.linux.HasField("resources"):
        res = cfg.linux.resources
        opts.append(
            spec.with_annotations(
                {
                    SANDBOX_CPU_PERIOD: str(res.cpu_period),
                    SANDBOX_CPU_QUOTA: str(res.cpu_quota),
                    SANDBOX_CPU_SHARES: str(res.cpu_shares),
                    SANDBOX_MEMORY: str(res.memory_limit_in_bytes),
                }
            )
        )
    opts.append(spec.with_annotations(passthrough_annotations(cfg.annotations, inp.pod_annotations)))
    opts.append(spec.with_annotations(sandbox_annotations(inp.id, cfg, inp.image_name)))
    if sc.privileged:
        opts.append(_sysfs_rw)
    opts += seccomp_opts(sc.seccomp if sc.HasField("seccomp") else None, sc.seccomp_profile_path,
                         inp.unset_seccomp_profile, privileged=sc.privileged)  # fmt: skip
    if inp.user is not None:
        uid, gid, gids = inp.user
        opts.append(process.with_user(uid, gid, gids))
    if sc.supplemental_groups:
        opts.append(_with_supplemental_groups(sc.supplemental_groups))
    return spec.generate(namespaces.K8S, inp.id, *opts)


def user_string(config: cri.PodSandboxConfig, image: RunConfig) -> str:
    """The user the pause process runs as: ``run_as_user[:run_as_group]``, else the image's User."""
    sc = config.linux.security_context
    if sc.HasField("run_as_user"):
        uid = str(sc.run_as_user.value)
        return f"{uid}:{sc.run_as_group.value}" if sc.HasField("run_as_group") else uid
    if sc.HasField("run_as_group"):
        raise errors.InvalidArgument("linux.security_context.run_as_group: requires run_as_user")
    return image.user


def sandbox_annotations(sandbox_id: str, config: cri.PodSandboxConfig, image_name: str) -> dict[str, str]:
    """The CRI annotations of the pause container's spec."""
    meta = config.metadata
    return {
        CONTAINER_TYPE: CONTAINER_TYPE_SANDBOX,
        SANDBOX_ID: sandbox_id,
        SANDBOX_NAMESPACE: meta.namespace,
        SANDBOX_UID: meta.uid,
        SANDBOX_NAME: meta.name,
        SANDBOX_LOG_DIR: config.log_directory,
        IMAGE_NAME: image_name,
    }


def passthrough_annotations(annotations: Mapping[str, str], patterns: Sequence[str]) -> dict[str, str]:
    """The pod annotations matching one of the runtime's glob patterns (``pod_annotations``)."""
    return {k: v for k, v in annotations.items() if any(fnmatch.fnmatchcase(k, p) for p in patterns)}


def cgroups_path(parent: str, id: str, systemd: bool = False) -> str:
    """``<parent>/<id>`` for cgroupfs; ``<slice>:cri-containerd:<id>`` for systemd (a ``.slice`` parent)."""
    base = posixpath.basename(parent.rstrip("/"))
    if systemd or base.endswith(".slice"):
        return f"{base}:{SYSTEMD_CGROUP_PREFIX}:{id}"
    return posixpath.join(parent, id)


def _own_oom_score_adj() -> int:
    try:
        return int(Path("/proc/self/oom_score_adj").read_text().strip())
    except (OSError, ValueError):
        return 0


def may_lower_oom_score() -> bool:
    """Whether this daemon holds CAP_SYS_RESOURCE (needed to go below its own oom_score_adj)."""
    try:
        return "CAP_SYS_RESOURCE" in caps.current()
    except (OSError, errors.WharfError):
        return False


def oom_score_adj(wanted: int, restrict: bool) -> int:
    """``wanted``, but not below the daemon's own score when restricted or without CAP_SYS_RESOURCE."""
    if restrict or not may_lower_oom_score():
        return max(wanted, _own_oom_score_adj())
    return wanted


def seccomp_opts(
    profile: cri.SecurityProfile | None, legacy_path: str, unset_profile: str, *, privileged: bool
) -> list[SpecOpt]:
    """The seccomp option for a security context: RuntimeDefault, Unconfined (none) or a Localhost file."""
    if privileged:
        return [linux.with_seccomp(None)]
    if profile is None:
        profile = _legacy_profile(legacy_path or unset_profile)
    kind = profile.profile_type
    if kind == cri.SecurityProfile.RuntimeDefault:
        return [seccomp.with_default_profile()]
    if kind == cri.SecurityProfile.Unconfined:
        return [linux.with_seccomp(None)]
    return [linux.with_seccomp(_load_localhost(profile.localhost_ref))]


def _legacy_profile(path: str) -> cri.SecurityProfile:
    # The deprecated string form: "", "unconfined", "runtime/default", "docker/default", "localhost/<path>".
    if path in ("", "unconfined"):
        return cri.SecurityProfile(profile_type=cri.SecurityProfile.Unconfined)
    if path in ("runtime/default", "docker/default"):
        return cri.SecurityProfile(profile_type=cri.SecurityProfile.RuntimeDefault)
    if path.startswith("localhost/"):
        return cri.SecurityProfile(
            profile_type=cri.SecurityProfile.Localhost, localhost_ref=path[len("localhost/") :]
        )
    raise errors.InvalidArgument(
        f'seccomp profile "{path}": unknown (runtime/default, unconfined, localhost/<path>)'
    )


def _load_localhost(path: str) -> dict[str, Any]:
    what = f'seccomp localhost profile "{path}"'
    if not path.startswith("/"):
        raise errors.InvalidArgument(f"{what}: must be an absolute path")
    try:
        profile = json.loads(Path(path).read_bytes())
    except OSError as exc:
        raise errors.InvalidArgument(f"{what}: {exc.strerror}") from None
    except ValueError as exc:
        raise errors.InvalidArgument(f"{what}: not JSON: {exc}") from None
    if not isinstance(profile, dict):
        raise errors.InvalidArgument(f"{what}: expected a JSON object")
    return profile


# --- small options ---------------------------------------------------------------------------


def _without_default_security(s: Spec) -> None:
    # containerd's WithoutDefaultSecuritySettings: the pause process gets no default LSM/seccomp/rlimits.
    proc = spec.process_of(s)
    proc.pop("apparmorProfile", None)
    proc.pop("rlimits", None)
    spec.linux_of(s).pop("seccomp", None)


def _sysfs_rw(s: Spec) -> None:
    for m in s.get("mounts", []):
        if posixpath.normpath(m.get("destination", "")) == "/sys":
            m["options"] = ["rw" if o == "ro" else o for o in m.get("options", [])]
            break


def _with_supplemental_groups(groups: Sequence[int]) -> SpecOpt:
    for g in groups:
        if not 0 <= g <= spec.MAX_ID:
            raise errors.InvalidArgument(f"linux.security_context.supplemental_groups: {g} out of range")

    def opt(s: Spec) -> None:
        user = spec.process_of(s).setdefault("user", {"uid": 0, "gid": 0})
        gids = list(user.get("additionalGids") or [])
        user["additionalGids"] = gids + [g for g in groups if g not in gids]

    return opt


def _namespace_opts(inp: SandboxSpecInput) -> list[SpecOpt]:
    ns = inp.config.linux.security_context.namespace_options
    opts: list[SpecOpt] = []
    if ns.network == cri.NODE:
        opts += [linux.with_host_namespace("network"), linux.with_host_namespace("uts")]
    else:
        opts.append(linux.with_namespace_path("network", inp.netns_path))
    if ns.pid == cri.NODE:
        opts.append(linux.with_host_namespace("pid"))
    if ns.ipc == cri.NODE:
        opts.append(linux.with_host_namespace("ipc"))
    if ns.HasField("userns_options") and ns.userns_options.mode == cri.POD:
        raise errors.NotImplemented(
            "namespace_options.userns_options: user namespaces (mode POD) are not supported"
        )
    return opts


def _sysctls(inp: SandboxSpecInput) -> dict[str, str]:
    sysctls = dict(inp.config.linux.sysctls)
    if inp.config.linux.security_context.namespace_options.network != cri.NODE:
        if inp.enable_unprivileged_ports:
            sysctls.setdefault(_UNPRIVILEGED_PORT, "0")
        if inp.enable_unprivileged_icmp:
            sysctls.setdefault(_PING_GROUP_RANGE, "0 2147483647")
    return sysctls


def _with_sysctls(sysctls: Mapping[str, str]) -> SpecOpt:
    for key, value in sysctls.items():
        if not key or not isinstance(value, str):
            raise errors.InvalidArgument(f"linux.sysctls[{key!r}]: keys must be non-empty and values strings")
    copied = dict(sysctls)

    def opt(s: Spec) -> None:
        if copied:
            spec.linux_of(s).setdefault("sysctl", {}).update(copied)

    return opt
