"""``wharfd``: the daemon's entry point and lifecycle.

    wharfd [-c FILE] [-l LEVEL] [-a ADDRESS] [--root DIR] [--state DIR]
    wharfd config default | dump [-c FILE]

Start-up: config → lock the root → plugins in dependency order → gRPC server on
the unix socket (and the ttrpc listener beside it) → health SERVING. Shutdown on
SIGTERM/SIGINT: health NOT_SERVING, stop accepting, let in-flight calls finish
within a bound, close plugins (the database last), remove the sockets, exit 0.
SIGUSR1 logs the stack of every task and thread.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import fcntl
import gc
import inspect
import logging
import os
import signal
import socket
import stat
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc

from wharfd.cri import builtins, config
from wharfd.runtime import errors, logs, malloc, plugin
from wharfd.runtime.events import Exchange
from wharfd.runtime.ttrpc.server import TtrpcServer

log = logging.getLogger("wharfd")

# How long in-flight calls may run on after SIGTERM before they are cancelled.
SHUTDOWN_GRACE_SECONDS = 10.0
# glibc malloc arenas: the main one and one for the other threads (see runtime/malloc.py).
MALLOC_ARENAS = 2
# A pull (or an import) ends by creating or updating its image; once such events have been quiet
# this long, the heap the pull freed (download buffers, parsed manifests) goes back to the kernel.
TRIM_AFTER_IMAGES = ('topic=="/images/create"', 'topic=="/images/update"')
TRIM_QUIET_SECONDS = 1.0


class StartupError(Exception):
    """A reason the daemon cannot start; printed as one line, exit code 1."""


def _acquire_root_lock(root: Path) -> IO[str]:
    """Hold an exclusive lock on ``<root>/wharfd.lock`` for the daemon's lifetime."""
    root.mkdir(parents=True, exist_ok=True, mode=0o711)
    path = root / "wharfd.lock"
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise StartupError(
            f"another wharfd (pid {holder}) is already using root {root} (lock {path})"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _prepare_socket_path(path: Path) -> None:
    """Create the socket's folder; remove a stale socket, refuse a live one or a non-socket."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise StartupError(f"{path} exists and is not a socket; remove it or choose another [grpc] address")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1)
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("removing stale socket %s", path)
        path.unlink(missing_ok=True)
        return
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise StartupError(f"cannot check socket {path}: {exc}") from exc
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise StartupError(f"socket {path} is in use by another process")


def _secure_socket(path: Path, uid: int, gid: int) -> None:
    os.chmod(path, 0o660)
    if (uid, gid) != (os.getuid(), os.getgid()):
        os.chown(path, uid, gid)


def _dump_stacks() -> None:
    """Log every asyncio task's and every thread's stack (SIGUSR1)."""
    lines = ["=== asyncio tasks ==="]
    for task in asyncio.all_tasks():
        lines.append(f"--- {task.get_name()} ({task.get_coro()!r})")
        for frame in task.get_stack():
            lines.extend(traceback.format_stack(frame, limit=1))
    lines.append("=== threads ===")
    for thread_id, frame in sys._current_frames().items():
        lines.append(f"--- thread {thread_id}")
        lines.extend(traceback.format_stack(frame))
    log.info(
        "stack dump on SIGUSR1:\n%s", "".join(line if line.endswith("\n") else line + "\n" for line in lines)
    )


async def _trim_after_images(exchange: Exchange) -> None:
    """Give back the memory of finished pulls: trim the heap when image events go quiet."""
    async with exchange.subscribe(TRIM_AFTER_IMAGES) as sub:
        # The queue, not the iterator: a timeout cancelling an async generator would end it.
        while True:
            await sub.queue.get()
            while True:  # a burst (several images, several pulls at once) trims once, at its end
                try:
                    async with asyncio.timeout(TRIM_QUIET_SECONDS):
                        await sub.queue.get()
                except TimeoutError:
                    break
            # In a thread: the trim walks the heap under malloc's lock for a few ms.
            released = await asyncio.to_thread(malloc.trim)
            log.debug(
                "heap trimmed after image changes (memory given back: %s)", "yes" if released else "none"
            )


def _set_oom_score(score: int) -> None:
    if not score:
        return
    try:
        Path("/proc/self/oom_score_adj").write_text(str(score))
    except OSError as exc:
        # Lowering the score needs CAP_SYS_RESOURCE, which root lacks on some hosts.
        log.warning("cannot set oom_score %d: %s", score, exc)


@dataclass
class Daemon:
    """One running wharfd: its config, plugins and servers."""

    cfg: config.Config
    plugins: plugin.PluginSet | None = None
    server: grpc.aio.Server | None = None
    ttrpc: TtrpcServer | None = None
    _trimmer: asyncio.Task[None] | None = None
    _lock: IO[str] | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def _context(self, reg: plugin.Registration) -> plugin.InitContext:
        assert self.plugins is not None
        return plugin.InitContext(
            registration=reg,
            config=self.cfg,
            plugin_config=self.cfg.plugin(reg.uri),
            root=Path(self.cfg.root) / reg.uri,
            state=Path(self.cfg.state) / reg.uri,
            plugins=self.plugins,
        )

    def _prepare_host(self) -> IO[str]:
        """Lock the root, create the state dir, clear stale sockets (blocking; run in a thread)."""
        lock = _acquire_root_lock(Path(self.cfg.root))
        try:
            Path(self.cfg.state).mkdir(parents=True, exist_ok=True, mode=0o711)
            _set_oom_score(self.cfg.oom_score)
            _prepare_socket_path(Path(self.cfg.grpc.address))
            _prepare_socket_path(Path(self.cfg.ttrpc_address()))
        except BaseException:
            lock.close()
            raise
        return lock

    async def start(self) -> None:
        """Bring everything up; raise StartupError with one clear line when that is impossible."""
        t0 = time.monotonic()
        self._lock = await asyncio.to_thread(self._prepare_host)
        address = Path(self.cfg.grpc.address)
        ttrpc_address = Path(self.cfg.ttrpc_address())

        self.plugins = plugin.PluginSet(
            builtins.registrations(),
            disabled=self.cfg.disabled_plugins,
            required=self.cfg.required_plugins,
        )
        try:
            await self.plugins.start(self._context)
        except errors.WharfError as exc:
            await self.plugins.close()
            raise StartupError(str(exc)) from exc

        # Plugins that observe every call (metrics) hand the server an interceptor.
        interceptors = [
            p.instance.interceptor
            for p in self.plugins.plugins
            if p.started and hasattr(p.instance, "interceptor")
        ]
        self.server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", self.cfg.grpc.max_recv_message_size),
                ("grpc.max_send_message_length", self.cfg.grpc.max_send_message_size),
            ],
        )
        for p in self.plugins.started(plugin.GRPC):
            p.instance.register(self.server)
        # The modules, plugins and config live as long as the daemon: move them out of the cyclic
        # collector's reach, so full collections (which walk every tracked object, holding the
        # GIL for tens of ms) only walk what was made since. Done before serving: no call waits.
        gc.collect()
        gc.freeze()
        # Start-up's garbage (config parsing, compiling modules without .pyc files) leaves free
        # pages inside the heap; give them back so the idle daemon holds what it uses.
        await asyncio.to_thread(malloc.trim)
        self.server.add_insecure_port(f"unix:{address}")
        await self.server.start()
        _secure_socket(address, self.cfg.grpc.uid, self.cfg.grpc.gid)

        self.ttrpc = TtrpcServer()
        for p in self.plugins.started(plugin.TTRPC):
            p.instance.register(self.ttrpc)
        await self.ttrpc.listen(ttrpc_address)
        _secure_socket(ttrpc_address, self.cfg.ttrpc.uid, self.cfg.ttrpc.gid)

        health = self.plugins.instances(plugin.GRPC).get("healthcheck")
        if health is not None:
            await health.set_serving(True)
        log.info("serving on %s (ttrpc %s)", address, ttrpc_address)
        log.info("wharfd successfully booted in %.3fs", time.monotonic() - t0)
        exchange = self.plugins.instances(plugin.EVENT).get("exchange")
        if isinstance(exchange, Exchange):
            self._trimmer = asyncio.create_task(_trim_after_images(exchange), name="malloc-trim")

    async def stop(self) -> None:
        """Stop accepting, drain in-flight calls within a bound, then close plugins and sockets."""
        if self._trimmer is not None:
            self._trimmer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._trimmer
            self._trimmer = None
        if self.plugins is not None:
            health = self.plugins.instances(plugin.GRPC).get("healthcheck")
            if health is not None:
                await health.set_serving(False)
        if self.plugins is not None:
            # Long-lived streams (event subscriptions) end now, so the grace
            # period below only waits for ordinary calls.
            for p in self.plugins.plugins:
                before_stop = getattr(p.instance, "before_stop", None) if p.started else None
                if before_stop is not None:
                    result = before_stop()
                    if inspect.isawaitable(result):
                        await result
        if self.server is not None:
            await self.server.stop(SHUTDOWN_GRACE_SECONDS)
        if self.ttrpc is not None:
            await self.ttrpc.close()
        if self.plugins is not None:
            await self.plugins.close()
        for path in (Path(self.cfg.grpc.address), Path(self.cfg.ttrpc_address())):
            if self.server is not None:
                path.unlink(missing_ok=True)
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def request_stop(self) -> None:
        """Ask :meth:`run` to shut down (signal handlers call this)."""
        self._stop.set()

    async def run(self) -> None:
        """Start, serve until SIGTERM/SIGINT, then stop."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGUSR1, _dump_stacks)
        try:
            await self.start()
            await self._stop.wait()
            log.info("stopping")
        finally:
            await self.stop()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
                loop.remove_signal_handler(sig)
        log.info("stopped")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wharfd", description="A Kubernetes-node container runtime (CRI v1)."
    )
    parser.add_argument(
        "-c", "--config", help=f"config file (default {config.DEFAULT_CONFIG_PATH} if present)"
    )
    parser.add_argument("-l", "--log-level", help="override [debug] level (trace, debug, info, warn, error)")
    parser.add_argument("-a", "--address", help="override [grpc] address")
    parser.add_argument("--root", help="override root (persistent data)")
    parser.add_argument("--state", help="override state (runtime data)")
    parser.add_argument("-v", "--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")
    cfg = sub.add_parser("config", help="print configuration")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    cfg_sub.add_parser("default", help="print the complete default config")
    dump = cfg_sub.add_parser("dump", help="print the effective config (file and imports merged)")
    dump.add_argument("-c", "--config", dest="dump_config", help="config file to read")
    return parser


