"""Running CNI plugin binaries as the CNI spec prescribes.

The runtime passes the operation in the environment (``CNI_COMMAND``,
``CNI_CONTAINERID``, ``CNI_NETNS``, ``CNI_IFNAME``, ``CNI_ARGS``, ``CNI_PATH``)
and the network config on stdin; the plugin answers a result (ADD) or nothing
on stdout, or an error object ``{"code", "msg", "details"}`` with a non-zero
exit. Errors keep the plugin's own words.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wharfd.runtime import errors

DEFAULT_TIMEOUT = 60.0


class PluginError(errors.WharfError):
    """A plugin failed; the message is the plugin's own, prefixed with what was running."""

    code = errors.Unavailable.code

    def __init__(self, message: str, *, plugin_code: int = 0, details: str = "") -> None:
        super().__init__(message)
        self.plugin_code = plugin_code
        self.details = details


@dataclass(frozen=True)
class Invocation:
    """One call of a plugin: the CNI_* environment and the stdin config."""

    command: str
    container_id: str
    netns: str
    ifname: str
    args: Sequence[tuple[str, str]] = ()

    def environ(self, bin_dirs: Sequence[str]) -> dict[str, str]:
        """The environment of the plugin process."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": self.command,
            "CNI_CONTAINERID": self.container_id,
            "CNI_NETNS": self.netns,
            "CNI_IFNAME": self.ifname,
            "CNI_PATH": ":".join(bin_dirs),
        }
        if self.args:
            env["CNI_ARGS"] = ";".join(f"{k}={v}" for k, v in self.args)
        return env


def find_plugin(kind: str, bin_dirs: Sequence[str]) -> Path:
    """The first ``bin_dirs/<kind>`` that is an executable file; NotFound naming the dirs."""
    for directory in bin_dirs:
        path = Path(directory) / kind
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise errors.NotFound(f'CNI plugin "{kind}" not found in {":".join(bin_dirs)}')


async def invoke(
    kind: str,
    invocation: Invocation,
    config: bytes,
    bin_dirs: Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict[str, Any] | None:
    """Run plugin ``kind``; return its parsed JSON answer (None when it printed nothing)."""
    path = await asyncio.to_thread(find_plugin, kind, bin_dirs)
    proc = await asyncio.create_subprocess_exec(
        str(path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=invocation.environ(bin_dirs),
        # Its own process group, so a timeout also kills what the plugin started.
        start_new_session=True,
    )
    try:
        # Only what changes the node is seen through: a CHECK, STATUS or VERSION stops at once.
        out, err = await _communicate(proc, config, timeout, finish=invocation.command in _FINISHED)
    except TimeoutError:
        raise errors.DeadlineExceeded(
            f"CNI plugin {kind} {invocation.command} for {invocation.container_id}: no answer in {timeout:g}s"
        ) from None
    if proc.returncode != 0:
        raise _plugin_error(kind, invocation, out, err, proc.returncode or 0)
    if not out.strip():
        return None
    try:
        answer = json.loads(out)
    except ValueError:
        raise PluginError(
            f"CNI plugin {kind} {invocation.command}: answered invalid JSON: {out[:200]!r}"
        ) from None
    return answer if isinstance(answer, dict) else None


# Commands a cancelled caller still lets finish: stopped half-way, they leave what their undo
# never hears of (an address, a veth).
_FINISHED = frozenset({"ADD", "DEL", "GC"})


async def _communicate(
    proc: asyncio.subprocess.Process, stdin: bytes, timeout: float, *, finish: bool = True
) -> tuple[bytes, bytes]:
    """The plugin's (stdout, stderr); TimeoutError once it was killed for overrunning ``timeout``.

    With ``finish``, a caller going away does not stop the plugin: one stopped
    half-way may hold what its DEL never hears of (an address, a veth), so it
    runs to its end (or its timeout) first, and the caller's undo then finds
    everything it did. Only a second cancellation kills it at once. Without,
    the first cancellation kills it.
    """
    deadline = asyncio.get_running_loop().time() + timeout
    talk = asyncio.ensure_future(proc.communicate(stdin))
    cancelled = False
    try:
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    out, err = await asyncio.shield(talk)
                break
            except asyncio.CancelledError:
                if cancelled or not finish:
                    raise
                cancelled = True
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # its own group: what it started goes too
        talk.cancel()
        await asyncio.shield(proc.wait())
        raise
    if cancelled:
        raise asyncio.CancelledError
    return out, err


def _plugin_error(kind: str, inv: Invocation, out: bytes, err: bytes, status: int) -> PluginError:
    prefix = f"CNI plugin {kind} {inv.command} failed"
    try:
        doc: Mapping[str, Any] = json.loads(out)
    except ValueError:
        text = (err or out).decode(errors="replace").strip() or f"exit status {status}"
        return PluginError(f"{prefix}: {text}")
    msg = str(doc.get("msg", "")) or f"exit status {status}"
    details = str(doc.get("details", ""))
    message = f"{prefix}: {msg}" + (f": {details}" if details else "")
    return PluginError(message, plugin_code=int(doc.get("code", 0) or 0), details=details)
