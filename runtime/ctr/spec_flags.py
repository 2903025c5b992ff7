"""ctr's container flags and the OCI spec options they stand for, shared by ``containers create`` and ``run``.

:func:`add_flags` adds ctr's RuntimeFlags, SnapshotterFlags and ContainerFlags
(with ``--cpus``); ``run`` adds its own on top (:func:`add_run_flags`).
:func:`spec_opts` turns parsed flags into :data:`~wharfd.runtime.oci.spec.SpecOpt`
values in the order ctr applies them, which matters: the image config sets
env and argv that later flags override. What comes from the image (its run
config and its rootfs, mounted read-only for user lookups) is passed in as an
:class:`ImageRootfs`; without one the spec is the default spec plus the flags.

Not offered (yet): ``--config`` (a spec file), ``--rootfs``, ``--sandbox``,
``--gpus``, ``--device``, ``--apparmor-*``, ``--blockio-*``, ``--rdt-class``,
``--pid-file``, and the host devices that ``--privileged`` adds in ctr
(it allows every device in the cgroup, but lists none).
"""

from __future__ import annotations

import argparse
import csv
import json
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from wharfd.runtime.ctr import commands

if TYPE_CHECKING:
    from google.protobuf import any_pb2

    from wharfd.runtime.oci.image_config import RunConfig
    from wharfd.runtime.oci.spec import Spec, SpecOpt

# Unlike ctr (io.containerd.runc.v2), the default is the shim installed with wharfd, so a node
# needs no containerd package; --runtime io.containerd.runc.v2 drives containerd's stock shim.
DEFAULT_RUNTIME = "io.containerd.wharf.v2"
STOCK_RUNC_RUNTIME = "io.containerd.runc.v2"
# The runtimes that take runc v2's options (containerd.runc.v1.Options).
RUNC_RUNTIMES = (DEFAULT_RUNTIME, STOCK_RUNC_RUNTIME)
RUNC_OPTIONS_TYPE_URL = "containerd.runc.v1.Options"
# ctr's validNamespace: the types --with-ns may join ("time" is not among them).
JOINABLE_NAMESPACES = ("pid", "network", "uts", "mount", "user", "ipc", "cgroup")


@dataclass(frozen=True)
class ImageRootfs:
    """What the spec takes from an image: its run config, and its rootfs mounted at ``rootfs``."""

    ref: str
    config: RunConfig
    rootfs: str


def add_flags(parser: argparse.ArgumentParser) -> None:
    """ctr's flags for creating a container (``containers create`` and ``run``)."""
    from wharfd.runtime.ctr.snapshots import add_snapshotter_flag

    add = parser.add_argument
    add(
        "--runtime",
        default=DEFAULT_RUNTIME,
        help=f"Runtime name (default %(default)s, wharfd's shim; {STOCK_RUNC_RUNTIME} runs containerd's stock shim)",
    )
    add("--runc-binary", default="", help="Specify runc-compatible binary")
    add("--runc-root", default="", help="Specify runc-compatible root")
    add("--runc-systemd-cgroup", action="store_true", help="Start runc with systemd cgroup manager")
    add_snapshotter_flag(parser)
    add("--snapshotter-label", action="append", default=[], help="Labels added to the new snapshot")
    add("--cwd", default="", help="Specify the working directory of the process")
    add("--env", action="append", default=[], help="Specify additional container environment variables")
    add("--env-file", default="", help="Specify additional container environment variables in a file")
    add("--label", action="append", default=[], help="Specify additional labels (e.g. foo=bar)")
    add("--annotation", action="append", default=[], help="Specify additional OCI annotations")
    add(
        "--mount",
        action="append",
        default=[],
        help="Specify additional container mount (ex: type=bind,src=/tmp,dst=/host,options=rbind:ro)",
    )
    add("--net-host", action="store_true", help="Enable host networking for the container")
    add("--privileged", action="store_true", help="Run privileged container")
    add("--read-only", action="store_true", help="Set the containers filesystem as readonly")
    add("-t", "--tty", action="store_true", help="Allocate a TTY for the container")
    add(
        "--with-ns",
        action="append",
        default=[],
        help="Specify existing Linux namespaces to join (format 'nstype:path')",
    )
    add("--allow-new-privs", action="store_true", help="Turn off OCI spec's NoNewPrivileges feature flag")
    add("--memory-limit", type=int, default=0, help="Memory limit (in bytes) for the container")
    add("--cpus", type=float, default=0.0, help="Set the CFS cpu quota")
    add(
        "--cap-add",
        action="append",
        default=[],
        help="Add Linux capabilities (Set capabilities with 'CAP_' prefix)",
    )
    add(
        "--cap-drop",
        action="append",
        default=[],
        help="Drop Linux capabilities (Set capabilities with 'CAP_' prefix)",
    )
    add("--seccomp", action="store_true", help="Enable the default seccomp profile")
    add("--seccomp-profile", default="", help="File path to custom seccomp profile; seccomp must be set")
    add("--cgroup", default=None, help='Cgroup path (To disable use of cgroup, set to "" explicitly)')
    add("--hostname", default="", help="Set the container's host name")
    add(
        "-u",
        "--user",
        default="",
        help="Username or user id, group optional (format: <name|uid>[:<group|gid>])",
    )


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """The flags only ``run`` has in ctr (its platformRunFlags), on top of :func:`add_flags`."""
    add = parser.add_argument
    add("--cpu-shares", type=int, default=1024, help="Set the cpu shares (default %(default)s)")
    add("--cpuset-cpus", default="", help="Set the CPUs the container will run in (e.g., 1-2,4)")
    add("--cpuset-mems", default="", help="Set the memory nodes the container will run in (e.g., 1-2,4)")
    add("--rlimit-nofile", default="", help="Set RLIMIT_NOFILE (soft:hard)")


