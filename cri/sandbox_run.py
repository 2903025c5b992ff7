"""RunPodSandbox: a pod's name, network, files, pause container and task, all or nothing.

The steps, each registering its undo on an :class:`contextlib.AsyncExitStack`
right where it allocates, so a failure (or the caller going away) undoes
everything done so far in reverse order:

1. validate the metadata and the runtime handler, and compute the CNI
   capability arguments (a bad bandwidth annotation fails here, before any work);
2. reserve ``<name>_<namespace>_<uid>_<attempt>`` (AlreadyExists names the holder);
3. then two branches side by side, as they are independent once the netns
   exists (the pause joins the netns by path, CNI configures it):

   * network (unless the pod uses the node's): a pinned netns, then CNI ADD;
   * pause: the sandbox image (pulled and pinned when absent; an imported
     image is used as is, so offline nodes never touch a registry), the
     hostname / hosts / resolv.conf / shm files (:mod:`wharfd.cri.sandbox_files`),
     the containerd container record (kind ``sandbox``, CRI metadata in an
     extension), its snapshot on the image's chain id — record first, so it
     holds the snapshot against garbage collection — then the task through
     the task manager with the handler's runtime, started.

   The netns is made while the pause is prepared; CNI ADD then runs beside
   the shim launch and task start (started together, as the plugin processes
   would otherwise slow the short preparation steps on a busy node). A failing
   branch does not cut the other short (a CNI plugin stopped half-way could
   keep an address its DEL never hears of; a half-made shim is the task
   manager's to undo), but a branch that has not yet reached its costly step
   skips it. Both end before the rollback starts;
4. the network branch then stores its results (IPs, CNI result) in the record,
   while the pause branch writes the status file (READY); then the in-memory stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.api.types import mount_pb2
from wharfd.api.types.task import task_pb2
from wharfd.cni import netns
from wharfd.cri import network, sandbox_files, sandbox_spec
from wharfd.cri.recovery import apply_exit
from wharfd.cri.sandbox_stop import kill_and_reap
from wharfd.cri.store import (
    SANDBOX_METADATA_EXT,
    CriState,
    Runtime,
    Sandbox,
    SandboxMetadata,
    SandboxState,
    SandboxStatus,
    both,
    new_id,
    now_ns,
    runtime_for,
    sandbox_name,
    sandbox_record,
)
from wharfd.cri.store import in_k8s_namespace as _k8s
from wharfd.runtime import errors, mount, namespaces
from wharfd.runtime.metadata.containers import Container as Record
from wharfd.runtime.oci import spec as ocispec
from wharfd.runtime.oci import users
from wharfd.runtime.oci.image_config import RunConfig
from wharfd.runtime.snapshots.snapshotter import Mount
from wharfd.runtime.tasks.manager import CreateRequest
from wharfd.runtime.tasks.task import IO

log = logging.getLogger("wharfd.cri.sandbox")

_SNAPSHOT_LABEL_PREFIX = "containerd.io/snapshot/"
_NUMERIC_USER = re.compile(r"^\d+:\d+$")


def validate(config: cri.PodSandboxConfig) -> None:
    """InvalidArgument naming the first missing metadata field."""
    if not config.HasField("metadata"):
        raise errors.InvalidArgument("sandbox config must include metadata")
    meta = config.metadata
    for key in ("name", "uid", "namespace"):
        if not getattr(meta, key):
            raise errors.InvalidArgument(f"sandbox config metadata.{key} must be set")
    if meta.attempt < 0:
        raise errors.InvalidArgument("sandbox config metadata.attempt must not be negative")


def netns_dir(state: CriState) -> Path:
    """Where pod netns are pinned: /var/run/netns, or ``<state>/netns`` with netns_mounts_under_state_dir."""
    if state.config.get("netns_mounts_under_state_dir"):
        return state.state_dir / "netns"
    return netns.DEFAULT_DIR


async def run_pod_sandbox(state: CriState, request: cri.RunPodSandboxRequest) -> cri.RunPodSandboxResponse:
    """Answer RunPodSandbox; READY on success, nothing left behind on failure."""
    config = request.config
    validate(config)
    runtime = runtime_for(state.config, request.runtime_handler)
    if not network.host_network(config):
        network.capability_args(config)  # validates the bandwidth annotations up front
    run = _Run(state, contextlib.AsyncExitStack(), new_id(), config, runtime, request.runtime_handler)
    name = sandbox_name(config.metadata)
    async with run.undo:
        state.sandbox_names.reserve(name, run.id)
        run.undo.callback(state.sandbox_names.release, name)
        await run.run(name)
        run.undo.pop_all()  # success: keep everything
    log.info("RunPodSandbox %s (%s) ready", name, run.id)
    return cri.RunPodSandboxResponse(pod_sandbox_id=run.id)


@dataclass
class _Run:
    """One RunPodSandbox call: what it works on, and the undo stack of what it did so far."""

    state: CriState
    undo: contextlib.AsyncExitStack
    id: str
    config: cri.PodSandboxConfig
    runtime: Runtime
    handler: str
    # Set once the network branch has its netns (or gave up): the pause may then join it.
    netns_made: asyncio.Event = field(default_factory=asyncio.Event)
    # Set once the pause branch is ready for its task (or gave up). CNI ADD waits for it: its
    # plugin processes would slow the short steps before the task, which is the longer branch.
    prepared: asyncio.Event = field(default_factory=asyncio.Event)
    failed: bool = False  # a branch failed: the other skips its remaining costly steps
    made: _Prepared | None = None  # what the pause branch prepared, once it has

    def fail(self) -> None:
        """Tell the branches that one of them failed."""
        self.failed = True

    def later(self, what: str, fn: Callable[[], Awaitable[Any]]) -> None:
        """Register an undo step that logs its own failure, so the remaining steps still run."""

        async def step() -> None:
            try:
                # Shielded: a caller that went away must not cut the clean-up short.
                await asyncio.shield(fn())
            except Exception as exc:
                log.warning("RunPodSandbox %s rollback: %s: %s", self.id, what, exc)

        self.undo.push_async_callback(step)

    async def run(self, name: str) -> None:
        """Every step after the name reservation."""
        state = self.state
        if not network.host_network(self.config) and state.cni is None:
            raise errors.FailedPrecondition("cni config not initialized: pod networking is not available")
        net, sandbox = await both(self.network(), self.pause(name), failed=self.fail)
        sandbox.metadata = net.apply(sandbox.metadata)  # the status file does not hold these
        state.sandboxes.add(sandbox)
        await _catch_early_exit(state, self.id)

    async def pause(self, name: str) -> Sandbox:
        """The pause branch: everything the task needs, then (once the netns exists) the task, READY."""
        try:
            made = self.made = await self.prepare(name)
        finally:
            self.prepared.set()  # the network branch goes on to CNI ADD (or sees the failure)
        await self.netns_made.wait()
        self.check_sibling()  # the shim launch is the costly step: none when the network failed
        pid = await self.start_task(made.spec, made.mounts)
        created = made.record.created_at
        status = SandboxStatus(
            state=SandboxState.READY.value,
            pid=pid,
            created_at=int(created.timestamp() * 1e9) if created else now_ns(),
        )
        sandbox = self.state.new_sandbox(made.meta, status)
        await sandbox.update()  # the status file
        return sandbox

    async def prepare(self, name: str) -> _Prepared:
        """The pod's files, beside the image, spec, record and snapshot of the pause container."""
        _, made = await both(self.files(), self.container(name))
        return made

    async def files(self) -> None:
        """hostname, hosts, resolv.conf and /dev/shm of the pod."""
        state, config = self.state, self.config
        root, vol = state.sandbox_root(self.id), state.sandbox_state_dir(self.id)
        self.later("sandbox files", lambda: asyncio.to_thread(sandbox_files.remove, root, vol, config))
        await asyncio.to_thread(sandbox_files.setup, root, vol, config)

    async def container(self, name: str) -> _Prepared:
        """The sandbox image, the pause container's spec, its record and its snapshot."""
        state, config = self.state, self.config
        image = await ensure_sandbox_image(state, self.handler)
        run_config = RunConfig.from_json(
            (image.config or {}).get("config"), what="sandbox image config.config"
        )
        snapshotter_name = self.runtime.snapshotter or _default_snapshotter(state)
        netns_path = "" if network.host_network(config) else str(self.netns_path())
        meta = SandboxMetadata(
            id=self.id,
            name=name,
            config=config,
            runtime_handler=self.handler,
            runtime_type=self.runtime.type,
            netns_path=netns_path,
            image=image.id,
            snapshotter=snapshotter_name,
        )
        userstr = sandbox_spec.user_string(config, run_config)
        spec_input = self.spec_input(run_config, netns_path, _numeric_user(userstr))
        spec = sandbox_spec.generate(spec_input)
        record = await self.create_record(meta, spec, {**run_config.labels, **config.labels})
        mounts = await self.prepare_snapshot(snapshotter_name, image.chain_id)
        spec_changed = bool(userstr) and spec_input.user is None
        if spec_changed:
            resolved = await asyncio.to_thread(_resolve_user, userstr, mounts, image.id)
            spec = sandbox_spec.generate(replace(spec_input, user=resolved))
            record = replace(record, spec=ocispec.to_any(spec))
        return _Prepared(meta, record, spec, mounts, spec_changed)

    async def finish_record(self, net: _Network) -> None:
        """Store the network's results (and a spec regenerated for the image's user) in the record."""
        made = self.made
        assert made is not None  # the network branch waits for the preparation
        paths = ["spec"] if made.spec_changed else []
        record = made.record
        if made.meta.netns_path:
            paths.append(f"extensions.{SANDBOX_METADATA_EXT}")
            metadata = net.apply(made.meta).to_any()
            record = replace(record, extensions={**record.extensions, SANDBOX_METADATA_EXT: metadata})
        if paths:
            with _k8s():
                await self.state.meta.update(record, paths)

    def check_sibling(self) -> None:
        """Stop a branch before its next costly step when the other one failed already."""
        if self.failed:
            raise _SiblingFailed()

    def spec_input(
        self, image: RunConfig, netns_path: str, user: tuple[int, int, tuple[int, ...]] | None
    ) -> sandbox_spec.SandboxSpecInput:
        """What the pause container's spec is built from."""
        cfg = self.state.config
        return sandbox_spec.SandboxSpecInput(
            id=self.id,
            config=self.config,
            image=image,
            image_name=_sandbox_image(self.state),
            netns_path=netns_path,
            shm_path=sandbox_files.shm_path(self.state.sandbox_state_dir(self.id), self.config),
            resolv_path=str(sandbox_files.resolv_path(self.state.sandbox_root(self.id))),
            systemd_cgroup=self.runtime.systemd_cgroup,
            pod_annotations=self.runtime.pod_annotations,
            enable_unprivileged_ports=bool(cfg.get("enable_unprivileged_ports", True)),
            enable_unprivileged_icmp=bool(cfg.get("enable_unprivileged_icmp", True)),
            restrict_oom_score_adj=bool(cfg.get("restrict_oom_score_adj", False)),
            unset_seccomp_profile=str(cfg.get("unset_seccomp_profile") or ""),
            user=user,
        )

    def netns_path(self) -> Path:
        """Where this pod's netns is pinned (known before it exists, so the spec can name it)."""
        return netns_dir(self.state) / f"cni-{self.id[:32]}"

    async def network(self) -> _Network:
        """The network branch: the netns, then CNI ADD and the record's update (no netns, no ADD for host network)."""
        host = network.host_network(self.config)
        path = None
        try:
            if not host:
                path = await network.create_netns(self.netns_path().name, self.netns_path().parent)
                pinned = path
                self.later("netns", lambda: netns.remove(pinned))
        finally:
            self.netns_made.set()  # the pause branch goes on (or sees the failure)
        await self.prepared.wait()
        self.check_sibling()
        net = _Network() if path is None else await self.attach(path)
        # Beside the task's start, while it is not on the longer branch's path.
        await self.finish_record(net)
        return net

    async def attach(self, path: Path) -> _Network:
        """CNI ADD of the pod in the netns at ``path``."""
        state, config, cni = self.state, self.config, self.state.cni
        # DEL is registered before ADD: a failed ADD may still have allocated an address.
        self.later("CNI DEL", lambda: network.teardown(cni, self.id, str(path), config))
        settings = state.config.get("cni") or {}
        serially = bool(settings.get("setup_serially", False))
        attached = await network.setup(cni, self.id, str(path), config, serially=serially)
        ip, extra = network.pod_ips(attached, str(settings.get("ip_pref") or ""))
        if not ip:
            raise errors.Unavailable(
                f"sandbox {self.id}: the CNI result has no IP for {network.DEFAULT_IFNAME}"
            )
        return _Network(ip, extra, network.result_summary(attached))

    async def create_record(
        self, meta: SandboxMetadata, spec: ocispec.Spec, labels: dict[str, str]
    ) -> Record:
        """The containerd container record (as stored); it holds the snapshot (same key) against GC."""
        record = sandbox_record(
            meta,
            spec=ocispec.to_any(spec),
            runtime=self.runtime.type,
            options=self.runtime.options,
            snapshot_key=self.id,
            labels=labels,
        )
        with _k8s():
            stored = await self.state.meta.create(record)
        self.later("container record", lambda: _in_k8s(self.state.meta.delete(self.id)))
        return stored

    async def prepare_snapshot(self, snapshotter_name: str, chain_id: str) -> list[Mount]:
        """The pause container's writable rootfs on the image's chain id."""
        snapshotter = self.state.snapshotters.get(snapshotter_name)
        if snapshotter is None:
            raise errors.FailedPrecondition(f'snapshotter "{snapshotter_name}" for the sandbox is not loaded')
        labels = {k: v for k, v in self.config.annotations.items() if k.startswith(_SNAPSHOT_LABEL_PREFIX)}
        self.later("snapshot", lambda: _in_k8s(snapshotter.remove(self.id)))
        with _k8s():
            try:
                mounts: list[Mount] = await snapshotter.prepare(self.id, parent=chain_id, labels=labels)
            except errors.NotFound as exc:
                raise errors.FailedPrecondition(
                    f'sandbox image is not unpacked in snapshotter "{snapshotter_name}": {exc}'
                ) from exc
        return mounts

    async def start_task(self, spec: ocispec.Spec, mounts: list[Mount]) -> int:
        """Create the pause task with the handler's runtime and start it; its pid."""
        request = CreateRequest(
            spec_json=ocispec.to_json(spec),
            runtime=self.runtime.type,
            runtime_path=self.runtime.path,
            options=self.runtime.options,
            rootfs=[
                mount_pb2.Mount(type=m.type, source=m.source, target=m.target, options=list(m.options))
                for m in mounts
            ],
            io=IO(),  # the pause process needs no stdio
        )
        task = await self.state.tasks.create(self.id, request, namespaces.K8S)
        self.later("task", lambda: kill_and_reap(self.state, self.id))
        return int(await task.start())


