"""The one explicit list of the plugins this daemon runs, in no particular order.

The plugin table orders them by what each requires; ``disabled_plugins`` in the
config removes entries by their ``type.id``.
"""

from __future__ import annotations

from wharfd.cri import service as cri_service
from wharfd.runtime import events, gc, metrics, plugin
from wharfd.runtime.images import pull
from wharfd.runtime.metadata import plugin as metadata
from wharfd.runtime.services import differ, health
from wharfd.runtime.services import plugins as api
from wharfd.runtime.tasks import manager as task_manager


def registrations() -> tuple[plugin.Registration, ...]:
    """Every built-in plugin registration."""
    return (
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
        api.CONTENT_STORE_PLUGIN,
        api.CONTENT_PLUGIN,
        gc.PLUGIN,
        api.OVERLAYFS_PLUGIN,
        api.NATIVE_PLUGIN,
        api.SNAPSHOTS_PLUGIN,
        differ.PLUGIN,
        api.DIFF_PLUGIN,
        pull.PLUGIN,
        api.STREAM_MANAGER_PLUGIN,
        api.STREAMING_PLUGIN,
        api.TRANSFER_PLUGIN,
        api.INTROSPECTION_PLUGIN,
        api.VERSION_PLUGIN,
        health.PLUGIN,
        cri_service.PLUGIN,
        metrics.PLUGIN,
    )
