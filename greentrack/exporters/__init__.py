"""Sinks that publish a live tracker to monitoring systems.

:func:`sinks_for` is what :meth:`greentrack.Tracker.start` calls when ``prometheus_port`` or
``pushgateway_url`` is set. ``prometheus_client`` is imported only when a sink starts.
"""

from __future__ import annotations

from typing import Any

from greentrack.common.config import Config
from greentrack.exporters.prometheus import PrometheusExporter, default_job


def sinks_for(config: Config) -> list[Any]:
    """The sinks the settings ask for: one :class:`~greentrack.exporters.prometheus.PrometheusExporter`
    serving ``/metrics`` (``prometheus_port`` set) and/or pushing (``pushgateway_url`` set)."""
    if config.prometheus_port is None and not config.pushgateway_url:
        return []
    return [PrometheusExporter(config)]


__all__ = ["default_job", "sinks_for"]