@dataclass(frozen=True)
class _Network:
    """What the network branch found out: nothing for a host-network pod."""

    ip: str = ""
    extra_ips: list[str] = field(default_factory=list)
    cni_result: dict[str, Any] | None = None

    def apply(self, meta: SandboxMetadata) -> SandboxMetadata:
        """``meta`` with these results."""
        return replace(meta, ip=self.ip, additional_ips=tuple(self.extra_ips), cni_result=self.cni_result)


@dataclass(frozen=True)
class _Prepared:
    """What the pause branch made before its task: the record holds the metadata without the network's results."""

    meta: SandboxMetadata
    record: Record
    spec: ocispec.Spec
    mounts: list[Mount]
    spec_changed: bool  # regenerated for a user named in the image: the record needs it too


class _SiblingFailed(Exception):
    """A branch stopping because the other one failed (that failure is the one reported)."""


# --- steps ------------------------------------------------------------------------------------


def _default_snapshotter(state: CriState) -> str:
    return str((state.config.get("containerd") or {}).get("snapshotter") or "overlayfs")


def _sandbox_image(state: CriState) -> str:
    return str(state.config.get("sandbox_image") or "registry.k8s.io/pause:3.10")


async def ensure_sandbox_image(state: CriState, handler: str = "") -> Any:
    """The sandbox image (a CriImage): the local one if present, else pulled (and pinned) now."""
    name = _sandbox_image(state)
    with _k8s():
        try:
            return await state.catalog.find(name)
        except errors.NotFound:
            pass
        if state.puller is None:
            raise errors.FailedPrecondition(
                f'sandbox image "{name}" is not present and pulling is not available'
            )
        log.info("sandbox image %s not present; pulling it", name)
        try:
            image_id = await state.puller.pull(name, runtime_handler=handler)
        except errors.WharfError as exc:
            raise type(exc)(f'failed to get sandbox image "{name}": {exc}') from exc
        return await state.catalog.find(image_id)


