"""The OCI spec of a CRI container, from its ContainerConfig, its pod and its image (containerd's CRI rules).

:func:`build_spec` applies, in containerd's order (internal/cri/server
container_create*.go, internal/cri/opts): the default spec without ``/run``
and without the default seccomp/AppArmor/rlimits; argv from command/args over
the image's Entrypoint/Cmd; PATH, HOSTNAME, the image's env then the config's;
working dir and tty; mounts and devices (:mod:`wharfd.cri.container_mounts`);
masked and read-only paths (the config's lists, an empty one unmasking);
capabilities (``ALL`` first, then single names); privileged; no_new_privs;
read-only rootfs; resources, cgroups path and OOM score; the pod's
namespaces; the CRI annotations; then the user (resolved in the image's
rootfs), supplemental groups, AppArmor and seccomp last, since the default
seccomp profile depends on the final capability set.

It reads the host (mount table, device nodes, a Localhost seccomp profile, the
image's /etc/passwd and /etc/group) and may create host directories: call it
off the event loop. Facts about the host itself come in :class:`HostFacts`, so
tests can pin them.
"""

from __future__ import annotations

import fnmatch
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.cri import container_mounts
from wharfd.cri.container_mounts import PodFiles
from wharfd.cri.container_security import apparmor_opts, seccomp_opts, with_cri_user
from wharfd.runtime import errors, namespaces
from wharfd.runtime.oci import caps, linux, process
from wharfd.runtime.oci import spec as oci
from wharfd.runtime.oci.image_config import RunConfig, cri_process_args
from wharfd.runtime.oci.spec import Spec, SpecOpt, linux_of, process_of

CONTAINER_TYPE = "io.kubernetes.cri.container-type"
SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
SANDBOX_NAME = "io.kubernetes.cri.sandbox-name"
SANDBOX_NAMESPACE = "io.kubernetes.cri.sandbox-namespace"
SANDBOX_UID = "io.kubernetes.cri.sandbox-uid"
CONTAINER_NAME = "io.kubernetes.cri.container-name"
IMAGE_NAME = "io.kubernetes.cri.image-name"
CAP_SYS_RESOURCE_BIT = 24


@dataclass(frozen=True)
class HostFacts:
    """What the spec depends on about this host (see :func:`probe`)."""

    oom_score_adj: int = 0  # the daemon's own
    sys_resource: bool = True  # CAP_SYS_RESOURCE: may lower oom_score_adj
    swap: bool = True  # memory+swap accounting
    hugetlb: bool = False
    apparmor: bool = False
    hostname: str = "localhost"
    all_caps: tuple[str, ...] = caps.KNOWN


def probe() -> HostFacts:
    """Read this host's facts (blocking)."""

    def read(path: str) -> str:
        try:
            with open(path, encoding="utf-8") as f:
                return f.read().strip()
        except OSError:
            return ""

    effective = next(
        (
            int(line.split()[1], 16)
            for line in read("/proc/self/status").splitlines()
            if line.startswith("CapEff:")
        ),
        0,
    )
    unified = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
    return HostFacts(
        oom_score_adj=int(read("/proc/self/oom_score_adj") or 0),
        sys_resource=bool(effective >> CAP_SYS_RESOURCE_BIT & 1),
        swap=unified or os.path.exists("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes"),
        hugetlb=("hugetlb" in read("/sys/fs/cgroup/cgroup.controllers").split())
        if unified
        else os.path.isdir("/sys/fs/cgroup/hugetlb"),
        apparmor=read("/sys/module/apparmor/parameters/enabled") == "Y",
        hostname=socket.gethostname(),
        # "ALL" means what this daemon holds (containerd's WithAllCurrentCapabilities): runc
        # cannot grant a capability the runtime lacks (root here has no CAP_SYS_RESOURCE).
        all_caps=tuple(caps.current()),
    )


