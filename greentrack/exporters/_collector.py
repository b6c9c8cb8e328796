"""The custom collector: fresh metric families built from a live tracker on every scrape or push.

Nothing is registered at import; :class:`TrackerCollector` goes into a registry created per
tracker. Every family carries ``run, job, host, rank``; device families add ``kind, device`` and
``source`` (``measured`` or ``estimated``), step families add ``phase`` (at most
:data:`MAX_PHASES` values, the rest are counted as ``other``). No label ever holds a step number.

Metrics (Prometheus base units):

======================================================  =========  ================================
name                                                    type       extra labels
======================================================  =========  ================================
``greentrack_energy_joules_total``                      counter    kind, device, source
``greentrack_power_watts``                              gauge      kind, device, source
``greentrack_device_info``                              gauge (1)  kind, device, name, method,
                                                                   source, uncertainty
``greentrack_device_up``                                gauge      kind, device
``greentrack_device_gap_seconds_total``                 counter    kind, device
``greentrack_gpu_seconds_total``                        counter
``greentrack_steps_total``                              counter    phase
``greentrack_step_energy_joules``                       histogram  phase
``greentrack_flops_total``                              counter    phase
``greentrack_mfu_ratio``                                gauge      phase (when steps report mfu)
``greentrack_emissions_grams_total``                    counter    (when an intensity is known)
``greentrack_carbon_intensity_grams_per_kilowatt_hour`` gauge      source (when known)
``greentrack_pue_ratio``                                gauge      source: a short id (``setting``,
                                                                   ``uptime-institute-2024``...)
                                                                   (when an intensity is known)
``greentrack_sampler_errors_total``                     counter
``greentrack_sampler_polls_total``                      counter
``greentrack_sampler_cpu_seconds_total``                counter
``greentrack_sampler_slow_interval_seconds``            gauge
``greentrack_last_sample_age_seconds``                  gauge
``greentrack_push_failures_total``                      counter    (when pushing)
``greentrack_run_info``                                 gauge (1)  version, mode, slurm_job_id,
                                                                   slurm_array_task_id,
                                                                   k8s_namespace, k8s_pod,
                                                                   elastic_run_id,
                                                                   elastic_restart_count
``greentrack_run_start_time_seconds``                   gauge
``greentrack_run_running``                              gauge      (1 running, 0 after stop)
``greentrack_run_end_time_seconds``                     gauge      (only after stop)
``greentrack_forecast_energy_joules``                   gauge      bound (with a training meter)
``greentrack_forecast_duration_seconds``                gauge      bound
``greentrack_forecast_end_time_seconds``                gauge      bound (Unix time)
``greentrack_forecast_gpu_seconds``                     gauge      bound
``greentrack_forecast_emissions_grams``                 gauge      bound (when an intensity is known)
``greentrack_forecast_cost``                            gauge      bound, currency (when priced)
``greentrack_forecast_planned_steps``                   gauge
``greentrack_budget_energy_joules``                     gauge      (with ``budget_kwh``)
``greentrack_budget_emissions_grams``                   gauge      (with ``budget_grams``)
``greentrack_budget_cost``                              gauge      currency (with ``budget_cost``)
``greentrack_budget_spent_ratio``                       gauge      kind (once checked)
``greentrack_budget_forecast_ratio``                    gauge      kind (once the forecast's
                                                                   interval is known)
======================================================  =========  ================================

The forecast gauges are the whole run's (:mod:`greentrack.carbon.forecast`): ``bound`` is ``estimate``,
``low`` or ``high`` (the interval; absent until it is known).

The budget gauges (:mod:`greentrack.process.budget`): each budget the run has, in base units
(facility energy in joules), and per ``kind`` (``energy``, ``emissions``, ``cost``) what the run
has spent of it and what the forecast's low bound says the whole run will, as ratios (1: the
budget). They are the budget's own figures, checked on the sampler thread.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from greentrack import __version__
from greentrack.carbon.footprint import Settings, one_part
from greentrack.carbon.live import intensity_now, intensity_source_id
from greentrack.carbon.resolve import settings_for
from greentrack.common.config import Config
from greentrack.common.errors import ConfigError
from greentrack.common.jobinfo import job_metadata, prometheus_labels
from greentrack.common.units import J_PER_KWH
from greentrack.engine.channelstate import ChannelSnapshot
from greentrack.exporters._joined import JoinedTotals
from greentrack.exporters._steps import STEP_ENERGY_BUCKETS_J, StepStats, add_steps
from greentrack.run.resumed import RecordedBefore
from greentrack.store.layout import JOIN_DIR

log = logging.getLogger("greentrack")

BASE_LABELS = ("run", "job", "host", "rank")
INTENSITY_TTL_S = 60.0
#: The longest short source id a label carries (``green-algorithms-2023``: 21 characters).
MAX_ID = 32
#: How long a scrape or push waits for a resumed run's earlier totals (read on a thread at start)
#: before it answers with no series: never a lower value that Prometheus would take for a reset.
CONTINUE_WAIT_S = 2.0


class Intensity:
    """The carbon and price settings in force (:func:`greentrack.carbon.resolve.settings_for`,
    live: an intensity CSV's interval now, Electricity Maps' latest value), or None.

    ``lookup(config)`` (default: ``settings_for``) is asked at most every
    :data:`INTENSITY_TTL_S`. :meth:`check` asks once at start and lets a
    :class:`~greentrack.common.errors.ConfigError` (an invalid location setting) through; later failures
    keep the last known settings and are reported once.
    """

    def __init__(self, config: Config, on_error: Callable[[str], None],
                 lookup: Callable[[Config], Settings | None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config, self._on_error, self._clock = config, on_error, clock
        self._value: Settings | None = None
        self._next = 0.0
        self._failed = False
        self._lookup = lookup if lookup is not None else _live_settings
        self._lock = threading.Lock()  # the scrape and push threads both ask

    def check(self) -> tuple[float, str] | None:
        """First lookup, at start; raises ConfigError for an invalid setting."""
        with self._lock:
            return _now(self._current(strict=True))

    def current(self) -> tuple[float, str] | None:
        """``(gCO2e/kWh now, source)`` for the gauge, or None."""
        with self._lock:
            return _now(self._current(strict=False))

    def settings(self) -> Settings | None:
        with self._lock:
            return self._current(strict=False)

    def _current(self, strict: bool) -> Settings | None:
        if self._clock() < self._next:
            return self._value
        self._next = self._clock() + INTENSITY_TTL_S
        try:
            got = self._lookup(self.config)
            if got is not None:
                self._value = got
        except ConfigError:
            if strict:
                raise
            self._report("invalid carbon setting")
        except Exception as e:  # noqa: BLE001 - a lookup failure must not break the exporter
            self._report(str(e))
        return self._value

    def _report(self, why: str) -> None:
        if not self._failed:
            self._failed = True
            self._on_error(f"carbon intensity lookup failed (keeping the last value): {why}")


def _live_settings(config: Config) -> Settings:
    return settings_for(config)


def pue_source_id(settings: Settings) -> str:
    """The PUE gauge's ``source`` label: the PUE's short source id (``setting``,
    ``uptime-institute-2024``...; a handful of values, never a URL cut mid-word), else
    ``unknown``. The full citation is the report's."""
    sid = settings.pue.source_id
    return sid if sid and len(sid) <= MAX_ID and sid.replace("-", "").isalnum() else "unknown"


