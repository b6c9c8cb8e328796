"""What a report needs from a run directory, read once, aggregated in SQL.

Every store is opened once, by :class:`greentrack.run.Run` (which merges ranks and resumed segments,
and holds the queries); totals, status, duration and devices come from it. This module adds what the summary does not carry: the energy time
series per device over wall time (bucketed in SQLite, never row by row in Python), step
statistics, FLOPs/tokens/samples, hosts and sample counts. Damaged rows become warnings.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from greentrack.carbon.footprint import Work
from greentrack.carbon.runs import work_of
from greentrack.common.units import is_number
from greentrack.common.units import quantile as quantile_of
from greentrack.run import (Device, PowerLimitCurve, Run, RunSummary, Segment, StoreEnergy,
                            device_identity)

PLOT_POINTS = 600  # cells of the report's time series (charts, step coverage)


#: a bucket is near-idle at or under min(lowest x (1 + IDLE_MARGIN), peak x IDLE_PEAK_SHARE)
IDLE_MARGIN = 0.10
IDLE_PEAK_SHARE = 0.5
#: a GPU's "lowest" and "peak" bucket power are these quantiles of its buckets' power
POWER_QUANTILE = 0.1


def resample(bins: list[tuple[float, float, float]], t0: float, width: float, n: int) -> list[float]:
    """Energy per grid cell ``[t0 + k*width, t0 + (k+1)*width)``, each bin split by overlap."""
    out = [0.0] * n
    for a, b, e in bins:
        span = b - a
        k = max(int((a - t0) // width), 0)
        if span <= 0:
            if k < n:
                out[k] += e
            continue
        while k < n:
            lo, hi = max(a, t0 + k * width), min(b, t0 + (k + 1) * width)
            if hi > lo:
                out[k] += e * (hi - lo) / span
            if t0 + (k + 1) * width >= b:
                break
            k += 1
    return out


@dataclass
class Channel:
    key: str
    identity: str  # the device across segments and ranks (greentrack.run.device_identity)
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
    #: the store that measured it (its bins belong to that store's part of the run)
    store: Path | None = None


@dataclass
class RunData:
    """Everything read from one run directory."""

    run_dir: Path
    summary: RunSummary
    devices: list[Device]  # each device once (greentrack.run.Run.devices)
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
    #: host -> what its first store recorded of the machine (``cpu_count``, ``ram_total_gb``)
    machines: dict[str, dict[str, Any]]
    settings: dict[str, Any]
    warnings: list[str]
    #: the longest slow cadence of each store whose engine stretched it (store file -> s)
    stretched_slow_s: dict[str, float] = field(default_factory=dict)
    #: the run's labels (greentrack.run.Run.labels)
    labels: dict[str, str] = field(default_factory=dict)
    #: joules inside step windows per phase, and the windows' union and summed seconds
    #: (:meth:`greentrack.run.Run.steps_inside_j`)
    steps_inside_j: dict[str, float] = field(default_factory=dict)
    step_union_s: float = 0.0
    step_sum_s: float = 0.0
    #: seconds the stores ran, summed (ranks and segments each count)
    store_s: float = 0.0
    #: per GPU: bucket power and near-idle time (:func:`_gpu_power`, from the time series)
    gpu_power: list[dict[str, Any]] = field(default_factory=list)
    #: measured power-limit curves (:meth:`greentrack.run.Run.power_limit_curves`)
    power_limit_curves: list[PowerLimitCurve] = field(default_factory=list)
    #: the main phase's (``train`` if any) steps done by the end of each :func:`plot_grid` cell
    #: in which some ended, on the lowest rank (all its segments): ``(steps done, unix time)``
    step_marks: list[tuple[int, float]] = field(default_factory=list)
    main_phase: str | None = None
    #: seconds of each :func:`plot_grid` cell covered by step windows (any phase, any store)
    step_cells: list[float] = field(default_factory=list)
    #: the latest ``planned-steps`` event (the training integration's horizon), if any
    planned_steps: int | None = None
    #: details of the ``start-when-greener`` event (``greentrack run --start-when-greener``)
    greener_start: dict[str, Any] | None = None
    #: the ``budget-forecast`` and ``budget-reached`` events (:mod:`greentrack.process.budget`)
    budget_events: list[dict[str, Any]] = field(default_factory=list)
    #: each store's energy, span, recorded settings and bins: the footprint's input
    stores: list[StoreEnergy] = field(default_factory=list)
    #: the run's work (steps by name, tokens, samples, FLOPs, devices): per-unit divisors
    work: Work = field(default_factory=Work)

    def plot_grid(self) -> tuple[int, float]:
        """``(cells, width_s)`` of the report's time series from :attr:`start_unix`."""
        duration = max(self.end_unix - self.start_unix, 1e-9)
        n = max(1, min(PLOT_POINTS, int(math.ceil(duration / self.bin_s))))
        return n, duration / n

    def energy_until(self, times_unix: list[float]) -> list[float]:
        """Joules of every channel from the start until each of ``times_unix``, from the
        time-series bins (the bin that holds a time pro rata); a bisection per channel and time."""
        import bisect
        out = [0.0] * len(times_unix)
        for c in self.channels:
            ends = [b for _, b, _ in c.bins]
            prefix = [0.0]
            for _, _, e in c.bins:
                prefix.append(prefix[-1] + e)
            for i, t in enumerate(times_unix):
                k = bisect.bisect_right(ends, t)  # bins [0, k) end by t
                out[i] += prefix[k]
                if k < len(c.bins):
                    a, b, e = c.bins[k]
                    if a < t < b:
                        out[i] += e * (t - a) / (b - a)
        return out

    @property
    def bins(self) -> list[tuple[float, float, float]]:
        return [b for c in self.channels for b in c.bins]

    def total(self, key: str, phases: tuple[str, ...] | None = None) -> float | None:
        """Sum of a step column over phases (None when no step recorded it)."""
        count_key = {"flops": "n_flops", "samples": "n_samples", "tokens": "n_tokens"}.get(key)
        vals = [p[key] for ph, p in self.phases.items() if (phases is None or ph in phases)
                and (count_key is None or p[count_key] > 0)]
        return float(sum(vals)) if vals else None


