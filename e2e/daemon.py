"""Run a real wharfd for tests: its own root, state, socket and config under a temp dir."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import grpc

BIN = Path(sys.executable).parent


@dataclass
class Daemon:
    """A wharfd process started by a test, with paths and helpers to talk to it."""

    base: Path
    extra_config: str = ""
    # Top-level keys (disabled_plugins, required_plugins, ...) must precede any table.
    top_config: str = ""
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.log_path = self.base / "wharfd.log"

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def state(self) -> Path:
        return self.base / "state"

    @property
    def address(self) -> Path:
        return self.base / "run" / "wharfd.sock"

    @property
    def config_path(self) -> Path:
        return self.base / "config.toml"

    def write_config(self) -> None:
        """Write the test config: paths under ``base``, debug logs, plus ``extra_config``."""
        self.config_path.write_text(
            self.top_config + "version = 2\n"
            f'root = "{self.root}"\n'
            f'state = "{self.state}"\n'
            "[grpc]\n"
            f'  address = "{self.address}"\n'
            "[debug]\n"
            '  level = "debug"\n' + self.extra_config
        )

    def start(self, *, wait: bool = True, timeout: float = 30.0) -> None:
        """Start wharfd; with ``wait``, return once its socket answers a health check."""
        self.write_config()
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(BIN / "wharfd"), "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        if wait:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the health service answers SERVING; fail with the daemon's log otherwise."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"wharfd exited with {self.proc.returncode}:\n{self.log()}")
            if self.address.exists():
                try:
                    with self.channel() as ch:
                        resp = health_pb2_grpc.HealthStub(ch).Check(
                            health_pb2.HealthCheckRequest(), timeout=2
                        )
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
            time.sleep(0.05)
        raise AssertionError(f"wharfd not ready after {timeout}s:\n{self.log()}")

    def channel(self, namespace: str | None = None) -> grpc.Channel:
        """A gRPC channel to the daemon (namespace metadata is added per call by the caller)."""
        return grpc.insecure_channel(f"unix://{self.address}")

    def log(self) -> str:
        """The daemon's output so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal the daemon and wait for it; return its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"wharfd did not exit on signal {sig}:\n{self.log()}") from None

    def kill(self) -> None:
        """SIGKILL the daemon, as a crash would."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def wharf(
        self, *args: str, namespace: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run the ``wharf`` CLI against this daemon."""
        cmd = [str(BIN / "wharf"), "--address", str(self.address)]
        if namespace:
            cmd += ["--namespace", namespace]
        result = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"wharf {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result


@contextmanager
def running(base: Path, extra_config: str = "", top_config: str = "") -> Iterator[Daemon]:
    """A started daemon that is always stopped (SIGKILL as a last resort) at the end."""
    daemon = Daemon(base, extra_config, top_config)
    daemon.start()
    try:
        yield daemon
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            with suppress(AssertionError):
                daemon.stop()
