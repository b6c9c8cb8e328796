"""One store of a run, read: its meta, channels, events and step totals, and the queries the
reports and advice run on it (see :mod:`greentrack.run`)."""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from greentrack.common.units import is_number
from greentrack.run.queries import (_BINS_SQL, _CELLS_SQL, _COVER_SQL, _FROM_SQL, _MFU_SQL,
                                    _ROLLUP_BAD_SQL, _ROLLUP_BINS_SQL, _ROLLUP_STATS_SQL, _ROWS_SQL,
                                    _STATS_SQL, _STEPS_SQL, STEP_J, step_buckets_sql)
from greentrack.store import VALID_STEP, StoreReader
from greentrack.store.reader import store_status


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
    #: per phase: every sum of :meth:`step_phases`, read with :attr:`phases` in one query
    phase_sums: dict[str, dict[str, float]] = field(default_factory=dict)
    #: per phase: the lowest step number (a resumed segment's first: the checkpoint's step)
    first_idx: dict[str, int] = field(default_factory=dict)
    _stats: dict[int, Any] | None = field(default=None, repr=False)
    #: the rollup cells' ``(width_s, offset_s)`` while they can stand for the samples (None:
    #: read the samples); False until checked (:meth:`rollup`)
    _rollup: tuple[float, float] | None | bool = field(default=False, repr=False)
    _bins: dict[tuple[float, float], dict[int, list[tuple[float, float, float]]]] = field(
        default_factory=dict, repr=False)
    #: :meth:`_scan_steps`: each phase's step joules, and the windows' cover when it streamed
    _scanned: tuple[dict[str, array[float]], tuple[float, float] | None] | None = field(
        default=None, repr=False)

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

    @property
    def gpu_seconds(self) -> float:
        """This store's wall-clock span x the GPUs it measured."""
        return float((self.end_unix - self.start_unix)
                     * sum(c["kind"] == "gpu" for c in self.channels))

    # -- the report's queries (aggregated in SQLite, never row by row in Python) ---------------
    def sample_stats(self) -> dict[int, Any]:
        """Per channel id: usable samples' count ``n`` and span ``lo``/``tmax``/``hi``; rows that
        are not usable are counted as damage (once: the result is kept)."""
        if self._stats is not None:
            return self._stats
        if self.rollup() is not None:
            cells = self._rollup_rows(_ROLLUP_STATS_SQL)
            if cells is not None:
                self._stats = {r["channel_id"]: r for r in cells}
                return self._stats
        stats = {r["channel_id"]: r for r in self.reader.rows(_STATS_SQL)}
        rows = sum(int(r["n"] or 0) for r in self.reader.rows(_ROWS_SQL))
        bad = rows - sum(int(r["n"] or 0) for r in stats.values())
        if bad:
            self.reader.damaged.append(f"samples: {bad} row(s) with negative, non-finite or "
                                       "out-of-range values, left out")
        self._stats = stats
        return stats

    def energy_bins(self, bin_s: float, resolution_s: float) -> dict[int, list[tuple[float, float,
                                                                                       float]]]:
        """Per channel id with samples: ``(start_unix, end_unix, joules)`` per bin of width
        ``bin_s`` (:func:`bin_width`): the energy over wall time that time-resolved intensity is
        integrated against, and the report's time series. Read once per grid."""
        cached = self._bins.get((bin_s, resolution_s))
        if cached is not None:
            return cached
        out = {}
        for cid, st in self.sample_stats().items():
            if st["n"]:
                out[int(cid)] = self._channel_bins(int(cid), float(st["lo"]), float(st["tmax"]),
                                                   float(st["hi"]), bin_s, resolution_s)
        self._bins[(bin_s, resolution_s)] = out
        return out

    def _channel_bins(self, channel_id: int, lo: float, tmax: float, hi: float, bin_s: float,
                      resolution: float) -> list[tuple[float, float, float]]:
        """One channel's bins. Bin edges sit half a bucket before multiples of ``bin_s`` so float
        noise in a bucket's ``t`` never moves it across."""
        half = resolution / 2.0
        first, last = int(math.floor((lo + half) / bin_s)), int(math.floor((tmax + half) / bin_s))
        if last - first > 4 * MAX_BINS:  # a damaged time far beyond the run: never millions of bins
            self.reader.damaged.append(f"samples of channel {channel_id}: times beyond the run's "
                                       "span, left out of the time series")
            last = first + 4 * MAX_BINS
            hi = min(hi, (last + 1) * bin_s)
        s0 = self.start_unix
        out = []
        for i, e in self.channel_bins(channel_id, first, max(first, last), bin_s, half):
            a, b = max(i * bin_s, lo), min((i + 1) * bin_s, hi)
            out.append((s0 + a, s0 + max(b, a), e))
        return out

    def channel_bins(self, channel_id: int, first: int, last: int, bin_s: float,
                     half: float) -> list[tuple[int, float]]:
        """``(i, joules)`` of bins ``first..last`` of width ``bin_s`` (edges ``half`` early):
        from the rollup cells when they fit the grid (whole cells a bin, the same edges), else
        from the samples."""
        spec = self.rollup()
        if spec is not None and spec[1] == half:
            q = round(bin_s / spec[0])
            if q >= 1 and abs(q * spec[0] - bin_s) <= 1e-9 * bin_s:
                found = self._rollup_rows(_ROLLUP_BINS_SQL, (first, last, channel_id, q, q))
                if found is not None:
                    return [(int(r[0]), float(r[1])) for r in found if r[1] is not None]
        rows = self.reader.rows(_BINS_SQL, (first, last, channel_id, bin_s, half, bin_s, half))
        return [(int(r[0]), float(r[1])) for r in rows if r[1] is not None]

    def rollup(self) -> tuple[float, float] | None:
        """``(width_s, offset_s)`` of the store's rollup cells, when they stand for its samples:
        meta ``rollup`` present (the store's triggers delete it when a sample is changed after
        the fact) and every cell in range. A store written before rollups has none (None, read
        from the samples); damaged ones are a warning and the samples are read."""
        if self._rollup is not False:
            return self._rollup if isinstance(self._rollup, tuple) else None
        self._rollup = None
        spec = self.meta.get("rollup")
        if spec is None:
            return None
        width, offset = spec.get("width_s"), spec.get("offset_s")
        if not (is_number(width, 1e-3, 86400.0) and is_number(offset, 0.0, 86400.0)):
            self._rollup_damaged("meta rollup: unexpected value")
            return None
        bad = self._rollup_rows(_ROLLUP_BAD_SQL)
        if bad is None:
            return None
        if bad and int(bad[0]["n"] or 0):
            self._rollup_damaged(f"{int(bad[0]['n'])} cell(s) with out-of-range values")
            return None
        self._rollup = (float(width), float(offset))
        return self._rollup

    def _rollup_rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any] | None:
        """The rows of a rollup query; None (and the rollups no longer used) when it failed."""
        damaged = self.reader.damaged
        before = len(damaged)
        rows = self.reader.rows(sql, args)
        if len(damaged) == before:
            return rows
        why = "; ".join(damaged[before:])
        del damaged[before:]
        self._rollup_damaged(f"unreadable ({why})")
        return None

    def _rollup_damaged(self, why: str) -> None:
        self._rollup = None
        self.reader.damaged.append(f"rollups: {why}: the time series was read from the samples")

    def step_phases(self) -> dict[str, dict[str, float]]:
        """Per phase: steps, duration, energy (all kinds, GPU), GPU-seconds, FLOPs, samples and
        tokens, with how many rows carried each of the last three (read when the store was
        opened)."""
        return {phase: dict(sums) for phase, sums in self.phase_sums.items()}

    def steps_from(self, phase: str, first: int) -> tuple[float, float]:
        """``(steps, joules)`` of ``phase``'s steps numbered ``first`` or later (a coalesced row
        pro rata)."""
        for r in self.reader.rows(_FROM_SQL.format(n=self.reader.step_n),
                                  (first, first, phase, first)):
            return float(r["n"] or 0.0), float(r["energy_j"] or 0.0)
        return 0.0, 0.0

    def step_energies(self) -> dict[str, array[float]]:
        """Per phase, each valid row's joules (all kinds): 8 bytes a step."""
        return self._scan_steps()[0]

    def _scan_steps(self) -> tuple[dict[str, array[float]], tuple[float, float] | None]:
        """One scan of the valid step rows in the order they were written, decoding no text (the
        phase is read as its index among :attr:`phase_sums`): each row's joules by phase, and
        the cover of the windows (:meth:`step_cover`) while they come in start order, as the
        engine writes them (None if not: SQL sorts them then). The report read the table twice
        for these (0.37 and 0.6 s of a week's 302,400 steps, bench/report_scale.py)."""
        if self._scanned is not None:
            return self._scanned
        phases = sorted(self.phase_sums)
        found = [array("d") for _ in phases]
        cover: list[tuple[float, float] | None] = [None]

        def take(rows: Iterator[tuple[Any, ...]]) -> None:
            cover[0] = _energies_and_cover(rows, found)

        index = " ".join(f"WHEN ? THEN {i}" for i in range(len(phases))) or "WHEN NULL THEN 0"
        if not self.reader.scan(f"SELECT CASE phase {index} END, CAST({STEP_J} AS REAL), t0, t1 "
                                f"FROM steps WHERE {VALID_STEP} ORDER BY id", phases, take):
            found, cover[0] = [array("d") for _ in phases], None
        self._scanned = ({p: v for p, v in zip(phases, found) if v}, cover[0])
        return self._scanned

    def step_buckets(self, edges_j: tuple[float, ...]) -> dict[str, list[int]]:
        """Per phase, valid step rows per energy bucket (``len(edges_j) + 1`` counts, the last
        above every edge), as the exporter's ``greentrack_step_energy_joules`` histogram counts."""
        out: dict[str, list[int]] = {}
        for r in self.reader.rows(step_buckets_sql(edges_j)):
            out.setdefault(str(r["phase"]), [0] * (len(edges_j) + 1))[int(r["b"])] += int(r["n"])
        return out

    def flops_methods(self) -> set[str]:
        rows = self.reader.rows("SELECT DISTINCT json_extract(extra, '$.flops_method') AS m "
                                "FROM steps WHERE extra LIKE '%flops_method%'")
        return {str(r["m"]) for r in rows if r["m"]}

    def step_cover(self) -> tuple[float, float]:
        """``(union, sum)`` of the valid step windows' lengths, in seconds: less union than sum
        means windows overlapped (nested or concurrent steps)."""
        streamed = self._scan_steps()[1]
        if streamed is not None:
            return streamed
        for r in self.reader.rows(_COVER_SQL):
            return float(r["u"] or 0.0), float(r["s"] or 0.0)
        return 0.0, 0.0

    def step_cells(self, origin_unix: float, width_s: float,
                   n: int) -> tuple[list[float], dict[str, list[int]]]:
        """Over the cells ``[origin + k w, origin + (k+1) w)``, ``k < n``: the seconds each is
        covered by a step window of any phase (overlapping windows each count: cap at ``w`` for
        a share), and per phase the steps whose window ends in each."""
        out = [0.0] * n
        ending: dict[str, list[int]] = {}
        origin = origin_unix - self.start_unix  # the grid's origin in this store's seconds
        for r in self.reader.rows(_CELLS_SQL.format(n=self.reader.step_n),
                                  (origin, width_s, origin, width_s)):
            k0, k1, c = int(r["k0"]), int(r["k1"]), int(r["c"])
            counts = ending.setdefault(str(r["phase"]), [0] * n)
            counts[min(max(k1, 0), n - 1)] += int(r["steps"] or 0)
            x0, x1 = float(r["s0"]) - c * origin, float(r["s1"]) - c * origin  # sums, grid s
            if k0 == k1:
                if 0 <= k0 < n:
                    out[k0] += x1 - x0
                continue
            for k, part in ((k0, c * (k0 + 1) * width_s - x0), (k1, x1 - c * k1 * width_s)):
                if 0 <= k < n:
                    out[k] += part
            for k in range(max(k0 + 1, 0), min(k1, n)):
                out[k] += c * width_s
        return out, ending

    def mfu_sums(self) -> tuple[float, float]:
        """Duration-weighted MFU: ``(sum of mfu x duration, sum of duration)``."""
        for r in self.reader.rows(_MFU_SQL):
            return float(r["a"] or 0.0), float(r["b"] or 0.0)
        return 0.0, 0.0