# --- flag values ---------------------------------------------------------------------------------


def parse_mount(text: str) -> dict[str, Any]:
    """ctr's ``--mount`` value: CSV of ``type=…,source|src=…,destination|dst=…,options=a:b``."""
    mount: dict[str, Any] = {}
    for item in next(csv.reader([text]), []):
        key, eq, value = item.partition("=")
        if not eq:
            raise commands.CommandError("invalid mount specification: expected key=val")
        if key == "type":
            mount["type"] = value
        elif key in ("source", "src"):
            mount["source"] = value
        elif key in ("destination", "dst"):
            mount["destination"] = value
        elif key == "options":
            mount["options"] = value.split(":")
        else:
            raise commands.CommandError(f'mount option "{key}" not supported')
    mount.setdefault("destination", "")
    return mount


def read_env_file(path: str) -> list[str]:
    """Each line of ``path`` is one ``KEY=value`` (blank lines are skipped)."""
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\r\n") for line in f if line.strip()]


def _capabilities(names: Sequence[str]) -> list[str]:
    for name in names:
        if not name.startswith("CAP_"):
            raise commands.CommandError("capabilities must be specified with 'CAP_' prefix")
    return list(names)


def _join_namespaces(entries: Sequence[str]) -> list[SpecOpt]:
    from wharfd.runtime.oci import linux

    opts = []
    for entry in entries:
        kind, sep, path = entry.partition(":")
        if not sep:
            raise commands.CommandError(
                "joining a Linux namespace using --with-ns requires the format 'nstype:path'"
            )
        if kind not in JOINABLE_NAMESPACES:
            raise commands.CommandError(
                f"the Linux namespace type specified in --with-ns is not valid: {kind}"
            )
        opts.append(linux.with_namespace_path(kind, path))
    return opts


def _seccomp(args: argparse.Namespace) -> list[SpecOpt]:
    from wharfd.runtime.oci import linux, seccomp

    if args.seccomp_profile and not args.seccomp:
        raise commands.CommandError("seccomp must be set to true, if using a custom seccomp-profile")
    if not args.seccomp:
        return []
    if not args.seccomp_profile:
        return [seccomp.with_default_profile()]
    with open(args.seccomp_profile, encoding="utf-8") as f:
        try:
            profile = json.load(f)
        except ValueError as exc:
            raise commands.CommandError(
                f"seccomp profile {args.seccomp_profile}: not valid JSON: {exc}"
            ) from exc
    return [linux.with_seccomp(profile)]


def _cgroup(path: str) -> SpecOpt:
    from wharfd.runtime.oci import linux
    from wharfd.runtime.oci.spec import linux_of

    if path:
        return linux.with_cgroups_path(path)

    def opt(spec: Spec) -> None:
        linux_of(spec).pop("cgroupsPath", None)  # "" explicitly: no cgroup, as ctr --cgroup ""

    return opt


def _rlimit_nofile(text: str) -> SpecOpt:
    from wharfd.runtime.oci import process

    soft, _, hard = text.partition(":")
    try:
        return process.with_rlimit("RLIMIT_NOFILE", int(soft), int(hard or soft))
    except ValueError:
        raise commands.CommandError(f'failed to parse rlimit-nofile "{text}"') from None


# --- spec options in ctr's order ------------------------------------------------------------------


