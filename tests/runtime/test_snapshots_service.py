"""The Snapshots gRPC service through a real grpc.aio server on a unix socket, wired by its plugins."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.protobuf.message import Message

from wharfd.api.events import snapshot_pb2 as events_pb2
from wharfd.api.services.snapshots.v1 import snapshots_pb2 as pb
from wharfd.api.services.snapshots.v1 import snapshots_pb2_grpc as pb_grpc
from wharfd.runtime import events, mount, namespaces, plugin
from wharfd.runtime.metadata import plugin as metadata_plugin
from wharfd.runtime.services import plugins as api
from wharfd.runtime.services import snapshots as service
from wharfd.runtime.services.lazy import LazyService
from wharfd.runtime.snapshots import plugin as snapshots_plugin

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="the overlayfs plugin probes a real mount"),
]
NS = (("containerd-namespace", "team"),)
Event = tuple[str, str | None, Message]


class Client:
    """The stub, with the namespace metadata added to every call."""

    def __init__(self, channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...] = NS) -> None:
        self._stub = pb_grpc.SnapshotsStub(channel)
        self._metadata = metadata

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._stub, name)
        return lambda request: method(request, metadata=self._metadata)


@asynccontextmanager
async def serve(tmp_path: Path) -> AsyncIterator[tuple[grpc.aio.Channel, list[Event], plugin.PluginSet]]:
    """Start the metadata and snapshot plugins for real, and serve them on a unix socket."""
    plugins = plugin.PluginSet(
        [
            metadata_plugin.PLUGIN,
            events.PLUGIN,
            snapshots_plugin.OVERLAYFS_PLUGIN,
            snapshots_plugin.NATIVE_PLUGIN,
            api.SNAPSHOTS_PLUGIN,
        ]
    )

    def context(reg: plugin.Registration) -> plugin.InitContext:
        return plugin.InitContext(reg, None, {}, tmp_path / "root" / reg.uri, tmp_path / "state", plugins)

    await plugins.start(context)
    published: list[Event] = []

    async def publish(topic: str, event: Message) -> None:
        published.append((topic, namespaces.current.get(), event))

    server = grpc.aio.server()
    service.SnapshotsService(plugins.instances(plugin.SNAPSHOTTER), publish).register(server)
    address = f"unix:{tmp_path / 'wharfd.sock'}"
    server.add_insecure_port(address)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            yield channel, published, plugins
    finally:
        await server.stop(None)
        await plugins.close()
        mount.unmount_all(tmp_path, mount.MNT_DETACH)


def run(tmp_path: Path, fn: Callable[[Client, list[Event], grpc.aio.Channel], Awaitable[None]]) -> None:
    async def main() -> None:
        async with serve(tmp_path) as (channel, published, _plugins):
            await fn(Client(channel), published, channel)

    asyncio.run(main())


async def drain(stream: AsyncIterator[object]) -> list[object]:
    return [item async for item in stream]


async def expect_status(call: Awaitable[object], code: grpc.StatusCode, *words: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    for word in words:
        assert word in (info.value.details() or ""), info.value.details()


@pytest.mark.parametrize("snapshotter", ["overlayfs", "native"])
def test_prepare_commit_list_usage_remove(tmp_path: Path, snapshotter: str) -> None:
    async def check(client: Client, published: list[Event], _: grpc.aio.Channel) -> None:
        prepared = await client.Prepare(pb.PrepareSnapshotRequest(snapshotter=snapshotter, key="base-a"))
        assert [(m.type, list(m.options)) for m in prepared.mounts] == [("bind", ["rw", "rbind"])]
        target = tmp_path / "mnt"
        target.mkdir()
        mount.mount_all(service_mounts(prepared.mounts), target)
        try:
            (target / "data").write_bytes(b"x" * 100_000)
        finally:
            mount.unmount_all(target)
        await client.Commit(
            pb.CommitSnapshotRequest(snapshotter=snapshotter, name="base", key="base-a", labels={"l": "1"})
        )
        await client.Prepare(pb.PrepareSnapshotRequest(snapshotter=snapshotter, key="c1", parent="base"))
        await client.View(pb.ViewSnapshotRequest(snapshotter=snapshotter, key="v1", parent="base"))
        mounts = await client.Mounts(pb.MountsRequest(snapshotter=snapshotter, key="v1"))
        assert list(mounts.mounts[0].options)[:2] == ["ro", "rbind"]

        async def listed(*filters: str) -> list[tuple[str, str, int]]:
            request = pb.ListSnapshotsRequest(snapshotter=snapshotter, filters=list(filters))
            return [(i.name, i.parent, i.kind) async for r in client.List(request) for i in r.info]

        assert await listed() == [
            ("base", "", pb.COMMITTED),
            ("c1", "base", pb.ACTIVE),
            ("v1", "base", pb.VIEW),
        ]
        assert await listed("kind==active", "labels.l==1") == [
            ("base", "", pb.COMMITTED),
            ("c1", "base", pb.ACTIVE),
        ]
        assert await listed("parent==base,kind==view") == [("v1", "base", pb.VIEW)]

        usage = await client.Usage(pb.UsageRequest(snapshotter=snapshotter, key="base"))
        assert usage.size >= 100_000 and usage.inodes == 2
        stat = await client.Stat(pb.StatSnapshotRequest(snapshotter=snapshotter, key="base"))
        assert stat.info.name == "base" and dict(stat.info.labels) == {"l": "1"}
        assert stat.info.created_at.seconds > 0 and stat.info.updated_at == stat.info.created_at

        await expect_status(
            client.Remove(pb.RemoveSnapshotRequest(snapshotter=snapshotter, key="base")),
            grpc.StatusCode.FAILED_PRECONDITION,
            '"c1"',
            '"v1"',
        )
        for key in ("c1", "v1", "base"):
            await client.Remove(pb.RemoveSnapshotRequest(snapshotter=snapshotter, key=key))
        assert await listed() == []
        await client.Cleanup(pb.CleanupRequest(snapshotter=snapshotter))

        assert [(topic, ns) for topic, ns, _ in published] == [
            ("/snapshot/prepare", "team"),
            ("/snapshot/commit", "team"),
            ("/snapshot/prepare", "team"),
            ("/snapshot/remove", "team"),
            ("/snapshot/remove", "team"),
            ("/snapshot/remove", "team"),
        ]
        assert published[1][2] == events_pb2.SnapshotCommit(
            key="base-a", name="base", snapshotter=snapshotter
        )
        assert published[2][2] == events_pb2.SnapshotPrepare(key="c1", parent="base", snapshotter=snapshotter)

    run(tmp_path, check)


def service_mounts(mounts: Any) -> list[Any]:
    from wharfd.runtime.snapshots.snapshotter import Mount

    return [Mount(m.type, m.source, m.target, tuple(m.options)) for m in mounts]


def test_update_by_mask(tmp_path: Path) -> None:
    async def check(client: Client, _published: list[Event], _: grpc.aio.Channel) -> None:
        await client.Prepare(
            pb.PrepareSnapshotRequest(snapshotter="native", key="k", labels={"a": "1", "b": "2"})
        )
        info = pb.Info(name="k", labels={"b": "", "c": "3"})
        mask = field_mask_pb2.FieldMask(paths=["labels.b", "labels.c"])
        updated = await client.Update(
            pb.UpdateSnapshotRequest(snapshotter="native", info=info, update_mask=mask)
        )
        assert dict(updated.info.labels) == {"a": "1", "c": "3"}
        assert updated.info.kind == pb.ACTIVE
        await expect_status(
            client.Update(
                pb.UpdateSnapshotRequest(
                    snapshotter="native", info=info, update_mask=field_mask_pb2.FieldMask(paths=["kind"])
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            '"kind"',
        )

    run(tmp_path, check)


def test_error_codes_name_what_is_wrong(tmp_path: Path) -> None:
    async def check(client: Client, _published: list[Event], channel: grpc.aio.Channel) -> None:
        await expect_status(
            client.Stat(pb.StatSnapshotRequest(snapshotter="zfs", key="k")),
            grpc.StatusCode.NOT_FOUND,
            "'zfs'",
        )
        await expect_status(
            client.Stat(pb.StatSnapshotRequest(key="k")), grpc.StatusCode.INVALID_ARGUMENT, "snapshotter"
        )
        await expect_status(
            client.Stat(pb.StatSnapshotRequest(snapshotter="overlayfs", key="nope")),
            grpc.StatusCode.NOT_FOUND,
            '"nope"',
        )
        no_namespace = Client(channel, metadata=())
        await expect_status(
            no_namespace.Prepare(pb.PrepareSnapshotRequest(snapshotter="overlayfs", key="k")),
            grpc.StatusCode.FAILED_PRECONDITION,
            "namespace",
        )
        await client.Prepare(pb.PrepareSnapshotRequest(snapshotter="overlayfs", key="k"))
        await expect_status(
            client.Prepare(pb.PrepareSnapshotRequest(snapshotter="overlayfs", key="k")),
            grpc.StatusCode.ALREADY_EXISTS,
            '"k"',
        )
        await expect_status(
            client.Prepare(pb.PrepareSnapshotRequest(snapshotter="overlayfs", key="x", parent="k")),
            grpc.StatusCode.INVALID_ARGUMENT,
            '"k"',
        )
        await expect_status(
            client.Commit(
                pb.CommitSnapshotRequest(snapshotter="overlayfs", name="n", key="k", parent="other")
            ),
            grpc.StatusCode.UNIMPLEMENTED,
            "parent",
        )
        await expect_status(
            drain(client.List(pb.ListSnapshotsRequest(snapshotter="overlayfs", filters=["name=="]))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "filter",
        )
        # The same key is free in another namespace, and the snapshotters do not share keys.
        other = Client(channel, metadata=(("containerd-namespace", "other"),))
        await other.Prepare(pb.PrepareSnapshotRequest(snapshotter="overlayfs", key="k"))
        await client.Prepare(pb.PrepareSnapshotRequest(snapshotter="native", key="k"))

    run(tmp_path, check)


def test_list_streams_in_batches(tmp_path: Path) -> None:
    async def check(client: Client, _published: list[Event], _: grpc.aio.Channel) -> None:
        for i in range(service.LIST_BATCH + 5):
            await client.View(pb.ViewSnapshotRequest(snapshotter="native", key=f"v{i:03}"))
        sizes = [len(r.info) async for r in client.List(pb.ListSnapshotsRequest(snapshotter="native"))]
        assert sizes == [service.LIST_BATCH, 5]

    run(tmp_path, check)


def test_plugins_register_and_export_their_roots(tmp_path: Path) -> None:
    async def main() -> None:
        async with serve(tmp_path) as (_channel, _published, plugins):
            started = {p.registration.uri: p for p in plugins.plugins}
            for sid in ("overlayfs", "native"):
                p = started[f"io.containerd.snapshotter.v1.{sid}"]
                assert p.status == "ok"
                assert p.exports["root"] == str(tmp_path / "root" / f"io.containerd.snapshotter.v1.{sid}")
            assert started["io.containerd.grpc.v1.snapshots"].status == "ok"
            grpc_plugin = plugins.instance(plugin.GRPC, "snapshots")
            assert isinstance(grpc_plugin, LazyService) and grpc_plugin.api is api.SNAPSHOTS

    asyncio.run(main())
