"""Running the runc command line, with every child reaped by the shim's one reaper.

runc's own diagnostics are JSON log lines (``--log-format json``): on stderr
for one-shot commands, and in a log file for ``create`` and ``exec``, whose
stdio is handed to the container and so cannot be captured. The last
error-level message becomes the text of a :class:`RuncError`.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from wharfd.runtime import errors
from wharfd.runtime.shim.reaper import Reaper

_F_SETPIPE_SZ = 1031


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
    _devnull: int = field(default=-1, repr=False)

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
        in_r, in_w = os.pipe2(os.O_CLOEXEC) if stdin_data is not None else (self._null(), -1)
        try:
            _pid, exited = self.reaper.spawn(self._argv(args, False), stdio=(in_r, out_w, err_w))
        finally:
            for fd in (out_w, err_w) + ((in_r,) if in_w >= 0 else ()):
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
        _pid, exited = self.reaper.spawn(self._argv(args, True), stdio=stdio)
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

    async def state(self, container_id: str) -> dict[str, Any]:
        """``runc state ID`` as a dict."""
        state: dict[str, Any] = json.loads(await self.run(["state", container_id]))
        return state

    def _null(self) -> int:
        if self._devnull < 0:
            self._devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        return self._devnull


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
