"""ttrpc streaming in its three shapes, through the typed service helper over a real unix socket."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, empty_pb2, wrappers_pb2
from google.protobuf.descriptor import ServiceDescriptor

from wharfd.runtime import errors
from wharfd.runtime.ttrpc import protocol
from wharfd.runtime.ttrpc.client import TtrpcClient
from wharfd.runtime.ttrpc.server import Metadata, TtrpcServer
from wharfd.runtime.ttrpc.services import Stub, register_service
from wharfd.runtime.ttrpc.testing import connected

UInt32 = wrappers_pb2.UInt32Value
String = wrappers_pb2.StringValue


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def streamer_descriptor() -> ServiceDescriptor:
    """``wharfd.test.Streamer``: one RPC of each streaming shape, on well-known message types."""
    pool = descriptor_pool.Default()
    try:
        return pool.FindServiceByName("wharfd.test.Streamer")
    except KeyError:
        pass
    file = descriptor_pb2.FileDescriptorProto(
        name="wharfd/test/ttrpc_streamer.proto",
        package="wharfd.test",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto", "google/protobuf/empty.proto"],
    )
    service = file.service.add(name="Streamer")
    for name, request, reply, client, server in [
        ("Count", "UInt32Value", "UInt32Value", False, True),
        ("Ticks", "Empty", "UInt32Value", False, True),
        ("Sum", "UInt32Value", "StringValue", True, False),
        ("Shout", "StringValue", "StringValue", True, True),
    ]:
        service.method.add(
            name=name,
            input_type=f".google.protobuf.{request}",
            output_type=f".google.protobuf.{reply}",
            client_streaming=client,
            server_streaming=server,
        )
    pool.AddSerializedFile(file.SerializeToString())
    return pool.FindServiceByName("wharfd.test.Streamer")


STREAMER = streamer_descriptor()


class Streamer:
    def __init__(self) -> None:
        self.cancelled = asyncio.Event()

    async def Count(self, request: UInt32, metadata: Metadata) -> AsyncIterator[UInt32]:
        for i in range(request.value):
            yield UInt32(value=i)
        if "fail" in metadata:
            raise errors.NotFound("counter ran out")

    async def Ticks(self, request: empty_pb2.Empty, metadata: Metadata) -> AsyncIterator[UInt32]:
        for i in range(3):
            yield UInt32(value=i)

    async def Sum(self, requests: AsyncIterator[UInt32], metadata: Metadata) -> String:
        values = [r.value async for r in requests]
        return String(value=f"count={len(values)} sum={sum(values)}")

    async def Shout(self, requests: AsyncIterator[String], metadata: Metadata) -> AsyncIterator[String]:
        try:
            async for request in requests:
                yield String(value=request.value.upper())
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


def serve(tmp_path: Path, impl: Streamer | None = None) -> Any:
    server = TtrpcServer()
    register_service(server, STREAMER, impl or Streamer())
    return connected(server, tmp_path / "s")


def test_server_stream_delivers_every_message_including_empty_ones(tmp_path: Path) -> None:
    async def main() -> None:
        async with serve(tmp_path) as client:
            stub = Stub(client, STREAMER)
            async with stub.Count(UInt32(value=5)) as stream:
                # UInt32(0) encodes to zero bytes: still a message, not "no data".
                assert [m.value async for m in stream] == [0, 1, 2, 3, 4]
            assert await stream.recv() is None
            # An empty request message still starts a server stream (Go ttrpc issue 126).
            assert [m.value async for m in stub.Ticks(empty_pb2.Empty())] == [0, 1, 2]

    run(main())


def test_server_stream_error_after_some_messages(tmp_path: Path) -> None:
    async def main() -> None:
        async with serve(tmp_path) as client:
            received = []
            with pytest.raises(errors.NotFound, match=r"^counter ran out$"):
                async for m in Stub(client, STREAMER).Count(UInt32(value=3), metadata={"fail": "yes"}):
                    received.append(m.value)
            assert received == [0, 1, 2]

    run(main())


def test_client_stream_sums_what_it_is_sent(tmp_path: Path) -> None:
    async def main() -> None:
        async with serve(tmp_path) as client:
            stream = Stub(client, STREAMER).Sum()
            for value in (0, 1, 2, 0):
                await stream.send(UInt32(value=value))
            assert (await stream.close_and_recv()).value == "count=4 sum=3"
            assert await stream.recv() is None
            # A first message may ride in the Request itself.
            stream = client.stream(
                STREAMER.full_name,
                "Sum",
                UInt32(value=5),
                String,
                client_streaming=True,
                server_streaming=False,
            )
            await stream.send(UInt32(value=1))
            assert (await stream.close_and_recv()).value == "count=2 sum=6"

    run(main())


def test_bidi_stream_ping_pong(tmp_path: Path) -> None:
    async def main() -> None:
        async with serve(tmp_path) as client, Stub(client, STREAMER).Shout() as stream:
            for word in ("ping", "pong", ""):
                await stream.send(String(value=word))
                reply = await stream.recv()
                assert reply is not None
                assert reply.value == word.upper()
            await stream.close_send()
            assert await stream.recv() is None
            with pytest.raises(errors.FailedPrecondition, match="stream closed"):
                await stream.send(String(value="late"))

    run(main())


def test_many_streams_and_unary_calls_interleave(tmp_path: Path) -> None:
    async def main() -> None:
        async with serve(tmp_path) as client:
            stub = Stub(client, STREAMER)

            async def count(n: int) -> list[int]:
                return [m.value async for m in stub.Count(UInt32(value=n))]

            async def shout(word: str) -> str:
                stream = stub.Shout()
                await stream.send(String(value=word))
                await stream.close_send()
                replies = [m.value async for m in stream]
                return "".join(replies)

            results = await asyncio.gather(
                *(count(n) for n in range(20)), *(shout(f"w{n}") for n in range(20))
            )
            assert results[:20] == [list(range(n)) for n in range(20)]
            assert results[20:] == [f"W{n}" for n in range(20)]

    run(main())


def test_stream_timeout_fails_recv_and_stops_the_handler(tmp_path: Path) -> None:
    async def main() -> None:
        impl = Streamer()
        async with serve(tmp_path, impl) as client:
            stream = Stub(client, STREAMER).Shout(timeout=0.2)
            with pytest.raises(errors.DeadlineExceeded, match=r"Shout: deadline exceeded after 0\.2s"):
                await stream.recv()
            await asyncio.wait_for(impl.cancelled.wait(), 2)  # timeout_nano reached the server

    run(main())


def test_stream_fails_when_the_server_goes_away(tmp_path: Path) -> None:
    async def main() -> None:
        server = TtrpcServer()
        register_service(server, STREAMER, Streamer())
        await server.listen(tmp_path / "s")
        client = await TtrpcClient.connect(tmp_path / "s")
        stream = Stub(client, STREAMER).Shout()
        await stream.send(String(value="a"))
        assert (await stream.recv()) == String(value="A")
        await server.close()
        with pytest.raises(protocol.ConnectionClosed):
            await stream.recv()
        with pytest.raises(errors.Unavailable):
            await stream.send(String(value="b"))
        await client.close()

    run(main())


def test_misuse_of_a_stream_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        async with serve(tmp_path) as client:
            stream = Stub(client, STREAMER).Count(UInt32(value=1))
            with pytest.raises(errors.FailedPrecondition, match="cannot send data from non-streaming client"):
                await stream.send(UInt32(value=1))
            with pytest.raises(errors.FailedPrecondition, match="cannot close non-streaming client"):
                await stream.close_send()
            await stream.aclose()

    run(main())


def test_unread_stream_overflows_without_starving_the_connection(tmp_path: Path) -> None:
    """Go ttrpc's ErrStreamFull rule: a stream nobody reads fails after a second; other calls go on."""

    async def ping(payload: bytes, metadata: Metadata) -> bytes:
        return payload

    async def main() -> None:
        server = TtrpcServer()
        register_service(server, STREAMER, Streamer())
        server.register("wharfd.test.Echo", "Ping", ping)
        async with connected(server, tmp_path / "s") as client:
            stream = Stub(client, STREAMER).Count(UInt32(value=100_000))
            await asyncio.sleep(0.1)
            start = time.monotonic()
            reply = await client.call("wharfd.test.Echo", "Ping", String(value="hi"), String)
            assert reply.value == "hi"
            assert time.monotonic() - start < 3
            with pytest.raises(errors.ResourceExhausted, match="stream buffer full"):
                async for _ in stream:
                    pass

    run(main())


