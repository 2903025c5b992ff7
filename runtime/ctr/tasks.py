"""``wharf tasks`` (``t``, ``task``): start, list, signal, exec into, pause, delete and measure tasks.

Output and exit codes follow ctr: ``ls`` is a tabwriter table ``TASK PID
STATUS``; ``start``, ``exec`` and ``attach`` copy stdio until the process
exits and exit with its status; ``delete`` exits with a non-zero exit status
of what it deleted. ``start -d`` starts the task without I/O (or with
``--log-uri``) and returns; ctr instead keeps FIFOs that nothing reads.
``checkpoint`` is not offered.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from wharfd.runtime.ctr import commands
from wharfd.runtime.ctr.tabwriter import Writer

if TYPE_CHECKING:
    from wharfd.runtime.client import Client
    from wharfd.runtime.ctr.commands import Subparsers
    from wharfd.runtime.ctr.taskio import Stdio

# Signals ctr forwards to a task it is attached to (without a terminal).
FORWARDED_SIGNALS = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)


def register(subparsers: Subparsers) -> None:
    """Add ``tasks [t, task]`` and its subcommands, in ctr's order."""
    group = commands.add_group(subparsers, "tasks", aliases=["t", "task"], help="Manage tasks")
    attach = commands.add_command(group, "attach", _attach, help="Attach to the IO of a running container")
    attach.add_argument("id", metavar="CONTAINER")
    rm = commands.add_command(
        group, "delete", _delete, aliases=["del", "remove", "rm"], help="Delete one or more tasks"
    )
    rm.add_argument("-f", "--force", action="store_true", help="Force delete task process")
    rm.add_argument("--exec-id", default="", help="Process ID to kill")
    rm.add_argument("ids", nargs="+", metavar="CONTAINER")
    ex = commands.add_command(
        group, "exec", _exec, help="Execute additional processes in an existing container"
    )
    ex.add_argument("--cwd", default="", help="Working directory of the new process")
    ex.add_argument("-t", "--tty", action="store_true", help="Allocate a TTY for the container")
    ex.add_argument("-d", "--detach", action="store_true", help="Detach from the task after it has started")
    ex.add_argument("--exec-id", required=True, help="Exec specific id for the process")
    ex.add_argument("--fifo-dir", default="", help="Directory used for storing IO FIFOs")
    ex.add_argument("--log-uri", default="", help="Log uri for custom shim logging")
    ex.add_argument("-u", "--user", default="", help="User id or name")
    ex.add_argument("id", metavar="CONTAINER")
    ex.add_argument("args", nargs=argparse.REMAINDER, metavar="COMMAND")
    ls = commands.add_command(group, "list", _list, aliases=["ls"], help="List tasks")
    ls.add_argument("-q", "--quiet", action="store_true", help="Print only the task id")
    kill = commands.add_command(group, "kill", _kill, help="Signal a container (default: SIGTERM)")
    kill.add_argument("-s", "--signal", default="", help="Signal to send to the container")
    kill.add_argument("--exec-id", default="", help="Process ID to kill")
    kill.add_argument(
        "-a", "--all", action="store_true", help="Send signal to all processes inside the container"
    )
    kill.add_argument("id", metavar="CONTAINER")
    metrics = commands.add_command(
        group, "metrics", _metrics, aliases=["metric"], help="Get a single data point of metrics for a task"
    )
    metrics.add_argument("--format", default="table", choices=("table", "json"), help='"table" or "json"')
    metrics.add_argument("id", metavar="CONTAINER")
    for name, handler, text in (
        ("pause", _pause, "Pause an existing container"),
        ("ps", _ps, "List processes for container"),
        ("resume", _resume, "Resume a paused container"),
    ):
        commands.add_command(group, name, handler, help=text).add_argument("id", metavar="CONTAINER")
    start = commands.add_command(group, "start", _start, help="Start a container that has been created")
    add_io_flags(start)
    start.add_argument("--pid-file", default="", help="File path to write the task's pid")
    start.add_argument(
        "-d", "--detach", action="store_true", help="Detach from the task after it has started execution"
    )
    start.add_argument("id", metavar="CONTAINER")


def add_io_flags(parser: argparse.ArgumentParser) -> None:
    """``--null-io``, ``--log-uri`` and ``--fifo-dir`` (start and run)."""
    parser.add_argument("--null-io", action="store_true", help="Send all IO to /dev/null")
    parser.add_argument("--log-uri", default="", help="Log uri")
    parser.add_argument("--fifo-dir", default="", help="Directory used for storing IO FIFOs")