@dataclass(frozen=True)
class RuntimeSettings:
    """The parts of the CRI config and the pod's runtime handler that shape container specs."""

    pod_annotations: tuple[str, ...] = ()  # globs of pod annotations passed into the spec
    container_annotations: tuple[str, ...] = ()
    privileged_without_host_devices: bool = False
    disable_proc_mount: bool = False
    disable_hugetlb_controller: bool = True
    tolerate_missing_hugetlb_controller: bool = True
    restrict_oom_score_adj: bool = False
    unset_seccomp_profile: str = ""

    @classmethod
    def from_config(cls, section: Mapping[str, object], handler: Mapping[str, object]) -> RuntimeSettings:
        """Read the CRI plugin section and one entry of its ``containerd.runtimes``."""

        def strings(value: object) -> tuple[str, ...]:
            return tuple(str(v) for v in value) if isinstance(value, list) else ()

        return cls(
            pod_annotations=strings(handler.get("pod_annotations")),
            container_annotations=strings(handler.get("container_annotations")),
            privileged_without_host_devices=bool(handler.get("privileged_without_host_devices")),
            disable_proc_mount=bool(section.get("disable_proc_mount")),
            disable_hugetlb_controller=bool(section.get("disable_hugetlb_controller", True)),
            tolerate_missing_hugetlb_controller=bool(
                section.get("tolerate_missing_hugetlb_controller", True)
            ),
            restrict_oom_score_adj=bool(section.get("restrict_oom_score_adj")),
            unset_seccomp_profile=str(section.get("unset_seccomp_profile") or ""),
        )


@dataclass(frozen=True)
class SpecInputs:
    """Everything a container's spec is made from."""

    container_id: str
    config: cri.ContainerConfig
    sandbox_config: cri.PodSandboxConfig
    sandbox_id: str
    sandbox_pid: int
    image_name: str
    image: RunConfig
    rootfs: str = ""  # the image's files, for user and group lookups
    pod_files: PodFiles = field(default_factory=PodFiles)
    target_pid: int = 0  # the pid whose namespace a TARGET pid mode joins
    settings: RuntimeSettings = field(default_factory=RuntimeSettings)
    host: HostFacts = field(default_factory=HostFacts)


def build_spec(inputs: SpecInputs) -> Spec:
    """The container's OCI spec (blocking; InvalidArgument/FailedPrecondition naming the bad field)."""
    config = inputs.config
    security = config.linux.security_context
    privileged = security.privileged
    if privileged and not inputs.sandbox_config.linux.security_context.privileged:
        raise errors.InvalidArgument(
            "linux.security_context.privileged: no privileged container allowed in sandbox"
        )
    opts: list[SpecOpt] = [
        oci.without_mounts("/run"),
        _without_default_security,
        oci.with_root_path(oci.DEFAULT_ROOTFS),
        process.with_process_args(*cri_process_args(inputs.image, config.command, config.args)),
        process.with_default_path_env(),
        process.with_no_new_privileges(False),
        process.with_cwd(config.working_dir or inputs.image.working_dir or "/"),
        *([process.with_tty()] if config.tty else []),
        process.with_env([f"HOSTNAME={inputs.sandbox_config.hostname or inputs.host.hostname}"]),
        process.with_env(
            [*inputs.image.env, *(f"{e.key}={e.value.decode(errors='replace')}" for e in config.envs)]
        ),
        container_mounts.with_mounts(config, container_mounts.pod_mounts(inputs.pod_files, config)),
        *_paths(security, inputs.settings),
        container_mounts.with_devices(config.devices),
        *_capabilities(security, inputs.host),
        *_privileged(privileged, inputs.settings),
        _without_ambient,
        *([process.with_no_new_privileges(True)] if security.no_new_privs else []),
        *([oci.with_readonly_rootfs()] if security.readonly_rootfs else []),
        *_resources(config, inputs),
        *_cgroups(inputs),
        oci.with_annotations(_passthrough(inputs)),
        *_namespaces(inputs),
        oci.with_annotations(cri_annotations(inputs)),
        with_cri_user(security, inputs.image.user, inputs.rootfs, inputs.image_name),
        *apparmor_opts(security, inputs.host.apparmor),
        *seccomp_opts(security, inputs.settings.unset_seccomp_profile),
    ]
    return oci.generate(namespaces.K8S, inputs.container_id, *opts)


