"""CRI pod lifecycle latency and density, beside containerd's figures.

    sudo .venv/bin/python bench/cri.py [--pods 20] [--density 30] [--handler runc] [--containerd]

Through the real daemon and socket with a real CNI bridge, registry and runc
(the rig of e2e/cri_support.py). Measured, timed from the client:

* pod start = RunPodSandbox + CreateContainer + StartContainer of a busybox
  ``sleep``, over ``--pods`` sequential pods (after one warm-up pod that pulls
  both images): median and p90 of each call and of their sum;
* ContainerStatus, PodSandboxStatus, ExecSync of ``true``, and ListPodSandbox +
  ListContainers (kubelet's relist) with ``--density`` pods running;
* StopContainer, StopPodSandbox, RemoveContainer, RemovePodSandbox while tearing down;
* memory from /proc/<pid>/smaps_rollup: the daemon's RSS idle (just started)
  and with ``--density`` pods, and each pod's shim RSS/PSS (ours also once
  ksmd has merged their copied pages, bench/ksm.py: it takes a minute or two
  at the kernel's scan rate).

Baselines measured in the same run: the Version RPC (the socket's round trip)
and ``runc run`` of busybox ``true`` (the runtime's own floor).

With ``--containerd`` the same sequence then runs against Debian's containerd
(``/usr/bin/containerd``, its stock runc shim) on a temporary root, state and
socket under the rig's directory, with the same CNI network, registry
(hosts.toml), pause and busybox images and runc, so the ratio wharfd/containerd
is measured on this machine in this run. Without it, the containerd column is
the figure quoted from the reference issue (containerd 2.x, another machine).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ksm import ksm_running, ksm_settings, ksmd_cpu_seconds, wait_for_merging_blocking
from e2e.cri_support import BUSYBOX_REF, CONTAINERD, RUNC, TIMEOUT, CriRig, StockContainerd
from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.api.cri.v1 import api_pb2_grpc as cri_grpc
from wharfd.cri.config_schema import WHARF_V2

# The longest wait for ksmd to reach a steady state over the pods' shims (bench/ksm.py).
MERGE_WAIT = 300.0

# containerd 2.x on a comparable node, from the issue this work answers (milliseconds / MiB).
QUOTED = {
    "RunPodSandbox": 131.0,
    "CreateContainer": 17.0,
    "StartContainer": 87.0,
    "StopContainer": 71.0,
    "StopPodSandbox": 102.0,
    "RemovePodSandbox": 26.0,
    "ContainerStatus": 1.2,
    "daemon RSS idle": 51.0,
    "daemon RSS with pods": 70.0,
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


class Timer:
    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}

    def __call__(self, name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        result = fn()
        self.samples.setdefault(name, []).append((time.perf_counter() - t0) * 1000)
        return result


@dataclass
class Target:
    """One runtime under test: its CRI clients, its daemon's pid, and what the run measured."""

    name: str
    runtime: cri_grpc.RuntimeServiceStub
    images: cri_grpc.ImageServiceStub
    pid: int
    handler: str = ""
    timer: Timer = field(default_factory=Timer)
    memory: dict[str, tuple[float, float]] = field(default_factory=dict)
    shims: list[tuple[float, float]] = field(default_factory=list)
    merged_shims: list[tuple[float, float]] = field(default_factory=list)  # once ksmd has merged (ours)
    merge: str = ""  # how long merging took and what ksmd cost
    load: float = 0.0


