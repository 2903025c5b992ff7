"""RunPodSandbox's two branches (network, pause) overlap; a failure in either, or the caller leaving, undoes both.

The rig's network ends with ``wharfd-test-gate``, a CNI plugin written here
that passes the result through and notes each call in a log file. A pod's
annotation tells it what to do on ADD: ``fail-after-pause`` waits until a
process has joined the pod's netns (the pause container: so CNI ADD and the
pause's start really overlapped) and then fails; ``sleep=<seconds>`` is slow.
After each failure nothing of the pod may remain: netns, CNI address, record,
snapshot, files, runc container, shim.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from e2e.cri_support import PAUSE_REF, RUNC, TIMEOUT, CriRig, needs_root_and_runc
from e2e.task_support import shim_pids
from wharfd.api.cri.v1 import api_pb2 as cri

pytestmark = needs_root_and_runc()

GATE = "wharfd-test-gate"
ANNOTATION = "wharfd-test/gate"
GATE_SCRIPT = r'''#!/usr/bin/python3
"""A CNI plugin for tests: notes each call, passes prevResult through; the pod's annotation may slow or fail ADD."""
import json, os, sys, time

conf = json.load(sys.stdin)
command = os.environ.get("CNI_COMMAND", "")
if command == "VERSION":
    print(json.dumps({"cniVersion": conf.get("cniVersion", "1.0.0"), "supportedVersions": ["1.0.0"]}))
    sys.exit(0)
annotations = (conf.get("runtimeConfig") or {}).get("io.kubernetes.cri.pod-annotations") or {}
mode = annotations.get("wharfd-test/gate", "")


def note(text):
    with open(conf["log"], "a") as f:
        f.write(f"{os.environ.get('CNI_CONTAINERID', '')} {command} {text}\n")


def joined(netns):
    """Whether a process (other than none) is in the netns pinned at ``netns``."""
    want = os.stat(netns).st_ino
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}/ns/net").st_ino == want:
                    return True
            except OSError:
                pass
    return False


if command == "ADD":
    note("start")
    if mode == "fail-after-pause":
        deadline = time.monotonic() + 20
        while not joined(os.environ["CNI_NETNS"]) and time.monotonic() < deadline:
            time.sleep(0.01)
        note("pause-seen" if joined(os.environ["CNI_NETNS"]) else "no-pause")
        print(json.dumps({"cniVersion": conf["cniVersion"], "code": 11, "msg": "wharfd-test-gate refuses"}))
        sys.exit(1)
    if mode.startswith("sleep="):
        time.sleep(float(mode[len("sleep="):]))
    note("done")
    print(json.dumps(conf["prevResult"]))
elif command == "DEL":
    note("del")
