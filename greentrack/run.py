"""The read model of a run directory: each store opened once, every query of a run in one place.

Everything that shows a run reads through :class:`Run`: ``greentrack summary``
(:func:`greentrack.summary.summarize`), the reports (:func:`greentrack.reports.run_data.read_run`),
``compare``, the integrations' final totals and ``Tracker.stop()``. So one run gives one set of
figures, whoever asks. (Writing is :class:`greentrack.store.StoreWriter`'s; no other module holds
SQL.)

Merging rules, each chosen so nothing is counted twice:

* **energy**: the sum over stores of each channel's total. Host CPU/DRAM channels exist in one
  process per node (local rank 0), so summing ranks does not double count the host.
* **devices**: one entry per device identity and method (a GPU's UUID; the host and zone for CPU
  and DRAM), whatever the number of segments (a resumed run) or ranks it appeared in.
* **duration**: the length of the union of the stores' wall-clock spans (ranks overlap; resumed
  segments add up, the pause between them does not).
* **GPU-seconds**: per store, its duration x its GPUs, summed.
* **steps**: ``SUM(n)`` over valid step rows (a coalesced row stands for ``n`` steps).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from greentrack.errors import ConfigError, RunStoreError
from greentrack.store import VALID_SAMPLE, VALID_STEP, StoreReader, sql_number, store_paths
from greentrack.store.reader import store_status
from greentrack.units import J_PER_KWH

#: Events that say part of the record is missing or doubtful: every summary and report repeats them.
RECORD_WARNINGS = frozenset({"bad-step-field", "row-rejected", "host-shared", "sampler-hung",
                             "sampler-slow", "steps-open", "internal-error"})
KINDS = ("gpu", "cpu", "dram")


@dataclass(frozen=True)
class Device:
    """One device of the run, however many segments and ranks measured it.

    ``energy_j`` and ``gap_s`` are summed over its stores; ``status`` is the last store's.
    """

    identity: str
    kind: str
    device: str
    name: str
    host: str
    rank: int
    method: str
    measured: bool
    source: str
    uncertainty: str
    energy_j: float
    gap_s: float
    status: str
    stores: int

    def as_source(self) -> dict[str, Any]:
        """The ``sources`` entry of ``greentrack summary --json``."""
        return {"kind": self.kind, "device": self.device, "name": self.name, "host": self.host,
                "rank": self.rank, "method": self.method, "measured": self.measured,
                "estimated": not self.measured, "source": self.source,
                "uncertainty": self.uncertainty, "energy_j": self.energy_j, "gap_s": self.gap_s,
                "status": self.status, "stores": self.stores}


@dataclass(frozen=True)
class Totals:
    """A run's totals in code, as :meth:`greentrack.Tracker.stop` returns them.

    ``emissions_g`` (IT energy x PUE x intensity, as every report computes it) and the intensity
    are None unless a location or an intensity is set. ``energy_j`` has ``gpu``, ``cpu``, ``dram``
    (None: not tracked) and ``total``.
    """

    run_id: str | None
    run_dir: str
    status: str
    duration_s: float
    energy_j: dict[str, float | None]
    energy_kwh: float
    steps: int
    gpu_hours: float
    emissions_g: float | None = None
    intensity_g_per_kwh: float | None = None
    intensity_source: str | None = None
    pue: float | None = None


@dataclass
class Segment:
    """One store: one process of one segment of the run."""

    reader: StoreReader
    meta: dict[str, Any]
    channels: list[dict[str, Any]]
    events: list[dict[str, Any]]
    status: str
    start_unix: float
    end_unix: float
    #: per phase: steps (``SUM(n)``) and their joules (all kinds)
    phases: dict[str, tuple[int, float]] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.reader.path

    @property
    def host(self) -> str:
        return str(self.meta.get("host", "?"))

    @property
    def rank(self) -> int:
        rank = self.meta.get("rank")
        return rank if isinstance(rank, int) else 0

    # -- the report's queries (aggregated in SQLite, never row by row in Python) ---------------
    def sample_stats(self) -> dict[int, Any]:
        """Per channel id: usable samples' count ``n`` and span ``lo``/``tmax``/``hi``; rows that
        are not usable are counted as damage."""
        stats = {r["channel_id"]: r for r in self.reader.rows(_STATS_SQL)}
        bad = sum(int(r["bad"] or 0) for r in stats.values())
        if bad:
            self.reader.damaged.append(f"samples: {bad} row(s) with negative, non-finite or "
                                       "out-of-range values, left out")
        return stats

    def channel_bins(self, channel_id: int, first: int, last: int, bin_s: float,
                     half: float) -> list[tuple[int, float]]:
        """``(i, joules)`` of bins ``first..last`` of width ``bin_s`` (edges ``half`` early)."""
        rows = self.reader.rows(_BINS_SQL, (first, last, channel_id, bin_s, half, bin_s, half))
        return [(int(r[0]), float(r[1])) for r in rows if r[1] is not None]

    def step_phases(self) -> dict[str, dict[str, float]]:
        """Per phase: steps, duration, energy (all kinds, GPU), GPU-seconds, FLOPs, samples and
        tokens, with how many rows carried each of the last three."""
        out = {}
        for r in self.reader.rows(_STEPS_SQL.format(n=self.reader.step_n)):
            out[str(r["phase"])] = {k: float(r[k] or 0.0) for k in r.keys() if k != "phase"}
        return out

    def step_energies(self) -> dict[str, list[float]]:
        """Per phase, each valid row's joules (all kinds)."""
        out: dict[str, list[float]] = {}
        for r in self.reader.rows(f"SELECT phase, {STEP_J} AS e FROM steps WHERE {VALID_STEP}"):
            out.setdefault(str(r["phase"]), []).append(float(r["e"]))
        return out

    def flops_methods(self) -> set[str]:
        rows = self.reader.rows("SELECT DISTINCT json_extract(extra, '$.flops_method') AS m "
                                "FROM steps WHERE extra LIKE '%flops_method%'")
        return {str(r["m"]) for r in rows if r["m"]}

    def step_cover(self) -> tuple[float, float]:
        """``(union, sum)`` of the valid step windows' lengths, in seconds: less union than sum
        means windows overlapped (nested or concurrent steps)."""
        for r in self.reader.rows(_COVER_SQL):
            return float(r["u"] or 0.0), float(r["s"] or 0.0)
        return 0.0, 0.0

    def channel_power(self, channel_id: int, min_dt: float,
                      quantile: float) -> tuple[float, float, int]:
        """``(low, high, count)`` of one channel's bucket power (energy / dt): its ``quantile``
        and ``1 - quantile`` quantiles (a late read shifts energy between two neighbouring
        buckets: the extremes are noise), over usable buckets at least ``min_dt`` long, its
        first and last left out (they straddle the start and the stop)."""
        rows = self.reader.rows(_COUNT_SQL, (channel_id, min_dt))
        n = int(rows[0]["n"] or 0) if rows else 0
        if not n:
            return 0.0, 0.0, 0
        k = int(quantile * (n - 1))
        lo = self.reader.rows(_RANKED_SQL.format(order="ASC"), (channel_id, min_dt, k))
        hi = self.reader.rows(_RANKED_SQL.format(order="DESC"), (channel_id, min_dt, k))
        if not lo or not hi:
            return 0.0, 0.0, 0
        return float(lo[0]["w"]), float(hi[0]["w"]), n

    def channel_below(self, channel_id: int, min_dt: float, watts: float) -> tuple[float, float]:
        """``(seconds, joules)`` of one channel's buckets (as :meth:`channel_power` takes them)
        whose power is at most ``watts``."""
        for r in self.reader.rows(_BELOW_SQL, (channel_id, min_dt, watts)):
            return float(r["s"] or 0.0), float(r["e"] or 0.0)
        return 0.0, 0.0

    def mfu_sums(self) -> tuple[float, float]:
        """Duration-weighted MFU: ``(sum of mfu x duration, sum of duration)``."""
        for r in self.reader.rows(_MFU_SQL):
            return float(r["a"] or 0.0), float(r["b"] or 0.0)
        return 0.0, 0.0


