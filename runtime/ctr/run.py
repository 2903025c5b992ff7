"""``wharf run [flags] IMAGE ID [COMMAND…]``: create a container and run its task, as ``ctr run``.

The container is made exactly as ``containers create`` makes it (the same
flags, :mod:`wharfd.runtime.ctr.spec_flags`); then the task gets a FIFO set
for its stdio (``-t``: a terminal in raw mode, resized on SIGWINCH), is
created, waited for and started. ``wharf`` exits with the task's exit status.
``--rm`` deletes the task, the snapshot and the container after the exit;
``-d`` returns once the task has started (with no I/O unless ``--log-uri``).
The image must already be pulled and unpacked.
"""

from __future__ import annotations

import argparse
import contextlib
from typing import TYPE_CHECKING

from wharfd.runtime.ctr import commands, spec_flags
from wharfd.runtime.ctr import tasks as task_commands

if TYPE_CHECKING:
    from wharfd.runtime.ctr.commands import Subparsers


def register(subparsers: Subparsers) -> None:
    """Add ``run``."""
    run = commands.add_command(subparsers, "run", _run, help="Run a container")
    run.add_argument("--rm", action="store_true", help="Remove the container after running")
    run.add_argument("-d", "--detach", action="store_true", help="Detach from the task after it has started")
    task_commands.add_io_flags(run)
    spec_flags.add_flags(run)
    spec_flags.add_run_flags(run)
    run.add_argument("image", nargs="?", default="", metavar="Image|RootFS")
    run.add_argument("id", nargs="?", default="", metavar="ID")
    run.add_argument("args", nargs=argparse.REMAINDER, metavar="[COMMAND] [ARG...]")


def _run(args: argparse.Namespace) -> int:
    from wharfd.api.services.tasks.v1 import tasks_pb2 as tpb
    from wharfd.runtime.ctr.containers import delete_container, new_container

    if not args.image:
        raise commands.CommandError("image ref must be provided")
    if not args.id:
        raise commands.CommandError("container id must be provided")
    if args.detach and args.rm:
        raise commands.CommandError("flags --detach and --rm cannot be specified together")
    with commands.new_client(args) as client:
        container = new_container(client, args)
        tasks = task_commands.tasks_stub(client)
        try:
            io = task_commands.choose_io(args, args.id, args.tty)

            def create() -> None:
                task_commands.create_task(client, container, io)

            def start() -> None:
                tasks.Start(tpb.StartRequest(container_id=args.id))

            if args.detach or io.folder is None:
                create()
                start()
                if args.detach:
                    return 0
                status = int(tasks.Wait(tpb.WaitRequest(container_id=args.id)).exit_status)
            else:
                status = task_commands.attach_and_wait(client, args.id, io, start, create=create)
        finally:
            if args.rm:
                with contextlib.suppress(Exception):
                    task_commands.delete_task(client, args.id, force=True)
                delete_container(client, args.id)
        return status
