"""The one explicit list of the plugins this daemon runs, in no particular order.

The plugin table orders them by what each requires; ``disabled_plugins`` in the
config removes entries by their ``type.id``.
"""

from __future__ import annotations

from wharfd.cri import service as cri_service
from wharfd.runtime import events, gc, metrics, plugin
from wharfd.runtime.metadata import plugin as metadata
from wharfd.runtime.services import content as content_service
from wharfd.runtime.services import events as events_service
from wharfd.runtime.services import health, images, introspection, leases, namespaces, snapshots, version


def registrations() -> tuple[plugin.Registration, ...]:
    """Every built-in plugin registration."""
    return (
        metadata.PLUGIN,
        events.PLUGIN,
        events_service.PLUGIN,
        events_service.TTRPC_PLUGIN,
        namespaces.PLUGIN,
        images.PLUGIN,
        leases.PLUGIN,
        content_service.STORE_PLUGIN,
        content_service.PLUGIN,
        gc.PLUGIN,
        *snapshots.PLUGINS,
        introspection.PLUGIN,
        version.PLUGIN,
        health.PLUGIN,
        cri_service.PLUGIN,
        metrics.PLUGIN,
    )
