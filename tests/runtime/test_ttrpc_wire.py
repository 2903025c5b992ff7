"""ttrpc on the wire: hand-built frames in, hand-checked frames out, and a real Go ttrpc server.

The expected bytes are written out from the protocol (PROTOCOL.md, request.proto)
and the protobuf encoding rules, not produced by this package's encoder.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import empty_pb2

from wharfd.api.runtime.task.v2 import shim_pb2 as shim_v2
from wharfd.api.runtime.task.v3 import shim_pb2
from wharfd.api.types.task import task_pb2
from wharfd.runtime import errors
from wharfd.runtime.ttrpc import protocol
from wharfd.runtime.ttrpc.client import TtrpcClient
from wharfd.runtime.ttrpc.server import Metadata, TtrpcServer
from wharfd.runtime.ttrpc.services import Stub, register_service

TASK = shim_pb2.DESCRIPTOR.services_by_name["Task"]


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


class Task:
    async def State(self, request: shim_pb2.StateRequest, metadata: Metadata) -> shim_pb2.StateResponse:
        if request.id != "c1":
            raise errors.NotFound(f'container "{request.id}"')
        return shim_pb2.StateResponse(id="c1", bundle="/run/b", pid=42, status=task_pb2.RUNNING)


# Request{service "containerd.task.v3.Task", method "State", payload StateRequest{id "c1"},
# timeout_nano 5s, metadata [{containerd-namespace-ttrpc: k8s.io}]}: 82 bytes, stream 1, type 1, flags 0.
STATE_REQUEST = (
    bytes.fromhex("00000052 00000001 01 00")
    + b"\x0a\x17containerd.task.v3.Task"
    + b"\x12\x05State"
    + b"\x1a\x04" + b"\x0a\x02c1"
    + b"\x20" + bytes.fromhex("80e497d012")  # varint 5_000_000_000
    + b"\x2a\x24" + b"\x0a\x1acontainerd-namespace-ttrpc" + b"\x12\x06k8s.io"
)  # fmt: skip

# Response{payload StateResponse{id "c1", bundle "/run/b", pid 42, status RUNNING}}; no status
# field at all, as Go sends for OK: 18 bytes, stream 1, type 2, flags 0.
STATE_RESPONSE = (
    bytes.fromhex("00000012 00000001 02 00")
    + b"\x12\x10" + b"\x0a\x02c1" + b"\x12\x06/run/b" + b"\x18\x2a" + b"\x20\x02"
)  # fmt: skip

# Stream 3 asks for container c9: Response{status {code 5 NOT_FOUND, message 'container "c9"'}}.
MISSING_REQUEST = (
    bytes.fromhex("00000026 00000003 01 00")
    + b"\x0a\x17containerd.task.v3.Task" + b"\x12\x05State" + b"\x1a\x04\x0a\x02c9"
)  # fmt: skip
MISSING_RESPONSE = (
    bytes.fromhex("00000014 00000003 02 00")
    + b"\x0a\x12" + b"\x08\x05" + b'\x12\x0econtainer "c9"'
)  # fmt: skip

# Stream 5 calls a method the service lacks: code 12 UNIMPLEMENTED, Go's text "method Nope".
NOPE_REQUEST = (
    bytes.fromhex("0000001f 00000005 01 00")
    + b"\x0a\x17containerd.task.v3.Task" + b"\x12\x04Nope"
)  # fmt: skip
NOPE_RESPONSE = bytes.fromhex("00000011 00000005 02 00") + b"\x0a\x0f\x08\x0c\x12\x0bmethod Nope"


@contextlib.asynccontextmanager
async def raw_connection(tmp_path: Path) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    server = TtrpcServer()
    register_service(server, TASK, Task())
    await server.listen(tmp_path / "s")
    reader, writer = await asyncio.open_unix_connection(str(tmp_path / "s"))
    try:
        yield reader, writer
    finally:
        writer.close()
        await server.close()


def test_server_answers_hand_built_frames_byte_for_byte(tmp_path: Path) -> None:
    async def main() -> None:
        async with raw_connection(tmp_path) as (reader, writer):
            writer.write(STATE_REQUEST + MISSING_REQUEST + NOPE_REQUEST)
            expected = {STATE_RESPONSE, MISSING_RESPONSE, NOPE_RESPONSE}
            # The three calls run concurrently: answers may come in any order, each whole.
            got = set()
            for _ in range(3):
                header = await reader.readexactly(10)
                got.add(header + await reader.readexactly(int.from_bytes(header[:4], "big")))
            assert got == expected

    run(main())


def test_client_sends_the_same_bytes(tmp_path: Path) -> None:
    async def main() -> None:
        sent: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sent.set_result(await reader.readexactly(len(STATE_REQUEST)))
            writer.write(STATE_RESPONSE)
            await reader.read()
            writer.close()

        async with await asyncio.start_unix_server(peer, str(tmp_path / "s")):
            client = await TtrpcClient.connect(tmp_path / "s")
            reply = await client.call(
                "containerd.task.v3.Task",
                "State",
                shim_pb2.StateRequest(id="c1"),
                shim_pb2.StateResponse,
                timeout=5,
                metadata={"containerd-namespace-ttrpc": "k8s.io"},
            )
            await client.close()
        assert await sent == STATE_REQUEST
        assert reply == shim_pb2.StateResponse(id="c1", bundle="/run/b", pid=42, status=task_pb2.RUNNING)

    run(main())


@pytest.mark.parametrize(
    ("frame", "answer"),
    [
        # An even (server-side) stream id.
        (
            bytes.fromhex("00000000 00000002 01 00"),
            bytes.fromhex("00000037 00000002 02 00 0a35 0803 1231")
            + b"StreamID must be odd for client initiated streams",
        ),
        # Data for a stream that is not open.
        (
            bytes.fromhex("00000000 00000007 03 00"),
            bytes.fromhex("00000022 00000007 02 00 0a20 0803 121c") + b"StreamID is no longer active",
        ),
    ],
)
def test_protocol_violations_are_answered_on_their_stream(
    tmp_path: Path, frame: bytes, answer: bytes
) -> None:
    async def main() -> None:
        async with raw_connection(tmp_path) as (reader, writer):
            writer.write(frame)
            assert await reader.readexactly(len(answer)) == answer
            # The connection is still usable.
            writer.write(STATE_REQUEST)
            assert await reader.readexactly(len(STATE_RESPONSE)) == STATE_RESPONSE

    run(main())


def test_stream_ids_must_increase_and_unknown_frame_types_are_ignored(tmp_path: Path) -> None:
    async def main() -> None:
        async with raw_connection(tmp_path) as (reader, writer):
            writer.write(STATE_REQUEST)
            assert await reader.readexactly(len(STATE_RESPONSE)) == STATE_RESPONSE
            writer.write(bytes.fromhex("00000003 00000009 09 00 010203"))  # a future frame type
            writer.write(STATE_REQUEST)  # stream 1 again
            header = await reader.readexactly(10)
            assert header[4:] == bytes.fromhex("00000001 02 00")
            body = await reader.readexactly(int.from_bytes(header[:4], "big"))
            assert body.endswith(b"StreamID cannot be re-used and must increment")
            writer.write(bytes.fromhex("00000001 0000000b 01 00 ff"))  # not a Request message
            header = await reader.readexactly(10)
            body = await reader.readexactly(int.from_bytes(header[:4], "big"))
            assert header[4:] == bytes.fromhex("0000000b 02 00")
            assert body[2:4] == b"\x08\x03"  # INVALID_ARGUMENT
            assert b"unmarshal request error" in body

    run(main())


SHIM = shutil.which("containerd-shim-runc-v2")


def _kill_shims_of(address: str) -> None:
    """Kill the shim daemons started for this test, found by the unique -address they were given."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"-address" in cmdline and address.encode() in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


