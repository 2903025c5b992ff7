"""Debian's stock containerd (1.6) drives our shim: ``runtime_type = "io.containerd.wharf.v2"``.

containerd finds ``containerd-shim-wharf-v2`` on its PATH, starts it with the
legacy start protocol of its generation (options on stdin, a plain address
answered) and speaks task API v2 to it. A pod and a container of it run
through our shim, ExecSync works, and stopping and removing the pod leaves no
shim behind.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from e2e.cri_support import BUSYBOX_REF, CONTAINERD, TIMEOUT, CriRig, StockContainerd, needs_root_and_runc
from e2e.task_support import zygote_pids
from wharfd.api.cri.v1 import api_pb2 as cri

pytestmark = [
    *needs_root_and_runc(),
    pytest.mark.skipif(
        not CONTAINERD.exists(), reason=f"{CONTAINERD} (Debian's containerd) is not installed"
    ),
    pytest.mark.timeout(300),
]


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def test_stock_containerd_runs_a_pod_through_our_shim() -> None:
    with CriRig() as rig, StockContainerd(rig, {"wharf": "io.containerd.wharf.v2"}) as containerd:
        rt, images = containerd.runtime, containerd.images
        images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=BUSYBOX_REF)), timeout=TIMEOUT)
        config = rig.pod_config("through-our-shim")
        pod_id = rt.RunPodSandbox(
            cri.RunPodSandboxRequest(config=config, runtime_handler="wharf"), timeout=TIMEOUT
        ).pod_sandbox_id
        ctr = rig.container_config("app", ["sh", "-c", "echo started; exec sleep 1000"])
        ctr_id = rt.CreateContainer(
            cri.CreateContainerRequest(pod_sandbox_id=pod_id, config=ctr, sandbox_config=config),
            timeout=TIMEOUT,
        ).container_id
        rt.StartContainer(cri.StartContainerRequest(container_id=ctr_id), timeout=TIMEOUT)

        status = rt.ContainerStatus(
            cri.ContainerStatusRequest(container_id=ctr_id, verbose=True), timeout=TIMEOUT
        )
        assert status.status.state == cri.CONTAINER_RUNNING
        pid = int(json.loads(status.info["info"])["pid"])
        shim = parent_of(pid)
        assert comm(shim) == "wharf-shim", "the container's parent must be our shim"
        sandbox = rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True))
        pause = int(json.loads(sandbox.info["info"])["pid"])
        assert parent_of(pause) == shim, "the pod's containers share the pause's shim"
        # containerd 1.6 names no socket dir: $WHARF_SHIM_SOCKET_DIR (set by the rig) decides.
        assert parent_of(shim) in zygote_pids(containerd.shim_sockets)

        result = rt.ExecSync(cri.ExecSyncRequest(container_id=ctr_id, cmd=["echo", "hi"], timeout=10))
        assert (result.exit_code, result.stdout) == (0, b"hi\n")
        log = Path(status.status.log_path)
        assert b"stdout F started" in log.read_bytes()

        rt.StopContainer(cri.StopContainerRequest(container_id=ctr_id, timeout=5), timeout=TIMEOUT)
        stopped = rt.ContainerStatus(cri.ContainerStatusRequest(container_id=ctr_id)).status
        assert (stopped.state, stopped.exit_code) in (
            (cri.CONTAINER_EXITED, 137),
            (cri.CONTAINER_EXITED, 143),
        )
        rt.RemoveContainer(cri.RemoveContainerRequest(container_id=ctr_id), timeout=TIMEOUT)
        rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=TIMEOUT)
        rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=TIMEOUT)
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{shim}") and comm(shim) != "" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.exists(f"/proc/{shim}"), "our shim exits once its last container is deleted"
