"""Prometheus metrics declared at import and made real only when the daemon serves them.

prometheus_client (with the HTTP, WSGI and e-mail modules it imports) costs a
few MiB of the daemon's memory. It is imported only by :func:`enable`, which
the daemon calls before any plugin starts when ``[metrics] address`` is set.
Until then the metrics declared here drop their updates: nobody could read
them, as nothing serves them. Once enabled, each declared metric is the
prometheus_client metric of the same name, type, labels and buckets in the
default registry, so the exposition is prometheus_client's own.

This module stays free of gRPC and prometheus_client so that any component can
declare metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

__all__ = ["Counter", "Histogram", "enable", "enabled"]


class Child(Protocol):
    """What ``labels(...)`` returns: a counter's ``inc`` or a histogram's ``observe``."""

    def inc(self, amount: float = 1) -> None:
        """Add ``amount`` (counters)."""

    def observe(self, amount: float) -> None:
        """Record a value (histograms)."""


class _Dropped:
    """The child of a metric that is not enabled: updates go nowhere."""

    def inc(self, amount: float = 1) -> None:
        """Drop the update."""

    def observe(self, amount: float) -> None:
        """Drop the update."""


_DROPPED = _Dropped()
_declared: list[_Metric] = []
_enabled = False


class _Metric:
    _type = ""  # the prometheus_client class this stands for

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (), **kwargs: Any) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._kwargs = kwargs
        self._real: Any = None
        _declared.append(self)
        if _enabled:
            self._make()

    def _make(self) -> None:
        if self._real is None:
            import prometheus_client

            cls = getattr(prometheus_client, self._type)
            self._real = cls(self.name, self.documentation, self.labelnames, **self._kwargs)

    def labels(self, *values: str) -> Child:
        """The child for these label values (one that drops updates while metrics are off)."""
        if self._real is None:
            return _DROPPED
        child: Child = self._real.labels(*values)
        return child


class Counter(_Metric):
    """A ``prometheus_client.Counter`` once metrics are enabled."""

    _type = "Counter"

    def inc(self, amount: float = 1) -> None:
        """Add ``amount`` (a metric without labels)."""
        if self._real is not None:
            self._real.inc(amount)


class Histogram(_Metric):
    """A ``prometheus_client.Histogram`` once metrics are enabled."""

    _type = "Histogram"

    def observe(self, amount: float) -> None:
        """Record a value (a metric without labels)."""
        if self._real is not None:
            self._real.observe(amount)


def enable() -> None:
    """Import prometheus_client and make every declared metric (and those declared later) real."""
    global _enabled  # noqa: PLW0603 - one switch for the process, thrown once at start-up
    _enabled = True
    for metric in _declared:
        metric._make()


def enabled() -> bool:
    """Whether metrics are being collected."""
    return _enabled
