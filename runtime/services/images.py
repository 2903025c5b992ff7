"""containerd's Images service over the image store, publishing /images/* events."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import grpc
from google.protobuf import empty_pb2
from google.protobuf.message import Message

from wharfd.api.events import image_pb2 as events_pb2
from wharfd.api.services.images.v1 import images_pb2 as pb
from wharfd.api.services.images.v1 import images_pb2_grpc as pb_grpc
from wharfd.runtime import errors
from wharfd.runtime.metadata.images import Image, ImageStore
from wharfd.runtime.services import boundary
from wharfd.runtime.services.convert import descriptor_from_proto, descriptor_to_proto, timestamp

Context = grpc.aio.ServicerContext[Any, Any]
Publish = Callable[[str, Message], Awaitable[None]]


class Collector(Protocol):
    """Garbage collection, run synchronously when a delete asks for ``sync``."""

    async def collect(self) -> object:
        """Remove everything nothing references any more."""
        ...

    def schedule(self) -> None:
        """Collect soon, in the background."""
        ...


def to_proto(image: Image) -> pb.Image:
    """An ``Image`` message."""
    return pb.Image(
        name=image.name,
        labels=image.labels,
        target=descriptor_to_proto(image.target),
        created_at=timestamp(image.created_at),
        updated_at=timestamp(image.updated_at),
    )


def from_proto(msg: pb.Image) -> Image:
    """A store Image from the API message (timestamps are the store's to set)."""
    return Image(name=msg.name, target=descriptor_from_proto(msg.target), labels=dict(msg.labels))


class ImagesService(pb_grpc.ImagesServicer):
    """Get, List, Create, Update, Delete."""

    def __init__(
        self, store: ImageStore, publish: Publish | None = None, gc: Collector | None = None
    ) -> None:
        self._store = store
        self._publish = publish
        self.gc = gc

    async def _event(self, topic: str, event: Message) -> None:
        if self._publish is not None:
            await self._publish(topic, event)

    @boundary.unary
    async def Get(self, request: pb.GetImageRequest, context: Context) -> pb.GetImageResponse:
        return pb.GetImageResponse(image=to_proto(await self._store.get(request.name)))

    @boundary.unary
    async def List(self, request: pb.ListImagesRequest, context: Context) -> pb.ListImagesResponse:
        return pb.ListImagesResponse(images=[to_proto(i) for i in await self._store.list(request.filters)])

    @boundary.unary
    async def Create(self, request: pb.CreateImageRequest, context: Context) -> pb.CreateImageResponse:
        created = await self._store.create(from_proto(request.image))
        await self._event("/images/create", events_pb2.ImageCreate(name=created.name, labels=created.labels))
        return pb.CreateImageResponse(image=to_proto(created))

    @boundary.unary
    async def Update(self, request: pb.UpdateImageRequest, context: Context) -> pb.UpdateImageResponse:
        paths = list(request.update_mask.paths) if request.HasField("update_mask") else []
        updated = await self._store.update(from_proto(request.image), paths)
        await self._event("/images/update", events_pb2.ImageUpdate(name=updated.name, labels=updated.labels))
        return pb.UpdateImageResponse(image=to_proto(updated))

    @boundary.unary
    async def Delete(self, request: pb.DeleteImageRequest, context: Context) -> empty_pb2.Empty:
        target = request.target.digest if request.HasField("target") else None
        await self._store.delete(request.name, target_digest=target)
        await self._event("/images/delete", events_pb2.ImageDelete(name=request.name))
        if self.gc is not None:
            if request.sync:
                await self.gc.collect()
            else:
                self.gc.schedule()
        elif request.sync:
            raise errors.Unavailable("image deleted, but garbage collection is not running for a sync delete")
        return empty_pb2.Empty()

    def register(self, server: grpc.aio.Server) -> None:
        """Add the servicer to a gRPC server."""
        pb_grpc.add_ImagesServicer_to_server(self, server)
