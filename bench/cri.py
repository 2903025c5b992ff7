"""CRI pod lifecycle latency and density, beside containerd's published figures.

    sudo .venv/bin/python bench/cri.py [--pods 20] [--density 30] [--handler runc]

Through the real daemon and socket with a real CNI bridge, registry and runc
(the rig of e2e/cri_support.py). Measured, timed from the client:

* pod start = RunPodSandbox + CreateContainer + StartContainer of a busybox
  ``sleep``, over ``--pods`` sequential pods (after one warm-up pod that pulls
  both images): median and p90 of each call and of their sum;
* ContainerStatus, ExecSync of ``true``, and ListPodSandbox + ListContainers
  (kubelet's relist) with ``--density`` pods running;
* StopContainer, StopPodSandbox, RemoveContainer, RemovePodSandbox while tearing down;
* memory from /proc/<pid>/smaps_rollup: the daemon's RSS idle (just started)
  and with ``--density`` pods, and each pod's shim RSS/PSS.

Baselines measured in the same run: the Version RPC (the socket's round trip)
and ``runc run`` of busybox ``true`` (the runtime's own floor). containerd's
figures are quoted from the reference issue, not measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from e2e.cri_support import RUNC, TIMEOUT, CriRig
from wharfd.api.cri.v1 import api_pb2 as cri

# containerd 2.x on a comparable node, from the issue this work answers (milliseconds / MiB).
CONTAINERD = {
    "RunPodSandbox": 131.0,
    "CreateContainer": 17.0,
    "StartContainer": 87.0,
    "StopContainer": 71.0,
    "StopPodSandbox": 102.0,
    "RemovePodSandbox": 26.0,
    "ContainerStatus": 1.2,
    "daemon RSS idle": 51.0,
    "daemon RSS with 30 pods": 70.0,
    "shim PSS per pod": 5.0,
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def memory(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MiB from smaps_rollup."""
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            values[key] = int(rest.split()[0]) / 1024
    return values["Rss"], values["Pss"]


def shim_of(rig: CriRig, pod_id: str) -> int:
    """The shim serving a pod: the parent of its pause process (shims are the subreaper of their pods)."""
    request = cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True)
    pause = json.loads(rig.runtime.PodSandboxStatus(request, timeout=TIMEOUT).info["info"])["pid"]
    stat = Path(f"/proc/{pause}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


class Timer:
    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}

    def __call__(self, name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        result = fn()
        self.samples.setdefault(name, []).append((time.perf_counter() - t0) * 1000)
        return result


def start_pod(rig: CriRig, timer: Timer, name: str, handler: str) -> tuple[str, str]:
    config = rig.pod_config(name)
    pod_id = timer(
        "RunPodSandbox",
        lambda: (
            rig.runtime.RunPodSandbox(
                cri.RunPodSandboxRequest(config=config, runtime_handler=handler), timeout=2 * TIMEOUT
            ).pod_sandbox_id
        ),
    )
    ctr_config = rig.container_config("app", ["sleep", "3600"])
    request = cri.CreateContainerRequest(pod_sandbox_id=pod_id, config=ctr_config, sandbox_config=config)
    ctr_id = timer(
        "CreateContainer", lambda: rig.runtime.CreateContainer(request, timeout=TIMEOUT).container_id
    )
    timer(
        "StartContainer", lambda: rig.runtime.StartContainer(cri.StartContainerRequest(container_id=ctr_id))
    )
    return pod_id, ctr_id


def stop_pod(rig: CriRig, timer: Timer, pod_id: str, ctr_id: str) -> None:
    rt = rig.runtime
    timer(
        "StopContainer", lambda: rt.StopContainer(cri.StopContainerRequest(container_id=ctr_id, timeout=10))
    )
    timer("StopPodSandbox", lambda: rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id)))
    timer("RemoveContainer", lambda: rt.RemoveContainer(cri.RemoveContainerRequest(container_id=ctr_id)))
    timer("RemovePodSandbox", lambda: rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id)))


