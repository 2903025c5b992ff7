"""The image ContainerStatus reports, as the image changes under a container, through the daemon's CRI socket.

containerd reports a container's image as it is *now*: while the image is
present, ``image`` is its first repo tag alone (nothing else of the config's
image spec) and ``image_ref`` its first repo digest (else its ID); once it is
gone, ``image`` is the config's image spec as given and ``image_ref`` the
image ID. ``image_id`` is always the ID. wharfd remembers that answer per
container while the image store is unchanged; these tests change the store
through the containerd API (``wharf images tag`` / ``rm``) and the CRI
(``RemoveImage``, ``PullImage``) and check every answer against what
ImageStatus says at that moment.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from e2e.cri_support import BUSYBOX_REF, REGISTRY, TIMEOUT, CriRig, needs_root_and_runc
from wharfd.api.cri.v1 import api_pb2 as cri

pytestmark = needs_root_and_runc()

FIRST = f"{REGISTRY}/aaa/wharfd-test:0"  # sorts before the busybox tag
LAST = f"{REGISTRY}/zzz/wharfd-test:9"  # sorts after it


@pytest.fixture(scope="module")
def rig() -> Iterator[CriRig]:
    with CriRig() as r:
        yield r


def _status(rig: CriRig, cid: str, verbose: bool = False) -> cri.ContainerStatusResponse:
    request = cri.ContainerStatusRequest(container_id=cid, verbose=verbose)
    reply: cri.ContainerStatusResponse = rig.runtime.ContainerStatus(request, timeout=TIMEOUT)
    return reply


def _image(rig: CriRig, image_id: str) -> cri.Image:
    """ImageStatus of ``image_id`` now (an empty image once it is gone)."""
    request = cri.ImageStatusRequest(image=cri.ImageSpec(image=image_id))
    return rig.images.ImageStatus(request, timeout=TIMEOUT).image


def _reported(rig: CriRig, cid: str) -> tuple[cri.ImageSpec, str, str]:
    got = _status(rig, cid).status
    return got.image, got.image_ref, got.image_id


def test_status_follows_tags_and_removal_of_the_image(rig: CriRig) -> None:
    image_id = rig.pull(BUSYBOX_REF)
    pod_config = rig.pod_config("image-view")
    pod_id = rig.runtime.RunPodSandbox(
        cri.RunPodSandboxRequest(config=pod_config), timeout=TIMEOUT
    ).pod_sandbox_id
    config = rig.container_config("app", ["sleep", "3600"])
    # What kubelet sends besides the name: containerd drops these from a tagged image's report.
    config.image.annotations["wharfd-test/kept"] = "only-in-the-config"
    config.image.user_specified_image = "e2e/busybox:1"
    request = cri.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod_config)
    cid = rig.runtime.CreateContainer(request, timeout=TIMEOUT).container_id
    rig.runtime.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=TIMEOUT)

    present = _image(rig, image_id)
    digest = present.repo_digests[0]
    assert list(present.repo_tags) == [BUSYBOX_REF] and digest.startswith(f"{REGISTRY}/e2e/busybox@sha256:")
    assert _reported(rig, cid) == (cri.ImageSpec(image=BUSYBOX_REF), digest, image_id)

    # A new tag that sorts first: reported at once (the remembered answer is dropped).
    rig.wharf("images", "tag", BUSYBOX_REF, FIRST)
    assert list(_image(rig, image_id).repo_tags) == [FIRST, BUSYBOX_REF]
    assert _reported(rig, cid) == (cri.ImageSpec(image=FIRST), digest, image_id)
    # One that sorts last changes nothing; untagging the first brings the old answer back.
    rig.wharf("images", "tag", BUSYBOX_REF, LAST)
    assert _reported(rig, cid) == (cri.ImageSpec(image=FIRST), digest, image_id)
    rig.wharf("images", "rm", FIRST)
    assert list(_image(rig, image_id).repo_tags) == [BUSYBOX_REF, LAST]
    assert _reported(rig, cid) == (cri.ImageSpec(image=BUSYBOX_REF), digest, image_id)

    # The image removed while its container runs: the config's spec as given, the ID as the reference.
    rig.images.RemoveImage(cri.RemoveImageRequest(image=cri.ImageSpec(image=image_id)), timeout=TIMEOUT)
    assert not _image(rig, image_id).id
    gone = _status(rig, cid, verbose=True)
    assert (gone.status.image, gone.status.image_ref, gone.status.image_id) == (
        config.image,
        image_id,
        image_id,
    )
    assert gone.status.state == cri.CONTAINER_RUNNING and '"runtimeSpec"' in gone.info["info"]
    listed = rig.runtime.ListContainers(
        cri.ListContainersRequest(filter=cri.ContainerFilter(id=cid)), timeout=TIMEOUT
    )
    assert [(c.image, c.image_ref, c.image_id) for c in listed.containers] == [
        (config.image, image_id, image_id)
    ]
    assert _reported(rig, cid) == (config.image, image_id, image_id)  # and again, unchanged

    # Pulled again: the same image, reported by its tag and digest once more.
    assert rig.pull(BUSYBOX_REF) == image_id
    assert _reported(rig, cid) == (cri.ImageSpec(image=BUSYBOX_REF), digest, image_id)

    rig.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=TIMEOUT)
    rig.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=TIMEOUT)
