"""Running the runc command line, with every child reaped by the shim's one reaper.

runc's own diagnostics are JSON log lines (``--log-format json``): on stderr
for one-shot commands, and in a log file for ``create`` and ``exec``, whose
stdio is handed to the container and so cannot be captured. The last
error-level message becomes the text of a :class:`RuncError`.

Two shortcuts, each taken only where it is provably what runc itself would do:

* A sealed copy of runc (:func:`seal`). ``runc init`` copies the runc binary
  into a sealed memfd on every create and exec (the CVE-2019-5736 defence)
  unless ``/proc/self/exe`` already is one, sealed with
  ``F_SEAL_SEAL|F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_WRITE``. The zygote makes that
  copy once and its shims inherit it; runc is exec'd from it
  (``/proc/self/fd/N``) while the file on disk is still the one copied (same
  device, inode, size, mtime and ctime; checked before every exec, so an
  upgraded runc is used at once), else from its path.
* ``start`` without exec'ing runc (:meth:`Runc.start_created`): ``runc
  start`` opens the container's ``exec.fifo`` for reading, which lets the
  waiting ``runc init`` write one byte and exec the user's program, reads to
  end of file and removes the FIFO (removing it is what makes runc report the
  container as running). The shim does exactly that when the state directory
  is runc's (``state.json`` and ``exec.fifo``), the spec has no poststart hooks
  (newer runc runs them in ``start``) and no ``NOTIFY_SOCKET`` is passed on
  (``runc start`` relays the container's readiness then); else it runs ``runc
  start``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from wharfd.runtime import errors
from wharfd.runtime.shim.reaper import Exit, Reaper, resolve

log = logging.getLogger("wharfd.shim.runc")

_F_SETPIPE_SZ = 1031
# What runc's nsexec accepts as an already cloned binary (libcontainer/nsenter/cloned_binary.c).
SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
# Kept far above the fds a spawn's file actions write (0-2, and 3-5 for loggers).
_SEALED_FD_MIN = 256
SEAL_ENV = "WHARF_SHIM_SEALED_RUNC"  # "0" turns the sealed copy off
EXEC_FIFO = "exec.fifo"


class RuncError(errors.WharfError):
    """runc exited non-zero; the message is runc's own error text."""

    def __init__(self, command: str, message: str) -> None:
        """``command`` is the runc verb, ``message`` its error text."""
        prefix = f"runc {command} failed"
        super().__init__(message if message.startswith(prefix) else f"{prefix}: {message}")
        self.command = command
        self.detail = message

    @property
    def not_found(self) -> bool:
        """Whether runc said the container (or its process) is gone."""
        text = self.detail.lower()
        return "does not exist" in text or "not running" in text or "no such process" in text