def spec_opts(args: argparse.Namespace, image: ImageRootfs | None = None) -> list[SpecOpt]:
    """The options ctr's NewContainer builds from the flags (after its default spec)."""
    from wharfd.runtime.oci import image_config, linux, process, spec

    opts: list[SpecOpt] = [linux.with_default_unix_devices()]
    if args.env_file:
        opts.append(process.with_env(read_env_file(args.env_file)))
    opts.append(process.with_env(args.env))
    mounts = [parse_mount(m) for m in args.mount]
    opts += [spec.without_mounts(*(m["destination"] for m in mounts)), spec.with_mounts(mounts)]
    if image is not None:
        opts.append(image_config.with_image_config(image.config, image.rootfs, image=image.ref))
    if args.read_only:
        opts.append(spec.with_readonly_rootfs())
    if args.args:
        opts.append(process.with_process_args(*args.args))
    if args.cwd:
        opts.append(process.with_cwd(args.cwd))
    if args.user:
        if image is None:
            raise commands.CommandError(f'user "{args.user}": needs an image rootfs to look the user up in')
        opts.append(image_config.with_image_user(args.user, image.rootfs, image=image.ref))
    if args.tty:
        opts.append(process.with_tty())
    opts += _host_opts(args)
    if args.annotation:
        opts.append(spec.with_annotations(_annotations(args.annotation)))
    if args.cap_add:
        opts.append(process.with_added_capabilities(_capabilities(args.cap_add)))
    if args.cap_drop:
        opts.append(process.with_dropped_capabilities(_capabilities(args.cap_drop)))
    opts += _seccomp(args)
    opts += _resource_opts(args)
    opts += _join_namespaces(args.with_ns)
    if args.allow_new_privs:
        opts.append(process.with_no_new_privileges(False))
    if args.cgroup is not None:
        opts.append(_cgroup(args.cgroup))
    if args.memory_limit:
        opts.append(linux.with_memory_limit(args.memory_limit))
    if args.hostname:
        opts.append(spec.with_hostname(args.hostname))
    if rlimit := getattr(args, "rlimit_nofile", ""):
        opts.append(_rlimit_nofile(rlimit))
    # ctr copies --label values into the spec's annotations too.
    opts.append(spec.with_annotations(commands.label_args(args.label)))
    return opts


def _host_opts(args: argparse.Namespace) -> list[SpecOpt]:
    from wharfd.runtime.oci import linux, process, spec

    opts: list[SpecOpt] = []
    if args.privileged:
        opts += [linux.with_privileged(), linux.with_all_devices_allowed()]
    if args.net_host:
        host_files = [
            {"destination": path, "type": "bind", "source": path, "options": ["rbind", "ro"]}
            for path in ("/etc/hosts", "/etc/resolv.conf")
        ]
        opts += [
            linux.with_host_namespace("network"),
            spec.with_mounts(host_files),
            process.with_env([f"HOSTNAME={socket.gethostname()}"]),
        ]
    return opts


def _resource_opts(args: argparse.Namespace) -> list[SpecOpt]:
    from wharfd.runtime.oci import linux

    opts: list[SpecOpt] = []
    if args.cpus > 0:
        opts.append(linux.with_cpus(args.cpus))
    cpus, mems = getattr(args, "cpuset_cpus", ""), getattr(args, "cpuset_mems", "")
    if cpus or mems:
        opts.append(linux.with_cpuset(cpus, mems))
    if (shares := getattr(args, "cpu_shares", 0)) > 0:
        opts.append(linux.with_cpu_shares(shares))
    return opts


def _annotations(items: Sequence[str]) -> dict[str, str]:
    # ctr's AnnotationArgs: "key=value", the value may be empty but the '=' is required.
    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise commands.CommandError(f'invalid annotation "{item}": expected key=value')
        out[key] = value
    return out


def build_spec(
    namespace: str, container_id: str, args: argparse.Namespace, image: ImageRootfs | None
) -> Spec:
    """The whole spec: containerd's default spec with :func:`spec_opts` applied (reads the rootfs)."""
    from wharfd.runtime.oci import spec

    return spec.generate(namespace, container_id, *spec_opts(args, image))


def runtime_options(args: argparse.Namespace) -> any_pb2.Any | None:
    """The runtime options ctr sends for runc v2, ``containerd.runc.v1.Options``, here for both
    runtimes that take them (:data:`RUNC_RUNTIMES`); none for any other runtime."""
    from google.protobuf import any_pb2

    from wharfd.api.types.runc.options import oci_pb2

    if args.runtime not in RUNC_RUNTIMES:
        if args.runc_binary or args.runc_systemd_cgroup:
            supported = " and ".join(f'"{r}"' for r in RUNC_RUNTIMES)
            raise commands.CommandError(
                f"specifying runc-binary and runc-systemd-cgroup is only supported for {supported} runtimes"
            )
        return None
    if args.runc_systemd_cgroup and not args.cgroup:
        raise commands.CommandError(
            'option --runc-systemd-cgroup requires --cgroup to be set, e.g. "machine.slice:foo:deadbeef"'
        )
    options = oci_pb2.Options(
        binary_name=args.runc_binary, root=args.runc_root, systemd_cgroup=args.runc_systemd_cgroup
    )
    return any_pb2.Any(type_url=RUNC_OPTIONS_TYPE_URL, value=options.SerializeToString())
