"""RemoveImage: remove an image by any of its names, with every other name it has.

The CRI removes the whole image whether it is named by a tag, a digest or its
ID (the proto's contract). Each record goes on its own; one already gone is
fine, and so is an image that is not there at all, because kubelet's image
garbage collector retries. The content and the unpacked layers go with the
next garbage collection, which is scheduled here.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from google.protobuf.message import Message

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.api.events import image_pb2 as events_pb2
from wharfd.cri.images import Catalog
from wharfd.runtime import errors

log = logging.getLogger("wharfd.cri.images")

Publish = Callable[[str, Message], Awaitable[None]]


class Scheduler(Protocol):
    """The garbage collector, as far as removal needs it."""

    def schedule(self) -> None:
        """Collect soon, in the background."""
        ...


async def remove_image(
    catalog: Catalog,
    request: cri.RemoveImageRequest,
    *,
    publish: Publish | None = None,
    gc: Scheduler | None = None,
) -> cri.RemoveImageResponse:
    """Answer RemoveImage."""
    try:
        image = await catalog.find(request.image.image)
    except errors.NotFound:
        return cri.RemoveImageResponse()
    removed = 0
    for name in image.references:
        try:
            await catalog.images.delete(name, target_digest=image.targets.get(name))
        except errors.NotFound:
            continue  # removed by someone else meanwhile
        except errors.FailedPrecondition:
            continue  # re-pointed at another image meanwhile (a pull): not ours to remove
        removed += 1
        if publish is not None:
            await publish("/images/delete", events_pb2.ImageDelete(name=name))
    if removed and gc is not None:
        gc.schedule()
    log.info("removed image %s (%s)", image.id, ", ".join(image.references))
    return cri.RemoveImageResponse()