def tasks_stub(client: Client) -> Any:
    """The Tasks service on the client's channel."""
    from wharfd.runtime.ctr.containers import tasks_stub as stub

    return stub(client)


# --- shared with run ---------------------------------------------------------------------------


def choose_io(args: argparse.Namespace, name: str, terminal: bool) -> Stdio:
    """The task's stdio from the flags: null, a log URI, or a new FIFO set (attached)."""
    from wharfd.runtime.ctr.taskio import Stdio

    if args.null_io:
        if terminal:
            raise commands.CommandError("tty and null-io cannot be used together")
        return Stdio.null()
    if args.log_uri:
        return Stdio.log_uri(args.log_uri, terminal)
    if getattr(args, "detach", False):
        return Stdio.null(terminal)
    return Stdio.fifos(args.fifo_dir, name, terminal=terminal)


def create_task(client: Client, container: Any, io: Stdio) -> int:
    """Tasks.Create with the container's snapshot mounts as rootfs; returns the pid."""
    from wharfd.api.services.snapshots.v1 import snapshots_pb2 as spb
    from wharfd.api.services.tasks.v1 import tasks_pb2 as tpb

    rootfs = []
    if container.snapshot_key:
        request = spb.MountsRequest(snapshotter=container.snapshotter, key=container.snapshot_key)
        rootfs = list(client.snapshots.Mounts(request).mounts)
    created = tasks_stub(client).Create(
        tpb.CreateTaskRequest(
            container_id=container.id,
            rootfs=rootfs,
            stdin=io.stdin,
            stdout=io.stdout,
            stderr=io.stderr,
            terminal=io.terminal,
        )
    )
    return int(created.pid)


def attach_and_wait(
    client: Client,
    cid: str,
    io: Stdio,
    start: Callable[[], None],
    *,
    create: Callable[[], None] = lambda: None,
    exec_id: str = "",
) -> int:
    """Copy stdio, ``create`` then ``start`` the process, forward resizes and signals until it exits.

    Returns the exit status. The FIFOs are removed at the end.
    """
    from wharfd.api.services.tasks.v1 import tasks_pb2 as tpb
    from wharfd.runtime.ctr.taskio import Copier, ResizeWatcher, raw_terminal

    tasks = tasks_stub(client)
    copier = Copier(
        io,
        close_stdin=lambda: tasks.CloseIO(tpb.CloseIORequest(container_id=cid, exec_id=exec_id, stdin=True)),
        stdin=sys.stdin.buffer if io.stdin else None,
    )
    copier.start()
    try:
        create()
    except BaseException:
        copier.wait(0)
        io.close()
        raise
    outcome: list[Any] = []
    waiter = threading.Thread(target=_wait, args=(tasks, cid, exec_id, outcome), daemon=True)
    waiter.start()  # before Start, as ctr, so no exit is missed
    pending: list[int] = []
    previous = {}
    if not io.terminal:
        previous = {sig: signal.signal(sig, lambda s, _f: pending.append(s)) for sig in FORWARDED_SIGNALS}
    resize = ResizeWatcher(io.terminal)

    def resized() -> None:
        size = resize.pending()
        if size is not None:
            tasks.ResizePty(
                tpb.ResizePtyRequest(container_id=cid, exec_id=exec_id, width=size[0], height=size[1])
            )

    try:
        with raw_terminal(io.terminal):
            resized()  # before start, so the process never sees the default size
            start()
            while waiter.is_alive():
                resized()
                while pending:
                    tasks.Kill(tpb.KillRequest(container_id=cid, exec_id=exec_id, signal=pending.pop(0)))
                waiter.join(0.05)
    finally:
        resize.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    copier.wait()
    io.close()
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return int(result.exit_status)


def _wait(tasks: Any, cid: str, exec_id: str, outcome: list[Any]) -> None:
    from wharfd.api.services.tasks.v1 import tasks_pb2 as tpb

    try:
        outcome.append(tasks.Wait(tpb.WaitRequest(container_id=cid, exec_id=exec_id)))
    except BaseException as exc:
        outcome.append(exc)


