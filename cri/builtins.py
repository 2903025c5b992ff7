"""The one explicit list of the plugins this daemon runs, in no particular order.

The plugin table orders them by what each requires; ``disabled_plugins`` in the
config removes entries by their ``type.id``.
"""

from __future__ import annotations

from wharfd.cri import service as cri_service
from wharfd.runtime import events, gc, metrics, plugin
from wharfd.runtime.images import pull
from wharfd.runtime.metadata import plugin as metadata
from wharfd.runtime.services import containers as containers_service
from wharfd.runtime.services import content as content_service
from wharfd.runtime.services import diff as diff_service
from wharfd.runtime.services import events as events_service
from wharfd.runtime.services import health, images, introspection, leases, namespaces, snapshots, version
from wharfd.runtime.services import streaming as streaming_service
from wharfd.runtime.services import tasks as tasks_service
from wharfd.runtime.services import transfer as transfer_service
from wharfd.runtime.tasks import manager as task_manager


def registrations() -> tuple[plugin.Registration, ...]:
    """Every built-in plugin registration."""
    return (
        metadata.PLUGIN,
        events.PLUGIN,
        events_service.PLUGIN,
        events_service.TTRPC_PLUGIN,
        namespaces.PLUGIN,
        images.PLUGIN,
        containers_service.PLUGIN,
        task_manager.PLUGIN,
        tasks_service.PLUGIN,
        leases.PLUGIN,
        content_service.STORE_PLUGIN,
        content_service.PLUGIN,
        gc.PLUGIN,
        *snapshots.PLUGINS,
        *diff_service.PLUGINS,
        pull.PLUGIN,
        *streaming_service.PLUGINS,
        transfer_service.PLUGIN,
        introspection.PLUGIN,
        version.PLUGIN,
        health.PLUGIN,
        cri_service.PLUGIN,
        metrics.PLUGIN,
    )