def read_run(run_dir: str | Path, step_detail: bool = True) -> RunData:
    """Read a run directory for a report (through :class:`greentrack.run.Run`).

    Args:
        run_dir: the run directory (or several, ``+``-joined).
        step_detail: read each step's joules (:attr:`RunData.step_energies_j`) and the step
            coverage of the time series (:attr:`RunData.step_cells`, :attr:`RunData.step_marks`):
            the report shows them; advice needs neither (a scan of every step less each).

    Raises:
        ConfigError: not a run directory, or no store in it can be read.
    """
    with Run.open(run_dir) as run:
        return _read(run, step_detail)


def _read(run: Run, step_detail: bool = True) -> RunData:
    summary = run.summary()
    start = run.start_unix
    resolution, bin_s = run.resolution_s, run.bin_s
    channels: list[Channel] = []
    phases: dict[str, dict[str, float]] = {}
    gathered: dict[str, array[float]] = {}  # 8 bytes a step until sorted
    methods: set[str] = set()
    mfu_num = mfu_den = 0.0
    for seg in run.segments:
        stats = seg.sample_stats()
        seg_bins = seg.energy_bins(bin_s, resolution)
        for c in seg.channels:
            st = stats.get(c["id"])
            ch = Channel(key=f"{seg.host}/r{seg.rank}/{c['device']}",
                         identity=device_identity(seg.host, seg.rank, c), kind=c["kind"],
                         device=c["device"], name=c["name"] or c["device"], host=seg.host,
                         rank=seg.rank, method=c["method"], measured=bool(c["measured"]),
                         uncertainty=c["uncertainty"] or "", energy_j=float(c["energy_j"] or 0.0),
                         samples=int(st["n"]) if st else 0, gap_s=float(c["gap_s"] or 0.0),
                         store=seg.path)
            ch.bins = seg_bins.get(int(c["id"]), [])
            channels.append(ch)
        for phase, sums in seg.step_phases().items():
            p = phases.setdefault(phase, dict.fromkeys(sums, 0.0))
            for k, v in sums.items():
                p[k] += v
        for phase, values in (seg.step_energies() if step_detail else {}).items():
            gathered.setdefault(phase, array("d")).extend(values)
        methods |= seg.flops_methods()
        a, b = seg.mfu_sums()
        mfu_num, mfu_den = mfu_num + a, mfu_den + b
    inside, union_s, sum_s = run.steps_inside_j()
    gpu_power = _gpu_power(channels, IDLE_MARGIN, IDLE_PEAK_SHARE, resolution / 2.0,
                           POWER_QUANTILE)
    curves = run.power_limit_curves()
    main = "train" if "train" in phases else max(phases, key=lambda p: phases[p]["n"], default=None)
    planned = [e for e in run.events("planned-steps")]
    greener = run.events("start-when-greener")
    run.add_damage()  # rows the report's queries left out, too
    energies = {phase: sorted(values) for phase, values in gathered.items()}
    first = run.segments[0]
    data = RunData(
        run_dir=run.run_dir, summary=summary, devices=run.devices(), start_unix=start,
        end_unix=run.end_unix, bin_s=bin_s,
        channels=channels, phases=phases, step_energies_j=energies, flops_methods=sorted(methods),
        mfu=mfu_num / mfu_den if mfu_den > 0 else None,
        hosts=run.host_seconds, resolution_s=resolution,
        versions=dict(first.meta.get("versions") or {}), settings=run.settings,
        machines=_machines(run.segments),
        warnings=list(run.warnings), stretched_slow_s=_stretched(run.segments),
        labels=run.labels, steps_inside_j=inside, step_union_s=union_s, step_sum_s=sum_s, gpu_power=gpu_power,
        store_s=sum(seg.end_unix - seg.start_unix for seg in run.segments),
        power_limit_curves=curves, main_phase=main, planned_steps=_planned(planned),
        greener_start=_details(greener[-1]) if greener else None,
        budget_events=run.events("budget-forecast", "budget-reached"),
        stores=run.store_energies(run.energy_bins()), work=work_of(run))
    if not step_detail:
        return data
    n, width = data.plot_grid()
    cells, ending = [0.0] * n, [0] * n
    rank = min(seg.rank for seg in run.segments)
    for seg in run.segments:
        covered, by_phase = seg.step_cells(start, width, n)
        cells = [a + b for a, b in zip(cells, covered)]
        if seg.rank == rank and main in by_phase:  # one rank's steps: the optimizer steps
            ending = [a + b for a, b in zip(ending, by_phase[main])]
    data.step_cells = cells
    data.step_marks = _marks(ending, start, width)
    return data