# Count(2) opened with a Request flagged remote closed (0x01): 33 bytes, stream 1.
COUNT_REQUEST = (
    bytes.fromhex("00000021 00000001 01 01")
    + b"\x0a\x14wharfd.test.Streamer" + b"\x12\x05Count" + b"\x1a\x02\x08\x02"
)  # fmt: skip
# Two Data frames (UInt32 0 is zero bytes, no flags: still a message), then remote closed + no data.
COUNT_REPLIES = (
    bytes.fromhex("00000000 00000001 03 00")
    + bytes.fromhex("00000002 00000001 03 00 0801")
    + bytes.fromhex("00000000 00000001 03 05")
)  # fmt: skip

# Sum opened remote open (0x02) with no payload, fed UInt32 2 and UInt32 0, then closed (0x05).
SUM_FRAMES = (
    bytes.fromhex("0000001b 00000001 01 02") + b"\x0a\x14wharfd.test.Streamer" + b"\x12\x03Sum"
    + bytes.fromhex("00000002 00000001 03 00 0802")
    + bytes.fromhex("00000000 00000001 03 00")
    + bytes.fromhex("00000000 00000001 03 05")
)  # fmt: skip
# The single reply rides in a Response: payload StringValue "count=2 sum=2".
SUM_RESPONSE = bytes.fromhex("00000011 00000001 02 00 120f 0a0d") + b"count=2 sum=2"