def get_container(client: Client, cid: str) -> Any:
    """Containers.Get."""
    from wharfd.api.services.containers.v1 import containers_pb2 as cpb
    from wharfd.runtime.ctr.containers import containers_stub

    return containers_stub(client).Get(cpb.GetContainerRequest(id=cid)).container


def process_terminal(container: Any) -> bool:
    """Whether the container's spec asks for a terminal (``process.terminal``)."""
    try:
        return bool(json.loads(container.spec.value).get("process", {}).get("terminal", False))
    except ValueError:
        return False


# --- commands ----------------------------------------------------------------------------------


def _start(args: argparse.Namespace) -> int:
    from wharfd.api.services.tasks.v1 import tasks_pb2 as tpb

    with commands.new_client(args) as client:
        container = get_container(client, args.id)
        io = choose_io(args, args.id, process_terminal(container))
        tasks = tasks_stub(client)

        def create() -> None:
            pid = create_task(client, container, io)
            if args.pid_file:
                with open(args.pid_file, "w", encoding="ascii") as f:
                    f.write(str(pid))

        def start() -> None:
            tasks.Start(tpb.StartRequest(container_id=args.id))

        if args.detach or io.folder is None:
            create()
            start()
            return 0
        return attach_and_wait(client, args.id, io, start, create=create)


def _list(args: argparse.Namespace) -> None:
    from wharfd.api.services.tasks.v1 import tasks_pb2 as tpb
    from wharfd.api.types.task import task_pb2

    with commands.new_client(args) as client:
        found = tasks_stub(client).List(tpb.ListTasksRequest()).tasks
    if args.quiet:
        for task in found:
            print(task.id)
        return
    tw = Writer(sys.stdout, 4, 8, 4)
    tw.write("TASK\tPID\tSTATUS\t\n")
    for task in found:
        tw.write(f"{task.id}\t{task.pid}\t{task_pb2.Status.Name(task.status)}\n")
    tw.flush()


def _kill(args: argparse.Namespace) -> None:
    from wharfd.api.services.tasks.v1 import tasks_pb2 as tpb
    from wharfd.runtime.oci.image_config import DEFAULT_STOP_SIGNAL, STOP_SIGNAL_LABEL, parse_signal

    if args.exec_id and args.all:
        raise commands.CommandError("specify an exec-id or all; not both")
    with commands.new_client(args) as client:
        name = args.signal or get_container(client, args.id).labels.get(
            STOP_SIGNAL_LABEL, DEFAULT_STOP_SIGNAL
        )
        number = parse_signal(name, what="signal")
        tasks_stub(client).Kill(
            tpb.KillRequest(container_id=args.id, exec_id=args.exec_id, signal=number, all=args.all)
        )


def _exec(args: argparse.Namespace) -> int:
    from google.protobuf import any_pb2

    from wharfd.api.services.tasks.v1 import tasks_pb2 as tpb
    from wharfd.runtime.ctr.taskio import Stdio
    from wharfd.runtime.oci import spec as oci_spec

    if not args.args:
        raise commands.CommandError("exec needs a command")
    with commands.new_client(args) as client:
        container = get_container(client, args.id)
        tasks = tasks_stub(client)
        process = oci_spec.from_any(container.spec).get("process", {})
        process.update(args=list(args.args), terminal=args.tty)
        if args.cwd:
            process["cwd"] = args.cwd
        if args.user:
            pid = tasks.Get(tpb.GetRequest(container_id=args.id)).process.pid
            process["user"] = resolve_user(args.user, f"/proc/{pid}/root")
        if args.log_uri:
            io = Stdio.log_uri(args.log_uri, args.tty)
        elif args.detach:
            io = Stdio.null(args.tty)
        else:
            io = Stdio.fifos(args.fifo_dir, args.exec_id, terminal=args.tty)
        spec = any_pb2.Any(type_url=oci_spec.PROCESS_TYPE_URL, value=json.dumps(process).encode())
        request = tpb.ExecProcessRequest(
            container_id=args.id,
            exec_id=args.exec_id,
            stdin=io.stdin,
            stdout=io.stdout,
            stderr=io.stderr,
            terminal=io.terminal,
            spec=spec,
        )

        def create() -> None:
            tasks.Exec(request)

        def start() -> None:
            tasks.Start(tpb.StartRequest(container_id=args.id, exec_id=args.exec_id))

        if io.folder is None:
            create()
            start()
            return 0
        status = attach_and_wait(client, args.id, io, start, create=create, exec_id=args.exec_id)
        tasks.DeleteProcess(tpb.DeleteProcessRequest(container_id=args.id, exec_id=args.exec_id))
        return status