def _marks(ending: list[int], start: float, width: float) -> list[tuple[int, float]]:
    """``(steps done, unix time)`` at the end of each cell in which steps ended."""
    out, done = [], 0
    for k, count in enumerate(ending):
        if count:
            done += count
            out.append((done, start + (k + 1) * width))
    return out


def _details(event: dict[str, Any]) -> dict[str, Any] | None:
    import json
    try:
        found = json.loads(event.get("details") or "{}")
    except (TypeError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _planned(events: list[dict[str, Any]]) -> int | None:
    for e in reversed(events):
        n = (_details(e) or {}).get("planned_steps")
        if isinstance(n, int) and not isinstance(n, bool) and 0 < n < 10 ** 12:
            return n
    return None


def _stretched(stores: list[Segment]) -> dict[str, float]:
    """Stores whose engine stretched its slow cadence (slow reads cost too much CPU): the longest
    cadence it used (store meta ``counter_interval_max_s`` against its settings)."""
    out: dict[str, float] = {}
    for s in stores:
        configured = (s.meta.get("settings") or {}).get("counter_interval_s")
        longest = s.meta.get("counter_interval_max_s")
        if isinstance(configured, (int, float)) and longest is not None and longest > configured:
            out[s.path.name] = float(longest)
    return out


def _gpu_power(channels: list[Channel], idle_margin: float, idle_peak_share: float, min_dt: float,
               q: float) -> list[dict[str, Any]]:
    """Per GPU (identity, over its stores), from the time series already read for the report
    (the stored buckets themselves up to ~3,000 per channel, else the report's wider bins: never
    a sort of millions of rows): low and peak power (the ``q`` and ``1 - q`` quantiles,
    :func:`greentrack.common.units.quantile`; each channel's first and last bin left out, they straddle start and stop), the
    near-idle threshold ``min(low x (1 + idle_margin), peak x idle_peak_share)`` and the seconds
    and joules at or under it, with the GPU's measured seconds and joules."""
    found: dict[str, dict[str, Any]] = {}
    per_channel: list[tuple[str, list[tuple[float, float]]]] = []
    for c in channels:
        if c.kind != "gpu":
            continue
        bins = [(b - a, e) for a, b, e in c.bins[1:-1] if b - a >= min_dt and b > a]
        g = found.setdefault(c.identity, {"identity": c.identity, "device": c.device,
                                          "name": c.name, "host": c.host, "low_w": None,
                                          "peak_w": None, "buckets": 0})
        powers = sorted(e / dt for dt, e in bins)
        if powers:
            lo, hi = quantile_of(powers, q), quantile_of(powers, 1.0 - q)
            g["low_w"] = lo if g["low_w"] is None else min(g["low_w"], lo)
            g["peak_w"] = hi if g["peak_w"] is None else max(g["peak_w"], hi)
            g["buckets"] += len(powers)
        per_channel.append((c.identity, bins))
    for g in found.values():
        g["threshold_w"] = (None if g["low_w"] is None else
                            min(g["low_w"] * (1.0 + idle_margin), g["peak_w"] * idle_peak_share))
        g.update(seconds=0.0, energy_j=0.0, idle_s=0.0, idle_j=0.0)
    for key, bins in per_channel:
        g = found[key]
        for dt, e in bins:
            g["seconds"] += dt
            g["energy_j"] += e
            if g["threshold_w"] is not None and e / dt <= g["threshold_w"]:
                g["idle_s"] += dt
                g["idle_j"] += e
    return list(found.values())


def _machines(segments: list[Segment]) -> dict[str, dict[str, Any]]:
    """Each host's machine record, once (several ranks or segments ran on it); hosts whose stores
    predate the record, or hold a damaged one, map to an empty dict."""
    out: dict[str, dict[str, Any]] = {}
    for seg in segments:
        m = seg.meta.get("machine")
        m = m if isinstance(m, dict) else {}
        good = {k: m[k] for k in ("cpu_count", "ram_total_gb") if is_number(m.get(k))
                and float(m[k]) > 0}
        if not out.get(seg.host):
            out[seg.host] = good
    return out