def runc_baseline(runs: int) -> list[float]:
    """``runc run`` of busybox ``true`` in a bare bundle: create, start, wait, delete in one process."""
    assert RUNC is not None
    out = []
    with tempfile.TemporaryDirectory(prefix="wharfd-test-runc-") as tmp:
        bundle, root = Path(tmp, "bundle"), Path(tmp, "root")
        (bundle / "rootfs" / "bin").mkdir(parents=True)
        shutil.copy2("/bin/busybox", bundle / "rootfs" / "bin" / "true")
        subprocess.run([RUNC, "spec", "--bundle", str(bundle)], check=True)
        spec = json.loads((bundle / "config.json").read_text())
        spec["process"]["args"], spec["process"]["terminal"] = ["/bin/true"], False
        (bundle / "config.json").write_text(json.dumps(spec))
        for i in range(runs + 1):
            t0 = time.perf_counter()
            subprocess.run([RUNC, "--root", str(root), "run", "--bundle", str(bundle), f"b{i}"], check=True)
            if i:
                out.append((time.perf_counter() - t0) * 1000)
    return out


def row(name: str, values: list[float], reference: float | None = None) -> str:
    ref = f"{reference:g}" if reference is not None else "-"
    return f"| {name} | {statistics.median(values):.1f} | {percentile(values, 0.9):.1f} | {len(values)} | {ref} |"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pods", type=int, default=20, help="sequential pod starts timed")
    parser.add_argument("--density", type=int, default=30, help="pods running for the list/memory figures")
    parser.add_argument(
        "--handler", default="", help="runtime handler ('' = default runc; 'wharf' = our shim)"
    )
    args = parser.parse_args()
    if os.geteuid() != 0 or RUNC is None:
        sys.exit("needs root and runc")
    timer = Timer()
    load = os.getloadavg()[0]
    with CriRig() as rig:
        daemon_pid = rig.daemon.proc.pid if rig.daemon.proc else 0
        time.sleep(1)
        idle_rss, idle_pss = memory(daemon_pid)
        for _ in range(50):
            timer("Version (baseline: socket round trip)", lambda: rig.runtime.Version(cri.VersionRequest()))
        rig.pull()
        warm = start_pod(rig, Timer(), "warm-up", args.handler)  # pulls the pause image, first shim, caches
        stop_pod(rig, Timer(), *warm)

        pods: list[tuple[str, str]] = []
        for i in range(max(args.pods, args.density)):
            t0 = time.perf_counter()
            pods.append(start_pod(rig, timer if i < args.pods else Timer(), f"pod-{i}", args.handler))
            if i < args.pods:
                timer.samples.setdefault("pod start (sum of the three)", []).append(
                    (time.perf_counter() - t0) * 1000
                )
        time.sleep(2)  # let the collectors and shims settle
        status = cri.ContainerStatusRequest(container_id=pods[0][1])
        for _ in range(50):
            timer("ContainerStatus", lambda: rig.runtime.ContainerStatus(status))
        execs = cri.ExecSyncRequest(container_id=pods[0][1], cmd=["true"], timeout=10)
        for _ in range(20):
            result = timer("ExecSync true", lambda: rig.runtime.ExecSync(execs, timeout=TIMEOUT))
            assert result.exit_code == 0
        for _ in range(50):
            timer(
                f"ListPodSandbox + ListContainers ({len(pods)} pods)",
                lambda: (
                    rig.runtime.ListPodSandbox(cri.ListPodSandboxRequest()),
                    rig.runtime.ListContainers(cri.ListContainersRequest()),
                ),
            )
        busy_rss, busy_pss = memory(daemon_pid)
        shims = [memory(shim_of(rig, pod_id)) for pod_id, _ in pods]
        for pod in pods:
            stop_pod(rig, timer, *pod)
    runc = runc_baseline(20)

    print(
        f"\nwharfd CRI, handler {args.handler or 'runc (default)'}, load average {load:.1f}; milliseconds\n"
    )
    print("| call | median | p90 | n | containerd |\n|---|---|---|---|---|")
    print(row("`runc run` of `true` (baseline)", runc))
    for name, values in timer.samples.items():
        print(row(name, values, CONTAINERD.get(name)))
    print("\n| memory (MiB) | wharfd | containerd |\n|---|---|---|")
    print(f"| daemon RSS idle (PSS) | {idle_rss:.1f} ({idle_pss:.1f}) | {CONTAINERD['daemon RSS idle']:g} |")
    print(
        f"| daemon RSS with {len(pods)} pods (PSS) | {busy_rss:.1f} ({busy_pss:.1f}) | "
        f"{CONTAINERD['daemon RSS with 30 pods']:g} |"
    )
    if shims:
        rss = statistics.mean(s[0] for s in shims)
        pss = statistics.mean(s[1] for s in shims)
        reference = CONTAINERD["shim PSS per pod"]
        print(f"| shim RSS / PSS per pod ({len(shims)} shims) | {rss:.1f} / {pss:.1f} | - / {reference:g} |")


if __name__ == "__main__":
    main()