def _without_default_security(spec: Spec) -> None:
    # containerd's WithoutDefaultSecuritySettings: the CRI decides seccomp/AppArmor, kubelet no rlimits.
    process = process_of(spec)
    process.pop("apparmorProfile", None)
    process.pop("rlimits", None)
    linux_of(spec).pop("seccomp", None)


def _without_ambient(spec: Spec) -> None:
    process_of(spec).get("capabilities", {}).pop("ambient", None)


def _paths(security: cri.LinuxContainerSecurityContext, settings: RuntimeSettings) -> list[SpecOpt]:
    if settings.disable_proc_mount:
        return []
    # kubelet sends the defaults for ProcMount Default and nothing for Unmasked.
    return [
        linux.with_masked_paths(security.masked_paths),
        linux.with_readonly_paths(security.readonly_paths),
    ]


def _capabilities(security: cri.LinuxContainerSecurityContext, host: HostFacts) -> list[SpecOpt]:
    if not security.HasField("capabilities"):
        return []

    def names(values: Sequence[str]) -> list[str]:
        upper = [v.upper() for v in values]
        return [v if v.startswith("CAP_") else f"CAP_{v}" for v in upper if v != "ALL"]

    wanted = security.capabilities
    opts: list[SpecOpt] = []
    # ALL goes first so that single names still apply: add ALL + drop CHOWN = everything but CHOWN.
    if any(v.upper() == "ALL" for v in wanted.add_capabilities):
        opts.append(process.with_capabilities(host.all_caps))
    if any(v.upper() == "ALL" for v in wanted.drop_capabilities):
        opts.append(process.with_capabilities([]))
    opts.append(process.with_added_capabilities(names(wanted.add_capabilities)))
    opts.append(process.with_dropped_capabilities(names(wanted.drop_capabilities)))
    return opts


def _privileged(privileged: bool, settings: RuntimeSettings) -> list[SpecOpt]:
    if not privileged:
        return []
    opts = [linux.with_privileged()]
    if not settings.privileged_without_host_devices:
        opts += [container_mounts.with_host_devices(), linux.with_all_devices_allowed()]
    return opts


def _resources(config: cri.ContainerConfig, inputs: SpecInputs) -> list[SpecOpt]:
    if not config.linux.HasField("resources"):
        return []
    wanted = config.linux.resources
    opts = [with_resources(wanted, inputs.host, inputs.settings)]
    adj = int(wanted.oom_score_adj)
    if inputs.settings.restrict_oom_score_adj or not inputs.host.sys_resource:
        adj = clamp_oom_score_adj(adj, inputs.host.oom_score_adj)
    opts.append(process.with_oom_score_adj(adj))
    return opts


def clamp_oom_score_adj(wanted: int, daemon: int) -> int:
    """Never below the daemon's own score: lowering it needs CAP_SYS_RESOURCE (containerd's restrict rule)."""
    return max(wanted, daemon)