def segment(reader: StoreReader, now: float) -> Segment:
    meta, channels = reader.meta, reader.channels()
    status = store_status(meta, now)
    start = float(meta.get("started_unix", now))
    if "duration_s" in meta:
        end = start + float(meta["duration_s"])
    else:
        until = max((c["until_t"] or 0.0 for c in channels), default=0.0)
        end = max(start + until, now) if status == "running" else start + until
    seg = Segment(reader, meta, channels, reader.events(), status, start, end)
    valid = 0
    for r in reader.rows(_STEPS_SQL.format(n=reader.step_n)):
        valid += int(r["rows"])
        sums = {k: float(r[k] or 0.0) for k in r.keys() if k not in ("phase", "first_idx", "rows")}
        seg.phase_sums[str(r["phase"])] = sums
        if r["first_idx"] is not None:
            seg.first_idx[str(r["phase"])] = int(r["first_idx"])
        seg.phases[str(r["phase"])] = (int(sums["n"]), sums["energy_j"])
    for r in reader.rows("SELECT COUNT(*) AS n FROM steps"):  # the valid ones were counted above
        reader.note_invalid("steps", int(r["n"] or 0) - valid)
    return seg


#: Bins per channel at most: the unit of time-resolved intensity integration and of the report's
#: time series (finer for short runs: never wider than needed, see :func:`bin_width`).
MAX_BINS = 3000
NICE = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


