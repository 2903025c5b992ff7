"""The CRI v1 servicers (RuntimeService and ImageService) with their error boundary.

Every handler runs in namespace ``k8s.io`` through :mod:`wharfd.runtime.services.boundary`,
so typed errors become gRPC statuses in one place. RPCs that are not built yet
answer UNIMPLEMENTED with the method's name; kubelet tolerates that for the
optional ones and the later work fills the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.api.cri.v1 import api_pb2_grpc as cri_grpc
from wharfd.cri import (
    container_create,
    container_exec,
    container_io,
    container_list,
    container_remove,
    container_start,
    container_status,
    container_stop,
    container_update,
    image_fs_info,
    image_list,
    image_remove,
    image_status,
    network,
    sandbox_list,
    sandbox_remove,
    sandbox_run,
    sandbox_status,
    sandbox_stop,
    sandbox_update,
)
from wharfd.cri.config import CRI as CRI_ID
from wharfd.cri.events import ContainerEvents, instrument
from wharfd.cri.image_fs_info import SnapshotUsage
from wharfd.cri.image_pull import ImagePuller
from wharfd.cri.images import Catalog, ImageConfig
from wharfd.cri.observe import Observability
from wharfd.cri.recovery import ExitMonitor, check_networks, recover
from wharfd.cri.store import CriState
from wharfd.runtime import errors, namespaces, plugin, version
from wharfd.runtime.metadata.containers import ContainerStore
from wharfd.runtime.services import boundary

cri_unary = functools.partial(boundary.unary, namespace=namespaces.K8S)
cri_stream = functools.partial(boundary.stream, namespace=namespaces.K8S)

log = logging.getLogger("wharfd.cri")


class RuntimeService(cri_grpc.RuntimeServiceServicer):
    """``runtime.v1.RuntimeService``: thin adapters over the ``wharfd.cri.sandbox_*``/``container_*`` handlers.

    Every handler gets ``self.state`` (:class:`wharfd.cri.store.CriState`).
    """

    def __init__(self, state: CriState) -> None:
        self.state = state

    @cri_unary
    async def Version(
        self, request: cri.VersionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cri.VersionResponse:
        # kubelet refuses a runtime whose Version leaves any of these four empty.
        return cri.VersionResponse(
            version=version.VERSION,
            runtime_name=version.RUNTIME_NAME,
            runtime_version=version.version(),
            runtime_api_version=version.CRI_API_VERSION,
        )

    # --- pod sandboxes (wharfd.cri.sandbox_*) ---------------------------------------------------

    @cri_unary
    async def RunPodSandbox(
        self, request: cri.RunPodSandboxRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cri.RunPodSandboxResponse:
        return await sandbox_run.run_pod_sandbox(self.state, request)

    @cri_unary
    async def StopPodSandbox(
        self, request: cri.StopPodSandboxRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cri.StopPodSandboxResponse:
        return await sandbox_stop.stop_pod_sandbox(self.state, request)

    @cri_unary
    async def RemovePodSandbox(
        self, request: cri.RemovePodSandboxRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cri.RemovePodSandboxResponse:
        return await sandbox_remove.remove_pod_sandbox(self.state, request)

    @cri_unary
    async def PodSandboxStatus(
        self, request: cri.PodSandboxStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cri.PodSandboxStatusResponse:
        return await sandbox_status.pod_sandbox_status(self.state, request)

    @cri_unary
    async def ListPodSandbox(
        self, request: cri.ListPodSandboxRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cri.ListPodSandboxResponse:
        return await sandbox_list.list_pod_sandbox(self.state, request)

    @cri_stream
    async def StreamPodSandboxes(
        self, request: cri.StreamPodSandboxesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[cri.StreamPodSandboxesResponse]:
        async for chunk in sandbox_list.stream_pod_sandboxes(self.state, request):
            yield chunk

    @cri_unary
    async def UpdatePodSandboxResources(
        self, request: cri.UpdatePodSandboxResourcesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cri.UpdatePodSandboxResourcesResponse:
        return await sandbox_update.update_pod_sandbox_resources(self.state, request)

    # --- containers (wharfd.cri.container_*) ---------------------------------------------------

    @cri_unary
    async def CreateContainer(
        self, request: cri.CreateContainerRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cri.CreateContainerResponse:
        return await container_create.create_container(self.state, request)

    @cri_unary
    async def StartContainer(
        self, request: cri.StartContainerRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cri.StartContainerResponse:
        return await container_start.start_container(self.state, request)

    @cri_unary
    async def StopContainer(
        self, request: cri.StopContainerRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cri.StopContainerResponse:
        return await container_stop.stop_container_rpc(self.state, request)

    @cri_unary
    async def RemoveContainer(
        self, request: cri.RemoveContainerRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cri.RemoveContainerResponse:
        return await container_remove.remove_container_rpc(self.state, request)

    @cri_unary
    async def ContainerStatus(
        self, request: cri.ContainerStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cri.ContainerStatusResponse:
        return await container_status.container_status(self.state, request)

    @cri_unary
    async def ListContainers(
        self, request: cri.ListContainersRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cri.ListContainersResponse:
        return await container_list.list_containers(self.state, request)

    @cri_stream
    async def StreamContainers(
        self, request: cri.StreamContainersRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[cri.StreamContainersResponse]:
        async for chunk in container_list.stream_containers(self.state, request):
            yield chunk

    @cri_unary
    async def UpdateContainerResources(
        self, request: cri.UpdateContainerResourcesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cri.UpdateContainerResourcesResponse:
        return await container_update.update_container_resources(self.state, request)

    @cri_unary
    async def ReopenContainerLog(
        self, request: cri.ReopenContainerLogRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cri.ReopenContainerLogResponse:
        return await container_io.reopen_container_log(self.state, request)

    @cri_unary
    async def ExecSync(
        self, request: cri.ExecSyncRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cri.ExecSyncResponse:
        return await container_exec.exec_sync(self.state, request)

    # --- runtime status, config, stats, metrics, events (wharfd.cri.observe) ---------------------

    # Set by the plugin's init (it needs the image service's usage sampler); None in bare unit setups.
    observe: Observability | None = None

    @property
    def events(self) -> ContainerEvents | None:
        """The container event fan-out the lifecycle methods send to (see events.instrument)."""
        return self.observe.events if self.observe is not None else None

    def _observe(self) -> Observability:
        if self.observe is None:
            raise errors.Unavailable("CRI runtime status and stats are not initialised")
        return self.observe

    @cri_unary
    async def Status(
        self, request: cri.StatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cri.StatusResponse:
        return await self._observe().status.status(request)

    @cri_unary
    async def RuntimeConfig(
        self, request: cri.RuntimeConfigRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cri.RuntimeConfigResponse:
        return self._observe().runtime_config.runtime_config()

    @cri_unary
    async def UpdateRuntimeConfig(
        self, request: cri.UpdateRuntimeConfigRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cri.UpdateRuntimeConfigResponse:
        return await self._observe().runtime_config.update(request)

    @cri_unary
    async def ContainerStats(
        self, request: cri.ContainerStatsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cri.ContainerStatsResponse:
        return await self._observe().stats.container_stats(request)

    @cri_unary
    async def ListContainerStats(
        self, request: cri.ListContainerStatsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cri.ListContainerStatsResponse:
        return await self._observe().stats.list_container_stats(request)

    @cri_stream
    async def StreamContainerStats(
        self, request: cri.StreamContainerStatsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[cri.StreamContainerStatsResponse]:
        async for chunk in self._observe().stats.stream_container_stats(request):
            yield chunk

    @cri_unary
    async def PodSandboxStats(
        self, request: cri.PodSandboxStatsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cri.PodSandboxStatsResponse:
        return await self._observe().stats.pod_sandbox_stats(request)

    @cri_unary
    async def ListPodSandboxStats(
        self, request: cri.ListPodSandboxStatsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cri.ListPodSandboxStatsResponse:
        return await self._observe().stats.list_pod_sandbox_stats(request)

    @cri_stream
    async def StreamPodSandboxStats(
        self, request: cri.StreamPodSandboxStatsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[cri.StreamPodSandboxStatsResponse]:
        async for chunk in self._observe().stats.stream_pod_sandbox_stats(request):
            yield chunk

    @cri_unary
    async def ListMetricDescriptors(
        self, request: cri.ListMetricDescriptorsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cri.ListMetricDescriptorsResponse:
        return self._observe().metrics.list_descriptors()

    @cri_unary
    async def ListPodSandboxMetrics(
        self, request: cri.ListPodSandboxMetricsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cri.ListPodSandboxMetricsResponse:
        return await self._observe().metrics.list_pod_sandbox_metrics()

    @cri_stream
    async def StreamPodSandboxMetrics(
        self, request: cri.StreamPodSandboxMetricsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[cri.StreamPodSandboxMetricsResponse]:
        async for chunk in self._observe().metrics.stream_pod_sandbox_metrics():
            yield chunk

    @cri_stream
    async def GetContainerEvents(
        self, request: cri.GetEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[cri.ContainerEventResponse]:
        with self._observe().events.subscribe() as subscription:
            async for event in subscription:
                yield event


class ImageService(cri_grpc.ImageServiceServicer):
    """``runtime.v1.ImageService``: thin adapters over the ``wharfd.cri.image_*`` handlers."""

    def __init__(
        self,
        catalog: Catalog,
        puller: ImagePuller,
        usage: SnapshotUsage,
        *,
        config: ImageConfig,
        roots: Mapping[str, str],
        publish: image_remove.Publish | None = None,
        gc: image_remove.Scheduler | None = None,
    ) -> None:
        self.catalog = catalog
        self.puller = puller
        self.usage = usage
        self.config = config
        self._roots = dict(roots)
        self._publish = publish
        self._gc = gc

    @cri_unary
    async def ListImages(
        self, request: cri.ListImagesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cri.ListImagesResponse:
        return await image_list.list_images(self.catalog, request)

    @cri_stream
    async def StreamImages(
        self, request: cri.StreamImagesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[cri.StreamImagesResponse]:
        async for chunk in image_list.stream_images(self.catalog, request):
            yield chunk

    @cri_unary
    async def ImageStatus(
        self, request: cri.ImageStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cri.ImageStatusResponse:
        return await image_status.image_status(self.catalog, request)

    @cri_unary
    async def PullImage(
        self, request: cri.PullImageRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cri.PullImageResponse:
        try:
            return await self.puller.pull_image(request)
        finally:
            self.usage.invalidate()  # new layers: the next ImageFsInfo counts them

    @cri_unary
    async def RemoveImage(
        self, request: cri.RemoveImageRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cri.RemoveImageResponse:
        try:
            return await image_remove.remove_image(self.catalog, request, publish=self._publish, gc=self._gc)
        finally:
            self.usage.invalidate()

    @cri_unary
    async def ImageFsInfo(
        self, request: cri.ImageFsInfoRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cri.ImageFsInfoResponse:
        return await image_fs_info.image_fs_info(self.usage, self._roots, self.config.snapshotter)


# CREATED/STARTED/DELETED container events follow the lifecycle RPCs (STOPPED follows task exits).
instrument(RuntimeService)
boundary.fill_unimplemented(RuntimeService, cri.DESCRIPTOR.services_by_name["RuntimeService"])
boundary.fill_unimplemented(ImageService, cri.DESCRIPTOR.services_by_name["ImageService"])


class CriPlugin:
    """The CRI plugin: registers both CRI services on the daemon's gRPC server."""

    def __init__(
        self,
        runtime: RuntimeService,
        images: ImageService,
        monitor: ExitMonitor | None = None,
        network_check: asyncio.Task[None] | None = None,
    ) -> None:
        self.runtime = runtime
        self.images = images
        self.monitor = monitor
        self.network_check = network_check  # the CNI CHECK of recovered pods (recovery.check_networks)

    @property
    def state(self) -> CriState:
        """The CRI state shared by every RuntimeService handler."""
        return self.runtime.state

    def register(self, server: grpc.aio.Server) -> None:
        """Add both CRI servicers to a gRPC server."""
        cri_grpc.add_RuntimeServiceServicer_to_server(self.runtime, server)
        cri_grpc.add_ImageServiceServicer_to_server(self.images, server)

    def before_stop(self) -> None:
        """End the long-lived GetContainerEvents streams, so the server's drain need not wait them out."""
        if self.runtime.observe is not None:
            self.runtime.observe.events.close()


