"""The Transfer and Streaming services in-process over grpc.aio, with the real stores, puller and registry.

The client side here speaks the protocol the way ctr 2.x does: it opens
named streams (StreamInit, then waits for the ack), answers credential
requests, grants WindowUpdates while receiving an export and sends Data
within the granted window for an import.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import tarfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2

from tests.runtime.pull_rig import Rig, needs_root, push, rig
from tests.support.images import AMD64, File, Image, build_image, build_layer, directory
from tests.support.registry import RegistryServer, run_registry
from wharfd.api.services.streaming.v1 import streaming_pb2 as spb
from wharfd.api.services.streaming.v1 import streaming_pb2_grpc as spb_grpc
from wharfd.api.services.transfer.v1 import transfer_pb2 as tpb
from wharfd.api.services.transfer.v1 import transfer_pb2_grpc as tpb_grpc
from wharfd.api.types import platform_pb2
from wharfd.api.types.transfer import imagestore_pb2, importexport_pb2, progress_pb2, registry_pb2
from wharfd.api.types.transfer import streaming_pb2 as data_pb2
from wharfd.runtime import plugin
from wharfd.runtime.images.progress import Progress
from wharfd.runtime.services import plugins as api
from wharfd.runtime.services import stream_manager, streaming
from wharfd.runtime.services.streaming import pack, type_name, unpack

pytestmark = needs_root
NS = (("containerd-namespace", "default"),)
LINUX_AMD64 = platform_pb2.Platform(os="linux", architecture="amd64")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    with run_registry(tmp_path_factory.mktemp("registry")) as server:
        yield server


def small_image(text: str) -> Image:
    return build_image([build_layer([directory("etc"), File("etc/motd", text.encode())])], platform=AMD64)


@dataclass
class Client:
    """A channel to the in-process server, with the stubs."""

    channel: grpc.aio.Channel
    rig: Rig
    transfer: Any = None
    streaming: Any = None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.transfer = tpb_grpc.TransferStub(self.channel)
        self.streaming = spb_grpc.StreamingStub(self.channel)

    async def stream(self, stream_id: str) -> Any:
        """Open a stream and wait for the server's ack."""
        call = self.streaming.Stream(metadata=NS)
        await call.write(pack(spb.StreamInit(id=stream_id)))
        ack = await call.read()
        assert type_name(ack) == "google.protobuf.Empty"
        return call

    async def progress(self, stream_id: str) -> list[Progress]:
        """Collect the records of a progress stream until the server ends it."""
        call = await self.stream(stream_id)
        records: list[Progress] = []

        async def collect() -> None:
            while (msg := await call.read()) is not grpc.aio.EOF:  # type: ignore[attr-defined]
                p = unpack(msg, progress_pb2.Progress)
                records.append(Progress(p.event, p.name, tuple(p.parents), p.progress, p.total))

        self.tasks.append(asyncio.get_running_loop().create_task(collect()))
        return records

    async def run(self, source: Any, destination: Any, progress: str = "") -> None:
        request = tpb.TransferRequest(
            source=pack(source),
            destination=pack(destination),
            options=tpb.TransferOptions(progress_stream=progress),
        )
        await self.transfer.Transfer(request, metadata=NS)
        await asyncio.gather(*self.tasks)
        self.tasks.clear()


@contextlib.asynccontextmanager
async def serve(tmp_path: Path) -> AsyncIterator[Client]:
    extra = (stream_manager.PLUGIN, api.STREAMING_PLUGIN, api.TRANSFER_PLUGIN)
    async with rig(tmp_path, extra) as r:
        server = grpc.aio.server()
        for p in r.plugins.started(plugin.GRPC):
            p.instance.register(server)
        address = f"unix:{tmp_path / 'wharfd.sock'}"
        server.add_insecure_port(address)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                yield Client(channel, r)
        finally:
            await server.stop(None)


def run(tmp_path: Path, body: Any) -> Any:
    async def main() -> Any:
        async with serve(tmp_path) as client:
            return await body(client)

    return asyncio.run(main())


def store(name: str = "", **kwargs: Any) -> imagestore_pb2.ImageStore:
    return imagestore_pb2.ImageStore(name=name, **kwargs)


def pull_store(ref: str) -> imagestore_pb2.ImageStore:
    return store(
        ref,
        platforms=[LINUX_AMD64],
        all_metadata=True,
        unpacks=[imagestore_pb2.UnpackConfiguration(platform=LINUX_AMD64)],
    )