def with_resources(
    wanted: cri.LinuxContainerResources, host: HostFacts, settings: RuntimeSettings
) -> SpecOpt:
    """Set cpu, memory, hugepage and unified limits from CRI resources (zero means unset)."""
    for name in ("cpu_period", "cpu_shares", "memory_limit_in_bytes", "memory_swap_limit_in_bytes"):
        if getattr(wanted, name) < 0:
            raise errors.InvalidArgument(
                f"linux.resources.{name} {getattr(wanted, name)}: must not be negative"
            )
    cpuset = linux.with_cpuset(wanted.cpuset_cpus, wanted.cpuset_mems)
    missing_hugetlb = not settings.disable_hugetlb_controller and not host.hugetlb
    if wanted.hugepage_limits and missing_hugetlb and not settings.tolerate_missing_hugetlb_controller:
        raise errors.FailedPrecondition(
            "linux.resources.hugepage_limits: the hugetlb cgroup controller is missing "
            "(set tolerate_missing_hugetlb_controller to ignore)"
        )

    def opt(spec: Spec) -> None:
        resources = linux_of(spec).setdefault("resources", {})
        cpu = {k: v for k, v in (("shares", wanted.cpu_shares), ("quota", wanted.cpu_quota),
                                 ("period", wanted.cpu_period)) if v}  # fmt: skip
        if cpu:
            resources.setdefault("cpu", {}).update(cpu)
        cpuset(spec)
        memory: dict[str, int] = {}
        if wanted.memory_limit_in_bytes:
            memory["limit"] = wanted.memory_limit_in_bytes
            if not wanted.memory_swap_limit_in_bytes and host.swap:
                memory["swap"] = wanted.memory_limit_in_bytes  # no swapping by default
        if wanted.memory_swap_limit_in_bytes and host.swap:
            memory["swap"] = wanted.memory_swap_limit_in_bytes
        if memory:
            resources.setdefault("memory", {}).update(memory)
        if wanted.hugepage_limits and not settings.disable_hugetlb_controller and host.hugetlb:
            resources["hugepageLimits"] = [
                {"pageSize": h.page_size, "limit": h.limit} for h in wanted.hugepage_limits
            ]
        if wanted.unified:
            resources.setdefault("unified", {}).update(dict(wanted.unified))

    return opt


def cgroups_path(parent: str, container_id: str) -> str:
    """containerd's getCgroupsPath: ``slice:cri-containerd:id`` under a systemd slice, else ``parent/id``."""
    base = os.path.basename(parent.rstrip("/"))
    if base.endswith(".slice"):
        return f"{base}:cri-containerd:{container_id}"
    return os.path.join(parent, container_id)


def _cgroups(inputs: SpecInputs) -> list[SpecOpt]:
    parent = inputs.sandbox_config.linux.cgroup_parent
    return [linux.with_cgroups_path(cgroups_path(parent, inputs.container_id))] if parent else []


def _passthrough(inputs: SpecInputs) -> dict[str, str]:
    def pick(annotations: Mapping[str, str], globs: Sequence[str]) -> dict[str, str]:
        return {k: v for k, v in annotations.items() if any(fnmatch.fnmatchcase(k, g) for g in globs)}

    return {
        **pick(inputs.sandbox_config.annotations, inputs.settings.pod_annotations),
        **pick(inputs.config.annotations, inputs.settings.container_annotations),
    }


def cri_annotations(inputs: SpecInputs) -> dict[str, str]:
    """The annotations containerd's CRI puts on every container spec (the shim groups by sandbox-id)."""
    pod = inputs.sandbox_config.metadata
    return {
        CONTAINER_TYPE: "container",
        SANDBOX_ID: inputs.sandbox_id,
        SANDBOX_NAME: pod.name,
        SANDBOX_NAMESPACE: pod.namespace,
        SANDBOX_UID: pod.uid,
        CONTAINER_NAME: inputs.config.metadata.name,
        IMAGE_NAME: inputs.image_name,
    }


def _namespaces(inputs: SpecInputs) -> list[SpecOpt]:
    options = inputs.config.linux.security_context.namespace_options
    if options.HasField("userns_options") and options.userns_options.mode == cri.POD:
        raise errors.InvalidArgument("namespace_options.userns_options: user namespaces are not supported")
    pid = inputs.sandbox_pid
    if pid <= 0:
        raise errors.FailedPrecondition(f"sandbox {inputs.sandbox_id}: its pause process is not running")
    opts = [
        linux.with_namespace_path("network", f"/proc/{pid}/ns/net"),
        linux.with_namespace_path("ipc", f"/proc/{pid}/ns/ipc"),
        linux.with_namespace_path("uts", f"/proc/{pid}/ns/uts"),
    ]
    if options.pid != cri.CONTAINER:
        target = inputs.target_pid if options.pid == cri.TARGET else pid
        if target <= 0:
            raise errors.FailedPrecondition(f'namespace_options.target_id "{options.target_id}": not running')
        opts.append(linux.with_namespace_path("pid", f"/proc/{target}/ns/pid"))
    return opts
