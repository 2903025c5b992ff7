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


def to_cri(sandbox: Sandbox, into: cri.PodSandbox | None = None) -> cri.PodSandbox:
    """The ListPodSandbox entry of a pod, written into ``into`` (a response's new entry) if given.

    The fields that never change are built once per pod and copied.
    """
    base = sandbox.list_base
    if base is None:
        meta = sandbox.metadata
        base = sandbox.list_base = cri.PodSandbox(
            id=meta.id,
            metadata=meta.config.metadata,
            labels=meta.config.labels,
            annotations=meta.config.annotations,
            runtime_handler=meta.runtime_handler,
        )
    out = cri.PodSandbox() if into is None else into
    out.CopyFrom(base)
    out.state = sandbox.status.sandbox_state.to_cri()
    out.created_at = sandbox.status.created_at
    return out


def select(state: CriState, flt: cri.PodSandboxFilter | None) -> list[Sandbox]:
    """The pods the filter selects, oldest first."""
    sandboxes = sorted(state.sandboxes.list(), key=lambda s: (s.status.created_at, s.id))
    if flt is None:
        return sandboxes
    wanted_id = flt.id
    if wanted_id:
        # Unknown or ambiguous: only an exact match could still select it, and none will.
        with contextlib.suppress(errors.NotFound, errors.InvalidArgument):
            wanted_id = state.sandboxes.resolve(wanted_id)
    selector = dict(flt.label_selector)
    return [
        s
        for s in sandboxes
        if (not wanted_id or s.id == wanted_id)
        and (not flt.HasField("state") or s.status.sandbox_state.to_cri() == flt.state.state)
        and all(s.metadata.config.labels.get(k) == v for k, v in selector.items())
    ]


def matching(state: CriState, flt: cri.PodSandboxFilter | None) -> list[cri.PodSandbox]:
    """The entries of the pods the filter selects, oldest first."""
    return [to_cri(s) for s in select(state, flt)]


async def list_pod_sandbox(state: CriState, request: cri.ListPodSandboxRequest) -> cri.ListPodSandboxResponse:
    """Answer ListPodSandbox."""
    flt = request.filter if request.HasField("filter") else None
    response = cri.ListPodSandboxResponse()
    for sandbox in select(state, flt):
        to_cri(sandbox, response.items.add())
    return response


async def stream_pod_sandboxes(
    state: CriState, request: cri.StreamPodSandboxesRequest
) -> AsyncIterator[cri.StreamPodSandboxesResponse]:
    """Answer StreamPodSandboxes: the same list as ListPodSandbox, in chunks (taken at one instant)."""
    flt = request.filter if request.HasField("filter") else None
    sandboxes = select(state, flt)
    for start in range(0, len(sandboxes), STREAM_CHUNK):
        response = cri.StreamPodSandboxesResponse()
        for sandbox in sandboxes[start : start + STREAM_CHUNK]:
            to_cri(sandbox, response.pod_sandboxes.add())
        yield response
