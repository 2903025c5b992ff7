"""The pod-network manager: which networks exist now, and attaching pods to all of them.

The conf dir is re-read whenever its listing changes (names, sizes, mtimes are
cheap to compare), so NetworkReady turns true as soon as a config appears,
without a restart. A pod attaches to the loaded networks as eth0, eth1, …:
all side by side, as go-cni's ``Setup`` does (containerd's default), or one
after the other in their order with ``serially`` (go-cni's ``SetupSerially``,
containerd's ``cni.setup_serially``). A failure detaches what was attached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wharfd.cni import config
from wharfd.cni.network import Attachment, Network
from wharfd.runtime import errors, steps

log = logging.getLogger("wharfd.cni")

NOT_READY_REASON = "NetworkPluginNotReady"
NOT_READY_MESSAGE = "Network plugin returns error: cni plugin not initialized"


@dataclass(frozen=True)
class Settings:
    """Where configs and plugins live, and how long a plugin may take."""

    conf_dir: Path
    bin_dirs: tuple[str, ...]
    cache_dir: Path
    max_conf_num: int = 1
    timeout: float = 60.0


@dataclass(frozen=True)
class Attached:
    """One network a pod was attached to, with the plugin chain's result."""

    network: str
    ifname: str
    result: dict[str, Any]


def _listing(conf_dir: Path) -> tuple[tuple[str, int, int], ...]:
    try:
        entries = sorted(conf_dir.iterdir())
    except OSError:
        return ()
    out = []
    for path in entries:
        if path.suffix in config.EXTENSIONS:
            with contextlib.suppress(OSError):
                st = path.stat()
                out.append((path.name, st.st_size, st.st_mtime_ns))
    return tuple(out)


class CniManager:
    """Loads networks from the conf dir on demand and runs pod attach/detach over all of them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._listing: tuple[tuple[str, int, int], ...] | None = None
        self._networks: list[Network] = []
        self._failures: list[str] = []
        self._lock = asyncio.Lock()

    async def networks(self) -> list[Network]:
        """The networks of the conf dir as it is now (reloaded when it changed)."""
        async with self._lock:
            listing = await asyncio.to_thread(_listing, self.settings.conf_dir)
            if listing != self._listing:
                loaded = await asyncio.to_thread(
                    config.load_dir, self.settings.conf_dir, self.settings.max_conf_num
                )
                self._networks = [
                    Network(c, self.settings.bin_dirs, self.settings.cache_dir, timeout=self.settings.timeout)
                    for c in loaded.networks
                ]
                self._failures = loaded.failures
                self._listing = listing
                for failure in loaded.failures:
                    log.warning("%s", failure)
                log.info("CNI networks: %s", ", ".join(n.name for n in self._networks) or "none")
            return list(self._networks)

    async def status(self) -> tuple[bool, str, str]:
        """(ready, reason, message) for the CRI's NetworkReady condition."""
        networks = await self.networks()
        if not networks:
            detail = f" ({'; '.join(self._failures)})" if self._failures else ""
            return False, NOT_READY_REASON, NOT_READY_MESSAGE + detail
        for network in networks:
            try:
                await network.status()
            except errors.WharfError as exc:
                return False, NOT_READY_REASON, f"Network plugin returns error: {exc}"
        return True, "", ""

    async def setup(
        self,
        container_id: str,
        netns: str,
        args: Sequence[tuple[str, str]] = (),
        capability_args: Mapping[str, Any] | None = None,
        *,
        serially: bool = False,
    ) -> list[Attached]:
        """Attach to every network, side by side or (``serially``) in order; the results in network order.

        Side by side, a failing ADD does not stop the others: a plugin cut off
        half-way could leave what no DEL knows of, so each runs to its end.
        Then, on any failure (or cancellation), every network attached is
        detached and the first failure is raised.
        """
        attachments = await self._attachments(container_id, netns, args, capability_args)
        if not attachments:
            raise errors.FailedPrecondition(NOT_READY_MESSAGE)
        results: list[dict[str, Any] | None] = [None] * len(attachments)

        async def attach(index: int) -> None:
            network, att = attachments[index]
            results[index] = await network.add(att)

        try:
            if serially:
                for index in range(len(attachments)):
                    await attach(index)
            else:
                await steps.to_their_end([attach(index) for index in range(len(attachments))])
        except BaseException:
            for (network, att), result in reversed(list(zip(attachments, results, strict=True))):
                if result is not None:
                    with contextlib.suppress(Exception):
                        await network.delete(att)
            raise
        return [
            Attached(network.name, att.ifname, result)
            for (network, att), result in zip(attachments, results, strict=True)
            if result is not None
        ]

    async def teardown(
        self,
        container_id: str,
        netns: str,
        args: Sequence[tuple[str, str]] = (),
        capability_args: Mapping[str, Any] | None = None,
    ) -> None:
        """Detach from every network (each is tried; the first error is raised at the end)."""
        first: BaseException | None = None
        for network, att in reversed(await self._attachments(container_id, netns, args, capability_args)):
            try:
                await network.delete(att)
            except errors.WharfError as exc:
                log.warning("CNI DEL %s on %s: %s", container_id, network.name, exc)
                first = first or exc
        if first is not None:
            raise first

    async def check(
        self,
        container_id: str,
        netns: str,
        args: Sequence[tuple[str, str]] = (),
        capability_args: Mapping[str, Any] | None = None,
    ) -> None:
        """CHECK every network's attachment of the container (with ADD's arguments, as the spec asks)."""
        for network, att in await self._attachments(container_id, netns, args, capability_args):
            await network.check(att)

    async def _attachments(
        self,
        container_id: str,
        netns: str,
        args: Sequence[tuple[str, str]],
        capability_args: Mapping[str, Any] | None,
    ) -> list[tuple[Network, Attachment]]:
        """Each loaded network with the container's attachment to it (interface ``eth<index>``)."""
        return [
            (
                network,
                Attachment(container_id, netns, f"eth{index}", tuple(args), dict(capability_args or {})),
            )
            for index, network in enumerate(await self.networks())
        ]