async def _catch_early_exit(state: CriState, sandbox_id: str) -> None:
    """A pause process that died before the pod was stored had its exit event ignored: apply it now."""
    task = state.task(sandbox_id)
    if task is None:
        return
    try:
        proc = await task.state()
    except errors.WharfError:
        return  # its shim is going away: the exit event follows
    if proc.status == task_pb2.STOPPED:
        await apply_exit(state, sandbox_id, proc.exit_status, proc.exited_at.ToNanoseconds())


# --- the user, when the image names one ---------------------------------------------------------


def _numeric_user(userstr: str) -> tuple[int, int, tuple[int, ...]] | None:
    if not userstr:
        return (0, 0, ())
    if _NUMERIC_USER.match(userstr):
        uid, gid = (int(x) for x in userstr.split(":"))
        return (uid, gid, ())
    return None  # needs the image's /etc/passwd and /etc/group


def _resolve_user(userstr: str, mounts: list[Mount], image: str) -> tuple[int, int, tuple[int, ...]]:
    """Mount the new rootfs briefly (blocking) and look ``userstr`` up in it.

    The pause process gets the user's primary group alone, as containerd's sandbox
    (``oci.WithUser``, without the ``/etc/group`` memberships a container gets).
    """
    import tempfile  # rare path: an idle daemon does not load it (random, hmac)

    scratch = Path(tempfile.gettempdir())
    with mount.temporary_blocking(mounts, scratch, "wharfd-sandbox-user-") as target:
        user = users.resolve(userstr, target, image=image)
    return (user.uid, user.gid, (user.gid,))


async def _in_k8s(aw: Awaitable[Any]) -> Any:
    with _k8s():
        return await aw
