"""One runc container of the shim: bundle, rootfs, init process, exec processes.

Everything here drives runc and moves the processes' states; publishing
events and watching exits is the service's job (:mod:`wharfd.runtime.shim.service`).

No threads: reading config.json and mount(2) of the rootfs are short enough
for the loop, and a worker thread would cost every shim its own stack and
malloc arena (measured: ~1 MiB more private memory per pod).
The bundle holds what containerd's runc shim keeps there: ``options.json``,
``init.pid``, ``<exec id>.pid`` and runc's ``log.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import signal
import tempfile
from collections.abc import Sequence
from typing import Any

from wharfd.api.runtime.task.v3 import shim_pb2
from wharfd.api.types import mount_pb2
from wharfd.api.types.runc.options import oci_pb2
from wharfd.runtime import errors, mount
from wharfd.runtime.shim import cgroups, options
from wharfd.runtime.shim.process import EXEC_CREATED, INIT_CREATED, INIT_PAUSED, Process
from wharfd.runtime.shim.pump import ConsoleSocket
from wharfd.runtime.shim.reaper import Exit, Reaper
from wharfd.runtime.shim.runc import Runc, RuncError
from wharfd.runtime.shim.stdio import Owner, ProcessIO, Stdio
from wharfd.runtime.snapshots.snapshotter import Mount

CONSOLE_TIMEOUT = 10.0
IO_DRAIN_TIMEOUT = 2.0
UNMOUNT_ATTEMPTS = 50
UNMOUNT_RETRY_SECONDS = 0.05
MAX_STACKED_MOUNTS = 64


class Container:
    """A container and its processes; build it with :meth:`create`."""

    def __init__(
        self,
        id_: str,
        bundle: str,
        namespace: str,
        *,
        runc: Runc,
        opts: oci_pb2.Options,
        kill_all_on_exit: bool,
    ) -> None:
        """Use :meth:`create`."""
        self.id, self.bundle, self.namespace = id_, bundle, namespace
        self.runc, self.opts = runc, opts
        # Without a pid namespace of its own, a container's processes outlive its init.
        self.kill_all_on_exit = kill_all_on_exit
        self.rootfs = os.path.join(bundle, "rootfs")
        self.rootfs_mounted = False
        self._stacked = False  # every rootfs mount is on rootfs itself (none below it)
        self.init = Process(id_, Stdio(), INIT_CREATED)
        self.execs: dict[str, Process] = {}
        self._exec_specs: dict[str, dict[str, Any]] = {}
        self.cgroup = cgroups.Cgroup({})
        self.init_exit: Exit | None = None
        # The init's exit as the reaper will report it (set by the service once the pid is known).
        self.init_exited: asyncio.Future[Exit] | None = None
        self.poststart_hooks = False
        self._running_execs = 0
        self._execs_idle = asyncio.Event()
        self._execs_idle.set()

    # -- creation ------------------------------------------------------------------------

    @classmethod
    async def create(
        cls, req: shim_pb2.CreateTaskRequest, *, namespace: str, opts: oci_pb2.Options, reaper: Reaper
    ) -> Container:
        """Mount the rootfs, persist the options and ``runc create`` the container."""
        if req.checkpoint:
            raise errors.NotImplemented(f"container {req.id}: restoring from a checkpoint is not supported")
        bundle = req.bundle or os.getcwd()
        spec = _load_spec(bundle, req.id)  # not kept: a k8s spec with seccomp is ~30 KiB of objects
        runc = Runc(
            reaper,
            binary=opts.binary_name or "runc",
            root=options.root(opts, namespace),
            systemd_cgroup=opts.systemd_cgroup,
            log_file=os.path.join(bundle, "log.json"),
        )
        container = cls(
            req.id, bundle, namespace, runc=runc, opts=opts, kill_all_on_exit=not _own_pid_namespace(spec)
        )
        stdio = Stdio(req.stdin, req.stdout, req.stderr, req.terminal)
        container.init = Process(req.id, stdio, INIT_CREATED)
        container.poststart_hooks = bool((spec.get("hooks") or {}).get("poststart"))
        try:
            if req.rootfs:
                os.makedirs(container.rootfs, exist_ok=True)
                mount.mount_all([_mount(m) for m in req.rootfs], container.rootfs)
                container.rootfs_mounted = True
                container._stacked = all(not m.target for m in req.rootfs)
            options.write(bundle, opts)
            await container._create_init(reaper)
        except BaseException:
            await container._unmount()
            raise
        return container

    async def _create_init(self, reaper: Reaper) -> None:
        args = ["create", "--bundle", self.bundle, "--pid-file", os.path.join(self.bundle, "init.pid")]
        args += ["--no-pivot"] if self.opts.no_pivot_root else []
        args += ["--no-new-keyring"] if self.opts.no_new_keyring else []
        self.init.pid = await self._run_process(self.init, args, "init.pid", reaper)

    def find_cgroup(self) -> None:
        """Read the cgroups of the (created) init process."""
        self.cgroup = cgroups.of_pid(self.init.pid)

    async def _run_process(self, proc: Process, args: list[str], pid_file: str, reaper: Reaper) -> int:
        """Open ``proc``'s stdio, run runc ``args`` (create/exec) with it, return the new pid."""
        env = {"CONTAINER_ID": self.id, "CONTAINER_NAMESPACE": self.namespace}
        owner = Owner(self.opts.io_uid or -1, self.opts.io_gid or -1)
        proc.io = await ProcessIO.open(proc.stdio, owner=owner, reaper=reaper, env=env)
        console = ConsoleSocket() if proc.stdio.terminal else None
        ran = False
        try:
            if console is not None:
                args = [*args[:1], "--console-socket", console.path, *args[1:]]
            await self.runc.run_with_stdio([*args, self.id], proc.io.runc_fds)
            ran = True
            proc.io.handed_over()
            if console is not None:
                async with asyncio.timeout(CONSOLE_TIMEOUT):
                    proc.io.attach_console(await console.receive_master())
            return _read_pid(os.path.join(self.bundle, pid_file))
        except BaseException:
            proc.io.close()
            if ran and args[0] == "create":  # runc made a container we cannot drive: remove it
                with contextlib.suppress(RuncError):
                    await self.runc.delete(self.id, force=True)
            raise
        finally:
            if console is not None:
                console.close()

    # -- init lifecycle ------------------------------------------------------------------

    async def start(self) -> int:
        """Let the init process run the user's program (``runc start``, or what it does: runc.py)."""
        async with self.init.lock:
            self.init.check("start")
            started = False
            if self.init_exited is not None and not self.poststart_hooks:
                started = await self.runc.start_created(self.id, self.init_exited)
            if not started:
                await self.runc.run(["start", self.id])
            self.init.move("start")
        return self.init.pid

    async def pause(self) -> None:
        """Freeze the container."""
        async with self.init.lock:
            self.init.check("pause")
            await self.runc.run(["pause", self.id])
            self.init.move("pause")

    async def resume(self) -> None:
        """Thaw the container."""
        async with self.init.lock:
            self.init.check("resume")
            await self.runc.run(["resume", self.id])
            self.init.move("resume")

    async def update(self, resources: bytes) -> None:
        """``runc update --resources -`` with the LinuxResources JSON."""
        self.init.check("update")
        await self.runc.run(["update", "--resources", "-", self.id], stdin_data=resources)

    async def checkpoint(self, path: str, opts: oci_pb2.CheckpointOptions) -> None:
        """``runc checkpoint`` (needs CRIU; its failures name the directory holding CRIU's log)."""
        self.init.check("checkpoint")
        image_path = opts.image_path or path
        if not image_path:
            raise errors.InvalidArgument(f"checkpoint {self.id}: path must not be empty")
        args = ["checkpoint", "--image-path", image_path]
        work_path = opts.work_path or self.opts.criu_work_path
        args += ["--work-path", work_path] if work_path else []
        args += [] if opts.exit else ["--leave-running"]
        args += ["--tcp-established"] if opts.open_tcp else []
        args += ["--ext-unix-sk"] if opts.external_unix_sockets else []
        args += ["--shell-job"] if opts.terminal else []
        args += ["--file-locks"] if opts.file_locks else []
        args += ["--manage-cgroups-mode", opts.cgroups_mode] if opts.cgroups_mode else []
        args += ["--parent-path", opts.parent_path] if opts.parent_path else []
        for ns in opts.empty_namespaces:
            args += ["--empty-ns", ns]
        try:
            await self.runc.run([*args, self.id])
        except RuncError as exc:
            raise RuncError(
                "checkpoint", f"{exc.detail} (CRIU's logs are in {work_path or image_path})"
            ) from exc

    async def kill(self, exec_id: str, sig: int, all_: bool) -> None:
        """Signal the init process through runc (``all_``: every process), or an exec by pid."""
        if exec_id:
            self.process(exec_id).signal(sig)
            return
        if self.init.state.name == "deleted":
            raise errors.NotFound(f"container {self.id}: process already finished")
        try:
            await self.runc.kill(self.id, sig, all_=all_)
        except RuncError as exc:
            if exc.not_found:
                raise errors.NotFound(f"container {self.id}: process already finished") from exc
            raise

    async def kill_all(self) -> None:
        """SIGKILL every process left in the container (its init is gone); errors ignored."""
        with contextlib.suppress(RuncError):
            await self.runc.kill(self.id, signal.SIGKILL, all_=True)

    async def resume_if_paused(self) -> None:
        """A frozen container cannot finish dying: thaw it (its init has exited)."""
        if self.init.state is INIT_PAUSED:
            with contextlib.suppress(RuncError):
                await self.runc.run(["resume", self.id])

    async def delete(self, wait_exit: float = 5.0) -> None:
        """``runc delete --force``, drain and close stdio, unmount the rootfs; init becomes deleted."""
        async with self.init.lock:
            self.init.check("delete")
            try:
                await self.runc.delete(self.id, force=True)
            except RuncError as exc:
                if not exc.not_found:
                    raise
            if not self.init.exited:  # a created init is killed by the delete: let its exit land
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_exit):
                        await self.init.wait()
            for proc in (self.init, *self.execs.values()):
                await _close_io(proc)
            await self._unmount()
            self.init.move("delete")

    async def _unmount(self) -> None:
        if not self.rootfs_mounted:
            return
        if self._stacked and _unmount_stack(self.rootfs):
            self.rootfs_mounted = False
            return
        # EBUSY (a process still leaving the rootfs) is retried here, with the loop free
        # meanwhile: mount.unmount_all's own retries would sleep in the loop's thread.
        for attempt in range(UNMOUNT_ATTEMPTS):
            try:
                mount.unmount_all(self.rootfs, attempts=1)
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY or attempt == UNMOUNT_ATTEMPTS - 1:
                    raise
            await asyncio.sleep(UNMOUNT_RETRY_SECONDS)
        self.rootfs_mounted = False

    # -- exec processes ------------------------------------------------------------------

    def process(self, exec_id: str) -> Process:
        """The init process ("") or exec ``exec_id``; NotFound if there is none."""
        if not exec_id:
            return self.init
        proc = self.execs.get(exec_id)
        if proc is None:
            raise errors.NotFound(f"process {exec_id} does not exist in container {self.id}")
        return proc

    def add_exec(self, exec_id: str, stdio: Stdio, spec: bytes) -> Process:
        """Record an exec process (Exec); it runs on :meth:`start_exec`."""
        self.init.check("exec")
        if not exec_id or "/" in exec_id or exec_id in (".", ".."):
            raise errors.InvalidArgument(f"exec id {exec_id!r}: not a valid identifier")
        if exec_id in self.execs:
            raise errors.AlreadyExists(f"id {exec_id}: already exists")
        try:
            process_spec = json.loads(spec)
        except ValueError as exc:
            raise errors.InvalidArgument(f"exec {exec_id}: spec is not an OCI process JSON: {exc}") from exc
        if not isinstance(process_spec, dict) or not process_spec.get("args"):
            raise errors.InvalidArgument(f"exec {exec_id}: spec.args must not be empty")
        process_spec["terminal"] = stdio.terminal
        self._exec_specs[exec_id] = process_spec
        self.execs[exec_id] = proc = Process(exec_id, stdio, EXEC_CREATED)
        return proc

    async def start_exec(self, proc: Process, reaper: Reaper) -> int:
        """``runc exec --detach`` the recorded process; return its pid."""
        async with proc.lock:
            proc.check("start")
            fd, spec_path = tempfile.mkstemp(prefix=".exec-", suffix=".json", dir=self.bundle)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(self._exec_specs[proc.id], f)
                pid_file = f"{proc.id}.pid"
                args = [
                    "exec",
                    "--detach",
                    "--process",
                    spec_path,
                    "--pid-file",
                    os.path.join(self.bundle, pid_file),
                ]
                proc.pid = await self._run_process(proc, args, pid_file, reaper)
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(spec_path)
            proc.move("start")
        return proc.pid

    async def delete_exec(self, proc: Process) -> None:
        """Forget a created or stopped exec process."""
        async with proc.lock:
            proc.check("delete")
            await _close_io(proc)
            proc.move("delete")
            self.execs.pop(proc.id, None)
            self._exec_specs.pop(proc.id, None)
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.bundle, f"{proc.id}.pid"))

    def exec_started(self) -> None:
        """Count a starting exec; the init exit waits for it."""
        self._running_execs += 1
        self._execs_idle.clear()

    def exec_finished(self) -> None:
        """An exec counted by :meth:`exec_started` has exited (or failed to start)."""
        self._running_execs -= 1
        if self._running_execs <= 0:
            self._running_execs = 0
            self._execs_idle.set()

    async def execs_idle(self) -> None:
        """Return once no exec process is running."""
        await self._execs_idle.wait()

    # -- queries ---------------------------------------------------------------------------

    async def pids(self) -> Sequence[int]:
        """Host pids of the container's processes (``runc ps``)."""
        return await self.runc.ps(self.id)


