"""PullImage: fetch, unpack and name an image the way containerd's CRI names it.

1. The name is normalized (``busybox`` → ``docker.io/library/busybox:latest``;
   a digest wins over a tag); a malformed one is InvalidArgument naming it.
2. Credentials come from the request's AuthConfig (username/password, ``auth``,
   identity token or registry token), offered to each registry host the pull
   talks to (only to ``server_address`` when that is set); endpoints come
   from the hosts.toml directories of ``registry.config_path``.
3. The pull pipeline fetches and unpacks into the configured snapshotter for
   this host's platform, stalling out after ``image_pull_progress_timeout``
   without a byte.
4. Three records point at the pulled target, all labelled
   ``io.cri-containerd.image=managed`` (and ``io.cri-containerd.pinned=pinned``
   for the sandbox image): the image ID ``sha256:<config>``, ``name:tag`` when
   tagged, and ``name@<index or manifest digest>``. The answer is the image ID.

Concurrent PullImage calls for the same name, snapshotter and credentials
share one pull. A caller that goes away does not cancel it: kubelet retries,
and finds the image ready.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace

from google.protobuf.message import Message

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.api.events import image_pb2 as events_pb2
from wharfd.cri.images import IMAGE_MANAGED, LABEL_IMAGE, LABEL_PINNED, PINNED, ImageConfig, parse_docker_ref
from wharfd.runtime import errors
from wharfd.runtime.images.pull import Puller, PullOptions
from wharfd.runtime.images.reference import Reference
from wharfd.runtime.metadata.images import Descriptor, Image, ImageStore
from wharfd.runtime.registry import auth

log = logging.getLogger("wharfd.cri.images")

Publish = Callable[[str, Message], Awaitable[None]]
_Key = tuple[str, str, str]  # (reference, snapshotter, credentials fingerprint)
# image_pull_progress_timeout = 0 turns stall detection off, as in containerd: a year stands in for "never".
_NO_PROGRESS_TIMEOUT = 365 * 24 * 3600.0


def auth_config(msg: cri.AuthConfig) -> auth.AuthConfig:
    """The registry client's AuthConfig from the CRI message."""
    return auth.AuthConfig(
        username=msg.username,
        password=msg.password,
        auth=msg.auth,
        server_address=msg.server_address,
        identity_token=msg.identity_token,
        registry_token=msg.registry_token,
    )


def credentials_for(cfg: auth.AuthConfig | None, ref: Reference) -> auth.CredentialsFn | None:
    """The credentials callback of a pull; a malformed ``auth`` field fails here, before any request."""
    if cfg is None or cfg == auth.AuthConfig():
        return None
    auth.from_auth_config(replace(cfg, server_address=""), ref.domain)  # validates, result unused

    def lookup(host: str) -> auth.Credentials | None:
        return auth.from_auth_config(cfg, host)

    return lookup


def _fingerprint(cfg: auth.AuthConfig | None) -> str:
    if cfg is None:
        return ""
    fields = (
        cfg.username,
        cfg.password,
        cfg.auth,
        cfg.server_address,
        cfg.identity_token,
        cfg.registry_token,
    )
    return hashlib.sha256("\0".join(fields).encode()).hexdigest()


