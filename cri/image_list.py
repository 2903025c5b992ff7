"""ListImages and StreamImages: every image of ``k8s.io``, one entry per image ID.

kubelet lists images for its image garbage collector and the node status.
With ``filter.image`` set, the answer holds only the image that reference,
digest or ID names (empty when there is none), as CRI-O answers; containerd
ignores the filter, which crictl makes up for on its side.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.cri.images import Catalog, CriImage, to_cri
from wharfd.runtime import errors

# StreamImages sends the list in chunks of this many images.
STREAM_CHUNK = 100


async def _matching(catalog: Catalog, flt: cri.ImageFilter | None) -> list[CriImage]:
    view = await catalog.view()
    wanted = flt.image.image if flt is not None and flt.HasField("image") else ""
    if not wanted:
        return view.images()
    try:
        return [view.find(wanted)]
    except errors.NotFound:
        return []


async def list_images(catalog: Catalog, request: cri.ListImagesRequest) -> cri.ListImagesResponse:
    """Answer ListImages."""
    flt = request.filter if request.HasField("filter") else None
    return cri.ListImagesResponse(images=[to_cri(i) for i in await _matching(catalog, flt)])


async def stream_images(
    catalog: Catalog, request: cri.StreamImagesRequest
) -> AsyncIterator[cri.StreamImagesResponse]:
    """Answer StreamImages: the same list as ListImages, in chunks."""
    flt = request.filter if request.HasField("filter") else None
    images = [to_cri(i) for i in await _matching(catalog, flt)]
    for start in range(0, len(images), STREAM_CHUNK):
        yield cri.StreamImagesResponse(images=images[start : start + STREAM_CHUNK])
