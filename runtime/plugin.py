"""The plugin table: what the daemon is made of, in what order it starts, and how each part fared.

Each component declares a :class:`Registration` (type, id, the plugin types it
requires, and an async ``init``). The composition root lists them explicitly
(there is no import-time registration); :class:`PluginSet` orders them by their
requirements, honours ``disabled_plugins`` and ``required_plugins``, and keeps
the outcome of every init for the Introspection service, so ``wharf plugins ls``
tells the truth: ``ok``, ``skip`` (the plugin chose not to run here, and says
why) or ``error``.
"""

from __future__ import annotations

import asyncio
import logging
import platform
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from wharfd.runtime import errors

log = logging.getLogger("wharfd.plugin")

# Plugin types, named as containerd names them so `ctr plugins ls` reads the same.
GRPC = "io.containerd.grpc.v1"
TTRPC = "io.containerd.ttrpc.v1"
METADATA = "io.containerd.metadata.v1"
CONTENT = "io.containerd.content.v1"
SNAPSHOTTER = "io.containerd.snapshotter.v1"
SERVICE = "io.containerd.service.v1"
EVENT = "io.containerd.event.v1"
LEASE = "io.containerd.lease.v1"
GC = "io.containerd.gc.v1"
DIFF = "io.containerd.differ.v1"
RUNTIME = "io.containerd.runtime.v2"
INTERNAL = "io.containerd.internal.v1"
TRANSFER = "io.containerd.transfer.v1"
CRI = "io.containerd.cri.v1"
CNI = "io.wharfd.cni.v1"
SERVER = "io.containerd.server.v1"

T = TypeVar("T")


class SkipPlugin(Exception):
    """Raised by an init that decides not to run on this host; the reason is shown in ``plugins ls -d``."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"skip plugin: {reason}")


@dataclass(frozen=True)
class Registration:
    """A component of the daemon: who it is, what it needs, and how it starts."""

    type: str
    id: str
    init: Callable[[InitContext], Awaitable[Any]]
    # Plugin types (or "type.id" URIs) that must be initialised first.
    requires: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()
    # Whether the plugin is specific to this host's platform (snapshotters, runtimes),
    # which Introspection reports as the plugin's platforms.
    host_platform: bool = False
    # Called with the instance at shutdown, in reverse start order.
    close: Callable[[Any], Awaitable[None]] | None = None

    @property
    def uri(self) -> str:
        """The ``type.id`` name used in config sections and in ``disabled_plugins``."""
        return f"{self.type}.{self.id}"


@dataclass
class Plugin:
    """The outcome of one registration's init."""

    registration: Registration
    instance: Any = None
    error: BaseException | None = None
    exports: dict[str, str] = field(default_factory=dict)
    started: bool = False

    @property
    def platforms(self) -> tuple[str, ...]:
        """The platforms the plugin serves (the host's, for platform-specific plugins)."""
        return (HOST_PLATFORM,) if self.registration.host_platform else ()

    @property
    def status(self) -> str:
        """``ok``, ``skip`` or ``error``, as ``ctr plugins ls`` prints it."""
        if self.error is None:
            return "ok"
        if isinstance(self.error, SkipPlugin):
            return "skip"
        return "error"


@dataclass
class InitContext:
    """What an init gets: its config section, its own directories and the plugins it required."""

    registration: Registration
    config: Any  # the daemon's Config (cri.config.Config); typed loosely to keep runtime free of cri
    plugin_config: dict[str, Any]
    root: Path
    state: Path
    plugins: PluginSet
    exports: dict[str, str] = field(default_factory=dict)

    def get(self, type_: str, id_: str | None = None) -> Any:
        """Return the instance of a started plugin of ``type_`` (and ``id_``), or raise NotFound."""
        return self.plugins.instance(type_, id_)

    def get_all(self, type_: str) -> dict[str, Any]:
        """Return every started plugin of ``type_`` by id."""
        return self.plugins.instances(type_)


def _host_platform() -> str:
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm/v7", "ppc64le": "ppc64le", "s390x": "s390x"}
    return f"linux/{arch.get(machine, machine)}"


