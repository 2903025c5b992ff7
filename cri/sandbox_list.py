"""ListPodSandbox and StreamPodSandboxes, with containerd's filter rules.

``filter.id`` is a full id or a unique prefix of one (an unknown or
ambiguous prefix matches nothing); ``filter.state`` compares the CRI state;
``filter.label_selector`` needs every key to be present with that exact value.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.cri.store import CriState, Sandbox
from wharfd.runtime import errors

# StreamPodSandboxes sends the list in chunks of this many pods.
STREAM_CHUNK = 100


def to_cri(sandbox: Sandbox) -> cri.PodSandbox:
    """The ListPodSandbox entry of a pod."""
    meta, status = sandbox.metadata, sandbox.status
    return cri.PodSandbox(
        id=meta.id,
        metadata=meta.config.metadata,
        state=status.sandbox_state.to_cri(),
        created_at=status.created_at,
        labels=dict(meta.config.labels),
        annotations=dict(meta.config.annotations),
        runtime_handler=meta.runtime_handler,
    )


def matching(state: CriState, flt: cri.PodSandboxFilter | None) -> list[cri.PodSandbox]:
    """The pods the filter selects, oldest first."""
    items = [to_cri(s) for s in state.sandboxes.list()]
    items.sort(key=lambda p: (p.created_at, p.id))
    if flt is None:
        return items
    wanted_id = flt.id
    if wanted_id:
        # Unknown or ambiguous: only an exact match could still select it, and none will.
        with contextlib.suppress(errors.NotFound, errors.InvalidArgument):
            wanted_id = state.sandboxes.resolve(wanted_id)
    selector = dict(flt.label_selector)
    return [
        p
        for p in items
        if (not wanted_id or p.id == wanted_id)
        and (not flt.HasField("state") or p.state == flt.state.state)
        and all(p.labels.get(k) == v for k, v in selector.items())
    ]


async def list_pod_sandbox(state: CriState, request: cri.ListPodSandboxRequest) -> cri.ListPodSandboxResponse:
    """Answer ListPodSandbox."""
    flt = request.filter if request.HasField("filter") else None
    return cri.ListPodSandboxResponse(items=matching(state, flt))


async def stream_pod_sandboxes(
    state: CriState, request: cri.StreamPodSandboxesRequest
) -> AsyncIterator[cri.StreamPodSandboxesResponse]:
    """Answer StreamPodSandboxes: the same list as ListPodSandbox, in chunks (taken at one instant)."""
    flt = request.filter if request.HasField("filter") else None
    items = matching(state, flt)
    for start in range(0, len(items), STREAM_CHUNK):
        yield cri.StreamPodSandboxesResponse(pod_sandboxes=items[start : start + STREAM_CHUNK])