@dataclass
class Runc:
    """One runc binary with its global options (root, cgroup driver, log file)."""

    reaper: Reaper
    binary: str = "runc"
    root: str = ""
    systemd_cgroup: bool = False
    log_file: str = ""

    def _spawn(self, args: Sequence[str], log_file: bool, stdio: Sequence[int]) -> asyncio.Future[Exit]:
        argv = self._argv(args, log_file)
        path = resolve(argv[0], self.reaper.env)
        _pid, exited = self.reaper.spawn(argv, stdio=stdio, program=sealed_program(path) or path)
        return exited

    def _argv(self, args: Sequence[str], log_file: bool) -> list[str]:
        argv = [self.binary]
        if self.root:
            argv += ["--root", self.root]
        if log_file and self.log_file:
            argv += ["--log", self.log_file]
        argv += ["--log-format", "json"]
        if self.systemd_cgroup:
            argv.append("--systemd-cgroup")
        return argv + list(args)

    async def run(self, args: Sequence[str], *, stdin_data: bytes | None = None) -> bytes:
        """Run a one-shot command and return its stdout; RuncError if it fails."""
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        if stdin_data is not None:
            in_r, in_w = os.pipe2(os.O_CLOEXEC)
        else:  # opened per call: a Runc lives as long as its container, its fds must not outlive it
            in_r, in_w = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC), -1
        try:
            exited = self._spawn(args, False, (in_r, out_w, err_w))
        finally:
            for fd in (out_w, err_w, in_r):
                os.close(fd)
        if in_w >= 0:
            _feed(in_w, stdin_data or b"")
        out, err = await asyncio.gather(read_all(out_r), read_all(err_r))
        result = await exited
        if result.status != 0:
            raise RuncError(args[0], _error_text(err) or f"exit status {result.status}")
        return out

    async def run_with_stdio(self, args: Sequence[str], stdio: Sequence[int]) -> None:
        """Run ``create``/``exec``/``restore``: stdio goes to the container, errors to the log file."""
        offset = _size(self.log_file)
        exited = self._spawn(args, True, stdio)
        result = await exited
        if result.status != 0:
            text = _read_from(self.log_file, offset)  # a few lines of a local file
            raise RuncError(args[0], _error_text(text) or f"exit status {result.status}")

    async def kill(self, container_id: str, sig: int, *, all_: bool = False) -> None:
        """``runc kill [--all] ID SIG``."""
        await self.run(["kill", *(["--all"] if all_ else []), container_id, str(sig)])

    async def delete(self, container_id: str, *, force: bool = False) -> None:
        """``runc delete [--force] ID``."""
        await self.run(["delete", *(["--force"] if force else []), container_id])

    async def ps(self, container_id: str) -> list[int]:
        """The host pids of the container's processes."""
        data = json.loads(await self.run(["ps", "--format", "json", container_id]) or b"[]")
        return [int(pid) for pid in data or []]

    async def start_created(self, container_id: str, init_exited: asyncio.Future[Exit]) -> bool:
        """Start a created container as ``runc start`` does, without exec'ing runc (module docstring).

        ``init_exited`` resolves when the container's init is reaped. False, with
        nothing done, when the shortcut does not apply: run ``runc start`` then.
        The caller has checked the spec for poststart hooks.
        """
        if not self.root or "NOTIFY_SOCKET" in self.reaper.env:
            return False
        fifo = os.path.join(self.root, container_id, EXEC_FIFO)
        fd = _open_exec_fifo(fifo)
        if fd < 0:
            return False
        # Opening the read end has let runc init go on: see it through even if cancelled.
        await asyncio.shield(_start_through(fd, fifo, init_exited))
        return True

    async def state(self, container_id: str) -> dict[str, Any]:
        """``runc state ID`` as a dict."""
        state: dict[str, Any] = json.loads(await self.run(["state", container_id]))
        return state


def _open_exec_fifo(fifo: str) -> int:
    """The read end of runc's exec FIFO, or -1 where runc would not be the one waiting on it."""
    if not os.path.exists(os.path.join(os.path.dirname(fifo), "state.json")):
        return -1  # not runc's layout (crun, for one, writes to its exec.fifo instead)
    try:
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return -1  # started already, or not runc: `runc start` says which
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        os.close(fd)
        return -1
    return fd


async def _start_through(fd: int, fifo: str, init_exited: asyncio.Future[Exit]) -> None:
    """``runc start``'s part once the FIFO is open (takes ``fd``): read, check, remove the FIFO."""
    try:
        data = await _read_exec_fifo(fd, init_exited)
    finally:
        os.close(fd)
    if not data:
        raise RuncError("start", "container process is already dead")
    try:
        os.remove(fifo)
    except OSError as exc:
        raise RuncError("start", f"remove {fifo}: {exc}") from exc


