"""The one explicit list of the plugins this daemon runs.

The plugin table orders them by what each requires, keeping this order among
those that are ready together; ``disabled_plugins`` in the config removes
entries by their ``type.id``. Metrics come first: the plugin that turns them on
must start before those that count.
"""

from __future__ import annotations

from wharfd.cri import service as cri_service
from wharfd.runtime import events, gc, metrics, plugin
from wharfd.runtime.content import plugin as content
from wharfd.runtime.images import pull
from wharfd.runtime.metadata import plugin as metadata
from wharfd.runtime.services import differ, health, stream_manager
from wharfd.runtime.services import plugins as api
from wharfd.runtime.snapshots import plugin as snapshots
from wharfd.runtime.tasks import manager as task_manager


def registrations() -> tuple[plugin.Registration, ...]:
    """Every built-in plugin registration."""
    return (
        metrics.PLUGIN,
        metadata.PLUGIN,
        events.PLUGIN,
        api.EVENTS_PLUGIN,
        api.TTRPC_EVENTS_PLUGIN,
        api.NAMESPACES_PLUGIN,
        api.IMAGES_PLUGIN,
        api.CONTAINERS_PLUGIN,
        task_manager.PLUGIN,
        api.TASKS_PLUGIN,
        api.LEASES_PLUGIN,
        content.PLUGIN,
        api.CONTENT_PLUGIN,
        gc.PLUGIN,
        snapshots.OVERLAYFS_PLUGIN,
        snapshots.NATIVE_PLUGIN,
        api.SNAPSHOTS_PLUGIN,
        differ.PLUGIN,
        api.DIFF_PLUGIN,
        pull.PLUGIN,
        stream_manager.PLUGIN,
        api.STREAMING_PLUGIN,
        api.TRANSFER_PLUGIN,
        api.INTROSPECTION_PLUGIN,
        api.VERSION_PLUGIN,
        health.PLUGIN,
        cri_service.PLUGIN,
    )
