"""Prometheus exporter: a ``/metrics`` endpoint inside the tracked process, and/or Pushgateway pushes.

The metrics are listed in :mod:`greentrack.exporters._collector`. Each tracker gets its own
``CollectorRegistry``; nothing is registered at import.

Several ranks on one host: with a fixed ``prometheus_port`` P, the process of local rank L
(``LOCAL_RANK``, set by torchrun, Lightning and Accelerate) listens on P + L, so a scrape config
lists P, P+1, ... P+N-1 per node. With port 0 each process gets a free port from the kernel, printed
at start and recorded in the run as an ``exporter-listening`` event.

Example:
    >>> tracker = greentrack.Tracker("runs/x", prometheus_port=9400)  # doctest: +SKIP
    >>> tracker.start(); tracker.sinks[0].url                         # doctest: +SKIP
    'http://127.0.0.1:9400/metrics'
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

from greentrack.carbon.footprint import footprint
from greentrack.carbon.runs import profile_of_stores, work_of
from greentrack.common.config import Config, launcher_int
from greentrack.common.errors import ConfigError
from greentrack.exporters._collector import CONTINUE_WAIT_S, Intensity, PushHealth, TrackerCollector
from greentrack.exporters._push import Pusher
from greentrack.exporters._steps import STEP_ENERGY_BUCKETS_J
from greentrack.exporters.gateway import gateway_url
from greentrack.run import Run, recorded_before
from greentrack.store.layout import host_identity

log = logging.getLogger("greentrack")


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


def listen_port(base: int, env: Mapping[str, str]) -> int:
    """The port this process listens on: 0 stays 0 (a free port), else ``base + LOCAL_RANK``."""
    if base == 0:
        return 0
    return base + launcher_int("LOCAL_RANK", 0, env)


def run_labels(tracker: Any, config: Config, env: Mapping[str, str]) -> dict[str, str]:
    """Values of ``run, job, host, rank`` for this process."""
    rank = config.rank if config.rank is not None else launcher_int("RANK", 0, env)
    return {"run": str(tracker.run_id or "unknown"), "job": config.job or default_job(env),
            "host": host_identity()[0], "rank": str(rank)}


class PrometheusExporter:
    """A tracker sink serving ``/metrics`` (``prometheus_port`` set) and pushing to a Pushgateway
    (``pushgateway_url`` set).

    Args:
        config: the tracker's settings (``prometheus_port``, ``prometheus_addr``,
            ``pushgateway_url``, ``push_interval_s``, ``job``).
        env: environment for ``LOCAL_RANK``, ``RANK`` and the scheduler's job id (default
            ``os.environ``).

    Attributes:
        port: the port actually listened on (None: not serving, e.g. the port was taken).
        url: ``http://ADDR:PORT/metrics`` or None.
        registry: the per-tracker ``CollectorRegistry``.
        labels: the ``run, job, host, rank`` values.
        pusher: the :class:`~greentrack.exporters._push.Pusher`, or None.
    """

    def __init__(self, config: Config, env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.env = dict(os.environ if env is None else env)
        self.port: int | None = None
        self.url: str | None = None
        self.registry: Any = None
        self.labels: dict[str, str] = {}
        self.pusher: Pusher | None = None
        self.collector: TrackerCollector | None = None
        self._server: Any = None
        self.scrapes = Scrapes()

    def start(self, tracker: Any) -> None:
        from prometheus_client import CollectorRegistry
        cfg = self.config
        gateway = gateway_url(cfg.pushgateway_url) if cfg.pushgateway_url else None

        def record(level: str, kind: str, message: str, **details: Any) -> None:
            if tracker.engine is not None:
                tracker.engine.event(level, kind, message, **details)

        self.labels = run_labels(tracker, cfg, self.env)
        health = PushHealth() if gateway else None
        intensity = Intensity(cfg, lambda msg: record("warning", "intensity-error", msg))
        intensity.check()  # an invalid location setting fails the start, before any training
        self.collector = collector = TrackerCollector(tracker, self.labels, intensity, health)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        # A resumed run's earlier totals: read off the training thread (a long segment's store
        # took 0.6-1.3 s per 100,000 steps to sum here); scrapes wait for them (CONTINUE_WAIT_S).
        self.collector.ready.clear()
        threading.Thread(target=self._continue_run, args=(tracker, record),
                         name="greentrack-exporter-continue", daemon=True).start()
        tracker.add_step_listener(self.collector.steps.observe)
        if cfg.prometheus_port is not None:
            self._serve(listen_port(cfg.prometheus_port, self.env), record)
        if gateway is not None and health is not None:
            # the host too: two nodes' rank 0 of one run are two groups, never one overwritten
            self.pusher = Pusher(gateway, self.labels["job"],
                                 {"run": self.labels["run"], "host": self.labels["host"],
                                  "rank": self.labels["rank"]},
                                 self.registry, cfg.push_interval_s, health,
                                 lambda level, kind, msg: record(level, kind, msg),
                                 ready=lambda: collector.ready.wait(CONTINUE_WAIT_S),
                                 run_key=getattr(tracker.engine, "run_key", None))
            self.pusher.start()

    def _continue_run(self, tracker: Any, record: Any) -> None:
        """A resumed run: counters start at the totals its earlier segments of this host and rank
        recorded. A store that cannot be read leaves them at zero, with a warning event."""
        collector = self.collector
        assert collector is not None
        try:
            with Run.open(tracker.run_dir) as run:
                before = recorded_before(run, self.labels["host"], int(self.labels["rank"]),
                                         STEP_ENERGY_BUCKETS_J)
                if before.segments:  # their grams: their footprint, at their own settings
                    before = replace(before, emissions_g=_grams(run, before.paths))
            if before.segments:
                collector.continue_from(before)
                record("info", "exporter-continued", f"Prometheus counters continue from "
                       f"{before.segments} earlier segment(s) of this host and rank: "
                       f"{before.total_energy_j:.6g} J, {sum(before.steps.values())} steps",
                       segments=before.segments)
        except Exception as e:  # noqa: BLE001 - the exporter must not stop the training
            msg = f"counters start at zero: the run's earlier segments cannot be read ({e})"
            log.warning("greentrack: %s", msg)
            try:
                record("warning", "exporter-error", msg)
            except Exception:  # noqa: BLE001 - the run may have stopped meanwhile: logged above
                pass
        finally:
            collector.ready.set()

    def _serve(self, port: int, record: Any) -> None:
        from prometheus_client import CollectorRegistry, start_http_server
        addr = self.config.prometheus_addr
        if port > 65535:
            msg = (f"Prometheus endpoint not started: port {port} (prometheus_port + LOCAL_RANK) is "
                   "above 65535; training goes on")
            log.warning("greentrack: %s", msg)
            record("warning", "exporter-error", msg, port=port)
            return
        try:
            served = CollectorRegistry(auto_describe=False)  # the same figures, scrapes noted
            served.register(_Served(self.registry, self.scrapes))
            self._server, _ = start_http_server(port, addr=addr, registry=served)
        except OSError as e:
            why = "is already in use" if e.errno == errno.EADDRINUSE else f"cannot be bound ({e})"
            msg = (f"Prometheus endpoint not started: {addr}:{port} {why}; training goes on "
                   "(set another prometheus_port, or 0 for a free port)")
            log.warning("greentrack: %s", msg)
            record("warning", "exporter-error", msg, port=port, addr=addr)
            return
        self.port = int(self._server.server_address[1])
        host = f"[{addr}]" if ":" in addr else addr
        self.url = f"http://{host}:{self.port}/metrics"
        # Printed, not only logged: with port 0 this line is how a user learns the port.
        print(f"greentrack: Prometheus metrics of rank {self.labels['rank']} at {self.url}",
              file=sys.stderr)
        record("info", "exporter-listening", f"serving Prometheus metrics at {self.url}",
               port=self.port, addr=addr)

    def stop(self, tracker: Any) -> None:
        """Final push (bounded wait); with ``final_scrape_wait_s``, the endpoint stays up until a
        scrape has read the final totals (bounded, see :meth:`Scrapes.wait_after`); then it
        closes."""
        if self.pusher is not None:
            self.pusher.stop()
        if self._server is not None and self.config.final_scrape_wait_s:
            self.scrapes.wait_after(time.monotonic(), float(self.config.final_scrape_wait_s))
        if self._server is not None:
            # shutdown() waits out serve_forever's 0.5 s poll: do it off the caller's thread, so
            # the end of training is not held up (measured: stop() took 0.47 s with the endpoint).
            server, self._server = self._server, None

            def close() -> None:
                server.shutdown()
                server.server_close()

            threading.Thread(target=close, name="greentrack-exporter-close", daemon=True).start()


class Scrapes:
    """When the endpoint was scraped (the start and end of the latest few scrapes)."""

    def __init__(self) -> None:
        self.times: deque[tuple[float, float]] = deque(maxlen=4)
        self._cond = threading.Condition()

    def note(self, start: float, end: float) -> None:
        with self._cond:
            self.times.append((start, end))
            self._cond.notify_all()

    def wait_after(self, t: float, cap_s: float) -> bool:
        """Wait for a scrape that started at or after ``t`` (it read the final totals): at most
        two of the scrape intervals seen so far plus 1 s, and never more than ``cap_s``; not at
        all when nothing has scraped the endpoint yet. True if one came. A Ctrl-C ends the wait."""
        with self._cond:
            if not self.times:
                return False
            starts = [a for a, _ in self.times]
            gaps = [b - a for a, b in zip(starts, starts[1:])]
            limit = min(cap_s, 2.0 * max(gaps) + 1.0) if gaps else cap_s
            try:
                return self._cond.wait_for(lambda: self.times[-1][0] >= t, timeout=limit)
            except KeyboardInterrupt:
                return False


class _Served:
    """The registry the endpoint serves: ``registry``'s families, each scrape noted."""

    def __init__(self, registry: Any, scrapes: Scrapes) -> None:
        self.registry, self.scrapes = registry, scrapes

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Any:
        start = time.monotonic()
        yield from self.registry.collect()
        self.scrapes.note(start, time.monotonic())


def _grams(run: Any, paths: tuple[Any, ...]) -> float:
    """Location-based grams of some of ``run``'s stores (each at the settings it recorded)."""
    stores = [s for s in run.store_energies() if s.path in paths]
    fp = footprint(profile_of_stores(stores, {}, work_of(run),
                                     lambda: [s for s in run.store_energies(run.energy_bins())
                                              if s.path in paths]))
    return fp.location_g or 0.0


__all__ = ["PrometheusExporter", "gateway_url", "listen_port", "run_labels"]