'''


@pytest.fixture(scope="module")
def rig() -> Iterator[CriRig]:
    r = CriRig(cni_executables={GATE: GATE_SCRIPT})
    _log(r).touch()
    r.cni_plugins = [
        {"type": GATE, "log": str(_log(r)), "capabilities": {"io.kubernetes.cri.pod-annotations": True}}
    ]
    with r:
        r.pull()
        r.pull(PAUSE_REF)  # no pull inside the timed-out RunPodSandbox below
        yield r


def _log(rig: CriRig) -> Path:
    return rig.base / "gate-calls"


def _calls(rig: CriRig) -> list[tuple[str, str, str]]:
    """The gate's notes: (pod id, command, what)."""
    return [(a, b, c) for a, b, c in (line.split(" ", 2) for line in _log(rig).read_text().splitlines())]


def _ipam(rig: CriRig) -> set[str]:
    folder = rig.base / "ipam" / f"wharfd-test-{rig.tag}"
    return {p.name for p in folder.iterdir() if p.name[0].isdigit()} if folder.is_dir() else set()


def _runc_containers(rig: CriRig) -> list[str]:
    assert RUNC is not None
    root = rig.runc_root / "k8s.io"
    if not root.is_dir():
        return []
    out = subprocess.run(
        [RUNC, "--root", str(root), "list", "-q"], capture_output=True, text=True, check=True
    )
    return out.stdout.split()


def _everything(rig: CriRig) -> dict[str, object]:
    """What a pod leaves on the node (a shim per pod; its files under the CRI root)."""
    sandboxes = rig.daemon.root / "io.containerd.grpc.v1.cri" / "sandboxes"
    return {
        "netns": rig.netns_files(),
        "ipam": _ipam(rig),
        "records": rig.k8s_containers(),
        "snapshots": [k for k in rig.k8s_snapshots() if not k.startswith("sha256:")],
        "files": sorted(p.name for p in sandboxes.iterdir()) if sandboxes.is_dir() else [],
        "runc": _runc_containers(rig),
        "shims": shim_pids(str(rig.daemon.address), rig.daemon.state / "s"),
    }


def _run(rig: CriRig, name: str, mode: str, uid: str | None = None) -> cri.RunPodSandboxRequest:
    return cri.RunPodSandboxRequest(config=rig.pod_config(name, uid=uid, annotations={ANNOTATION: mode}))


def test_a_normal_pod_passes_the_gate(rig: CriRig) -> None:
    before = _everything(rig)
    pod_id = rig.runtime.RunPodSandbox(_run(rig, "plain", ""), timeout=TIMEOUT).pod_sandbox_id
    assert (pod_id, "ADD", "done") in _calls(rig)
    assert rig.pod_status(pod_id).status.network.ip
    rig.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=TIMEOUT)
    rig.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=TIMEOUT)
    assert (pod_id, "DEL", "del") in _calls(rig)
    assert _everything(rig) == before


def test_cni_failing_while_the_pause_runs_leaves_nothing(rig: CriRig) -> None:
    before, seen = _everything(rig), len(_calls(rig))
    with pytest.raises(grpc.RpcError) as exc:
        rig.runtime.RunPodSandbox(_run(rig, "cni-fails", "fail-after-pause"), timeout=TIMEOUT)
    assert "wharfd-test-gate refuses" in str(exc.value.details())
    calls = _calls(rig)[seen:]
    (pod,) = {pod for pod, _, _ in calls}
    # The pause had joined the netns while CNI ADD ran; after the failure DEL ran.
    assert [what for _, _, what in calls] == ["start", "pause-seen", "del"]
    assert _everything(rig) == before
    assert pod not in rig.k8s_containers()


def test_pause_failing_while_cni_runs_leaves_nothing(rig: CriRig) -> None:
    before, seen = _everything(rig), len(_calls(rig))
    request = _run(rig, "pause-fails", "sleep=1")
    # runc refuses an unknown sysctl when it creates the pause, long before the slow ADD ends.
    request.config.linux.sysctls["net.ipv4.no_such_sysctl"] = "1"
    with pytest.raises(grpc.RpcError) as exc:
        rig.runtime.RunPodSandbox(request, timeout=TIMEOUT)
    assert "no_such_sysctl" in str(exc.value.details())
    # ADD ran to its end (the address it got is known) before DEL released it.
    assert [what for _, _, what in _calls(rig)[seen:]] == ["start", "done", "del"]
    assert _everything(rig) == before


def test_caller_leaving_during_cni_add_leaves_nothing(rig: CriRig) -> None:
    before, seen = _everything(rig), len(_calls(rig))
    with pytest.raises(grpc.RpcError) as exc:
        rig.runtime.RunPodSandbox(_run(rig, "impatient", "sleep=2", uid="impatient-uid"), timeout=0.5)
    assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The daemon undoes the pod once the plugin has finished: wait for that.
    deadline = time.monotonic() + TIMEOUT
    while (len(_calls(rig)) - seen < 3 or _everything(rig) != before) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [what for _, _, what in _calls(rig)[seen:]] == ["start", "done", "del"]
    assert _everything(rig) == before
    # ... and the name is free again.
    request = _run(rig, "impatient", "", uid="impatient-uid")
    pod_id = rig.runtime.RunPodSandbox(request, timeout=TIMEOUT).pod_sandbox_id
    rig.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=TIMEOUT)
