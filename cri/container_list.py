"""ListContainers and StreamContainers.

Filters are ANDed: ``id`` and ``pod_sandbox_id`` accept a unique prefix (an
unknown or ambiguous one matches nothing), ``state`` an exact state, and
``label_selector`` requires every key to be present with exactly that value.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.cri.container_status import to_cri_container
from wharfd.cri.store import Container, CriState, aiter_chunks
from wharfd.runtime import errors

CHUNK = 100


def select(state: CriState, wanted: cri.ContainerFilter | None) -> list[Container]:
    """The containers matching ``wanted`` (all when None), oldest first."""
    containers = sorted(state.containers.list(), key=lambda c: (c.status.created_at, c.id))
    if wanted is None:
        return containers
    if wanted.id:
        found = _resolve(state.containers, wanted.id)
        containers = [c for c in containers if c.id == found]
    if wanted.pod_sandbox_id:
        pod = _resolve(state.sandboxes, wanted.pod_sandbox_id) or wanted.pod_sandbox_id
        containers = [c for c in containers if c.sandbox_id == pod]
    if wanted.HasField("state"):
        containers = [c for c in containers if c.status.state() == wanted.state.state]
    if wanted.label_selector:
        selector = dict(wanted.label_selector)
        containers = [
            c for c in containers if all(c.metadata.config.labels.get(k) == v for k, v in selector.items())
        ]
    return containers


def _resolve(store: object, prefix: str) -> str | None:
    try:
        return str(store.resolve(prefix))  # type: ignore[attr-defined]
    except (errors.NotFound, errors.InvalidArgument):
        return None


async def list_containers(state: CriState, request: cri.ListContainersRequest) -> cri.ListContainersResponse:
    """Handle ListContainers."""
    wanted = request.filter if request.HasField("filter") else None
    response = cri.ListContainersResponse()
    for container in select(state, wanted):
        to_cri_container(container, response.containers.add())
    return response


async def stream_containers(
    state: CriState, request: cri.StreamContainersRequest
) -> AsyncIterator[cri.StreamContainersResponse]:
    """Handle StreamContainers: the same list in chunks, each container once."""
    wanted = request.filter if request.HasField("filter") else None
    async for chunk in aiter_chunks(select(state, wanted), CHUNK):
        response = cri.StreamContainersResponse()
        for container in chunk:
            to_cri_container(container, response.containers.add())
        yield response
