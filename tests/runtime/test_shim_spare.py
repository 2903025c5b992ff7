"""The zygote's pre-forked spare: used for a launch, replaced, fallen back from, never leaked.

A zygote runs as its own process here (``python -m wharfd.runtime.shim.zygote``),
asked for shims as ``start`` asks it; no runc is needed (the shims only serve).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.runtime.test_shim_rig import children_of, pid_alive
from wharfd.runtime.shim import launch

TIMEOUT = 15.0


def wait_for(condition: Callable[[], object]) -> None:
    """Poll ``condition`` (the state of other processes) until true, at most TIMEOUT."""
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


class Zygote:
    """A zygote on a temporary directory, and the launches asked of it."""

    def __init__(self, root: Path, idle: float = 600, path: str | None = None) -> None:
        self.root = root
        self.control = str(root / "zygote.sock")
        env = {**os.environ, "WHARF_SHIM_ZYGOTE_IDLE": str(idle)}
        if path is not None:
            env["PATH"] = path
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "wharfd.runtime.shim.zygote", self.control],
            env=env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.shims: set[int] = set()
        wait_for(lambda: launch._can_connect(self.control))

    def spare(self) -> int:
        """The pid of the waiting spare, once it has warmed up (waits for one)."""
        found: set[int] = set()

        def one() -> bool:
            found.update(children_of(self.proc.pid, spares=True))
            return len(found) == 1 and all(_comm(pid) == "wharf-spare\n" for pid in found)

        wait_for(one)
        return found.pop()

    def launch(self, cid: str) -> tuple[int, str]:
        """Ask for a shim for container ``cid``; (its pid, its socket path)."""
        bundle = self.root / cid
        bundle.mkdir()
        path = str(self.root / f"{cid}.sock")
        request = launch.launch_request(
            launch.Flags(namespace="wharfd-test-ns", id=cid),
            bundle=str(bundle),
            socket_path=path,
            ttrpc_address="",
            options=b"",
            env={},
        )
        reply = launch._request(self.control, request)
        assert reply is not None and isinstance(reply.get("pid"), int), reply
        # The answer may come before the shim serves (a spare's is given early, and the pid it
        # names is the spare's even if a fork then takes over): the shim is the child that has
        # become one in the launch's bundle (its working directory).
        found: set[int] = set()

        def served() -> bool:
            found.update(p for p in children_of(self.proc.pid) if _shim_in(p, bundle))
            return bool(found)

        wait_for(served)
        (pid,) = found
        self.shims.add(pid)
        return pid, path

    def close(self) -> None:
        for pid in self.shims | {self.proc.pid}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def zygote() -> Iterator[Zygote]:
    root = Path(tempfile.mkdtemp(prefix="wharfd-test-spare-", dir="/tmp"))
    started = Zygote(root)
    try:
        yield started
    finally:
        started.close()
        shutil.rmtree(root, ignore_errors=True)


def _shim_in(pid: int, bundle: Path) -> bool:
    try:
        return _comm(pid) == "wharf-shim\n" and os.readlink(f"/proc/{pid}/cwd") == str(bundle)
    except OSError:
        return False


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text()
    except OSError:
        return ""


def fds(pid: int) -> list[tuple[str, int]]:
    """(kind of file, close-on-exec) of each fd of ``pid``, sorted (the numbers may differ)."""
    table = {}
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        try:  # a starting shim opens and closes fds of its own meanwhile
            target = os.readlink(entry).split(":")[0]
            flags = int(next(li for li in (Path(f"/proc/{pid}/fdinfo") / entry.name).read_text().splitlines()
                             if li.startswith("flags:")).split()[1], 8)  # fmt: skip
        except FileNotFoundError:
            continue
        table[int(entry.name)] = (target, flags & os.O_CLOEXEC)
    return sorted(table.values())


def state(pid: int) -> dict[str, object]:
    """What must not tell a shim born from a spare from one forked for its launch."""
    stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {
        "name": Path(f"/proc/{pid}/comm").read_text(),
        "session leader": int(stat[3]) == pid and int(stat[2]) == pid,  # sid and pgid
        "cgroup": Path(f"/proc/{pid}/cgroup").read_text(),
        "limits": Path(f"/proc/{pid}/limits").read_text(),
        "oom_score_adj": Path(f"/proc/{pid}/oom_score_adj").read_text(),
        "environ": Path(f"/proc/{pid}/environ").read_bytes(),
        "signals": (status["SigIgn"], status["SigCgt"], status["SigBlk"]),
        "fds": fds(pid),
        "cwd": os.readlink(f"/proc/{pid}/cwd").rsplit("/", 1)[0],
    }


def test_a_launch_is_served_by_the_spare_and_a_new_spare_follows(zygote: Zygote) -> None:
    spare = zygote.spare()
    pid, path = zygote.launch("wharfd-test-a")
    assert pid == spare and launch._can_connect(path)
    assert Path(f"/proc/{pid}/comm").read_text() == "wharf-shim\n"
    assert children_of(zygote.proc.pid) == {pid}  # a shim now, no longer the spare
    following = zygote.spare()
    assert following != spare
    second, second_path = zygote.launch("wharfd-test-b")
    assert second == following and launch._can_connect(second_path)


def test_a_killed_spare_falls_back_to_a_fork_in_the_same_state(zygote: Zygote) -> None:
    first = zygote.spare()
    from_spare, _ = zygote.launch("wharfd-test-a")
    assert from_spare == first
    spare = zygote.spare()
    os.kill(spare, signal.SIGKILL)
    forked, path = zygote.launch("wharfd-test-b")  # at once: the zygote may not have reaped it yet
    assert forked != spare and launch._can_connect(path)
    assert not pid_alive(spare)
    # Born from a spare or forked for its launch, a shim is the same (once both have settled: a
    # shim just launched may still hold a transient fd).
    wait_for(lambda: state(from_spare) == state(forked))
    zygote.spare()  # and spares go on


def test_concurrent_launches_both_get_a_shim(zygote: Zygote) -> None:
    spare = zygote.spare()
    with ThreadPoolExecutor(4) as pool:
        launched = list(pool.map(zygote.launch, [f"wharfd-test-{i}" for i in range(4)]))
    pids = {pid for pid, _ in launched}
    assert len(pids) == 4 and spare in pids
    assert all(launch._can_connect(path) for _, path in launched)
    assert children_of(zygote.proc.pid) == pids


def test_the_spare_dies_with_its_killed_zygote(zygote: Zygote) -> None:
    spare = zygote.spare()
    shim, path = zygote.launch("wharfd-test-a")
    following = zygote.spare()
    os.kill(zygote.proc.pid, signal.SIGKILL)
    zygote.proc.wait()
    wait_for(lambda: not pid_alive(following))
    assert shim == spare and pid_alive(shim) and launch._can_connect(path)  # shims outlive it


def test_the_zygote_idle_exit_takes_its_spare() -> None:
    root = Path(tempfile.mkdtemp(prefix="wharfd-test-spare-", dir="/tmp"))
    idle = Zygote(root, idle=0.3)
    try:
        spare = idle.spare()
        assert idle.proc.wait(timeout=TIMEOUT) == 0
        assert not pid_alive(spare)
    finally:
        idle.close()
        shutil.rmtree(root, ignore_errors=True)


def test_a_failed_warm_up_leaves_a_working_zygote(tmp_path: Path) -> None:
    # The warm-up runs `true` from PATH; without it the zygote still serves (it only saves memory).
    started = Zygote(tmp_path, path=str(tmp_path / "empty"))
    try:
        pid, path = started.launch("wharfd-test-no-warm-up")
        wait_for(lambda: Path(path).exists())
        assert pid > 0 and started.proc.poll() is None
    finally:
        started.close()


def test_a_spare_is_handed_launches_only_once_warm() -> None:
    from wharfd.runtime.shim.zygote import WARM, Spare, _warmth

    mine, theirs = socket.socketpair()
    with mine, theirs:
        spare = Spare(pid=0, sock=mine, state=())
        assert _warmth(spare) == "warming"
        theirs.sendall(WARM + b"ok")
        assert _warmth(spare) == "warm" and spare.alive
        assert mine.recv(16) == b"ok"  # only WARM was taken: the readiness answer follows intact
        assert _warmth(spare) == "warm"
    mine, theirs = socket.socketpair()
    with mine:
        theirs.close()  # died while warming up
        spare = Spare(pid=0, sock=mine, state=())
        assert _warmth(spare) == "dead" and not spare.alive


def test_a_launch_that_cannot_start_is_refused_before_the_spare_gets_it(zygote: Zygote) -> None:
    spare = zygote.spare()
    request = launch.launch_request(
        launch.Flags(namespace="wharfd-test-ns", id="gone"),
        bundle=str(zygote.root / "no-such-bundle"),
        socket_path=str(zygote.root / "gone.sock"),
        ttrpc_address="",
        options=b"",
        env={},
    )
    reply = launch._request(zygote.control, request)
    assert reply is not None and "no-such-bundle does not exist" in str(reply.get("error")), reply
    assert not (zygote.root / "gone.sock").exists()
    assert zygote.spare() == spare  # not spent on it
