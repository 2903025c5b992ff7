"""Unary ttrpc call latency, client and server in one process and across processes.

    .venv/bin/python bench/ttrpc.py [--calls 2000]

Each figure is the median (and p99) of sequential calls of
``containerd.task.v3.Task/State`` through the typed helpers (Stub +
register_service), so it includes protobuf encode/decode on both sides.
Baselines measured in the same run:

* floor: a bare asyncio request/response of the same size over a unix socket
  against an echo protocol (what any asyncio RPC pays for the loop and the socket);
* grpc.aio: the same State call over gRPC on a unix socket;
* Go: our client against the Go ttrpc server of ``containerd-shim-runc-v2``
  (its Task/Connect), when the binary is present and we are root.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from wharfd.api.runtime.task.v2 import shim_pb2 as shim_v2
from wharfd.api.runtime.task.v3 import shim_pb2, shim_pb2_grpc
from wharfd.api.types.task import task_pb2
from wharfd.runtime.ttrpc.client import TtrpcClient
from wharfd.runtime.ttrpc.protocol import ConnectionClosed
from wharfd.runtime.ttrpc.server import Metadata, TtrpcServer
from wharfd.runtime.ttrpc.services import Stub, register_service

TASK = shim_pb2.DESCRIPTOR.services_by_name["Task"]
REQUEST = shim_pb2.StateRequest(id="c1")
REPLY = shim_pb2.StateResponse(id="c1", bundle="/run/containerd/b/c1", pid=4242, status=task_pb2.RUNNING)
NS = {"containerd-namespace-ttrpc": "k8s.io"}


class Task:
    async def State(self, request: shim_pb2.StateRequest, metadata: Metadata) -> shim_pb2.StateResponse:
        return REPLY


class GrpcTask(shim_pb2_grpc.TaskServicer):
    async def State(self, request: shim_pb2.StateRequest, context: Any) -> shim_pb2.StateResponse:
        return REPLY


async def measure(call: Callable[[], Awaitable[Any]], n: int) -> tuple[float, float]:
    """Median and p99 in microseconds, after a warm-up."""
    for _ in range(200):
        await call()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        await call()
        samples.append((time.perf_counter_ns() - t0) / 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99)]


def report(name: str, figures: tuple[float, float]) -> None:
    print(f"  {name:<44} median {figures[0]:7.1f} us   p99 {figures[1]:7.1f} us")


FLOOR_SIZE = len(REPLY.SerializeToString()) + 12


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def serve_echo(path: str) -> asyncio.AbstractServer:
    return await asyncio.get_running_loop().create_unix_server(Echo, path)


async def floor_client(path: str, n: int) -> tuple[float, float]:
    reader, writer = await asyncio.open_unix_connection(path)
    payload = b"x" * FLOOR_SIZE

    async def call() -> None:
        writer.write(payload)
        await reader.readexactly(FLOOR_SIZE)

    try:
        return await measure(call, n)
    finally:
        writer.close()


async def serve_ttrpc(path: str) -> TtrpcServer:
    server = TtrpcServer()
    register_service(server, TASK, Task())
    await server.listen(path)
    return server


async def ttrpc_client(path: str, n: int) -> tuple[float, float]:
    client = await TtrpcClient.connect(path)
    stub = Stub(client, TASK, metadata=NS)
    try:
        return await measure(lambda: stub.State(REQUEST, timeout=5), n)
    finally:
        await client.close()


async def serve_grpc(path: str) -> grpc.aio.Server:
    server = grpc.aio.server()
    shim_pb2_grpc.add_TaskServicer_to_server(GrpcTask(), server)
    server.add_insecure_port(f"unix:{path}")
    await server.start()
    return server


async def grpc_client(path: str, n: int) -> tuple[float, float]:
    async with grpc.aio.insecure_channel(f"unix:{path}") as channel:
        stub = shim_pb2_grpc.TaskStub(channel)
        return await measure(lambda: stub.State(REQUEST, timeout=5), n)


def spawn(kind: str, path: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, __file__, "--serve", kind, path], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.readline()  # "ready"
    return proc


def start_go_shim(workdir: Path) -> tuple[str, int] | None:
    """Start containerd's runc shim the legacy way; returns its address and our end of its log fifo."""
    binary = "/usr/bin/containerd-shim-runc-v2"
    if not os.path.exists(binary) or os.geteuid() != 0:
        return None
    bundle = workdir / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text('{"ociVersion": "1.0.2"}')
    os.mkfifo(bundle / "log")
    log_fd = os.open(bundle / "log", os.O_RDONLY | os.O_NONBLOCK)  # the shim blocks until it has a reader
    address = str(workdir / "containerd.sock")
    start = subprocess.run(
        [binary, "-namespace", "bench", "-address", address, "-id", "x", "start"],
        cwd=bundle,
        env={**os.environ, "TTRPC_ADDRESS": address + ".ttrpc"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=True,
    )
    return start.stdout.decode().strip(), log_fd


async def go_shim(workdir: Path, n: int) -> tuple[float, float] | None:
    started = await asyncio.to_thread(start_go_shim, workdir)
    if started is None:
        return None
    address, log_fd = started
    client = await TtrpcClient.connect(address)
    stub = Stub(
        client, shim_v2.DESCRIPTOR.services_by_name["Task"], metadata={"containerd-namespace-ttrpc": "bench"}
    )
    try:
        return await measure(lambda: stub.Connect(shim_v2.ConnectRequest(id="x"), timeout=5), n)
    finally:
        with contextlib.suppress(ConnectionClosed):  # the shim exits racing its reply
            await stub.Shutdown(shim_v2.ShutdownRequest(id="x"), timeout=5)
        await client.close()
        os.close(log_fd)


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory(prefix="ttrpc-bench-") as tmp:
        work = Path(tmp)
        print(f"unary call latency over {n} sequential calls (Python {sys.version.split()[0]})")
        print("one process:")
        echo = await serve_echo(str(work / "e1"))
        report("floor: asyncio echo of the same size", await floor_client(str(work / "e1"), n))
        echo.close()
        server = await serve_ttrpc(str(work / "t1"))
        report("ttrpc Task/State (wharfd client + server)", await ttrpc_client(str(work / "t1"), n))
        await server.close()
        gserver = await serve_grpc(str(work / "g1"))
        report("grpc.aio Task/State", await grpc_client(str(work / "g1"), n))
        await gserver.stop(None)
        print("two processes:")
        clients: list[tuple[str, str, Callable[[str, int], Awaitable[tuple[float, float]]]]] = [
            ("echo", "floor: asyncio echo server process", floor_client),
            ("ttrpc", "ttrpc Task/State (wharfd server process)", ttrpc_client),
            ("grpc", "grpc.aio Task/State", grpc_client),
        ]
        for kind, label, client in clients:
            proc = spawn(kind, str(work / f"{kind}2"))
            try:
                report(label, await client(str(work / f"{kind}2"), n))
            finally:
                proc.terminate()
                proc.wait()
        go = await go_shim(work, n)
        if go is not None:
            report("ttrpc Task/Connect (Go containerd-shim-runc-v2)", go)


async def serve_forever(kind: str, path: str) -> None:
    # Keep the server referenced: an unreferenced grpc.aio server is stopped when collected.
    servers = {"ttrpc": serve_ttrpc, "grpc": serve_grpc, "echo": serve_echo}
    server = await servers[kind](path)
    print("ready", flush=True)
    await asyncio.Event().wait()
    print(server)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve_forever(*args.serve))
    else:
        asyncio.run(main(args.calls))