HOST_PLATFORM = _host_platform()


def order(registrations: Sequence[Registration]) -> list[Registration]:
    """Sort registrations so every plugin comes after those it requires (stable otherwise).

    A requirement names a plugin type, or a full ``type.id``. Requirements on
    plugins not in the list are ignored here; init decides whether it can run
    without them.
    """
    remaining = list(registrations)
    done: list[Registration] = []

    def satisfied(reg: Registration) -> bool:
        # Ready when no other pending registration provides something it requires.
        return not any(r is not reg and req in (r.type, r.uri) for req in reg.requires for r in remaining)

    while remaining:
        ready = [r for r in remaining if satisfied(r)]
        if not ready:
            cycle = ", ".join(r.uri for r in remaining)
            raise errors.FailedPrecondition(f"plugin requirements form a cycle among: {cycle}")
        for reg in ready:
            remaining.remove(reg)
            done.append(reg)
    return done


class PluginSet:
    """Starts registrations in order and remembers how each one fared."""

    def __init__(
        self,
        registrations: Iterable[Registration],
        *,
        disabled: Iterable[str] = (),
        required: Iterable[str] = (),
    ) -> None:
        regs = list(registrations)
        uris = [r.uri for r in regs]
        if len(set(uris)) != len(uris):
            raise errors.InvalidArgument(f"duplicate plugin registrations in {uris}")
        self.disabled = set(disabled)
        self.required = set(required)
        self.plugins: list[Plugin] = [
            Plugin(reg) for reg in order([r for r in regs if r.uri not in self.disabled])
        ]

    def instance(self, type_: str, id_: str | None = None) -> Any:
        """The instance of a started plugin; NotFound when absent, disabled or failed."""
        for plugin in self.plugins:
            reg = plugin.registration
            if reg.type == type_ and (id_ is None or reg.id == id_):
                if plugin.started:
                    return plugin.instance
                if plugin.error is not None:
                    raise errors.FailedPrecondition(f"plugin {reg.uri} failed to start: {plugin.error}")
        wanted = f"{type_}.{id_}" if id_ else type_
        raise errors.NotFound(f"plugin {wanted}: not loaded")

    def instances(self, type_: str) -> dict[str, Any]:
        """Every started plugin of a type, by id."""
        return {
            p.registration.id: p.instance for p in self.plugins if p.registration.type == type_ and p.started
        }

    async def start(self, make_context: Callable[[Registration], InitContext]) -> None:
        """Run every init in order. A failing plugin is recorded; a failing required one aborts start-up."""
        unknown = self.required - {p.registration.uri for p in self.plugins}
        if unknown:
            raise errors.FailedPrecondition(
                f"required plugins not loaded (unknown or disabled): {sorted(unknown)}"
            )
        for plugin in self.plugins:
            reg = plugin.registration
            ctx = make_context(reg)
            try:
                plugin.instance = await reg.init(ctx)
            except SkipPlugin as exc:
                plugin.error = exc
                log.info("%s: %s", reg.uri, exc)
            except Exception as exc:
                plugin.error = exc
                log.warning("%s: failed to load: %s", reg.uri, exc, exc_info=log.isEnabledFor(logging.DEBUG))
            else:
                plugin.started = True
                plugin.exports = dict(ctx.exports)
                log.debug("%s: loaded", reg.uri)
            if plugin.error is not None and reg.uri in self.required:
                raise errors.FailedPrecondition(f"required plugin {reg.uri} failed to load: {plugin.error}")

    async def close(self) -> None:
        """Close started plugins in reverse order; one failure does not stop the others."""
        for plugin in reversed(self.plugins):
            reg = plugin.registration
            if plugin.started and reg.close is not None:
                try:
                    async with asyncio.timeout(10):
                        await reg.close(plugin.instance)
                except Exception:
                    log.exception("%s: close failed", reg.uri)
            plugin.started = False

    def started(self, type_: str) -> list[Plugin]:
        """The plugins of a type that started, in start order."""
        return [p for p in self.plugins if p.registration.type == type_ and p.started]