class Run:
    """A run directory, read. Use as a context manager (the stores stay open for queries).

    Raises (from :meth:`open`):
        ConfigError: ``run_dir`` is missing, holds no run, or none of its stores can be read
            (one that cannot is a warning when another can).
    """

    def __init__(self, run_dir: Path, segments: list[Segment], stores: int,
                 warnings: list[str]) -> None:
        self.run_dir = run_dir
        self.segments = segments
        self.stores = stores
        self.warnings = warnings

    @classmethod
    def open(cls, run_dir: str | Path, now: float | None = None) -> "Run":
        run_dir = Path(run_dir)
        paths = store_paths(run_dir)
        now = time.time() if now is None else now
        segments: list[Segment] = []
        warnings: list[str] = []
        for path in paths:
            try:
                reader = StoreReader(path)
            except RunStoreError as e:
                warnings.append(str(e))
                continue
            segments.append(_segment(reader, now))
        if not segments:  # nothing recorded can be read: an error, never an empty run
            raise ConfigError("RUN_DIR", str(run_dir), "none of its stores can be read: "
                              + "; ".join(warnings))
        segments.sort(key=lambda s: s.start_unix)
        for seg in segments:
            warnings.extend(f"{seg.path.name}: {e['message']}" for e in seg.events
                            if e["kind"] in RECORD_WARNINGS)
        run = cls(run_dir, segments, len(paths), warnings)
        run.add_damage()
        return run

    def add_damage(self) -> None:
        """Add the stores' damaged-row notes to :attr:`warnings` (once each)."""
        for seg in self.segments:
            for d in seg.reader.damaged:
                line = f"{seg.path.name}: damaged {d}"
                if line not in self.warnings:
                    self.warnings.append(line)

    def close(self) -> None:
        for seg in self.segments:
            seg.reader.close()

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- figures -----------------------------------------------------------------------------
    @property
    def run_id(self) -> str | None:
        ids = sorted({str(s.meta["run_id"]) for s in self.segments if s.meta.get("run_id")})
        return ids[0] if ids else None

    @property
    def status(self) -> str:
        statuses = [s.status for s in self.segments]
        for s in ("running", "failed", "incomplete", "stopped"):
            if s in statuses:
                return s
        return "completed"

    @property
    def mode(self) -> str | list[str]:
        modes = sorted({str(s.meta.get("mode", "machine")) for s in self.segments})
        return modes[0] if len(modes) == 1 else modes

    @property
    def settings(self) -> dict[str, Any]:
        """The settings recorded when the run started (its first segment)."""
        return dict(self.segments[0].meta.get("settings") or {})

    @property
    def labels(self) -> dict[str, str]:
        """The run's labels (``precision``, ``method``...), merged over its stores (a later
        segment's value wins)."""
        return _labels(self)

    @property
    def start_unix(self) -> float:
        return min(s.start_unix for s in self.segments)

    @property
    def duration_s(self) -> float:
        return union_length([(s.start_unix, s.end_unix) for s in self.segments])

    @property
    def gpu_seconds(self) -> float:
        return float(sum((s.end_unix - s.start_unix) * sum(c["kind"] == "gpu" for c in s.channels)
                         for s in self.segments))

    def energy_j(self) -> dict[str, float | None]:
        """Joules by kind (None: no channel of that kind at all, never a silent 0) and total."""
        out: dict[str, float | None] = dict.fromkeys(KINDS)
        for seg in self.segments:
            for c in seg.channels:
                out[c["kind"]] = (out[c["kind"]] or 0.0) + float(c["energy_j"] or 0.0)
        out["total"] = sum(v for v in out.values() if v is not None)
        return out

    def steps_by_phase(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for seg in self.segments:
            for phase, (n, _) in seg.phases.items():
                out[phase] = out.get(phase, 0) + n
        return out

    def optimizer_steps(self) -> int:
        """Training steps as the framework counts them (its global step): one rank's ``train``
        steps over all its segments (the most of any rank); never evaluation, sanity-check or
        other ranks' copies of the same step."""
        per_rank: dict[tuple[str, int], int] = {}
        for seg in self.segments:
            n = seg.phases.get("train", (0, 0.0))[0]
            key = (seg.host, seg.rank)
            per_rank[key] = per_rank.get(key, 0) + n
        return max(per_rank.values(), default=0)

    def phase_energy_j(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for seg in self.segments:
            for phase, (_, e) in seg.phases.items():
                out[phase] = out.get(phase, 0.0) + e
        return out

    def steps_inside_j(self) -> tuple[dict[str, float], float, float]:
        """Energy spent inside step windows, per phase: ``(joules by phase, union s, sum s)``.

        Each store's step rows carry the joules of that store's devices over their windows (the
        engine attributes them once). Where a store's windows overlap (union shorter than their
        sum), its phases' joules are scaled by union / sum so no second is counted twice."""
        out: dict[str, float] = {}
        union_s = sum_s = 0.0
        for seg in self.segments:
            u, s = seg.step_cover()
            union_s, sum_s = union_s + u, sum_s + s
            scale = u / s if s > u > 0 else 1.0
            for phase, (_, e) in seg.phases.items():
                out[phase] = out.get(phase, 0.0) + e * scale
        return out, union_s, sum_s

    def gpu_power(self, idle_margin: float, idle_peak_share: float, min_dt: float,
                  quantile: float = 0.1) -> list[dict[str, Any]]:
        """Per GPU (identity, over its stores): low and peak bucket power (the ``quantile`` and
        ``1 - quantile`` quantiles, :meth:`Segment.channel_power`), the near-idle
        threshold ``min(lowest x (1 + idle_margin), highest x idle_peak_share)`` and the seconds
        and joules of its buckets at or under it; with its measured seconds and joules."""
        found: dict[str, dict[str, Any]] = {}
        chans: list[tuple[str, Segment, int]] = []
        for seg in self.segments:
            for c in seg.channels:
                if c["kind"] != "gpu":
                    continue
                key = device_identity(seg.host, seg.rank, c)
                lo, hi, n = seg.channel_power(c["id"], min_dt, quantile)
                g = found.setdefault(key, {"identity": key, "device": c["device"],
                                           "name": c["name"] or c["device"], "host": seg.host,
                                           "low_w": None, "peak_w": None, "buckets": 0})
                if n:
                    g["low_w"] = lo if g["low_w"] is None else min(g["low_w"], lo)
                    g["peak_w"] = hi if g["peak_w"] is None else max(g["peak_w"], hi)
                    g["buckets"] += n
                chans.append((key, seg, c["id"]))
        for g in found.values():
            g["threshold_w"] = (None if g["low_w"] is None else
                                min(g["low_w"] * (1.0 + idle_margin), g["peak_w"] * idle_peak_share))
            g.update(seconds=0.0, energy_j=0.0, idle_s=0.0, idle_j=0.0)
        for key, seg, cid in chans:
            g = found[key]
            s, e = seg.channel_below(cid, min_dt, float("inf"))
            g["seconds"] += s
            g["energy_j"] += e
            if g["threshold_w"] is not None:
                s, e = seg.channel_below(cid, min_dt, g["threshold_w"])
                g["idle_s"] += s
                g["idle_j"] += e
        return list(found.values())

    @property
    def gaps(self) -> int:
        # one gap per interruption: a loss is recorded as gap-start then device-lost
        return sum(1 for s in self.segments for e in s.events if e["kind"] == "gap-start")

    def devices(self) -> list[Device]:
        """Every device once (see the module docstring), in order of first appearance."""
        found: dict[str, Device] = {}
        for seg in self.segments:
            for c in seg.channels:
                key = device_identity(seg.host, seg.rank, c)
                old = found.get(key)
                found[key] = Device(
                    identity=key, kind=c["kind"], device=c["device"], name=c["name"] or c["device"],
                    host=seg.host, rank=old.rank if old else seg.rank, method=c["method"],
                    measured=bool(c["measured"]), source=c["source"] or c["method"],
                    uncertainty=c["uncertainty"] or "",
                    energy_j=(old.energy_j if old else 0.0) + float(c["energy_j"] or 0.0),
                    gap_s=(old.gap_s if old else 0.0) + float(c["gap_s"] or 0.0),
                    status=str(c["status"]), stores=(old.stores if old else 0) + 1)
        return list(found.values())

    def events(self, *kinds: str) -> list[dict[str, Any]]:
        return [e for s in self.segments for e in s.events if not kinds or e["kind"] in kinds]

    def totals(self, config: Any = None) -> Totals:
        """The run's :class:`Totals`; with emissions when ``config`` (default: the settings
        recorded in the run) names a location or an intensity."""
        from greentrack.carbon.resolve import config_for_run, pue_in_use

        energy = self.energy_j()
        kwh = float(energy["total"] or 0.0) / J_PER_KWH
        cfg = config if config is not None else config_for_run(self.settings, {})
        carbon: dict[str, Any] = {}
        if any(getattr(cfg, k, None) for k in ("country", "region", "cloud", "intensity_csv")) \
                or cfg.carbon_intensity_g_per_kwh is not None:
            from greentrack.carbon import live_intensity
            found = live_intensity(cfg)
            pue = float(pue_in_use(cfg)["value"])
            if found is not None:
                carbon = {"intensity_g_per_kwh": found[0], "intensity_source": found[1],
                          "pue": pue, "emissions_g": kwh * pue * found[0]}
        return Totals(run_id=self.run_id, run_dir=str(self.run_dir), status=self.status,
                      duration_s=self.duration_s, energy_j=energy, energy_kwh=kwh,
                      steps=sum(self.steps_by_phase().values()),
                      gpu_hours=self.gpu_seconds / 3600.0, **carbon)

    def summary(self) -> dict[str, Any]:
        """The ``greentrack summary --json`` document."""
        energy = self.energy_j()
        by_phase = self.steps_by_phase()
        return {
            "run_id": self.run_id, "run_dir": str(self.run_dir), "status": self.status,
            "duration_s": self.duration_s, "energy_j": energy,
            "energy_kwh": float(energy["total"] or 0.0) / J_PER_KWH,
            "gpu_seconds": self.gpu_seconds, "steps": sum(by_phase.values()),
            "steps_by_phase": by_phase, "optimizer_steps": self.optimizer_steps(),
            "steps_energy_j": sum(self.phase_energy_j().values()),
            "mode": self.mode, "stores": self.stores, "gaps": self.gaps,
            "sources": [d.as_source() for d in self.devices()], "warnings": list(self.warnings),
        }



#: A step row's joules, all kinds (``greentrack.steps.StepRow.energy_j`` in Python).
STEP_J = "COALESCE(gpu_j, 0) + COALESCE(cpu_j, 0) + COALESCE(dram_j, 0)"

# One scalar subquery per bin walks the (channel_id, t) primary key in order: several times faster
# than GROUP BY on an expression, which sorts every row in a temporary B-tree.
_BINS_SQL = """
WITH RECURSIVE k(i) AS (SELECT ? UNION ALL SELECT i + 1 FROM k WHERE i < ?)
SELECT i, (SELECT SUM(energy_j) FROM samples WHERE channel_id = ? AND t >= i * ? - ?
           AND t < (i + 1) * ? - ? AND """ + VALID_SAMPLE + """) AS e FROM k"""

_STEPS_SQL = """
SELECT phase, SUM({n}) AS n, SUM(duration_s) AS duration_s,
       SUM(""" + STEP_J + """) AS energy_j,
       SUM(gpu_j) AS gpu_j, SUM(gpu_seconds) AS gpu_seconds,
       SUM(flops) AS flops, COUNT(flops) AS n_flops, SUM(samples) AS samples,
       COUNT(samples) AS n_samples, SUM(tokens) AS tokens, COUNT(tokens) AS n_tokens FROM steps
WHERE """ + VALID_STEP + """ GROUP BY phase"""

_MFU = "json_extract(extra, '$.mfu')"
_MFU_SQL = (f"SELECT SUM({_MFU} * duration_s) AS a, SUM(duration_s) AS b FROM steps WHERE "
            f"extra LIKE '%\"mfu\"%' AND {_MFU} IS NOT NULL AND {sql_number(_MFU, 0.0, 1000.0)} "
            f"AND {VALID_STEP}")

# Union of step windows: each row adds what it reaches past the furthest end before it.
_COVER_SQL = f"""
SELECT SUM(MAX(0.0, t1 - MAX(t0, COALESCE(prev, t0)))) AS u, SUM(t1 - t0) AS s FROM (
  SELECT t0, t1, MAX(t1) OVER (ORDER BY t0, t1 ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
         AS prev FROM steps WHERE {VALID_STEP} AND t1 >= t0)"""

# A channel's buckets for power statistics: usable, at least ?2 s long, and neither its first nor
# its last (they straddle the start and the stop, when the device was read part of the time).
_INNER = f"""channel_id = ?1 AND dt > 0 AND dt >= ?2 AND {VALID_SAMPLE}
AND t > (SELECT MIN(t) FROM samples WHERE channel_id = ?1)
AND t < (SELECT MAX(t) FROM samples WHERE channel_id = ?1)"""

_COUNT_SQL = f"SELECT COUNT(*) AS n FROM samples WHERE {_INNER}"
# The bucket power ?3 places from the bottom (ASC) or the top (DESC): a quantile without reading
# the rows into Python.
_RANKED_SQL = "SELECT energy_j / dt AS w FROM samples WHERE " + _INNER + \
    " ORDER BY energy_j / dt {order} LIMIT 1 OFFSET ?3"

_BELOW_SQL = f"""
SELECT SUM(dt) AS s, SUM(energy_j) AS e FROM samples WHERE {_INNER} AND energy_j / dt <= ?3"""

# Per channel: the usable samples' count and span, and how many are not usable (left out).
_STATS_SQL = f"""
SELECT channel_id, COUNT(*) FILTER (WHERE {VALID_SAMPLE}) AS n,
       MIN(t) FILTER (WHERE {VALID_SAMPLE}) AS lo, MAX(t) FILTER (WHERE {VALID_SAMPLE}) AS tmax,
       MAX(t + dt) FILTER (WHERE {VALID_SAMPLE}) AS hi, COUNT(*) FILTER (WHERE NOT {VALID_SAMPLE}) AS bad
FROM samples GROUP BY channel_id"""


def device_identity(host: str, rank: int, channel: dict[str, Any]) -> str:
    """Who a channel measures, across segments and ranks (``greentrack.engine.channel_key`` is
    the same idea within one machine): a GPU's UUID; a host zone by host and device."""
    details = channel.get("details") or {}
    uuid = details.get("uuid") if isinstance(details, dict) else None
    if channel["kind"] == "gpu" and uuid:
        base = f"gpu:{uuid}"
    elif channel.get("host_scope"):
        base = f"{host}:{channel['kind']}:{channel['device']}"
    else:
        base = f"{host}:r{rank}:{channel['kind']}:{channel['device']}"
    return f"{base}:{channel['method']}"


def union_length(spans: list[tuple[float, float]]) -> float:
    """Length of the union of ``[a, b]`` spans."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def _segment(reader: StoreReader, now: float) -> Segment:
    meta, channels = reader.meta, reader.channels()
    status = store_status(meta, now)
    start = float(meta.get("started_unix", now))
    if "duration_s" in meta:
        end = start + float(meta["duration_s"])
    else:
        until = max((c["until_t"] or 0.0 for c in channels), default=0.0)
        end = max(start + until, now) if status == "running" else start + until
    seg = Segment(reader, meta, channels, reader.events(), status, start, end)
    reader.invalid_rows("steps")
    for row in reader.rows(f"SELECT phase, SUM({reader.step_n}) AS n, SUM({STEP_J}) AS e FROM steps "
                           f"WHERE {VALID_STEP} GROUP BY phase"):
        seg.phases[str(row["phase"])] = (int(row["n"] or 0), float(row["e"] or 0.0))
    return seg


# -- labels, recorded metrics and energy to a target (greentrack compare --target) --------------
@dataclass(frozen=True)
class MetricPoint:
    """One ``Tracker.record`` value: unix time, step, value, and the cumulative joules of the
    store that recorded it at that moment."""

    t_unix: float
    step: int | None
    value: float
    energy_j: float


@dataclass(frozen=True)
class ToTarget:
    """What a run spent until a metric first reached a target (linear interpolation between the
    two recordings that bracket the crossing), or ``reached=False`` with the best value seen."""

    metric: str
    reached: bool
    best: float | None
    energy_j: float | None = None
    duration_s: float | None = None
    steps: float | None = None
    tokens: float | None = None
    samples: float | None = None
    gpu_hours: float | None = None
    t_unix: float | None = None


def _labels(run: Run) -> dict[str, str]:
    out: dict[str, str] = {}
    for seg in run.segments:
        labels = seg.meta.get("labels")
        if isinstance(labels, dict):
            out.update(labels)
    return out


def _metric_segments(run: Run, name: str) -> tuple[list[Segment], list[MetricPoint]]:
    """The stores of the one process (lowest rank) that recorded ``name``, and its points."""
    by_rank: dict[tuple[int, str], list[tuple[Segment, list[dict[str, Any]]]]] = {}
    for seg in run.segments:
        rows = [r for r in seg.reader.metrics() if r["name"] == name]
        if rows:
            by_rank.setdefault((seg.rank, seg.host), []).append((seg, rows))
    if not by_rank:
        return [], []
    chosen = by_rank[min(by_rank)]
    points = [MetricPoint(seg.start_unix + float(r["t"]), None if r["step"] is None
                          else int(r["step"]), float(r["value"]), float(r["energy_j"]))
              for seg, rows in chosen for r in rows]
    return [seg for seg, _ in chosen], sorted(points, key=lambda p: p.t_unix)


def metric_names(run: Run) -> list[str]:
    names: set[str] = set()
    for seg in run.segments:
        names.update(str(r["name"]) for r in seg.reader.metrics())
    return sorted(names)


def metric_points(run: Run, name: str) -> list[MetricPoint]:
    """``name``'s recordings, with the energy of the whole run so far (other stores' from their
    stored buckets) in ``energy_j``."""
    segs, points = _metric_segments(run, name)
    return [MetricPoint(p.t_unix, p.step, p.value, p.energy_j + _others_energy(run, segs, p.t_unix,
                                                                              p))
            for p in points]


def _others_energy(run: Run, own: list[Segment], t_unix: float, point: MetricPoint | None) -> float:
    """Joules until ``t_unix`` of every store but the one whose recording gave the value."""
    total = 0.0
    for seg in run.segments:
        if point is not None and seg in own and seg.start_unix <= t_unix <= seg.end_unix + 1e-9 \
                and _holds(seg, point):
            continue
        if seg.start_unix >= t_unix:
            continue
        total += seg.reader.energy_until(t_unix - seg.start_unix)
    return total


def _holds(seg: Segment, point: MetricPoint) -> bool:
    return seg.start_unix <= point.t_unix <= max(seg.end_unix, seg.start_unix) + 1.0


def _hit(op: str, value: float, target: float) -> bool:
    return {"<=": value <= target, ">=": value >= target, "<": value < target,
            ">": value > target}[op]


def to_target(run: Run, name: str, op: str, target: float) -> ToTarget:
    """Energy, time, steps, tokens, samples and GPU-hours until ``name op target`` first held."""
    segs, points = _metric_segments(run, name)
    better = min if op in ("<=", "<") else max
    best = better((p.value for p in points), default=None)
    for i, p in enumerate(points):
        if not _hit(op, p.value, target):
            continue
        if i == 0 or points[i - 1].value == p.value:
            f, a = 1.0, p
        else:
            a = points[i - 1]
            f = min(1.0, max(0.0, (target - a.value) / (p.value - a.value)))
        t = a.t_unix + f * (p.t_unix - a.t_unix)
        own = a.energy_j + f * (p.energy_j - a.energy_j)
        owner = next((s for s in segs if _holds(s, p)), None)
        if owner is not None and a is not p and not _holds(owner, a):  # a resumed segment between
            own = p.energy_j * f
        energy = own + _others_energy(run, [owner] if owner else [], t, p)
        step = None if p.step is None or a.step is None else a.step + f * (p.step - a.step)
        tokens = samples = 0.0
        for seg in run.segments:
            rel = t - seg.start_unix
            for r in seg.reader.rows(f"SELECT SUM(tokens) AS k, SUM(samples) AS s FROM steps "
                                     f"WHERE {VALID_STEP} AND t1 <= ?", (rel,)):
                tokens += float(r["k"] or 0.0)
                samples += float(r["s"] or 0.0)
        gpu_s = sum(max(0.0, min(s.end_unix, t) - s.start_unix)
                    * sum(c["kind"] == "gpu" for c in s.channels) for s in run.segments)
        return ToTarget(name, True, best, energy_j=energy, duration_s=t - run.start_unix,
                        steps=step, tokens=tokens or None, samples=samples or None,
                        gpu_hours=gpu_s / 3600.0, t_unix=t)
    return ToTarget(name, False, best)