def shim_of(target: Target, pod_id: str) -> int:
    """The shim serving a pod: the parent of its pause process (shims are the subreaper of their pods)."""
    request = cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True)
    pause = json.loads(target.runtime.PodSandboxStatus(request, timeout=TIMEOUT).info["info"])["pid"]
    stat = Path(f"/proc/{pause}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def runs_our_shim(target: Target) -> bool:
    """Whether the target's handler runs our shim: its runtime type, from the daemon's own CRI config.

    The handler is ``--handler`` ('' = the default runtime): in the rig, ``runc`` and ``wharf``
    run ours and ``runc-stock`` the stock shim. containerd's config (camelCase keys) names no
    runtime_type, so its stock shim is never taken for ours.
    """
    status = target.runtime.Status(cri.StatusRequest(verbose=True), timeout=TIMEOUT)
    containerd = json.loads(status.info.get("config") or "{}").get("containerd") or {}
    name = target.handler or containerd.get("default_runtime_name", "")
    return bool(((containerd.get("runtimes") or {}).get(name) or {}).get("runtime_type") == WHARF_V2)


def start_pod(rig: CriRig, target: Target, timer: Timer, name: str) -> tuple[str, str]:
    rt = target.runtime
    config = rig.pod_config(name)
    request = cri.RunPodSandboxRequest(config=config, runtime_handler=target.handler)
    pod_id = timer("RunPodSandbox", lambda: rt.RunPodSandbox(request, timeout=2 * TIMEOUT).pod_sandbox_id)
    ctr_config = rig.container_config("app", ["sleep", "3600"])
    create = cri.CreateContainerRequest(pod_sandbox_id=pod_id, config=ctr_config, sandbox_config=config)
    ctr_id = timer("CreateContainer", lambda: rt.CreateContainer(create, timeout=TIMEOUT).container_id)
    timer("StartContainer", lambda: rt.StartContainer(cri.StartContainerRequest(container_id=ctr_id)))
    return pod_id, ctr_id


def stop_pod(target: Target, timer: Timer, pod_id: str, ctr_id: str) -> None:
    rt = target.runtime
    timer(
        "StopContainer", lambda: rt.StopContainer(cri.StopContainerRequest(container_id=ctr_id, timeout=10))
    )
    timer("StopPodSandbox", lambda: rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id)))
    timer("RemoveContainer", lambda: rt.RemoveContainer(cri.RemoveContainerRequest(container_id=ctr_id)))
    timer("RemovePodSandbox", lambda: rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id)))


def run_sequence(rig: CriRig, target: Target, pods_n: int, density: int) -> None:
    """The measured sequence against one runtime; samples and memory land in ``target``."""
    timer, rt = target.timer, target.runtime
    target.load = os.getloadavg()[0]
    time.sleep(1)
    target.memory["idle"] = memory(target.pid)
    for _ in range(50):
        timer("Version (baseline: socket round trip)", lambda: rt.Version(cri.VersionRequest()))
    target.images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=BUSYBOX_REF)), timeout=TIMEOUT)
    warm = start_pod(rig, target, Timer(), "warm-up")  # pulls the pause image, first shim, caches
    stop_pod(target, Timer(), *warm)

    pods: list[tuple[str, str]] = []
    for i in range(max(pods_n, density)):
        t0 = time.perf_counter()
        pods.append(start_pod(rig, target, timer if i < pods_n else Timer(), f"pod-{i}"))
        if i < pods_n:
            timer.samples.setdefault("pod start (sum of the three)", []).append(
                (time.perf_counter() - t0) * 1000
            )
    time.sleep(2)  # let the collectors and shims settle
    status = cri.ContainerStatusRequest(container_id=pods[0][1])
    for _ in range(50):
        timer("ContainerStatus", lambda: rt.ContainerStatus(status))
    pod_status = cri.PodSandboxStatusRequest(pod_sandbox_id=pods[0][0])
    for _ in range(50):
        timer("PodSandboxStatus", lambda: rt.PodSandboxStatus(pod_status))
    execs = cri.ExecSyncRequest(container_id=pods[0][1], cmd=["true"], timeout=10)
    for _ in range(20):
        result = timer("ExecSync true", lambda: rt.ExecSync(execs, timeout=TIMEOUT))
        assert result.exit_code == 0
    for _ in range(50):
        timer(
            f"ListPodSandbox + ListContainers ({len(pods)} pods)",
            lambda: (
                rt.ListPodSandbox(cri.ListPodSandboxRequest()),
                rt.ListContainers(cri.ListContainersRequest()),
            ),
        )
    target.memory["pods"] = memory(target.pid)
    shim_pids = [shim_of(target, pod_id) for pod_id, _ in pods]
    target.shims = [memory(pid) for pid in shim_pids]
    # Our shims' copied pages are merged by ksmd (runtime/tasks/memory_merge.py) at the kernel's pace:
    # their PSS again once it is steady. The stock shim marks nothing mergeable.
    if runs_our_shim(target) and ksm_running():
        began, cpu = time.monotonic(), ksmd_cpu_seconds()
        scans = wait_for_merging_blocking(MERGE_WAIT)
        waited = time.monotonic() - began
        target.merged_shims = [memory(pid) for pid in shim_pids]
        target.merge = (
            f"{waited:.0f} s, {scans} full scans of ksmd, which used "
            f"{(ksmd_cpu_seconds() - cpu) / waited * 100:.1f}% of a core meanwhile"
        )
    for pod in pods:
        stop_pod(target, timer, *pod)


# --- containerd ---------------------------------------------------------------------------------


@contextlib.contextmanager
def containerd(rig: CriRig) -> Iterator[Target]:
    """Debian's containerd beside the rig (e2e/cri_support.py), as a measured target."""
    with StockContainerd(rig) as stock:
        yield Target(
            "containerd 1.6 (Debian), stock runc shim",
            stock.runtime,
            stock.images,
            stock.pid,
        )