@pytest.mark.skipif(SHIM is None or os.geteuid() != 0, reason="needs root and containerd-shim-runc-v2")
def test_go_ttrpc_server_in_containerd_shim(tmp_path: Path) -> None:
    """Our client against the Go ttrpc server of Debian's containerd shim (legacy start protocol)."""
    assert SHIM is not None
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text('{"ociVersion": "1.0.2"}')
    os.mkfifo(bundle / "log")
    # The shim opens its log fifo for writing and blocks until someone reads it.
    log_fd = os.open(bundle / "log", os.O_RDONLY | os.O_NONBLOCK)
    grpc_address = str(tmp_path / "containerd.sock")  # unique: the shim hashes it into its socket name
    socket_path = ""
    try:
        start = subprocess.run(
            [SHIM, "-namespace", "t", "-address", grpc_address, "-id", "x", "start"],
            cwd=bundle,
            env={**os.environ, "TTRPC_ADDRESS": grpc_address + ".ttrpc"},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=20,
            check=True,
        )
        address = start.stdout.decode().strip()
        assert address.startswith("unix:///")
        socket_path = address.removeprefix("unix://")

        async def main() -> None:
            client = await TtrpcClient.connect(address, timeout=10)
            task = shim_v2.DESCRIPTOR.services_by_name["Task"]
            stub = Stub(client, task, timeout=5, metadata={"containerd-namespace-ttrpc": "t"})
            connected = await stub.Connect(shim_v2.ConnectRequest(id="x"))
            assert connected.shim_pid > 0
            with pytest.raises(errors.NotFound, match="container not created"):
                await stub.State(shim_v2.StateRequest(id="x"))
            with pytest.raises(errors.NotImplemented, match=r"^method Nope$"):
                await client.call(task.full_name, "Nope", empty_pb2.Empty(), empty_pb2.Empty)
            with pytest.raises(errors.NotImplemented, match=r"^service wharfd\.Nope$"):
                await client.call("wharfd.Nope", "Nope", empty_pb2.Empty(), empty_pb2.Empty)
            # 50 calls in flight at once on the one connection.
            replies = await asyncio.gather(*(stub.Connect(shim_v2.ConnectRequest(id="x")) for _ in range(50)))
            assert {r.shim_pid for r in replies} == {connected.shim_pid}
            # A shim with no tasks exits on Shutdown, racing its reply (containerd ignores
            # ErrClosed here too); its connection closing fires `closed`.
            with contextlib.suppress(protocol.ConnectionClosed):
                await stub.Shutdown(shim_v2.ShutdownRequest(id="x"))
            await asyncio.wait_for(client.closed.wait(), 10)
            with pytest.raises(errors.Unavailable, match="ttrpc: closed"):
                await stub.Connect(shim_v2.ConnectRequest(id="x"))

        run(main())
    finally:
        _kill_shims_of(grpc_address)
        os.close(log_fd)
        if socket_path:
            Path(socket_path).unlink(missing_ok=True)
