"""Sinks that publish a live tracker to monitoring systems.

:func:`sinks_for` is what :meth:`greentrack.Tracker.start` calls when ``prometheus_port`` or
``pushgateway_url`` is set. Nothing here imports ``prometheus_client`` until a sink starts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from greentrack.config import Config


def default_job(env: Mapping[str, str] | None = None) -> str:
    """The ``job`` label when ``Config.job`` is unset: what the scheduler calls this job.

    Slurm's ``SLURM_JOB_ID``; on Kubernetes (``KUBERNETES_SERVICE_HOST`` set) the pod name, which
    the kubelet puts in ``HOSTNAME``; else ``greentrack``.
    """
    env = os.environ if env is None else env
    if env.get("SLURM_JOB_ID"):
        return env["SLURM_JOB_ID"]
    if env.get("KUBERNETES_SERVICE_HOST") and env.get("HOSTNAME"):
        return env["HOSTNAME"]
    return "greentrack"


def sinks_for(config: Config) -> list[Any]:
    """The sinks the settings ask for: one :class:`~greentrack.exporters.prometheus.PrometheusExporter`
    serving ``/metrics`` (``prometheus_port`` set) and/or pushing (``pushgateway_url`` set)."""
    if config.prometheus_port is None and not config.pushgateway_url:
        return []
    from greentrack.exporters.prometheus import PrometheusExporter
    return [PrometheusExporter(config)]


__all__ = ["default_job", "sinks_for"]
