"""The read model of a run directory: each store opened once, every query of a run in one place.

Everything that shows a run reads through :class:`Run`: ``greentrack summary``
(:func:`greentrack.reports.summary.summarize`), the reports (:func:`greentrack.reports.run_data.read_run`),
``compare``, the integrations' final totals and ``Tracker.stop()``; the footprint of a run
(emissions, cost, GPU-hours: :mod:`greentrack.carbon.runs`) is computed from what it returns. So one run gives one set of
figures, whoever asks. (Writing is :class:`greentrack.store.StoreWriter`'s; no other module holds
SQL.)

Merging rules, each chosen so nothing is counted twice:

* **energy**: the sum over stores of each channel's total. Host CPU/DRAM channels exist in one
  process per node (local rank 0), so summing ranks does not double count the host.
* **devices**: one entry per device identity and method (a GPU's UUID; the host and zone for CPU
  and DRAM), whatever the number of segments (a resumed run) or ranks it appeared in.
* **duration**: the length of the union of the stores' wall-clock spans (ranks overlap; resumed
  segments add up, the pause between them does not).
* **GPU-seconds**: per store, its duration x its GPUs, summed (hours: :func:`greentrack.common.units.hours`).
* **energy over time**: per store and channel, bins of :attr:`Run.bin_s` (:meth:`Run.energy_bins`):
  the report's time series and every time-resolved intensity integrate the same bins.
* **steps**: ``SUM(n)`` over valid step rows (a coalesced row stands for ``n`` steps).
* **replayed steps**: training steps a process recorded, then did again after resuming from an
  earlier checkpoint (:meth:`Run.replayed`): their joules are in the energy (they were spent);
  optimizer steps count them once.
* **stores**: several directories of one run (node-local directories, ``greentrack merge``'s
  inputs, the integrations' gather) are read as one; a store is known by host, boot id, rank and
  segment (:func:`store_identity`), so a copy found twice counts once. Host CPU/DRAM channels are
  one device per host (``host_scope``), GPUs one per UUID: nodes add up, nothing twice.
* **a resumed process's live counters** start from :func:`recorded_before`: the finished stores
  of the same host and rank.
"""

from __future__ import annotations

from greentrack.run.model import (KINDS, RECORD_WARNINGS, Device, Replayed, Run, RunSummary,
                                  RunTotals, StoreEnergy, device_identity, run_dirs_of, store_identity,
                                  union_length)
from greentrack.run.power_limits import PowerLimitCurve, PowerLimitPoint
from greentrack.run.queries import STEP_J
from greentrack.run.resumed import RecordedBefore, energy_before_j, recorded_before
from greentrack.run.segment import Segment
from greentrack.run.targets import (MetricPoint, ToTarget, metric_names, metric_points,
                                    parse_target, to_target)

__all__ = ["KINDS", "RECORD_WARNINGS", "STEP_J", "Device", "MetricPoint", "PowerLimitCurve",
           "PowerLimitPoint", "RecordedBefore", "Replayed", "Run", "RunSummary", "RunTotals",
           "Segment", "StoreEnergy", "ToTarget", "device_identity", "energy_before_j",
           "metric_names", "metric_points", "parse_target", "recorded_before", "run_dirs_of",
           "store_identity", "to_target", "union_length"]