def _image_service(ctx: plugin.InitContext) -> ImageService:
    config = ImageConfig.from_daemon(ctx.config)
    meta = ctx.get(plugin.METADATA)
    catalog = Catalog(meta.images, ctx.get(plugin.CONTENT, "content"))
    publish = ctx.get(plugin.EVENT).publish
    # Without the pull pipeline the other image calls still work; PullImage says what is missing.
    puller = ImagePuller(
        meta.images, ctx.plugins.instances(plugin.TRANSFER).get("local"), config, publish=publish
    )
    snapshotters = ctx.get_all(plugin.SNAPSHOTTER)
    # Each snapshotter exports its root: the mountpoint ImageFsInfo reports.
    roots = {p.registration.id: p.exports.get("root", "") for p in ctx.plugins.started(plugin.SNAPSHOTTER)}
    return ImageService(
        catalog,
        puller,
        SnapshotUsage(snapshotters, period=config.stats_collect_period),
        config=config,
        roots=roots,
        publish=publish,
        gc=ctx.plugins.instances(plugin.GC).get("scheduler"),
    )


async def _cri_state(ctx: plugin.InitContext, images: ImageService) -> CriState:
    """The shared CRI state, rebuilt from the container records and status files of a previous run."""
    section = ctx.config.plugin(CRI_ID)
    state = CriState(
        config=section,
        root=ctx.root,
        state_dir=ctx.state,
        meta=ContainerStore(ctx.get(plugin.METADATA).db),
        tasks=ctx.get(plugin.RUNTIME, "task"),
        snapshotters=ctx.get_all(plugin.SNAPSHOTTER),
        catalog=images.catalog,
        puller=images.puller,
        cni=network.manager_from_config(section, ctx.root / "cni"),
        exchange=ctx.get(plugin.EVENT),
        publish=ctx.get(plugin.EVENT).publish,
    )
    await asyncio.to_thread(_make_dirs, state)
    await recover(state)
    # Before any exit is handled: a task deleted first would drop output still in its FIFOs.
    await container_io.reattach_all(state)
    return state


