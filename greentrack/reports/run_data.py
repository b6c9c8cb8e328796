"""What a report needs from a run directory, read once, aggregated in SQL.

Totals, status, duration and sources come from :func:`greentrack.summary.summarize` (which merges
ranks and resumed segments). This module adds what the summary does not carry: the energy time
series per device over wall time (bucketed in SQLite, never row by row in Python), step
statistics, FLOPs/tokens/samples, hosts and sample counts. Damaged rows become warnings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from greentrack.errors import ConfigError, RunStoreError
from greentrack.store import VALID_SAMPLE, VALID_STEP, StoreReader, sql_number, store_paths
from greentrack.summary import summarize

MAX_BINS = 3000  # per channel; bins are the unit of time-resolved intensity integration
NICE = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)

# One scalar subquery per bin walks the (channel_id, t) primary key in order: several times faster
# than GROUP BY on an expression, which sorts every row in a temporary B-tree.
_BINS_SQL = """
WITH RECURSIVE k(i) AS (SELECT ? UNION ALL SELECT i + 1 FROM k WHERE i < ?)
SELECT i, (SELECT SUM(energy_j) FROM samples WHERE channel_id = ? AND t >= i * ? - ?
           AND t < (i + 1) * ? - ? AND """ + VALID_SAMPLE + """) AS e FROM k"""

_STEPS_SQL = """
SELECT phase, SUM({n}) AS n, SUM(duration_s) AS duration_s,
       SUM(COALESCE(gpu_j, 0) + COALESCE(cpu_j, 0) + COALESCE(dram_j, 0)) AS energy_j,
       SUM(gpu_j) AS gpu_j, SUM(gpu_seconds) AS gpu_seconds,
       SUM(flops) AS flops, COUNT(flops) AS n_flops, SUM(samples) AS samples,
       COUNT(samples) AS n_samples, SUM(tokens) AS tokens, COUNT(tokens) AS n_tokens FROM steps
WHERE """ + VALID_STEP + """ GROUP BY phase"""

_MFU_OK = sql_number("json_extract(extra, '$.mfu')", 0.0, 1000.0)

# Per channel: the usable samples' count and span, and how many are not usable (left out).
_STATS_SQL = f"""
SELECT channel_id, COUNT(*) FILTER (WHERE {VALID_SAMPLE}) AS n,
       MIN(t) FILTER (WHERE {VALID_SAMPLE}) AS lo, MAX(t) FILTER (WHERE {VALID_SAMPLE}) AS tmax,
       MAX(t + dt) FILTER (WHERE {VALID_SAMPLE}) AS hi, COUNT(*) FILTER (WHERE NOT {VALID_SAMPLE}) AS bad
