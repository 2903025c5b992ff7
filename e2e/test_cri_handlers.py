"""Runtime handlers through the real daemon: which shim each one runs, and a handler whose shim is missing.

The rig's handlers (see :meth:`e2e.cri_support.CriRig.config_toml`): ``runc``, the
default, and ``wharf`` run containerd-shim-wharf-v2; ``runc-stock`` runs Debian's
containerd-shim-runc-v2. Here one more handler names a shim no one installed.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from e2e.cri_support import TIMEOUT, CriRig, needs_root_and_runc
from wharfd.api.cri.v1 import api_pb2 as cri

pytestmark = [*needs_root_and_runc(), pytest.mark.slow]

MISSING = (
    '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.no-shim]\n'
    '  runtime_type = "io.containerd.nosuch.v2"\n'
)


@pytest.fixture(scope="module")
def rig() -> Iterator[CriRig]:
    with CriRig(extra_config=MISSING) as r:
        yield r


def test_status_lists_every_handler(rig: CriRig) -> None:
    response = rig.runtime.Status(cri.StatusRequest(), timeout=TIMEOUT)
    assert [h.name for h in response.runtime_handlers] == ["", "no-shim", "runc", "runc-stock", "wharf"]


def test_a_handler_whose_shim_is_missing_fails_naming_runtime_and_binary(rig: CriRig) -> None:
    request = cri.RunPodSandboxRequest(config=rig.pod_config("no-shim"), runtime_handler="no-shim")
    with pytest.raises(grpc.RpcError) as err:
        rig.runtime.RunPodSandbox(request, timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    details = err.value.details() or ""
    assert (
        'runtime "io.containerd.nosuch.v2": binary containerd-shim-nosuch-v2 not installed on PATH' in details
    )
    assert "\n" not in details
    # Nothing is left behind: no pod, no container record, no snapshot.
    assert not rig.runtime.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=TIMEOUT).items
    assert rig.k8s_containers() == []
    # The default handler on the same daemon still works.
    pod_id = rig.run_pod("after")
    assert rig.pod_status(pod_id).status.state == cri.SANDBOX_READY