async def _close_io(proc: Process) -> None:
    """Let the process's output reach its destination (bounded), then close its stdio."""
    if proc.io is None:
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(IO_DRAIN_TIMEOUT):
            await proc.io.drained()
    proc.io.close()


def _unmount_stack(path: str) -> bool:
    """Unmount what is stacked on ``path`` until nothing is (EINVAL), as containerd's shim does:
    no mount table read. False, with the rest left mounted, on EBUSY (in use, or mounts below)."""
    for _ in range(MAX_STACKED_MOUNTS):
        try:
            mount.LIBC.umount2(path, 0)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                return True
            if exc.errno == errno.EBUSY:
                return False
            raise
    return False


def _mount(m: mount_pb2.Mount) -> Mount:
    return Mount(m.type, m.source, m.target, tuple(m.options))


def _read_pid(path: str) -> int:
    with open(path, encoding="ascii") as f:
        return int(f.read().strip())


def _own_pid_namespace(spec: dict[str, Any]) -> bool:
    namespaces = (spec.get("linux") or {}).get("namespaces") or []
    return any(ns.get("type") == "pid" and not ns.get("path") for ns in namespaces)


def _load_spec(bundle: str, container_id: str) -> dict[str, Any]:
    try:
        with open(os.path.join(bundle, "config.json"), encoding="utf-8") as f:
            spec = json.load(f)
    except FileNotFoundError as exc:
        raise errors.NotFound(f"container {container_id}: bundle {bundle} has no config.json") from exc
    except ValueError as exc:
        raise errors.InvalidArgument(f"container {container_id}: config.json: {exc}") from exc
    if not isinstance(spec, dict):
        raise errors.InvalidArgument(f"container {container_id}: config.json is not an object")
    return spec