def registry_source(ref: str, auth_stream: str = "") -> registry_pb2.OCIRegistry:
    resolver = registry_pb2.RegistryResolver(default_scheme="http", auth_stream=auth_stream)
    return registry_pb2.OCIRegistry(reference=ref, resolver=resolver)


# --- streaming -------------------------------------------------------------------------


def test_stream_registration_and_errors(tmp_path: Path) -> None:
    async def body(client: Client) -> None:
        manager = client.rig.plugins.instance(stream_manager.STREAMING, "manager")
        first = await client.stream("s1")
        assert len(manager) == 1
        dup = client.streaming.Stream(metadata=NS)
        await dup.write(pack(spb.StreamInit(id="s1")))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await dup.read()
        assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
        bad = client.streaming.Stream(metadata=NS)
        await bad.write(pack(data_pb2.Data(data=b"x")))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await bad.read()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "StreamInit" in (info.value.details() or "")
        first.cancel()
        for _ in range(100):  # the id is free again once the client went away
            if not len(manager):
                break
            await asyncio.sleep(0.01)
        assert len(manager) == 0

    run(tmp_path, body)


def test_unknown_pair_and_missing_progress_stream(tmp_path: Path) -> None:
    async def body(client: Client) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.run(registry_source("x/y:1"), registry_source("x/z:1"))
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "containerd.types.transfer.OCIRegistry to containerd.types.transfer.OCIRegistry" in str(
            info.value.details()
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.run(store("a"), store("b"), progress="nope")
        assert info.value.code() == grpc.StatusCode.NOT_FOUND

    run(tmp_path, body)


# --- pull, export, import, push ---------------------------------------------------------------


async def answer_auth(call: Any, asked: list[str]) -> None:
    """Answer every credential request anonymously, as ctr does without --user."""
    while (msg := await call.read()) is not grpc.aio.EOF:  # type: ignore[attr-defined]
        req = unpack(msg, registry_pb2.AuthRequest)
        asked.append(req.host)
        await call.write(pack(registry_pb2.AuthResponse(authType=registry_pb2.REFRESH)))


async def export_bytes(client: Client, names: list[str], **opts: Any) -> bytes:
    call = await client.stream("export-1")
    received = bytearray()

    async def receive() -> None:
        window = 0
        while True:
            if window < streaming.WINDOW:
                await call.write(pack(data_pb2.WindowUpdate(update=streaming.WINDOW)))
                window += streaming.WINDOW
            msg = await call.read()
            if msg is grpc.aio.EOF:  # type: ignore[attr-defined]
                return
            data = unpack(msg, data_pb2.Data).data
            assert len(data) <= streaming.MAX_DATA
            window -= len(data)
            assert window >= 0, "the server sent more than it was granted"
            received.extend(data)

    task = asyncio.get_running_loop().create_task(receive())
    refs = [imagestore_pb2.ImageReference(name=n) for n in names]
    await client.run(
        store(extra_references=refs), importexport_pb2.ImageExportStream(stream="export-1", **opts)
    )
    await task
    return bytes(received)


async def import_bytes(
    client: Client, data: bytes, dest: imagestore_pb2.ImageStore, progress: str = ""
) -> None:
    call = await client.stream("import-1")

    async def send() -> None:
        credit, view = 0, memoryview(data)
        while view:
            while credit <= 0:
                msg = await call.read()
                credit += unpack(msg, data_pb2.WindowUpdate).update
            n = min(len(view), streaming.MAX_DATA, credit)
            await call.write(pack(data_pb2.Data(data=bytes(view[:n]))))
            credit, view = credit - n, view[n:]
        await call.done_writing()

    sender = asyncio.get_running_loop().create_task(send())
    await client.run(importexport_pb2.ImageImportStream(stream="import-1"), dest, progress)
    await sender


def test_pull_export_import_push(tmp_path: Path, registry: RegistryServer) -> None:
    image = small_image("transfer")

    async def body(client: Client) -> dict[str, Any]:
        ref = await push(registry.host, "svc/app:1", image)
        out: dict[str, Any] = {"ref": ref}
        progress = await client.progress("progress-1")
        auth = await client.stream("creds-1")
        asked: list[str] = []
        answering = asyncio.get_running_loop().create_task(answer_auth(auth, asked))
        await client.run(registry_source(ref, "creds-1"), pull_store(ref), "progress-1")
        out["pull"] = progress
        await answering  # the server closed the auth stream at the end
        images = client.rig.images
        pulled = await images.get(ref)
        out["target"] = pulled.target.digest
        out["unpacked"] = await client.rig.puller.is_unpacked(pulled.target, platforms=["linux/amd64"])

        tar = await export_bytes(client, [ref], platforms=[LINUX_AMD64])
        out["tar"] = tar
        await images.delete(ref)
        prefix = imagestore_pb2.ImageReference(name="import-x", is_prefix=True, allow_overwrite=True)
        dest = store(
            extra_references=[prefix],
            platforms=[LINUX_AMD64],
            unpacks=[imagestore_pb2.UnpackConfiguration(platform=LINUX_AMD64)],
        )
        progress = await client.progress("progress-2")
        await import_bytes(client, tar, dest, "progress-2")
        out["import"] = progress
        out["imported"] = (await images.get(ref)).target.digest

        progress = await client.progress("progress-3")
        other = f"{registry.host}/svc/copy:2"
        await client.run(store(ref), registry_source(other), "progress-3")
        out["push"] = progress
        return out

    out = run(tmp_path, body)
    pull: list[Progress] = out["pull"]
    assert pull[0].event == f"Resolving from OCI Registry ({out['ref']})" and not pull[0].name
    statuses = [p.event for p in pull if not p.name]
    assert statuses[-1] == f"Completed pull from OCI Registry ({out['ref']})"
    # After the closing status the last node is sent again, so that ctr redraws with that status.
    assert pull[-2].event == statuses[-1] and pull[-1].name == out["ref"] and pull[-1].event == "saved"
    layer = f"layer-{image.layers[0].descriptor.digest}"
    layer_events = [p for p in pull if p.name == layer]
    assert layer_events and layer_events[-1].event == "extracted"
    assert layer_events[0].parents == (f"manifest-{image.manifest_desc.digest}",)
    assert ("saved", out["ref"]) in {(p.event, p.name) for p in pull}
    assert out["target"] == image.manifest_desc.digest and out["unpacked"]

    files = {}
    with tarfile.open(fileobj=io.BytesIO(out["tar"])) as tar:
        for m in tar.getmembers():
            f = tar.extractfile(m)
            files[m.name] = f.read() if f else b""
    index = json.loads(files["index.json"])
    assert index["manifests"][0]["annotations"]["io.containerd.image.name"] == out["ref"]

    assert [p.event for p in out["import"] if not p.name] == ["Importing", "Completed import"]
    assert out["imported"] == out["target"]
    push_events = out["push"]
    assert [p.event for p in push_events if not p.name][-1].startswith("Completed push to OCI Registry (")
    assert {p.event for p in push_events if p.name == layer} >= {"waiting"}


def test_import_refuses_malformed_archive_over_the_wire(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../escape")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))

    async def body(client: Client) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await import_bytes(client, buf.getvalue(), store("x:1"))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "../escape" in str(info.value.details())
        manager = client.rig.plugins.instance(stream_manager.STREAMING, "manager")
        assert len(manager) == 0

    run(tmp_path, body)


def test_pack_unpack_type_urls() -> None:
    packed = pack(data_pb2.Data(data=b"x"))
    assert packed.type_url == "containerd.types.transfer.Data"
    prefixed = any_pb2.Any(type_url="type.googleapis.com/containerd.types.transfer.Data", value=packed.value)
    assert unpack(prefixed, data_pb2.Data).data == b"x"


def test_import_docker_save_for_the_host_platform(tmp_path: Path) -> None:
    from tests.runtime.test_images_archive import docker_save_tar
    from wharfd.runtime.images import platforms

    layer = build_layer([File("hello", b"docker")], docker=True)
    image = build_image([layer, layer], docker=True, platform=AMD64)  # the archive lists the layer twice
    here = platforms.host()
    host = platform_pb2.Platform(os=here.os, architecture=here.architecture, variant=here.variant)

    async def body(client: Client) -> tuple[str, bool]:
        prefix = imagestore_pb2.ImageReference(name="import-x", is_prefix=True, allow_overwrite=True)
        dest = store(
            extra_references=[prefix],
            platforms=[host],  # linux/amd64/v4 here: it runs the archive's plain linux/amd64 image
            unpacks=[imagestore_pb2.UnpackConfiguration(platform=host)],
        )
        await import_bytes(client, docker_save_tar(image, ["saved/app:3"]), dest)
        record = await client.rig.images.get("docker.io/saved/app:3")
        return record.target.media_type, await client.rig.puller.is_unpacked(record.target)

    media_type, unpacked = run(tmp_path, body)
    assert media_type == "application/vnd.docker.distribution.manifest.v2+json" and unpacked
