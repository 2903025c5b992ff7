"""The user a pod's pause process runs as, through the daemon's CRI socket.

As containerd: the sandbox security context's ``run_as_user`` (with
``run_as_group``) wins; else the pause image's ``User``, which may be a name
looked up in the image's ``/etc/passwd``. The CRI has no ``run_as_username``
for a sandbox. The rig's stock pause image knows only root, so these tests
import pause images (under the rig's sandbox image name) whose ``/etc/passwd``
and ``/etc/group`` know a user of their own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from e2e.cri_support import PAUSE_REF, TIMEOUT, CriRig, image_archive, needs_root_and_runc
from tests.support.pause import pause_image
from wharfd.api.cri.v1 import api_pb2 as cri

pytestmark = needs_root_and_runc()

USER, UID, GID, EXTRA_GID = "wharfd-pause", 4321, 4322, 4400
PASSWD = f"root:x:0:0:root:/:/pause\n{USER}:x:{UID}:{GID}:pause:/:/pause\n".encode()
# The user is also a member of another group, which a pause process does not get (containerd
# gives the sandbox its primary group only).
GROUP = f"root:x:0:\n{USER}:x:{GID}:\nwharfd-extra:x:{EXTRA_GID}:{USER}\n".encode()


@pytest.fixture(scope="module")
def rig() -> Iterator[CriRig]:
    with CriRig(registry=False) as r:
        yield r


def _use_pause_image(rig: CriRig, user: str) -> None:
    """Import a pause image whose config names ``user`` as the rig's sandbox image."""
    archive = rig.base / f"pause-{user}.tar"
    archive.write_bytes(image_archive(pause_image(user, passwd=PASSWD, group=GROUP), PAUSE_REF))
    rig.wharf("images", "import", str(archive))
    assert json.loads(rig.images.ImageStatus(
        cri.ImageStatusRequest(image=cri.ImageSpec(image=PAUSE_REF), verbose=True), timeout=TIMEOUT
    ).info["info"])["imageSpec"]["config"]["User"] == user  # fmt: skip


def _run(rig: CriRig, name: str, uid: int | None = None, gid: int | None = None) -> str:
    config = rig.pod_config(name)
    if uid is not None:
        config.linux.security_context.run_as_user.value = uid
    if gid is not None:
        config.linux.security_context.run_as_group.value = gid
    request = cri.RunPodSandboxRequest(config=config)
    return str(rig.runtime.RunPodSandbox(request, timeout=TIMEOUT).pod_sandbox_id)


def _pause_ids(rig: CriRig, pod_id: str) -> tuple[list[str], list[str], list[str]]:
    """The real, effective, saved and fs uids, the same gids, and the groups of the pod's pause process."""
    reply = rig.pod_status(pod_id, verbose=True)
    assert reply.status.state == cri.SANDBOX_READY
    pid = json.loads(reply.info["info"])["pid"]
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return fields["Uid"].split(), fields["Gid"].split(), fields["Groups"].split()


def _end(rig: CriRig, pod_id: str) -> None:
    rig.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=TIMEOUT)
    rig.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=TIMEOUT)


def test_the_pause_process_runs_as_the_user_its_image_names(rig: CriRig) -> None:
    _use_pause_image(rig, USER)
    pod_id = _run(rig, "named-user")
    uids, gids, groups = _pause_ids(rig, pod_id)
    assert uids == [str(UID)] * 4 and gids == [str(GID)] * 4
    assert groups == [str(GID)]  # the primary group only, as containerd gives a sandbox
    spec = json.loads(rig.pod_status(pod_id, verbose=True).info["info"])["runtimeSpec"]
    assert spec["process"]["user"] == {"uid": UID, "gid": GID, "additionalGids": [GID]}
    _end(rig, pod_id)


def test_run_as_user_wins_over_the_images_user(rig: CriRig) -> None:
    _use_pause_image(rig, USER)
    # A uid alone: its group is the one /etc/passwd gives it.
    pod_id = _run(rig, "by-uid", uid=UID)
    assert _pause_ids(rig, pod_id)[:2] == ([str(UID)] * 4, [str(GID)] * 4)
    _end(rig, pod_id)
    # A uid and gid nobody in the image has: taken as they are.
    pod_id = _run(rig, "by-ids", uid=777, gid=778)
    uids, gids, groups = _pause_ids(rig, pod_id)
    assert (uids, gids, groups) == (["777"] * 4, ["778"] * 4, ["778"])
    _end(rig, pod_id)


def test_a_user_name_the_image_lacks_fails_naming_it_and_leaves_nothing(rig: CriRig) -> None:
    _use_pause_image(rig, "wharfd-nobody")
    with pytest.raises(grpc.RpcError) as exc:
        _run(rig, "unknown-user")
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = str(exc.value.details())
    assert 'no user "wharfd-nobody" in /etc/passwd' in details, details
    assert rig.netns_files() == [] and rig.k8s_containers() == []
    assert not rig.runtime.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=TIMEOUT).items
    # run_as_user set, the image's User is not looked up at all (as containerd).
    pod_id = _run(rig, "unknown-user-overridden", uid=UID)
    assert _pause_ids(rig, pod_id)[0] == [str(UID)] * 4
    _end(rig, pod_id)
