"""ttrpc unary calls: client and server over a real unix socket, with the real shim protos."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import empty_pb2, wrappers_pb2

from wharfd.api.runtime.task.v3 import shim_pb2
from wharfd.api.ttrpc import request_pb2
from wharfd.api.types.task import task_pb2
from wharfd.runtime import errors, namespaces
from wharfd.runtime.ttrpc import protocol
from wharfd.runtime.ttrpc.client import TtrpcClient
from wharfd.runtime.ttrpc.server import Metadata, TtrpcServer
from wharfd.runtime.ttrpc.services import Stub, register_service
from wharfd.runtime.ttrpc.testing import connected

TASK = shim_pb2.DESCRIPTOR.services_by_name["Task"]
ECHO = "wharfd.test.Echo"


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def request_bytes(service: str, method: str, payload: bytes = b"", timeout_nano: int = 0) -> bytes:
    return request_pb2.Request(
        service=service, method=method, payload=payload, timeout_nano=timeout_nano
    ).SerializeToString()


def response_bytes(payload: bytes) -> bytes:
    return request_pb2.Response(payload=payload).SerializeToString()


def response_of(data: bytes) -> request_pb2.Response:
    return request_pb2.Response.FromString(data)


class Task:
    """A Task service answering State from a table, recording what it saw."""

    def __init__(self) -> None:
        self.seen: list[tuple[Metadata, str | None]] = []

    async def State(self, request: shim_pb2.StateRequest, metadata: Metadata) -> shim_pb2.StateResponse:
        self.seen.append((metadata, namespaces.current.get()))
        if request.id != "c1":
            raise errors.NotFound(f'container "{request.id}"')
        return shim_pb2.StateResponse(id="c1", pid=42, status=task_pb2.RUNNING, bundle="/run/b")

    async def Pause(self, request: shim_pb2.PauseRequest, metadata: Metadata) -> empty_pb2.Empty:
        return empty_pb2.Empty()


def test_unary_round_trip_with_task_v3_and_namespace_metadata(tmp_path: Path) -> None:
    async def main() -> None:
        server, impl = TtrpcServer(), Task()
        assert register_service(server, TASK, impl) == ["State", "Pause"]
        async with connected(server, tmp_path / "s") as client:
            stub = Stub(client, TASK, timeout=5, metadata={namespaces.TTRPC_METADATA_KEY: "k8s.io"})
            reply = await stub.State(shim_pb2.StateRequest(id="c1"), metadata={"X-Trace": ["a", "b"]})
            assert reply == shim_pb2.StateResponse(id="c1", pid=42, status=task_pb2.RUNNING, bundle="/run/b")
            assert await stub.Pause(shim_pb2.PauseRequest(id="c1")) == empty_pb2.Empty()
        metadata, namespace = impl.seen[0]
        assert metadata == {"containerd-namespace-ttrpc": ["k8s.io"], "x-trace": ["a", "b"]}
        assert namespace == "k8s.io"

    run(main())


@pytest.mark.parametrize(
    "error",
    [
        errors.NotFound('container "c9"'),
        errors.AlreadyExists('task "c1"'),
        errors.FailedPrecondition('task "c1" is in state running'),
        errors.InvalidArgument('exec id "": must not be empty'),
        errors.Unavailable("runc: not ready"),
        errors.DeadlineExceeded("took too long"),
        errors.ResourceExhausted("too many execs"),
        errors.PermissionDenied("no"),
        errors.NotImplemented("checkpoint"),
    ],
)
def test_typed_errors_cross_the_wire_with_their_message(tmp_path: Path, error: errors.WharfError) -> None:
    async def fail(payload: bytes, metadata: Metadata) -> bytes:
        raise error

    async def main() -> None:
        server = TtrpcServer()
        server.register(ECHO, "Fail", fail)
        async with connected(server, tmp_path / "s") as client:
            with pytest.raises(type(error)) as caught:
                await client.call(ECHO, "Fail", empty_pb2.Empty(), empty_pb2.Empty)
            assert type(caught.value) is type(error)
            assert str(caught.value) == str(error)

    run(main())


def test_unexpected_exception_is_unknown_and_connection_survives(tmp_path: Path) -> None:
    async def boom(payload: bytes, metadata: Metadata) -> bytes:
        raise ValueError("bad state")

    async def main() -> None:
        server = TtrpcServer()
        server.register(ECHO, "Boom", boom)
        register_service(server, TASK, Task())
        async with connected(server, tmp_path / "s") as client:
            with pytest.raises(errors.WharfError) as caught:
                await client.call(ECHO, "Boom", empty_pb2.Empty(), empty_pb2.Empty)
            assert type(caught.value) is errors.WharfError
            assert str(caught.value) == "ValueError: bad state"
            reply = await Stub(client, TASK).State(shim_pb2.StateRequest(id="c1"))
            assert reply.pid == 42

    run(main())


def test_unknown_service_or_method_is_unimplemented_with_gos_text(tmp_path: Path) -> None:
    async def main() -> None:
        server = TtrpcServer()
        register_service(server, TASK, Task())
        async with connected(server, tmp_path / "s") as client:
            with pytest.raises(errors.NotImplemented, match=r"^service containerd.task.v2.Task$"):
                await client.call("containerd.task.v2.Task", "State", empty_pb2.Empty(), empty_pb2.Empty)
            with pytest.raises(errors.NotImplemented, match=r"^method Pids$"):  # Task lacks Pids
                await Stub(client, TASK).Pids(shim_pb2.PidsRequest(id="c1"))
            with pytest.raises(AttributeError, match="has no method Nope"):
                Stub(client, TASK).Nope  # noqa: B018

    run(main())


def test_hundred_calls_in_flight_complete_out_of_order(tmp_path: Path) -> None:
    arrived: list[int] = []

    async def main() -> None:
        everyone = asyncio.Event()

        async def slow_echo(payload: bytes, metadata: Metadata) -> bytes:
            n = wrappers_pb2.UInt32Value.FromString(payload).value
            arrived.append(n)
            if len(arrived) == 100:
                everyone.set()
            await everyone.wait()  # all 100 are in flight on the one connection at once
            await asyncio.sleep((100 - n) * 0.002)  # the last sent finishes first
            return wrappers_pb2.StringValue(value=f"#{n}").SerializeToString()

        server = TtrpcServer()
        server.register(ECHO, "Slow", slow_echo)
        finished: list[int] = []
        async with connected(server, tmp_path / "s") as client:

            async def one(n: int) -> None:
                reply = await client.call(
                    ECHO, "Slow", wrappers_pb2.UInt32Value(value=n), wrappers_pb2.StringValue
                )
                assert reply.value == f"#{n}"
                finished.append(n)

            await asyncio.gather(*(one(n) for n in range(100)))
        assert sorted(arrived) == list(range(100))
        assert finished == list(reversed(range(100)))

    run(main())


def test_client_timeout_names_the_method_and_server_handler_is_cancelled(tmp_path: Path) -> None:
    async def main() -> None:
        cancelled = asyncio.Event()

        async def hang(payload: bytes, metadata: Metadata) -> bytes:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return b""

        server = TtrpcServer()
        server.register(ECHO, "Hang", hang)
        register_service(server, TASK, Task())
        async with connected(server, tmp_path / "s") as client:
            with pytest.raises(
                errors.DeadlineExceeded, match=r"wharfd.test.Echo/Hang: deadline exceeded after 0.2s"
            ):
                await client.call(ECHO, "Hang", empty_pb2.Empty(), empty_pb2.Empty, timeout=0.2)
            # timeout_nano made the server give up too, and the connection is still good.
            await asyncio.wait_for(cancelled.wait(), 2)
            assert (await Stub(client, TASK).State(shim_pb2.StateRequest(id="c1"))).pid == 42

    run(main())


def test_server_enforces_timeout_nano(tmp_path: Path) -> None:
    async def hang(payload: bytes, metadata: Metadata) -> bytes:
        await asyncio.sleep(60)
        return b""

    async def main() -> None:
        server = TtrpcServer()
        server.register(ECHO, "Hang", hang)
        await server.listen(tmp_path / "s")
        try:
            reader, writer = await asyncio.open_unix_connection(str(tmp_path / "s"))
            request = request_bytes(ECHO, "Hang", timeout_nano=50_000_000)
            writer.write(protocol.pack(1, protocol.TYPE_REQUEST, 0, request))
            frame = await asyncio.wait_for(protocol.read_frame(reader), 5)
            writer.close()
        finally:
            await server.close()
        response = response_of(frame.data)
        assert (frame.stream_id, frame.type, response.status.code) == (1, protocol.TYPE_RESPONSE, 4)
        assert response.status.message == "ttrpc: wharfd.test.Echo/Hang: deadline exceeded after 0.05s"

    run(main())


def test_server_going_away_fails_pending_calls_and_fires_closed(tmp_path: Path) -> None:
    async def main() -> None:
        entered = asyncio.Semaphore(0)

        async def hang(payload: bytes, metadata: Metadata) -> bytes:
            entered.release()
            await asyncio.sleep(60)
            return b""

        server = TtrpcServer()
        server.register(ECHO, "Hang", hang)
        await server.listen(tmp_path / "s")
        client = await TtrpcClient.connect(tmp_path / "s")
        calls = [
            asyncio.ensure_future(client.call(ECHO, "Hang", empty_pb2.Empty(), empty_pb2.Empty))
            for _ in range(5)
        ]
        for _ in calls:
            await entered.acquire()
        assert not client.closed.is_set()
        await server.close()
        await asyncio.wait_for(client.closed.wait(), 5)
        results = await asyncio.gather(*calls, return_exceptions=True)
        for result in results:
            assert isinstance(result, protocol.ConnectionClosed)
            assert isinstance(result, errors.Unavailable)
            assert str(result) == "ttrpc: closed"
        with pytest.raises(errors.Unavailable, match="ttrpc: closed"):
            await client.call(ECHO, "Hang", empty_pb2.Empty(), empty_pb2.Empty)
        await client.close()  # closing twice is fine

    run(main())


def test_client_close_fails_its_own_pending_calls(tmp_path: Path) -> None:
    async def hang(payload: bytes, metadata: Metadata) -> bytes:
        await asyncio.sleep(60)
        return b""

    async def main() -> None:
        server = TtrpcServer()
        server.register(ECHO, "Hang", hang)
        async with connected(server, tmp_path / "s") as client:
            call = asyncio.ensure_future(client.call(ECHO, "Hang", empty_pb2.Empty(), empty_pb2.Empty))
            await asyncio.sleep(0.05)
            await client.close()
            with pytest.raises(protocol.ConnectionClosed):
                await call
            assert client.closed.is_set()
            assert client.close_reason is None

    run(main())


def test_oversize_messages_are_refused_both_ways(tmp_path: Path) -> None:
    big = wrappers_pb2.BytesValue(value=b"x" * (protocol.MAX_DATA + 1))
    calls: list[int] = []

    async def echo(payload: bytes, metadata: Metadata) -> bytes:
        calls.append(len(payload))
        size = wrappers_pb2.UInt32Value.FromString(payload).value
        return wrappers_pb2.BytesValue(value=b"y" * size).SerializeToString()

    async def main() -> None:
        server = TtrpcServer()
        server.register(ECHO, "Echo", echo)
        async with connected(server, tmp_path / "s") as client:
            # The client refuses to send: nothing reaches the server.
            with pytest.raises(errors.ResourceExhausted, match=r"exceed maximum message size of 4194304"):
                await client.call(ECHO, "Echo", big, wrappers_pb2.BytesValue)
            assert calls == []
            # The server refuses to answer with more than 4 MiB.
            with pytest.raises(errors.ResourceExhausted, match=r"^message length 4194\d+ exceed maximum"):
                await client.call(
                    ECHO, "Echo", wrappers_pb2.UInt32Value(value=protocol.MAX_DATA), empty_pb2.Empty
                )
            # Just under the limit works, and the connection is still good.
            reply = await client.call(
                ECHO, "Echo", wrappers_pb2.UInt32Value(value=protocol.MAX_DATA - 100), wrappers_pb2.BytesValue
            )
            assert len(reply.value) == protocol.MAX_DATA - 100

    run(main())


def test_server_refuses_oversize_frame_and_keeps_the_connection(tmp_path: Path) -> None:
    async def main() -> None:
        server = TtrpcServer()
        register_service(server, TASK, Task())
        await server.listen(tmp_path / "s")
        try:
            reader, writer = await asyncio.open_unix_connection(str(tmp_path / "s"))
            length = protocol.MAX_DATA + 1
            writer.write(protocol.HEADER.pack(length, 1, protocol.TYPE_REQUEST, 0) + b"\0" * length)
            state = shim_pb2.StateRequest(id="c1").SerializeToString()
            request = request_bytes(TASK.full_name, "State", payload=state)
            writer.write(protocol.pack(3, protocol.TYPE_REQUEST, 0, request))
            refused = await asyncio.wait_for(protocol.read_frame(reader), 5)
            answered = await asyncio.wait_for(protocol.read_frame(reader), 5)
            writer.close()
        finally:
            await server.close()
        status = response_of(refused.data).status
        assert refused.stream_id == 1
        assert (status.code, status.message) == (
            8,
            "message length 4194305 exceed maximum message size of 4194304",
        )
        assert answered.stream_id == 3
        assert shim_pb2.StateResponse.FromString(response_of(answered.data).payload).pid == 42

    run(main())


def test_client_refuses_oversize_frame_from_server(tmp_path: Path) -> None:
    """A rogue server's 5 MiB frame fails that call only; the next reply still arrives."""

    async def main() -> None:
        async def rogue(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            first = await protocol.read_frame(reader)
            second = await protocol.read_frame(reader)
            length = protocol.MAX_DATA + (1 << 20)
            writer.write(protocol.HEADER.pack(length, first.stream_id, protocol.TYPE_RESPONSE, 0))
            writer.write(b"\1" * length)
            reply = response_bytes(wrappers_pb2.StringValue(value="ok").SerializeToString())
            writer.write(protocol.pack(second.stream_id, protocol.TYPE_RESPONSE, 0, reply))
            await writer.drain()
            await reader.read()  # until the client hangs up
            writer.close()

        listener = await asyncio.start_unix_server(rogue, str(tmp_path / "s"))
        async with listener:
            client = await TtrpcClient.connect(tmp_path / "s")
            first = asyncio.ensure_future(client.call(ECHO, "A", empty_pb2.Empty(), wrappers_pb2.StringValue))
            second = asyncio.ensure_future(
                client.call(ECHO, "B", empty_pb2.Empty(), wrappers_pb2.StringValue)
            )
            with pytest.raises(errors.ResourceExhausted, match="message length 5242880 exceed"):
                await first
            assert (await second).value == "ok"
            await client.close()

    run(main())


def test_connect_waits_for_a_starting_server_then_gives_up(tmp_path: Path) -> None:
    async def main() -> None:
        path = tmp_path / "late.sock"
        server = TtrpcServer()
        register_service(server, TASK, Task())

        async def start_late() -> None:
            await asyncio.sleep(0.2)
            await server.listen(path)

        starter = asyncio.ensure_future(start_late())
        client = await TtrpcClient.connect(f"unix://{path}", timeout=5)
        assert (await Stub(client, TASK).State(shim_pb2.StateRequest(id="c1"))).pid == 42
        await client.close()
        await starter
        await server.close()
        with pytest.raises(errors.Unavailable, match=r"dial .*nothing.sock: timed out after 0.2s"):
            await TtrpcClient.connect(tmp_path / "nothing.sock", timeout=0.2)

    run(main())


def test_client_over_an_already_connected_socket() -> None:
    async def main() -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        server = TtrpcServer()
        register_service(server, TASK, Task())
        await server.serve_connected(theirs)
        client = await TtrpcClient.from_socket(ours)
        assert (await Stub(client, TASK).State(shim_pb2.StateRequest(id="c1"))).bundle == "/run/b"
        await client.close()
        await server.close()

    run(main())


# A peer that needs nothing but the stdlib, so another uid can run it: it sends
# one Request frame and reports whether a Response came back.
_PEER = """
import socket, sys
sock = socket.socket(socket.AF_UNIX)
sock.connect(sys.argv[1])
try:
    sock.sendall(bytes.fromhex(sys.argv[2]))
    print("answered" if sock.recv(10) else "refused")
except OSError:
    print("refused")
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another user")
def test_require_same_user_refuses_other_uids() -> None:
    async def ping(payload: bytes, metadata: Metadata) -> bytes:
        return b""

    frame = protocol.pack(1, protocol.TYPE_REQUEST, 0, request_bytes(ECHO, "Ping")).hex()

    async def peer(path: str, user: int | None) -> str:
        proc = await asyncio.create_subprocess_exec(
            "/usr/bin/python3", "-c", _PEER, path, frame, user=user, stdout=subprocess.PIPE
        )
        out, _ = await proc.communicate()
        return out.decode().strip()

    async def main(directory: str) -> None:
        path = os.path.join(directory, "s")
        server = TtrpcServer(require_same_user=True)
        server.register(ECHO, "Ping", ping)
        await server.listen(path)
        os.chmod(path, 0o777)
        try:
            assert await peer(path, None) == "answered"
            assert await peer(path, 65534) == "refused"
        finally:
            await server.close()

    directory = tempfile.mkdtemp(prefix="ttrpc-", dir="/tmp")
    try:
        os.chmod(directory, 0o755)
        run(main(directory))
    finally:
        shutil.rmtree(directory)


def test_register_twice_is_refused() -> None:
    async def handler(payload: bytes, metadata: Metadata) -> bytes:
        return b""

    server = TtrpcServer()
    server.register(ECHO, "A", handler)
    with pytest.raises(errors.AlreadyExists, match=r"wharfd\.test\.Echo/A already registered"):
        server.register(ECHO, "A", handler)