def resolve_user(user: str, rootfs: str) -> dict[str, int]:
    """``uid[:gid]`` or ``name[:group]`` (looked up in the container's /etc/passwd and /etc/group)."""
    name, _, group = user.partition(":")

    def lookup(value: str, table: str, what: str) -> tuple[int, int]:
        if value.isdigit():
            return int(value), -1
        try:
            with open(os.path.join(rootfs, "etc", table), encoding="utf-8") as f:
                for line in f:
                    fields = line.rstrip("\n").split(":")
                    if len(fields) > 3 and fields[0] == value:
                        return int(fields[2]), int(fields[3])
        except OSError as exc:
            raise commands.CommandError(f"cannot look up {what} {value!r}: {exc}") from exc
        raise commands.CommandError(f"no {what} {value!r} in the container's /etc/{table}")

    uid, primary = lookup(name, "passwd", "user")
    gid = lookup(group, "group", "group")[0] if group else max(primary, 0)
    return {"uid": uid, "gid": gid}


def _ps(args: argparse.Namespace) -> None:
    from wharfd.api.services.tasks.v1 import tasks_pb2 as tpb
    from wharfd.api.types.runc.options import oci_pb2

    with commands.new_client(args) as client:
        processes = tasks_stub(client).ListPids(tpb.ListPidsRequest(container_id=args.id)).processes
    tw = Writer(sys.stdout, 1, 8, 4)
    tw.write("PID\tINFO\n")
    for p in processes:
        info = "-"
        if p.info.type_url.endswith("ProcessDetails"):
            info = f'exec_id:"{oci_pb2.ProcessDetails.FromString(p.info.value).exec_id}"'
        tw.write(f"{p.pid}\t{info}\n")
    tw.flush()


def _pause(args: argparse.Namespace) -> None:
    from wharfd.api.services.tasks.v1 import tasks_pb2 as tpb

    with commands.new_client(args) as client:
        tasks_stub(client).Pause(tpb.PauseTaskRequest(container_id=args.id))


def _resume(args: argparse.Namespace) -> None:
    from wharfd.api.services.tasks.v1 import tasks_pb2 as tpb

    with commands.new_client(args) as client:
        tasks_stub(client).Resume(tpb.ResumeTaskRequest(container_id=args.id))


def _delete(args: argparse.Namespace) -> int:
    with commands.new_client(args) as client:
        code = 0
        for cid in args.ids:
            status = delete_task(client, cid, exec_id=args.exec_id, force=args.force)
            code = code or status
        return code


def delete_task(client: Client, cid: str, *, exec_id: str = "", force: bool = False) -> int:
    """Delete a task (or one exec); with ``force`` kill it first and wait. Returns its exit status."""
    from wharfd.api.services.tasks.v1 import tasks_pb2 as tpb
    from wharfd.api.types.task import task_pb2

    tasks = tasks_stub(client)
    if exec_id:
        return int(
            tasks.DeleteProcess(tpb.DeleteProcessRequest(container_id=cid, exec_id=exec_id)).exit_status
        )
    if force:
        status = tasks.Get(tpb.GetRequest(container_id=cid)).process.status
        if status not in (task_pb2.STOPPED, task_pb2.CREATED):
            tasks.Kill(tpb.KillRequest(container_id=cid, signal=signal.SIGKILL, all=True))
            tasks.Wait(tpb.WaitRequest(container_id=cid))
    return int(tasks.Delete(tpb.DeleteTaskRequest(container_id=cid)).exit_status)


def _attach(args: argparse.Namespace) -> int:
    from wharfd.api.services.tasks.v1 import tasks_pb2 as tpb
    from wharfd.runtime.ctr.taskio import Stdio

    with commands.new_client(args) as client:
        p = tasks_stub(client).Get(tpb.GetRequest(container_id=args.id)).process
        if not (p.stdout or p.stdin):
            raise commands.CommandError(f"task {args.id} has no IO to attach to")
        io = Stdio(stdin=p.stdin, stdout=p.stdout, stderr=p.stderr, terminal=p.terminal)
        return attach_and_wait(client, args.id, io, lambda: None)


def _metrics(args: argparse.Namespace) -> None:
    from wharfd.runtime.ctr import task_metrics

    task_metrics.show(args)