def bin_width(duration_s: float, resolution_s: float) -> float:
    """The width of a run's energy bins: the store's resolution times the smallest of
    :data:`NICE` that keeps a channel under :data:`MAX_BINS` bins."""
    need = duration_s / MAX_BINS
    for m in NICE:
        if m * resolution_s >= need:
            return m * resolution_s
    return float(math.ceil(need))


def _energies_and_cover(rows: Iterator[tuple[Any, ...]],
                        found: list[array[float]]) -> tuple[float, float] | None:
    """Rows ``(phase index, joules, t0, t1)``: each row's joules into ``found[phase index]``, and
    ``(union, sum)`` of the windows with ``t1 >= t0`` as ``_COVER_SQL`` gives it (each window's
    part past every earlier one's end, in ``(t0, t1)`` order), or None once a window starts
    before the one written before it."""
    groups = len(found)
    union = total = 0.0
    end = last0 = last1 = -math.inf
    ordered = True
    for g, v, t0, t1 in rows:
        if type(g) is int and 0 <= g < groups and type(v) is float:
            found[g].append(v)
        if not ordered or t1 < t0:
            continue
        if t0 < last0 or (t0 == last0 and t1 < last1):
            ordered = False
            continue
        last0, last1 = t0, t1
        union += max(0.0, t1 - max(t0, end))
        total += t1 - t0
        if t1 > end:
            end = t1
    return (union, total) if ordered else None