class ImagePuller:
    """PullImage, with one pull per (reference, snapshotter, credentials) in flight."""

    def __init__(
        self,
        images: ImageStore,
        puller: Puller | None,
        config: ImageConfig,
        *,
        publish: Publish | None = None,
    ) -> None:
        self._images = images
        self._puller = puller
        self._config = config
        self._publish = publish
        self._inflight: dict[_Key, asyncio.Task[str]] = {}
        self._pinned = _normalized(config.sandbox_image)

    async def pull_image(self, request: cri.PullImageRequest) -> cri.PullImageResponse:
        """Answer PullImage."""
        cfg = auth_config(request.auth) if request.HasField("auth") else None
        image_id = await self.pull(request.image.image, cfg, runtime_handler=request.image.runtime_handler)
        return cri.PullImageResponse(image_ref=image_id)

    async def pull(self, name: str, cfg: auth.AuthConfig | None = None, *, runtime_handler: str = "") -> str:
        """Pull ``name`` (in the current namespace) and return its image ID; shared with identical pulls."""
        if not name:
            raise errors.InvalidArgument("image: the image spec must name an image to pull")
        ref = parse_docker_ref(name)
        snapshotter = self._config.snapshotter_for(runtime_handler)
        credentials = credentials_for(cfg, ref)
        key = (str(ref), snapshotter, _fingerprint(cfg))
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._pull(ref, snapshotter, credentials))
            self._inflight[key] = task
            task.add_done_callback(lambda t: self._finished(key, t))
        else:
            log.debug("PullImage %s joins the pull in flight", ref)
        return await asyncio.shield(task)

    def _finished(self, key: _Key, task: asyncio.Task[str]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved here so that a pull nobody waits for any more logs no warning

    def labels(self, ref: Reference) -> dict[str, str]:
        """The labels of the records of ``ref``: managed, and pinned for the sandbox image."""
        labels = {LABEL_IMAGE: IMAGE_MANAGED}
        if str(ref) == self._pinned:
            labels[LABEL_PINNED] = PINNED
        return labels

    async def _pull(
        self,
        ref: Reference,
        snapshotter: str,
        credentials: auth.CredentialsFn | None,
    ) -> str:
        if self._puller is None:
            raise errors.Unavailable(
                f'cannot pull image "{ref}": the pull pipeline (io.containerd.transfer.v1.local) is not loaded'
            )
        labels = self.labels(ref)
        opts = PullOptions(
            unpack=True,
            snapshotter=snapshotter,
            labels=labels,
            credentials=credentials,
            hosts_dir=self._config.config_path,
            max_concurrent_downloads=self._config.max_concurrent_downloads,
            progress_timeout=self._config.progress_timeout or _NO_PROGRESS_TIMEOUT,
            record_image=True,
        )
        started = time.monotonic()
        try:
            result = await self._puller.pull(str(ref), opts)
        except errors.WharfError as exc:
            raise type(exc)(f'failed to pull and unpack image "{ref}": {exc}') from exc
        except TimeoutError as exc:
            raise errors.DeadlineExceeded(
                f'failed to pull and unpack image "{ref}": {exc or "timed out"}'
            ) from exc
        image_id = result.config.digest
        repo_tag = str(ref) if ref.tag else ""
        repo_digest = str(ref) if ref.digest else f"{ref.name}@{result.target.digest}"
        # The ID first: it is what every other name is found by.
        for name in (image_id, repo_tag, repo_digest):
            if name:
                await self._record(name, result.target, labels)
        log.info(
            "pulled image %s: id %s, repo digest %s, %d bytes in %.3fs",
            ref, image_id, repo_digest, result.size, time.monotonic() - started,
        )  # fmt: skip
        return image_id

    async def _record(self, name: str, target: Descriptor, labels: Mapping[str, str]) -> None:
        """Create ``name`` → ``target``, or re-point it (and add missing CRI labels) if it exists."""
        try:
            await self._images.create(Image(name=name, target=target, labels=dict(labels)))
        except errors.AlreadyExists:
            pass
        else:
            await self._event("/images/create", events_pb2.ImageCreate(name=name, labels=dict(labels)))
            return
        old = await self._images.get(name)
        paths = ["target"]
        if old.labels.get(LABEL_IMAGE) != labels[LABEL_IMAGE]:
            paths.append(f"labels.{LABEL_IMAGE}")
        # Pinning is only ever added here; a later pull by another name does not unpin.
        if labels.get(LABEL_PINNED) == PINNED and old.labels.get(LABEL_PINNED) != PINNED:
            paths.append(f"labels.{LABEL_PINNED}")
        if old.target.digest == target.digest and len(paths) == 1:
            return
        updated = await self._images.update(Image(name=name, target=target, labels=dict(labels)), paths)
        await self._event("/images/update", events_pb2.ImageUpdate(name=name, labels=updated.labels))

    async def _event(self, topic: str, event: Message) -> None:
        if self._publish is not None:
            await self._publish(topic, event)


def _normalized(name: str) -> str:
    try:
        return str(parse_docker_ref(name)) if name else ""
    except errors.InvalidArgument as exc:
        log.warning("sandbox_image %r will not be pinned: %s", name, exc)
        return ""
