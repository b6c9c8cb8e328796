"""Sinks that publish a live tracker to monitoring systems.

:func:`sinks_for` is what :meth:`greentrack.Tracker.start` calls when ``prometheus_port`` or
``pushgateway_url`` is set. ``prometheus_client`` is imported only when a sink starts.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from greentrack.common.config import Config

if TYPE_CHECKING:
    from greentrack.exporters.prometheus import default_job


@runtime_checkable
class Sink(Protocol):
    """An output fed live by a tracker: started after its engine (so it sees the first readings),
    stopped before it (so a final push or scrape sees the final totals). A sink never raises into
    training: the tracker records what one raises as a warning and goes on."""

    def start(self, tracker: Any) -> None:
        """Begin publishing ``tracker`` (a started :class:`greentrack.Tracker`)."""

    def stop(self, tracker: Any) -> None:
        """Publish the final totals and release what :meth:`start` took (ports, threads)."""


def sinks_for(config: Config) -> list[Sink]:
    """The sinks the settings ask for: one :class:`~greentrack.exporters.prometheus.PrometheusExporter`
    serving ``/metrics`` (``prometheus_port`` set) and/or pushing (``pushgateway_url`` set)."""
    if config.prometheus_port is None and not config.pushgateway_url:
        return []
    # the exporter (and the footprint it computes live) loads when a run asks for it, not
    # when training imports the tracker
    from greentrack.exporters.prometheus import PrometheusExporter
    return [PrometheusExporter(config)]


def __getattr__(name: str) -> Any:
    if name == "default_job":  # as sinks_for: loaded on first use
        return importlib.import_module("greentrack.exporters.prometheus").default_job
    raise AttributeError(f"module 'greentrack.exporters' has no attribute {name!r}")


__all__ = ["Sink", "default_job", "sinks_for"]