async def _read_exec_fifo(fd: int, init_exited: asyncio.Future[Exit]) -> bytes:
    """What runc init writes to its exec FIFO, read until it closes it by exec'ing the user's
    program (end of file), or until it has died (then whatever it wrote before)."""
    loop = asyncio.get_running_loop()
    chunks: list[bytes] = []
    eof = loop.create_future()

    def on_readable() -> None:
        # Readiness comes only with data, or once a writer has come and gone (pipe_poll).
        try:
            data = os.read(fd, 64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            chunks.append(data)
        elif not eof.done():
            eof.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await asyncio.wait((eof, init_exited), return_when=asyncio.FIRST_COMPLETED)
    finally:
        loop.remove_reader(fd)
    if not eof.done():
        with contextlib.suppress(OSError):
            chunks.append(os.read(fd, 64))
    return b"".join(chunks)


# -- the sealed copy of runc ---------------------------------------------------------------


@dataclass(frozen=True)
class _Sealed:
    fd: int
    key: tuple[int, ...]


_sealed: _Sealed | None = None


def _key(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def seal(binary: str = "runc", env: Mapping[str, str] | None = None) -> bool:
    """Hold a sealed memfd copy of ``binary`` (PATH lookup in ``env``) for :func:`sealed_program`.

    Called in the zygote (its shims inherit the fd; one copy for them all): at
    start and before each fork, which re-copies a binary that changed on disk.
    Returns whether a copy is held. ``WHARF_SHIM_SEALED_RUNC=0`` in ``env``
    turns it off; any failure just leaves runc exec'd from its path.
    """
    global _sealed
    env = os.environ if env is None else env
    try:
        if env.get(SEAL_ENV, "1") == "0":
            raise LookupError(f"{SEAL_ENV}=0")
        path = resolve(binary, env)
        if _sealed is not None and _sealed.key == _key(os.stat(path)):
            return True
        fresh = _copy_sealed(path)
    except (OSError, LookupError) as exc:
        log.debug("no sealed copy of %s: %s", binary, exc)
        fresh = None
    old, _sealed = _sealed, fresh
    if old is not None:
        os.close(old.fd)
    return fresh is not None


def _copy_sealed(path: str) -> _Sealed:
    with open(path, "rb") as src:
        before = os.fstat(src.fileno())
        memfd = os.memfd_create(os.path.basename(path), os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            offset = 0
            while offset < before.st_size:
                sent = os.sendfile(memfd, src.fileno(), offset, before.st_size - offset)
                if sent == 0:
                    break
                offset += sent
            if offset != before.st_size or _key(os.fstat(src.fileno())) != _key(before):
                raise OSError(f"{path} changed while it was copied")
            fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, SEALS)
            high = fcntl.fcntl(memfd, fcntl.F_DUPFD_CLOEXEC, _SEALED_FD_MIN)
        finally:
            os.close(memfd)
    return _Sealed(high, _key(before))


def sealed_program(path: str) -> str | None:
    """``/proc/self/fd/N`` of the sealed copy if ``path`` is still the file it was made from."""
    sealed = _sealed
    if sealed is None:
        return None
    try:
        if _key(os.stat(path)) != sealed.key:
            return None
    except OSError:
        return None
    return f"/proc/self/fd/{sealed.fd}"


async def read_all(fd: int) -> bytes:
    """Read a pipe to its end without blocking the loop, then close it."""
    os.set_blocking(fd, False)
    loop = asyncio.get_running_loop()
    chunks: list[bytes] = []
    done = loop.create_future()

    def on_readable() -> None:
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError as exc:
            data = b""
            chunks.append(f"read error: {exc}".encode())
        if data:
            chunks.append(data)
        elif not done.done():
            done.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return b"".join(chunks)


def _feed(fd: int, data: bytes) -> None:
    # Small documents (resources JSON): make the pipe big enough to take them whole.
    if len(data) >= 1 << 16:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, len(data) + 4096)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _error_text(raw: bytes) -> str:
    message = ""
    for line in raw.decode(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            message = message or line.strip()
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
            message = str(entry.get("msg", ""))
    return message


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _read_from(path: str, offset: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read()
    except OSError:
        return b""