@pytest.mark.parametrize(("sent", "expected"), [(COUNT_REQUEST, COUNT_REPLIES), (SUM_FRAMES, SUM_RESPONSE)])
def test_stream_frames_byte_for_byte(tmp_path: Path, sent: bytes, expected: bytes) -> None:
    async def main() -> None:
        server = TtrpcServer()
        register_service(server, STREAMER, Streamer())
        await server.listen(tmp_path / "s")
        try:
            reader, writer = await asyncio.open_unix_connection(str(tmp_path / "s"))
            writer.write(sent)
            got = await reader.readexactly(len(expected))
            writer.close()
        finally:
            await server.close()
        assert got == expected

    run(main())


def test_client_stream_flags_on_the_wire(tmp_path: Path) -> None:
    """What the client sends for a client-streaming call is exactly SUM_FRAMES."""

    async def main() -> None:
        sent: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sent.set_result(await reader.readexactly(len(SUM_FRAMES)))
            writer.write(SUM_RESPONSE)
            await reader.read()
            writer.close()

        async with await asyncio.start_unix_server(peer, str(tmp_path / "s")):
            client = await TtrpcClient.connect(tmp_path / "s")
            stream = Stub(client, STREAMER).Sum()
            await stream.send(UInt32(value=2))
            await stream.send(UInt32(value=0))
            assert (await stream.close_and_recv()).value == "count=2 sum=2"
            await client.close()
        assert await sent == SUM_FRAMES

    run(main())


def test_big_messages_flow_with_back_pressure(tmp_path: Path) -> None:
    """30 MiB through a bidi stream while nobody reads replies until all is sent: writes wait, nothing is lost."""

    async def main() -> None:
        async with serve(tmp_path) as client:
            words = [chr(ord("a") + i) * (3 << 20) for i in range(10)]
            async with Stub(client, STREAMER).Shout(timeout=20) as stream:
                for word in words:
                    await stream.send(String(value=word))
                await stream.close_send()
                replies = [m.value async for m in stream]
            assert replies == [w.upper() for w in words]

    run(main())
