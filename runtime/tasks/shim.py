"""Launching shims: runtime type → binary, the ``start``/``delete`` actions, and the shim log.

Binary: ``io.containerd.runc.v2`` names ``containerd-shim-runc-v2`` (the last
two dot-separated parts), looked up on PATH and then beside the daemon's own
executable; a configured ``runtime_path`` (or an absolute runtime name) wins.

``start`` runs with the bundle as cwd and tells the shim where the daemon is::

    <shim> -namespace NS -address GRPC -publish-binary WHARFD -id ID [-debug] start
    env: TTRPC_ADDRESS, GRPC_ADDRESS, NAMESPACE, MAX_SHIM_VERSION=2

On stdin a current shim gets ``BootstrapParams`` (with the runtime options as
an extension) and answers a protobuf ``BootstrapResult``. Shims built before
that protocol (containerd < 2.3, e.g. Debian's containerd-shim-runc-v2 1.6)
read stdin as the options ``Any`` itself and print a bare address (or JSON):
they get the legacy form. Which one a binary speaks is learnt once, from its
``-v`` output (a Go shim reporting a containerd version below 2.3), and
corrected if a bootstrap start fails the way old shims fail on it.

The shim logs to the FIFO ``<bundle>/log``; the daemon opens it (read-write, so
the open never blocks and never sees EOF) before ``start`` — the stock shim
blocks until a reader exists — and copies lines into its own log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import any_pb2
from google.protobuf.message import DecodeError

from wharfd.api.runtime.bootstrap.v1 import bootstrap_pb2
from wharfd.api.runtime.task.v2 import shim_pb2
from wharfd.runtime import errors
from wharfd.runtime.shim import launch
from wharfd.runtime.tasks.bundle import LOG_FIFO, Bundle, ShimAddress

log = logging.getLogger("wharfd.tasks.shim")
shim_log = logging.getLogger("wharfd.shim")

BOOTSTRAP, LEGACY = "bootstrap", "legacy"
OUR_SHIM = "containerd-shim-wharf-v2"
# What a Go shim of containerd < 2.3 says when it parses BootstrapParams as an options Any.
_OLD_SHIM_FAILURE = re.compile(r"type with url .*: not found")
_GO_VERSION = re.compile(r"^\s*Version:\s+v?(\d+)\.(\d+)", re.MULTILINE)
_BARE_ADDRESS = re.compile(r"^(?:[a-z0-9+]+://|/|@)\S+$")
START_TIMEOUT = 60.0
PROBE_TIMEOUT = 10.0
_LOG_LEVELS: dict[int, bootstrap_pb2.LogLevel] = {
    logging.DEBUG: bootstrap_pb2.LOG_LEVEL_DEBUG,
    logging.INFO: bootstrap_pb2.LOG_LEVEL_INFO,
    logging.WARNING: bootstrap_pb2.LOG_LEVEL_WARN,
    logging.ERROR: bootstrap_pb2.LOG_LEVEL_ERROR,
}


def binary_name(runtime: str) -> str:
    """``io.containerd.runc.v2`` → ``containerd-shim-runc-v2``; InvalidArgument for other shapes."""
    parts = runtime.split(".")
    if len(parts) < 2 or not all(parts[-2:]) or "/" in runtime:
        raise errors.InvalidArgument(
            f'invalid runtime name "{runtime}": want a name like io.containerd.runc.v2'
        )
    return f"containerd-shim-{parts[-2]}-{parts[-1]}"


def resolve(runtime: str, runtime_path: str = "") -> str:
    """The absolute path of the shim binary for ``runtime``; NotFound naming what was looked for."""
    if runtime_path or runtime.startswith("/"):
        path = runtime_path or runtime
        if not os.access(path, os.X_OK) or not os.path.isfile(path):
            raise errors.NotFound(f'runtime "{runtime}": shim binary {path} is missing or not executable')
        return path
    name = binary_name(runtime)
    found = shutil.which(name)
    if found is None:
        # The daemon's own folder (a venv's bin, /usr/local/bin beside wharfd) counts as on PATH.
        for folder in (os.path.dirname(os.path.abspath(sys.argv[0])), os.path.dirname(sys.executable)):
            found = shutil.which(name, path=folder)
            if found:
                break
    if found is None:
        raise errors.NotFound(f'runtime "{runtime}": binary {name} not installed on PATH')
    return os.path.abspath(found)


@dataclass
class Launcher:
    """Daemon-wide facts every shim launch needs, and what each binary was found to speak."""

    grpc_address: str
    ttrpc_address: str
    publish_binary: str
    version: str = ""
    debug: bool = False
    socket_dir: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    protocols: dict[str, str] = field(default_factory=dict)
    interpreters: dict[str, str] = field(default_factory=dict)  # binary -> its interpreter if ours, else ""

    def _argv(self, binary: str, bundle: Bundle, action: str, *extra: str) -> list[str]:
        argv = [binary, "-namespace", bundle.namespace, "-address", self.grpc_address]
        argv += ["-publish-binary", self.publish_binary, "-id", bundle.id, *extra]
        return [*argv, "-debug", action] if self.debug else [*argv, action]

    def _environ(self, namespace: str) -> dict[str, str]:
        return {
            **os.environ,
            **self.env,
            "TTRPC_ADDRESS": self.ttrpc_address,
            "GRPC_ADDRESS": self.grpc_address,
            "NAMESPACE": namespace,
            "MAX_SHIM_VERSION": "2",
        }

    async def start(
        self,
        binary: str,
        bundle: Bundle,
        options: any_pb2.Any | None,
        annotations: dict[str, str] | None = None,
        *,
        in_process: bool = True,
    ) -> ShimAddress:
        """Run ``start`` and return the shim's address; Unavailable with the shim's stderr on failure.

        ``annotations``: the spec's, when the caller has them (else read from config.json).
        ``in_process``: try :meth:`start_ours` first for our shim (off: the caller just did).
        """
        if in_process and is_ours(binary):
            # Our own shim: its start protocol in-process, sparing an interpreter's exec.
            address = await asyncio.to_thread(self.start_ours, binary, bundle, options, annotations)
            if address is not None:
                return address
        protocol = self.protocols.get(binary) or await self._probe(binary)
        if protocol == BOOTSTRAP:
            try:
                return await self._start(binary, bundle, self._params(bundle, options).SerializeToString())
            except errors.Unavailable as exc:
                if not _OLD_SHIM_FAILURE.search(str(exc)):
                    raise
                log.info("%s does not speak the bootstrap protocol; using the legacy start", binary)
                self.protocols[binary] = LEGACY
        return await self._start(binary, bundle, options.SerializeToString() if options else b"")

    def start_ours(
        self, binary: str, bundle: Bundle, options: any_pb2.Any | None, annotations: dict[str, str] | None
    ) -> ShimAddress | None:
        """What ``<binary> start`` would answer, done here (blocking: run in a thread).

        None when it must be exec'd after all: the binary runs another interpreter
        (whose zygote this process cannot address), or no zygote runs yet (``start``
        launches it, so the zygote is never this daemon's child).
        """
        interpreter = _interpreter(binary, self.interpreters)
        if not interpreter:
            return None
        flags = launch.Flags(namespace=bundle.namespace, address=self.grpc_address, id=bundle.id)
        flags.debug = self.debug
        socket_dir = self.socket_dir or launch.default_socket_dir()
        raw = (
            options.value
            if options is not None and launch.names_type(options.type_url, launch.OPTIONS_TYPE)
            else b""
        )
        try:
            if annotations is None:
                group = launch.group_id(str(bundle.path), bundle.id)
            else:
                group = launch.group_of(annotations, bundle.id)
            path = launch.socket_path(socket_dir, self.grpc_address, bundle.namespace, group)
            request = launch.launch_request(
                flags,
                bundle=str(bundle.path),
                socket_path=path,
                ttrpc_address=self.ttrpc_address,
                options=raw,
                env=self._environ(bundle.namespace),
            )
            if not launch.ensure_shim(socket_dir, request, start_zygote=False, executable=interpreter):
                return None
        except errors.InvalidArgument:
            raise
        except (errors.WharfError, OSError, ValueError) as exc:
            raise errors.Unavailable(f"task {bundle.id}: start shim {OUR_SHIM}: {exc}") from exc
        address = launch.write_address(str(bundle.path), path)
        return ShimAddress(address=address, version=launch.TASK_API_VERSION, protocol="ttrpc")

    def _params(self, bundle: Bundle, options: any_pb2.Any | None) -> bootstrap_pb2.BootstrapParams:
        params = bootstrap_pb2.BootstrapParams(
            instance_id=bundle.id,
            namespace=bundle.namespace,
            log_level=_LOG_LEVELS.get(
                logging.getLogger("wharfd").getEffectiveLevel(), bootstrap_pb2.LOG_LEVEL_INFO
            ),
            containerd_version=self.version,
            containerd_ttrpc_address=self.ttrpc_address,
            containerd_grpc_address=self.grpc_address,
            containerd_binary=self.publish_binary,
        )
        if options is not None and options.type_url:
            params.extensions.add().value.CopyFrom(options)
        if self.socket_dir:
            params.socket_dir = self.socket_dir
        return params

    async def _start(self, binary: str, bundle: Bundle, stdin: bytes) -> ShimAddress:
        argv = self._argv(binary, bundle, "start")
        code, out, err = await _run(argv, bundle.path, self._environ(bundle.namespace), stdin, START_TIMEOUT)
        if code != 0:
            detail = err.decode(errors="replace").strip() or f"exit status {code}"
            raise errors.Unavailable(f"task {bundle.id}: start shim {os.path.basename(binary)}: {detail}")
        return parse_start_output(out, binary)

    async def _probe(self, binary: str) -> str:
        """Learn from ``-v`` whether ``binary`` predates the bootstrap protocol."""
        try:
            code, out, _ = await _run([binary, "-v"], "/", self._environ(""), b"", PROBE_TIMEOUT)
        except (OSError, errors.DeadlineExceeded):
            code, out = 1, b""
        text = out.decode(errors="replace")
        match = _GO_VERSION.search(text)
        old = code == 0 and "Go version" in text and match is not None
        protocol = LEGACY if old and match and (int(match[1]), int(match[2])) < (2, 3) else BOOTSTRAP
        self.protocols[binary] = protocol
        log.debug("%s speaks the %s start protocol", binary, protocol)
        return protocol

    async def delete(self, binary: str, bundle: Bundle, timeout: float) -> shim_pb2.DeleteResponse:
        """Run the ``delete`` action for a shim that is gone; never raises (failures are logged)."""
        argv = self._argv(binary, bundle, "delete", "-bundle", str(bundle.path))
        response = shim_pb2.DeleteResponse(exit_status=255)
        try:
            code, out, err = await _run(argv, bundle.path, self._environ(bundle.namespace), b"", timeout)
        except (OSError, errors.DeadlineExceeded) as exc:
            log.warning("task %s/%s: shim delete failed: %s", bundle.namespace, bundle.id, exc)
            code, out, err = -1, b"", b""
        if code == 0:
            with contextlib.suppress(DecodeError):
                response = shim_pb2.DeleteResponse.FromString(out)
        elif code > 0:
            log.warning(
                "task %s/%s: shim delete exited %d: %s",
                bundle.namespace,
                bundle.id,
                code,
                err.decode(errors="replace").strip(),
            )
        if not response.HasField("exited_at"):
            response.exited_at.GetCurrentTime()
        return response


def _interpreter(binary: str, cache: dict[str, str]) -> str:
    """The interpreter the script ``binary`` names if it is this one (same environment:
    same folder, same file), else "". Only then is the shim code it runs ours."""
    if binary not in cache:
        try:
            with open(binary, "rb") as f:
                first = f.readline(4096)
            named = os.fsdecode(first[2:].strip()) if first.startswith(b"#!") else ""
            ours = bool(named) and os.path.dirname(named) == os.path.dirname(sys.executable)
            cache[binary] = named if ours and os.path.samefile(named, sys.executable) else ""
        except OSError:
            cache[binary] = ""
    return cache[binary]


def parse_start_output(data: bytes, binary: str = "shim") -> ShimAddress:
    """A ``start`` answer: protobuf BootstrapResult, JSON {version, address, protocol}, or a bare address."""
    text = data.decode(errors="replace").strip()
    if text.startswith("{"):
        try:
            return ShimAddress.from_json(text, where=f"{binary} start output")
        except errors.DataLoss as exc:
            raise errors.Unavailable(str(exc)) from exc
    if _BARE_ADDRESS.match(text):
        return ShimAddress(address=text, version=2)
    try:
        result = bootstrap_pb2.BootstrapResult.FromString(data)
    except DecodeError:
        result = bootstrap_pb2.BootstrapResult()
    if not result.address:
        raise errors.Unavailable(f"{binary} start: unintelligible answer {text[:200]!r}")
    if result.protocol not in ("", "ttrpc"):
        raise errors.NotImplemented(f"{binary} start: shim protocol {result.protocol!r} (only ttrpc)")
    return ShimAddress(address=result.address, version=result.version or 2, protocol="ttrpc")


async def _run(
    argv: list[str],
    cwd: str | Path,
    env: dict[str, str],
    stdin: bytes,
    timeout: float,
) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # the daemon's ^C must not reach shims
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate(stdin)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise errors.DeadlineExceeded(
            f"{os.path.basename(argv[0])} {argv[-1]}: no answer in {timeout:g}s"
        ) from None
    assert proc.returncode is not None
    return proc.returncode, out, err


def is_ours(binary: str) -> bool:
    """Whether ``binary`` is our shim, whose ``start`` :meth:`Launcher.start_ours` can do in-process."""
    return os.path.basename(binary) == OUR_SHIM


def open_log(bundle: Bundle) -> int:
    """The daemon's end of the bundle's log FIFO.

    O_RDWR: the open does not wait for the shim, and the FIFO never reports EOF
    when a shim restarts its writer.
    """
    return os.open(bundle.path / LOG_FIFO, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)


class LogCopier:
    """Copies a shim's log FIFO into the daemon log, line by line, for as long as the task lives."""

    def __init__(self, bundle: Bundle, fd: int = -1) -> None:
        """Copy from ``fd`` (from :func:`open_log`; opened here if not given), which it then owns."""
        self._name = f"{bundle.namespace}/{bundle.id}"
        self._fd = fd if fd >= 0 else open_log(bundle)
        self._partial = b""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._read)

    def _read(self) -> None:
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        except OSError as exc:
            log.debug("shim log %s: %s", self._name, exc)
            self.close()
            return
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            if line.strip():
                shim_log.info("shim %s: %s", self._name, line.decode(errors="replace").rstrip())
        if len(self._partial) > 65536:
            shim_log.info("shim %s: %s", self._name, self._partial.decode(errors="replace"))
            self._partial = b""

    def close(self) -> None:
        """Stop copying and close the FIFO."""
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
