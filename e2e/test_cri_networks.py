"""A pod on two real CNI networks (bridge + host-local), side by side or in order (``cni.setup_serially``).

With ``max_conf_num = 2`` the daemon attaches a pod to the first two conflists
of its conf dir as eth0 and eth1, as containerd does; both attachments are
detached when the pod stops.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess

import pytest

from e2e.cri_support import CriRig, _free_subnet, addresses_in, needs_root_and_runc
from wharfd.api.cri.v1 import api_pb2 as cri

pytestmark = needs_root_and_runc()


@pytest.mark.parametrize("serially", [False, True])
def test_a_pod_attaches_to_two_networks(serially: bool) -> None:
    rig = CriRig(cni_config=f"  max_conf_num = 2\n  setup_serially = {'true' if serially else 'false'}\n")
    second = _free_subnet()
    while second == rig.subnet:
        second = _free_subnet()
    bridge = f"wtc{rig.tag}"
    rig.cni_conf_dir.mkdir(parents=True)
    (rig.cni_conf_dir / "20-wharfd-test-second.conflist").write_text(
        json.dumps(
            {
                "cniVersion": "1.0.0",
                "name": f"wharfd-test-{rig.tag}-second",
                "plugins": [
                    {
                        "type": "bridge",
                        "bridge": bridge,
                        "ipam": {
                            "type": "host-local",
                            "dataDir": str(rig.base / "ipam-second"),
                            "ranges": [[{"subnet": str(second)}]],
                        },
                    }
                ],
            }
        )
    )
    try:
        with rig:
            pod_id = rig.run_pod("two-nets")
            info = json.loads(rig.pod_status(pod_id, verbose=True).info["info"])
            netns = next(
                n["path"] for n in info["runtimeSpec"]["linux"]["namespaces"] if n["type"] == "network"
            )
            (eth0,) = addresses_in(netns, "eth0")
            (eth1,) = addresses_in(netns, "eth1")
            assert ipaddress.ip_address(eth0) in rig.subnet
            assert ipaddress.ip_address(eth1) in second
            rig.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
            # Both attachments detached: host-local gave both addresses back.
            for ipam in (rig.base / "ipam", rig.base / "ipam-second"):
                leases = [p.name for p in ipam.rglob("*") if p.is_file() and p.name[0].isdigit()]
                assert leases == [], (ipam, leases)
            rig.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    finally:
        subprocess.run(["ip", "link", "del", bridge], check=False, capture_output=True)