def _make_dirs(state: CriState) -> None:
    for path in (state.root / "sandboxes", state.root / "containers"):
        path.mkdir(parents=True, exist_ok=True, mode=0o711)
    for path in (state.state_dir / "sandboxes", state.state_dir / "containers"):
        path.mkdir(parents=True, exist_ok=True, mode=0o711)


async def _init(ctx: plugin.InitContext) -> CriPlugin:
    images = _image_service(ctx)
    state = await _cri_state(ctx, images)
    monitor = ExitMonitor(state)
    monitor.start()
    await monitor.subscribed.wait()
    runtime = RuntimeService(state)
    roots = {p.registration.id: p.exports.get("root", "") for p in ctx.plugins.started(plugin.SNAPSHOTTER)}
    runtime.observe = await Observability.create(state, images.usage, roots)
    check = asyncio.get_running_loop().create_task(_check_networks(state), name="cri-network-check")
    return CriPlugin(runtime, images, monitor, check)


async def _check_networks(state: CriState) -> None:
    try:
        await check_networks(state)
    except Exception:  # a check is advice: nothing else waits for it
        log.exception("CNI CHECK of the recovered pods")


async def _close(instance: CriPlugin) -> None:
    if instance.network_check is not None:
        instance.network_check.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await instance.network_check
    if instance.runtime.observe is not None:
        await instance.runtime.observe.close()
    if instance.monitor is not None:
        await instance.monitor.close()


PLUGIN = plugin.Registration(
    type=plugin.GRPC,
    id="cri",
    init=_init,
    requires=(
        plugin.METADATA,
        plugin.CONTENT,
        plugin.SNAPSHOTTER,
        plugin.EVENT,
        plugin.GC,
        plugin.TRANSFER,
        plugin.RUNTIME,
    ),
    close=_close,
)