FROM samples GROUP BY channel_id"""


@dataclass
class Channel:
    key: str
    kind: str
    device: str
    name: str
    host: str
    rank: int
    method: str
    measured: bool
    uncertainty: str
    energy_j: float
    samples: int
    gap_s: float
    bins: list[tuple[float, float, float]] = field(default_factory=list)


@dataclass
class RunData:
    """Everything read from one run directory."""

    run_dir: Path
    summary: dict[str, Any]
    start_unix: float
    end_unix: float
    bin_s: float
    channels: list[Channel]
    phases: dict[str, dict[str, float]]
    step_energies_j: dict[str, list[float]]
    flops_methods: list[str]
    mfu: float | None
    hosts: dict[str, float]            # host -> seconds it ran (union of its stores' spans)
    resolution_s: float
    versions: dict[str, Any]
    settings: dict[str, Any]
    warnings: list[str]
    #: the longest slow cadence of each store whose engine stretched it (store file -> s)
    stretched_slow_s: dict[str, float] = field(default_factory=dict)

    @property
    def bins(self) -> list[tuple[float, float, float]]:
        return [b for c in self.channels for b in c.bins]

    def total(self, key: str, phases: tuple[str, ...] | None = None) -> float | None:
        """Sum of a step column over phases (None when no step recorded it)."""
        count_key = {"flops": "n_flops", "samples": "n_samples", "tokens": "n_tokens"}.get(key)
        vals = [p[key] for ph, p in self.phases.items() if (phases is None or ph in phases)
                and (count_key is None or p[count_key] > 0)]
        return float(sum(vals)) if vals else None


def _bin_width(duration_s: float, resolution_s: float) -> float:
    need = duration_s / MAX_BINS
    for m in NICE:
        if m * resolution_s >= need:
            return m * resolution_s
    return float(math.ceil(need))


def _spans_union(spans: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def read_run(run_dir: str | Path) -> RunData:
    """Read a run directory for a report.

    Raises:
        ConfigError: not a run directory, or no store in it can be read.
    """
    run_dir = Path(run_dir)
    paths = store_paths(run_dir)
    summary = summarize(run_dir)
    warnings = list(summary["warnings"])
    stores: list[StoreReader] = []
    for p in paths:
        try:
            stores.append(StoreReader(p))
        except RunStoreError:
            continue  # already a warning in the summary
    if not stores:
        raise ConfigError("RUN_DIR", str(run_dir), "none of its stores can be read: "
                          + "; ".join(warnings))
    try:
        return _read(run_dir, summary, stores, warnings)
    finally:
        for s in stores:
            s.close()


def _read(run_dir: Path, summary: dict[str, Any], stores: list[StoreReader],
          warnings: list[str]) -> RunData:
    starts = [float(s.meta.get("started_unix") or 0.0) for s in stores]
    start = min(starts)
    resolution = min(float((s.meta.get("settings") or {}).get("resolution_s") or 1.0) for s in stores)
    bin_s = _bin_width(max(summary["duration_s"], resolution), resolution)
    channels: list[Channel] = []
    phases: dict[str, dict[str, float]] = {}
    energies: dict[str, list[float]] = {}
    methods: set[str] = set()
    mfu_num = mfu_den = 0.0
    host_spans: dict[str, list[tuple[float, float]]] = {}
    end = start + summary["duration_s"]
    for store, s0 in zip(stores, starts):
        host = str(store.meta.get("host", "?"))
        rank = int(store.meta.get("rank") or 0)
        stats = {r["channel_id"]: r for r in store.rows(_STATS_SQL)}
        bad = sum(int(r["bad"] or 0) for r in stats.values())
        if bad:
            store.damaged.append(f"samples: {bad} row(s) with negative, non-finite or out-of-range "
                                 "values, left out")
        span_end = s0 + float(store.meta.get("duration_s") or max(
            [float(r["hi"] or 0) for r in stats.values()] or [0.0]))
        host_spans.setdefault(host, []).append((s0, span_end))
        end = max(end, span_end)
        for c in store.channels():
            st = stats.get(c["id"])
            ch = Channel(key=f"{host}/r{rank}/{c['device']}", kind=c["kind"], device=c["device"],
                         name=c["name"] or c["device"], host=host, rank=rank, method=c["method"],
                         measured=bool(c["measured"]), uncertainty=c["uncertainty"] or "",
                         energy_j=float(c["energy_j"] or 0.0), samples=int(st["n"]) if st else 0,
                         gap_s=float(c["gap_s"] or 0.0))
            if st is not None and st["n"]:
                ch.bins = _channel_bins(store, c["id"], s0, float(st["lo"]), float(st["tmax"]),
                                        float(st["hi"]), bin_s, resolution)
            channels.append(ch)
        for r in store.rows(_STEPS_SQL.format(n=store.step_n)):
            p = phases.setdefault(r["phase"], {k: 0.0 for k in r.keys() if k != "phase"})
            for k in p:
                p[k] += float(r[k] or 0.0)
        for r in store.rows("SELECT phase, COALESCE(gpu_j, 0) + COALESCE(cpu_j, 0) + "
                            f"COALESCE(dram_j, 0) AS e FROM steps WHERE {VALID_STEP}"):
            energies.setdefault(r["phase"], []).append(float(r["e"]))
        for r in store.rows("SELECT DISTINCT json_extract(extra, '$.flops_method') AS m FROM steps "
                            "WHERE extra LIKE '%flops_method%'"):
            if r["m"]:
                methods.add(str(r["m"]))
        for r in store.rows("SELECT SUM(json_extract(extra, '$.mfu') * duration_s) AS a, "
                            "SUM(duration_s) AS b FROM steps WHERE extra LIKE '%\"mfu\"%' "
                            "AND json_extract(extra, '$.mfu') IS NOT NULL AND "
                            f"{_MFU_OK} AND {VALID_STEP}"):
            mfu_num += float(r["a"] or 0.0)
            mfu_den += float(r["b"] or 0.0)
        warnings.extend(f"{store.path.name}: damaged {d}" for d in store.damaged
                        if f"{store.path.name}: damaged {d}" not in warnings)
    for e in energies.values():
        e.sort()
    first = stores[0]
    return RunData(
        run_dir=run_dir, summary=summary, start_unix=start, end_unix=end, bin_s=bin_s,
        channels=channels, phases=phases, step_energies_j=energies, flops_methods=sorted(methods),
        mfu=mfu_num / mfu_den if mfu_den > 0 else None,
        hosts={h: _spans_union(s) for h, s in host_spans.items()}, resolution_s=resolution,
        versions=dict(first.meta.get("versions") or {}), settings=dict(first.meta.get("settings") or {}),
        warnings=warnings, stretched_slow_s=_stretched(stores))


def _stretched(stores: list[StoreReader]) -> dict[str, float]:
    """Stores whose engine stretched its slow cadence (slow reads cost too much CPU): the longest
    cadence it used (store meta ``counter_interval_max_s`` against its settings)."""
    out: dict[str, float] = {}
    for s in stores:
        configured = (s.meta.get("settings") or {}).get("counter_interval_s")
        longest = s.meta.get("counter_interval_max_s")
        if isinstance(configured, (int, float)) and longest is not None and longest > configured:
            out[s.path.name] = float(longest)
    return out


def _channel_bins(store: StoreReader, channel_id: int, s0: float, lo: float, tmax: float,
                  hi: float, bin_s: float, resolution: float) -> list[tuple[float, float, float]]:
    """``(start_unix, end_unix, energy_j)`` per bin of one channel. Bin edges sit half a bucket
    before multiples of ``bin_s`` so float noise in a bucket's ``t`` never moves it across."""
    half = resolution / 2.0
    first, last = int(math.floor((lo + half) / bin_s)), int(math.floor((tmax + half) / bin_s))
    if last - first > 4 * MAX_BINS:  # a damaged time far beyond the run: never millions of bins
        store.damaged.append(f"samples of channel {channel_id}: times beyond the run's span, "
                             "left out of the time series")
        last = first + 4 * MAX_BINS
        hi = min(hi, (last + 1) * bin_s)
    rows = store.rows(_BINS_SQL, (first, max(first, last), channel_id, bin_s, half, bin_s, half))
    out = []
    for r in rows:
        e = r[1]
        if e is None:
            continue
        i = int(r[0])
        a, b = max(i * bin_s, lo), min((i + 1) * bin_s, hi)
        out.append((s0 + a, s0 + max(b, a), float(e)))
    return out
