"""A daemon killed with SIGKILL in the middle of a pull: after a restart the pull resumes and succeeds."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.daemon import BIN, Daemon
from tests.runtime.pull_rig import Proxy, proxy
from tests.support.images import File, build_image, build_layer, busybox_files, push_image
from tests.support.registry import run_registry
from wharfd.runtime.images import platforms
from wharfd.runtime.registry import Resolver, Transport

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="unpacks into overlayfs: needs root"),
]

LAYER = 24 << 20
STALL_AT = 8 << 20


class ProxyThread:
    """The misbehaving proxy on its own event loop, so the test can drive the daemon meanwhile."""

    def __init__(self, upstream: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.stop = asyncio.Event()
        self.proxy: Proxy | None = None
        self.upstream = upstream
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),), daemon=True)

    async def _main(self) -> None:
        async with proxy(self.upstream) as p:
            self.proxy = p
            self.ready.set()
            await self.stop.wait()

    def __enter__(self) -> Proxy:
        self.thread.start()
        assert self.ready.wait(10)
        assert self.proxy is not None
        return self.proxy

    def __exit__(self, *exc: object) -> None:
        assert self.proxy is not None
        self.loop.call_soon_threadsafe(self.proxy.release.set)
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    big = File("data/blob.bin", os.urandom(LAYER))
    image = build_image(
        [build_layer(busybox_files()), build_layer([big])], cmd=["sh"], platform=platforms.host()
    )
    with run_registry(tmp_path / "registry") as server:

        async def push() -> None:
            async with Transport() as transport:
                await push_image(Resolver(transport).pusher(server.ref("e2e/crash")), image, tag="1")

        asyncio.run(push())
        yield server.url.split("://", 1)[1]


def _pull(daemon: Daemon, ref: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "wharf"), "--address", str(daemon.address), "images", "pull", "--plain-http", ref],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_sigkill_mid_pull_then_pull_again(tmp_path: Path, registry: str) -> None:
    daemon = Daemon(tmp_path / "d")
    with ProxyThread(registry) as p:
        p.stall_after = STALL_AT  # the big layer stops arriving part-way
        ref = f"{p.host}/e2e/crash:1"
        daemon.start()
        try:
            pull = _pull(daemon, ref)
            deadline = time.monotonic() + 60
            while p.blob_bytes < STALL_AT // 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)  # let the ingest catch up with what the proxy sent
            daemon.kill()
            pull.communicate(timeout=30)
            assert pull.returncode != 0

            p.stall_after = None
            p.ranges.clear()
            daemon.start()
            again = _pull(daemon, ref)
            out, _ = again.communicate(timeout=120)
            assert again.returncode == 0, out
            names = daemon.wharf("images", "ls", "-q").stdout.split()
            assert ref in names
            # The interrupted layer was resumed from the ingest, not fetched from byte 0.
            assert any(r.startswith("bytes=") and not r.startswith("bytes=0-") for r in p.ranges), p.ranges
            active = daemon.wharf("content", "active").stdout.strip().splitlines()
            assert len(active) <= 1, active  # only the header: no ingest left behind
        finally:
            if daemon.proc is not None and daemon.proc.poll() is None:
                daemon.stop()