def _now(settings: Settings | None) -> tuple[float, str] | None:
    found = intensity_now(settings, time.time())
    return None if found is None else (float(found[0]), str(found[1])[:160])


class PushHealth:
    """Counts failed pushes; shared by the pusher and the collector."""

    def __init__(self) -> None:
        self.failures = 0


class TrackerCollector:
    """A prometheus_client custom collector reading ``tracker`` on each ``collect()``.

    Args:
        tracker: a started :class:`greentrack.Tracker`.
        labels: values of ``run, job, host, rank``.
        intensity: the carbon intensity source.
        push: push health when pushing, else None.

    Example:
        >>> from prometheus_client import CollectorRegistry, generate_latest  # doctest: +SKIP
        >>> registry = CollectorRegistry(auto_describe=False)                # doctest: +SKIP
        >>> registry.register(TrackerCollector(tracker, labels, intensity))  # doctest: +SKIP
        >>> print(generate_latest(registry).decode())                        # doctest: +SKIP
    """

    def __init__(self, tracker: Any, labels: dict[str, str], intensity: Intensity,
                 push: PushHealth | None = None) -> None:
        self.tracker, self.intensity, self.push = tracker, intensity, push
        self.base = [labels[k] for k in BASE_LABELS]
        self.steps = StepStats(tracker.engine.tally)
        #: Totals of the run's earlier segments of this host and rank (:meth:`continue_from`).
        self.before = RecordedBefore()
        #: Cleared while those totals are being read: scrapes then wait, at most
        #: :data:`CONTINUE_WAIT_S`, and serve nothing rather than counters that would go back.
        self.ready = threading.Event()
        self.ready.set()
        self._lock = threading.Lock()
        engine = tracker.engine
        self._origin = engine.origin
        self.start_unix = engine.origin_unix  # the store's started_unix: one anchor
        #: per channel id: (monotonic time, joules) up to which its energy has been charged
        self._charged: dict[int, tuple[float, float]] = {}
        self._emissions_g = 0.0
        #: the scheduler's names of this job, one value each ("" unset): bounded, never a node list
        self.job_labels = prometheus_labels(job_metadata())
        #: the trackers that joined this run (``greentrack run``'s command): their totals add
        self.joined: JoinedTotals | None = None
        token = getattr(tracker, "join_token", None)
        if isinstance(token, str) and token:
            self.joined = JoinedTotals(tracker.run_dir / JOIN_DIR, token)
        self._joined_docs: list[dict[str, Any]] = []
        self._joined_unix = self.start_unix  # the joined energy is charged up to here

    def continue_from(self, before: RecordedBefore) -> None:
        """Counters continue from the run's earlier segments: energy, gap seconds, GPU-seconds,
        steps, step energy, FLOPs and emissions start at what those segments recorded, so
        ``increase()`` and ``max_over_time()`` over the run give its total. Call before steps."""
        self.before = before
        self.steps.seed(before)  # adds: steps observed meanwhile are kept

    def describe(self) -> list[Any]:
        return []  # no scrape at registration time

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
        if not self.ready.wait(CONTINUE_WAIT_S):
            return
        engine = self.tracker.engine
        channels = engine.snapshot()
        base, dev = list(BASE_LABELS), [*BASE_LABELS, "kind", "device"]

        energy = CounterMetricFamily("greentrack_energy_joules", "Energy used by each device since "
                                     "the tracker started, in joules.", labels=[*dev, "source"])
        power = GaugeMetricFamily("greentrack_power_watts", "Latest power reading of each device, "
                                  "in watts.", labels=[*dev, "source"])
        info = InfoMetricFamily("greentrack_device", "How each device's figures are obtained.",
                                labels=dev)
        up = GaugeMetricFamily("greentrack_device_up", "1 while the device's readings succeed, 0 "
                               "while they fail (a gap) or after it was lost.", labels=dev)
        gaps = CounterMetricFamily("greentrack_device_gap_seconds", "Seconds of closed reading gaps "
                                   "of each device (an open gap shows as device_up 0).", labels=dev)
        running = self.tracker.running  # False at the final collect, after the last reading
        self._joined_docs = docs = self.joined.read() if self.joined is not None else []
        keys = {st.id: st.key for st in list(engine.states)}
        # a joined tracker's device: added to this process's series of it (known by its key)
        theirs: dict[tuple[str, bool], list[dict[str, Any]]] = {}
        for doc in docs:
            for c in doc["channels"]:
                theirs.setdefault((c["key"], c["measured"]), []).append({**c, "final": doc["final"]})
        for ch in channels:
            values = [*self.base, ch.kind, ch.device]
            source = "measured" if ch.measured else "estimated"
            joined = theirs.pop((keys.get(ch.id, ""), bool(ch.measured)), [])
            energy.add_metric([*values, source], float(ch.energy_j) + self.before.energy_j.get(
                (ch.kind, ch.device, source), 0.0) + sum(c["energy_j"] for c in joined))
            if not running:  # an ended run draws nothing (the Pushgateway keeps this value)
                power.add_metric([*values, source], 0.0)
            elif ch.power_w is not None:
                power.add_metric([*values, source], float(ch.power_w))
            meta = self._channel_info(engine, ch)
            info.add_metric(values, {"name": meta["name"], "method": ch.method, "source": source,
                                     "uncertainty": meta["uncertainty"]})
            up.add_metric(values, 1.0 if ch.status == "ok" else 0.0)
            gaps.add_metric(values, float(ch.gap_s) + self.before.gap_s.get((ch.kind, ch.device),
                                                                             0.0)
                            + sum(c["gap_s"] for c in joined))
        for joined in theirs.values():  # devices only a joined tracker measures
            c = joined[0]
            source = "measured" if c["measured"] else "estimated"
            values = [*self.base, c["kind"], c["device"]]
            energy.add_metric([*values, source], sum(j["energy_j"] for j in joined))
            live = [j["power_w"] for j in joined if not j["final"] and j["power_w"] is not None]
            power.add_metric([*values, source], float(live[-1]) if live and running else 0.0)
            info.add_metric(values, {"name": c["device"], "method": c["method"], "source": source,
                                     "uncertainty": ""})
            up.add_metric(values, 1.0 if all(j["up"] or j["final"] for j in joined) else 0.0)
            gaps.add_metric(values, sum(j["gap_s"] for j in joined))
        yield from (energy, power, info, up, gaps)

        now = time.monotonic()
        end = now if self.tracker.running else (engine.last_sample_t or now)
        n_gpus = sum(ch.kind == "gpu" for ch in channels)
        own = set(keys.values())  # a GPU both measure is this process's GPU time, once
        joined_s = sum(float(v) for doc in docs for k, v in doc["gpu_seconds"].items()
                       if k not in own)
        yield self._counter("greentrack_gpu_seconds", "GPU-seconds: seconds since the tracker "
                            "started times the number of GPUs it measures.",
                            max(0.0, end - self._origin) * n_gpus + self.before.gpu_seconds
                            + joined_s)
        yield from self._step_families()
        yield from self._carbon_families(channels)
        yield from self._forecast_families()
        yield from self._budget_families()

        yield self._counter("greentrack_sampler_errors", "Internal errors of the sampler thread "
                            "(each also recorded as an event in the run store).", engine.errors)
        yield self._counter("greentrack_sampler_polls", "Polls made by the sampler thread.",
                            engine.polls)
        yield self._counter("greentrack_sampler_cpu_seconds", "CPU time of the sampler thread "
                            "(its rate is the share of one core greentrack costs).",
                            engine.thread_cpu_s)
        slow = GaugeMetricFamily("greentrack_sampler_slow_interval_seconds", "Period of the slow "
                                 "reads (NVML energy counters) in force: the setting, or longer "
                                 "if the reads cost more CPU than the sampler's budget.",
                                 labels=base)
        slow.add_metric(self.base, engine.counter_interval_s)
        yield slow
        age = GaugeMetricFamily("greentrack_last_sample_age_seconds", "Seconds since the sampler "
                                "last polled the devices (absent once the run has ended).",
                                labels=base)
        if engine.last_sample_t is not None and running:
            age.add_metric(self.base, max(0.0, now - engine.last_sample_t))
        yield age
        state = GaugeMetricFamily("greentrack_run_running", "1 while the tracker runs, 0 in the "
                                  "last scrape or push after it stopped (a pushed run that "
                                  "ended, not a stale one).", labels=base)
        state.add_metric(self.base, 1.0 if running else 0.0)
        yield state
        if not running:
            ended = GaugeMetricFamily("greentrack_run_end_time_seconds", "Unix time at which the "
                                      "tracker stopped (only once it has).", labels=base)
            ended.add_metric(self.base, self.start_unix + max(0.0, end - self._origin))
            yield ended
        if self.push is not None:
            yield self._counter("greentrack_push_failures", "Failed pushes to the Pushgateway.",
                                self.push.failures)
        run = InfoMetricFamily("greentrack_run", "The tracked process.", labels=base)
        run.add_metric(self.base, {"version": __version__, "mode": self.tracker.config.mode,
                                   **self.job_labels})
        yield run
        start = GaugeMetricFamily("greentrack_run_start_time_seconds", "Unix time at which the "
                                  "tracker started.", labels=base)
        start.add_metric(self.base, self.start_unix)
        yield start

    # -- pieces ----------------------------------------------------------------------------------
    def _counter(self, name: str, doc: str, value: float) -> Any:
        from prometheus_client.core import CounterMetricFamily
        fam = CounterMetricFamily(name, doc, labels=list(BASE_LABELS))
        fam.add_metric(self.base, float(value))
        return fam

    @staticmethod
    def _channel_info(engine: Any, ch: ChannelSnapshot) -> dict[str, str]:
        for st in engine.states:
            if st.id == ch.id:
                return {"name": str(st.channel.info.name)[:64],
                        "uncertainty": str(st.channel.info.uncertainty)[:64]}
        return {"name": "", "uncertainty": ""}

    def _step_families(self) -> Iterator[Any]:
        from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                            HistogramMetricFamily)
        s = self.steps.copy()
        for doc in self._joined_docs:
            add_steps(s, doc["steps"])
        labels = [*BASE_LABELS, "phase"]
        steps = CounterMetricFamily("greentrack_steps", "Steps whose energy has been attributed.",
                                    labels=labels)
        hist = HistogramMetricFamily("greentrack_step_energy_joules", "Energy attributed to each "
                                     "step (this process's devices), in joules.", labels=labels)
        flops = CounterMetricFamily("greentrack_flops", "Floating-point operations reported with "
                                    "steps (tracker.step(flops=...)).", labels=labels)
        mfu = GaugeMetricFamily("greentrack_mfu_ratio", "Model FLOPs utilization of the latest "
                                "step that reported one (0-1).", labels=labels)
        for phase, count in sorted(s["count"].items()):
            values = [*self.base, phase]
            steps.add_metric(values, count)
            cumulative, buckets = 0, []
            for le, n in zip([*STEP_ENERGY_BUCKETS_J, float("inf")], s["buckets"][phase]):
                cumulative += n
                buckets.append(("+Inf" if le == float("inf") else str(le), cumulative))
            hist.add_metric(values, buckets, s["energy_j"][phase])
            flops.add_metric(values, s["flops"][phase])
            if phase in s["mfu"]:
                mfu.add_metric(values, s["mfu"][phase])
        yield from (steps, hist, flops, mfu)

    def _forecast_families(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily
        sources = getattr(self.tracker, "forecast_sources", None) or []
        try:
            est = sources[0]() if sources else None
        except Exception as e:  # noqa: BLE001 - a forecast never breaks a scrape
            log.debug("greentrack: no forecast for the scrape: %s", e)
            est = None
        if est is None:
            return
        labels = [*BASE_LABELS, "bound"]
        bounds = (("estimate", ""), ("low", "_low"), ("high", "_high"))
        for name, key, doc in (
                ("energy_joules", "energy_j", "IT energy of the whole run, in joules"),
                ("duration_seconds", "duration_s", "Duration of the whole run, in seconds"),
                ("end_time_seconds", "end_unix", "Unix time at which the run will end"),
                ("gpu_seconds", "gpu_seconds", "GPU-seconds of the whole run (this process's "
                                               "GPUs)"),
                ("emissions_grams", "emissions_g", "Operational emissions of the whole run in "
                                                   "grams CO2e (with PUE)")):
            if est.get(key) is None:
                continue
            fam = GaugeMetricFamily(f"greentrack_forecast_{name}", f"Forecast: {doc}; bound is "
                                    "estimate, low or high (the interval).", labels=labels)
            for bound, suffix in bounds:
                if est.get(key + suffix) is not None:
                    fam.add_metric([*self.base, bound], float(est[key + suffix]))
            yield fam
        if est.get("cost") is not None:
            fam = GaugeMetricFamily("greentrack_forecast_cost", "Forecast: cost of the whole run "
                                    "(electricity with PUE, plus GPU-hours), in the currency "
                                    "label.", labels=[*labels, "currency"])
            currency = str(est.get("currency") or "unknown")[:8]
            for bound, suffix in bounds:
                if est.get("cost" + suffix) is not None:
                    fam.add_metric([*self.base, bound, currency], float(est["cost" + suffix]))
            yield fam
        planned = GaugeMetricFamily("greentrack_forecast_planned_steps", "Optimizer steps the "
                                    "forecast assumes for the whole run.", labels=BASE_LABELS)
        planned.add_metric(self.base, float(est["planned_steps"]))
        yield planned

    def _budget_families(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily
        watch = getattr(self.tracker, "budget", None)
        if watch is None:
            return
        status = watch.status()
        kinds = [*BASE_LABELS, "kind"]
        spent = GaugeMetricFamily("greentrack_budget_spent_ratio", "What the run has spent of "
                                  "its budget (1: reached), by kind: energy (IT kWh), "
                                  "emissions (location-based grams), cost.", labels=kinds)
        ahead = GaugeMetricFamily("greentrack_budget_forecast_ratio", "What the forecast's low "
                                  "bound says the whole run will spend of its budget (above 1: "
                                  "it will pass it), by kind.", labels=kinds)
        for s in status:
            values = [*self.base, s["kind"]]
            if s["kind"] == "energy":
                fam = GaugeMetricFamily("greentrack_budget_energy_joules", "The run's budget "
                                        "of facility energy (PUE included), in joules.",
                                        labels=BASE_LABELS)
                fam.add_metric(self.base, s["budget"] * J_PER_KWH)
            elif s["kind"] == "emissions":
                fam = GaugeMetricFamily("greentrack_budget_emissions_grams", "The run's budget "
                                        "of location-based emissions, in grams CO2e.",
                                        labels=BASE_LABELS)
                fam.add_metric(self.base, s["budget"])
            else:
                fam = GaugeMetricFamily("greentrack_budget_cost", "The run's budget of cost "
                                        "(electricity and GPU-hours), in the currency label.",
                                        labels=[*BASE_LABELS, "currency"])
                fam.add_metric([*self.base, str(s["unit"] or "unknown")[:8]], s["budget"])
            yield fam
            if s["spent"] is not None:
                spent.add_metric(values, s["spent"] / s["budget"])
            if s["forecast_low"] is not None:
                ahead.add_metric(values, s["forecast_low"] / s["budget"])
        yield from (spent, ahead)

    def _new_energy(self, channels: list[ChannelSnapshot]) -> list[tuple[float, float, float]]:
        """This process's energy not yet charged, as ``(start_unix, end_unix, joules)`` bins
        dated by the readings' own times (not by when a scrape saw them: finalized readings lag
        by up to a counter interval), on the store's grid of ``resolution_s`` from the origin.
        Energy whose readings were already pruned is one bin over its span. Charged up to each
        channel's reading in ``channels``, the snapshot the scrape's energy families show (the
        sampler goes on meanwhile: grams of later readings would not match those joules)."""
        engine = self.tracker.engine
        res = float(self.tracker.config.resolution_s)
        offset = self.start_unix - self._origin
        bins: list[tuple[float, float, float]] = []
        seen = {ch.id: ch for ch in channels}
        for st in list(engine.states):
            tl = st.timeline
            snap = seen.get(st.id)
            if snap is None:
                continue
            until, last = snap.until, snap.energy_j
            t0, e0 = self._charged.get(st.id, (self._origin, 0.0))
            if until is None or until <= t0 or last <= e0:
                continue
            cells = (until - t0) / res
            width = res if cells <= 2000 else (until - t0) / 2000  # bounded work per collect
            t, at_t, found = t0, max(e0, tl.at(t0)), 0.0
            while t < until:
                b = min(until, self._origin + (math.floor((t - self._origin) / width + 1e-9) + 1)
                        * width)
                at_b = tl.at(b)
                if at_b > at_t:
                    bins.append((t + offset, b + offset, at_b - at_t))
                    found += at_b - at_t
                t, at_t = b, max(at_t, at_b)
            missing = (last - e0) - found  # readings pruned before this collect
            if missing > 1e-9 * last:
                bins.append((t0 + offset, until + offset, missing))
            self._charged[st.id] = (until, last)
        return bins

    def _carbon_families(self, channels: list[ChannelSnapshot]) -> Iterator[Any]:
        """Emissions so far: the earlier segments' footprint, plus this process's energy charged
        as its readings come (:meth:`_new_energy`) by the same footprint function as every
        report (a time series integrated, PUE applied)."""
        from prometheus_client.core import GaugeMetricFamily
        settings, got = self.intensity.settings(), self.intensity.current()
        if settings is None or got is None:
            return
        with self._lock:
            bins = self._new_energy(channels)
            if self.joined is not None:  # the joined trackers' energy since the last collect
                now_unix = self.start_unix + max(0.0, time.monotonic() - self._origin)
                joined_j = self.joined.new_energy_j()
                if joined_j > 0:
                    bins.append((min(self._joined_unix, now_unix), now_unix, joined_j))
                self._joined_unix = now_unix
            if bins:
                fp = one_part(sum(e for _, _, e in bins), min(a for a, _, _ in bins),
                              max(b for _, b, _ in bins), settings, bins=bins)
                self._emissions_g += fp.location_g or 0.0
            grams = self.before.emissions_g + self._emissions_g
        # the label is a short id (a handful of values); the full citation is the report's
        g_per_kwh, source = got[0], intensity_source_id(settings, time.time())
        yield self._counter("greentrack_emissions_grams", "Operational emissions in grams CO2e: "
                            "IT energy x the PUE in use x the carbon intensity in use (as the "
                            "reports compute them).", grams)
        pue_gauge = GaugeMetricFamily("greentrack_pue_ratio", "Power usage effectiveness applied "
                                      "to IT energy; source: a short id of where it comes from "
                                      "(setting, or the data source and its year; the report "
                                      "cites it in full).", labels=[*BASE_LABELS, "source"])
        pue_gauge.add_metric([*self.base, pue_source_id(settings)], settings.pue.value)
        yield pue_gauge
        gauge = GaugeMetricFamily("greentrack_carbon_intensity_grams_per_kilowatt_hour",
                                  "Carbon intensity in use, in gCO2e/kWh; source: a short id of "
                                  "where it comes from (method, country, data year; the report "
                                  "cites it in full).",
                                  labels=[*BASE_LABELS, "source"])
        gauge.add_metric([*self.base, source], g_per_kwh)
        yield gauge
