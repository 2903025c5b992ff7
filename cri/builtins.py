"""The one explicit list of the plugins this daemon runs, in no particular order.

The plugin table orders them by what each requires; ``disabled_plugins`` in the
config removes entries by their ``type.id``.
"""

from __future__ import annotations

from wharfd.cri import service as cri_service
from wharfd.runtime import events, metrics, plugin
from wharfd.runtime.metadata import plugin as metadata
from wharfd.runtime.services import events as events_service
from wharfd.runtime.services import health, introspection, namespaces, version


def registrations() -> tuple[plugin.Registration, ...]:
    """Every built-in plugin registration."""
    return (
        metadata.PLUGIN,
        events.PLUGIN,
        events_service.PLUGIN,
        events_service.TTRPC_PLUGIN,
        namespaces.PLUGIN,
        introspection.PLUGIN,
        version.PLUGIN,
        health.PLUGIN,
        cri_service.PLUGIN,
        metrics.PLUGIN,
    )