# --- baseline and report ------------------------------------------------------------------------


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


def _cell(values: list[float] | None) -> str:
    if not values:
        return "- | -"
    return f"{statistics.median(values):.1f} | {percentile(values, 0.9):.1f}"


def report(wharfd: Target, reference: Target | None, runc: list[float]) -> None:
    """Markdown tables: latencies (median, p90) per runtime and their ratio, then memory."""
    print(f"\nwharfd CRI, handler {wharfd.handler or 'default'}, load average {wharfd.load:.1f}", end="")
    if reference is not None:
        print(f"; {reference.name}, load average {reference.load:.1f}", end="")
    print("; milliseconds\n")
    if reference is None:
        print("| call | wharfd median | p90 | n | containerd (quoted) |\n|---|---|---|---|---|")
        print(f"| `runc run` of `true` (baseline) | {_cell(runc)} | {len(runc)} | - |")
        for name, values in wharfd.timer.samples.items():
            quoted = QUOTED.get(name)
            print(
                f"| {name} | {_cell(values)} | {len(values)} | {'-' if quoted is None else f'{quoted:g}'} |"
            )
    else:
        print(
            "| call | wharfd median | p90 | containerd median | p90 | wharfd / containerd (median) |"
            "\n|---|---|---|---|---|---|"
        )
        print(f"| `runc run` of `true` (baseline, for both) | {_cell(runc)} | - | - | - |")
        for name, values in wharfd.timer.samples.items():
            theirs = reference.timer.samples.get(name)
            ratio = f"{statistics.median(values) / statistics.median(theirs):.2f}x" if theirs else "-"
            print(f"| {name} | {_cell(values)} | {_cell(theirs)} | {ratio} |")
    targets = [wharfd] + ([reference] if reference is not None else [])
    header = " | ".join(t.name.split(",")[0] for t in targets)
    print(f"\n| memory (MiB) | {header} |\n|---|" + "---|" * len(targets))
    idle = " | ".join(f"{t.memory['idle'][0]:.1f} ({t.memory['idle'][1]:.1f})" for t in targets)
    busy = " | ".join(f"{t.memory['pods'][0]:.1f} ({t.memory['pods'][1]:.1f})" for t in targets)
    shim = " | ".join(
        f"{statistics.mean(s[0] for s in t.shims):.1f} / {statistics.mean(s[1] for s in t.shims):.1f}"
        for t in targets
    )
    print(f"| daemon RSS (PSS) idle | {idle} |")
    print(f"| daemon RSS (PSS) with {len(wharfd.shims)} pods | {busy} |")
    print(f"| shim RSS / PSS per pod | {shim} |")
    if wharfd.merged_shims:
        merged = wharfd.merged_shims
        print(
            f"| shim RSS / PSS per pod once ksmd is steady | {statistics.mean(s[0] for s in merged):.1f} / "
            f"{statistics.mean(s[1] for s in merged):.1f} |" + " - |" * (len(targets) - 1)
        )
        print(f"\nksmd ({ksm_settings()}): steady after {wharfd.merge}")
    if reference is None:
        print(
            f"\ncontainerd as quoted: daemon RSS idle {QUOTED['daemon RSS idle']:g}, with pods "
            f"{QUOTED['daemon RSS with pods']:g}, shim PSS per pod {QUOTED['shim PSS per pod']:g}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pods", type=int, default=20, help="sequential pod starts timed")
    parser.add_argument("--density", type=int, default=30, help="pods running for the list/memory figures")
    parser.add_argument(
        "--handler",
        default="",
        help="wharfd's runtime handler ('' = the default runtime; 'runc', 'wharf' = our shim; "
        "'runc-stock' = the stock shim)",
    )
    parser.add_argument(
        "--containerd", action="store_true", help=f"run the same sequence against {CONTAINERD} afterwards"
    )
    args = parser.parse_args()
    if os.geteuid() != 0 or RUNC is None:
        sys.exit("needs root and runc")
    if args.containerd and not os.access(CONTAINERD, os.X_OK):
        sys.exit(f"--containerd needs {CONTAINERD}")
    reference: Target | None = None
    with CriRig() as rig:
        pid = rig.daemon.proc.pid if rig.daemon.proc else 0
        wharfd = Target("wharfd", rig.runtime, rig.images, pid, handler=args.handler)
        run_sequence(rig, wharfd, args.pods, args.density)
        if args.containerd:
            rig.daemon.stop()  # idle, but out of containerd's way
            with containerd(rig) as reference:
                run_sequence(rig, reference, args.pods, args.density)
    report(wharfd, reference, runc_baseline(20))


if __name__ == "__main__":
    main()
