"""ImageStatus: is an image here, and what is it.

kubelet asks before every container it creates. The image may be named by
tag, digest reference, image ID or an unambiguous ID prefix. An absent image
is an empty answer, not an error. With ``verbose`` the answer carries
containerd's ``info`` map: ``{"info": "{\\"chainID\\": …, \\"imageSpec\\": <OCI config>}"}``.
"""

from __future__ import annotations

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.cri.images import Catalog, to_cri, verbose_info
from wharfd.runtime import errors


async def image_status(catalog: Catalog, request: cri.ImageStatusRequest) -> cri.ImageStatusResponse:
    """Answer ImageStatus."""
    try:
        image = await catalog.find(request.image.image)
    except errors.NotFound:
        return cri.ImageStatusResponse()
    info = verbose_info(image) if request.verbose else None
    return cri.ImageStatusResponse(image=to_cri(image), info=info)
