"""Process lifecycles as explicit state objects that refuse invalid transitions.

An init process (the container) and an exec process move through these
states; any call a state does not allow fails with FailedPrecondition and
containerd's wording ("cannot pause task in created state")::

    init:  created ──start──► running ◄──resume── paused
              │                  │  └───pause────►  │
              │ (exit)           │ (exit)           │ (exit)
              └───────► stopped ◄┴──────────────────┘
           created/stopped ──delete──► deleted

    exec:  created ──start──► running ──(exit)──► stopped ──delete──► deleted
           created ──delete──► deleted

A process also remembers its exit (status, time) and lets any number of
waiters block until it has one. Exits reported while a ``Start`` is in flight
are held back (:meth:`Process.hold`) so that the start event is published
before the exit event.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from wharfd.api.types.task import task_pb2
from wharfd.runtime import errors
from wharfd.runtime.shim import pump
from wharfd.runtime.shim.stdio import ProcessIO, Stdio


@dataclass(frozen=True, eq=False)  # identity: states are singletons and keys of TRANSITIONS
class State:
    """One lifecycle state: the operations it allows and how it refuses the others."""

    name: str
    status: task_pb2.Status
    allowed: frozenset[str]
    refusals: Mapping[str, str] = field(default_factory=dict)

    def check(self, op: str) -> None:
        """Raise FailedPrecondition unless ``op`` is allowed in this state."""
        if op not in self.allowed:
            raise errors.FailedPrecondition(self.refusals.get(op) or f"cannot {op} a {self.name} process")


S = task_pb2
INIT_CREATED = State(
    "created",
    S.CREATED,
    frozenset({"start", "delete", "kill", "update", "exec", "exit"}),
    {
        "pause": "cannot pause task in created state",
        "resume": "cannot resume task in created state",
        "checkpoint": "cannot checkpoint a task in created state",
    },
)
INIT_RUNNING = State(
    "running",
    S.RUNNING,
    frozenset({"pause", "kill", "update", "checkpoint", "exec", "exit"}),
    {
        "resume": "cannot resume a running process",
        "start": "cannot start a running process",
        "delete": "cannot delete a running process",
    },
)
INIT_PAUSED = State(
    "paused",
    S.PAUSED,
    frozenset({"resume", "kill", "update", "checkpoint", "exit"}),
    {
        "pause": "cannot pause a paused container",
        "start": "cannot start a paused process",
        "delete": "cannot delete a paused process",
        "exec": "cannot exec in a paused state",
    },
)
INIT_STOPPED = State(
    "stopped",
    S.STOPPED,
    frozenset({"delete", "kill"}),
    {
        "pause": "cannot pause a stopped container",
        "resume": "cannot resume a stopped container",
        "update": "cannot update a stopped container",
        "checkpoint": "cannot checkpoint a stopped container",
        "start": "cannot start a stopped process",
        "exec": "cannot exec in a stopped state",
    },
)
EXEC_CREATED = State("created", S.CREATED, frozenset({"start", "delete", "kill", "resize", "exit"}))
EXEC_RUNNING = State(
    "running",
    S.RUNNING,
    frozenset({"kill", "resize", "exit"}),
    {"start": "cannot start a running process", "delete": "cannot delete a running process"},
)
EXEC_STOPPED = State(
    "stopped",
    S.STOPPED,
    frozenset({"delete", "kill"}),
    {"resize": "cannot resize a stopped container", "start": "cannot start a stopped process"},
)
DELETED = State("deleted", S.UNKNOWN, frozenset())

# (state, operation) -> next state; operations absent here leave the state as it is.
TRANSITIONS: dict[tuple[State, str], State] = {
    (INIT_CREATED, "start"): INIT_RUNNING,
    (INIT_CREATED, "exit"): INIT_STOPPED,
    (INIT_CREATED, "delete"): DELETED,
    (INIT_RUNNING, "pause"): INIT_PAUSED,
    (INIT_RUNNING, "exit"): INIT_STOPPED,
    (INIT_PAUSED, "resume"): INIT_RUNNING,
    (INIT_PAUSED, "exit"): INIT_STOPPED,
    (INIT_STOPPED, "delete"): DELETED,
    (EXEC_CREATED, "start"): EXEC_RUNNING,
    (EXEC_CREATED, "exit"): EXEC_STOPPED,
    (EXEC_CREATED, "delete"): DELETED,
    (EXEC_RUNNING, "exit"): EXEC_STOPPED,
    (EXEC_STOPPED, "delete"): DELETED,
}


class Process:
    """State, pid, stdio and exit of one process of a container."""

    def __init__(self, id_: str, stdio: Stdio, state: State) -> None:
        """``id_`` is the exec id, or the container id for the init process."""
        self.id = id_
        self.stdio = stdio
        self.state = state
        self.pid = 0
        self.exit_status = 0
        self.exited_at_ns = 0
        self.io: ProcessIO | None = None
        self.lock = asyncio.Lock()  # serializes lifecycle calls (start/delete/pause/…)
        self._exited = asyncio.Event()
        self._released = asyncio.Event()
        self._released.set()

    @property
    def exited(self) -> bool:
        """Whether the exit has been recorded."""
        return self._exited.is_set()

    def check(self, op: str) -> None:
        """Refuse ``op`` if the current state does not allow it."""
        self.state.check(op)

    def move(self, op: str) -> None:
        """Apply ``op``'s transition (after it succeeded)."""
        self.state.check(op)
        self.state = TRANSITIONS.get((self.state, op), self.state)

    def set_exited(self, status: int, at_ns: int) -> None:
        """Record the exit and wake the waiters; a process already past running ignores it."""
        if "exit" in self.state.allowed:
            self.move("exit")
        if not self._exited.is_set():
            self.exit_status, self.exited_at_ns = status, at_ns
            self._exited.set()

    async def wait(self) -> None:
        """Block until the process has exited."""
        await self._exited.wait()

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Hold back exit handling (see :meth:`released`) for the duration of the block."""
        self._released.clear()
        try:
            yield
        finally:
            self._released.set()

    async def released(self) -> None:
        """Return once no :meth:`hold` is active."""
        await self._released.wait()

    def resize(self, width: int, height: int) -> None:
        """Set the pty size; a process without a terminal ignores it, as runc's shim does."""
        if self.state in (EXEC_CREATED, EXEC_RUNNING, EXEC_STOPPED):
            self.check("resize")
        if self.io is not None and self.io.master >= 0:
            pump.resize(self.io.master, width, height)

    def close_stdin(self) -> None:
        """Close the process's stdin (CloseIO)."""
        if self.io is not None:
            self.io.close_stdin()

    def signal(self, sig: int) -> None:
        """Signal the pid directly (exec processes): NotFound once it has finished."""
        if self.pid == 0:
            raise errors.FailedPrecondition(f"process {self.id} not created")
        if self.exited:
            raise errors.NotFound(f"process {self.id}: process already finished")
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError as exc:
            raise errors.NotFound(f"process {self.id}: process already finished") from exc