def _apply_overrides(cfg: config.Config, args: argparse.Namespace) -> None:
    if args.log_level:
        cfg.debug.level = args.log_level
    if args.address:
        cfg.grpc.address = args.address
    if args.root:
        cfg.root = args.root
    if args.state:
        cfg.state = args.state


def main(argv: list[str] | None = None) -> int:
    """Run the daemon or one of its helper commands; return the exit code."""
    args = _parser().parse_args(argv)
    if args.version:
        from wharfd.runtime import version

        print(f"wharfd {version.version()} {version.revision()}")
        return 0
    if args.command == "config" and args.config_command == "default":
        sys.stdout.write(config.dumps(config.default_tree()))
        return 0
    try:
        cfg = config.load(getattr(args, "dump_config", None) or args.config)
        _apply_overrides(cfg, args)
    except config.ConfigError as exc:
        print(f"wharfd: invalid config: {exc}", file=sys.stderr)
        return 1
    if args.command == "config":
        for warning in cfg.warnings:
            print(f"wharfd: warning: {warning}", file=sys.stderr)
        sys.stdout.write(config.dumps(cfg.to_tree()))
        return 0
    logs.setup(cfg.debug.level, cfg.debug.format)
    for warning in cfg.warnings:
        log.warning("config: %s", warning)
    malloc.limit_arenas(MALLOC_ARENAS)  # before the loop's and gRPC's threads start
    try:
        asyncio.run(Daemon(cfg).run())
    except StartupError as exc:
        log.error("%s", exc)
        print(f"wharfd: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second ^C while stopping
        return 130
    return 0
