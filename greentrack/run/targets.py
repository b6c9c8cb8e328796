"""Quality against energy: metric points and the energy to reach a target (see
:mod:`greentrack.run`)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from greentrack.common.errors import ConfigError
from greentrack.common.units import hours
from greentrack.run.model import Run
from greentrack.run.segment import Segment
from greentrack.store import VALID_STEP


TARGET = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_./-]{0,63})\s*(<=|>=|<|>)\s*([-+0-9.eE]+)\s*")
TARGET_HELP = ("must be METRIC<=X, METRIC>=X, METRIC<X or METRIC>X with a number X, e.g. "
               "val_loss<=2.5")


def parse_target(text: str) -> tuple[str, str, float]:
    """``"val_loss<=2.5"`` -> ``("val_loss", "<=", 2.5)``. A number a float cannot hold is
    refused, never changed: ``1e-400`` would be 0 (and shown as ``loss<=0``), ``1e400``
    infinite.

    Raises:
        ConfigError: one line naming ``--target``, the text and what is allowed.
    """
    m = TARGET.fullmatch(text or "")
    if m is None:
        raise ConfigError("--target", text, TARGET_HELP)
    number = m.group(3)
    try:
        value = float(number)
    except ValueError:
        raise ConfigError("--target", text, TARGET_HELP) from None
    mantissa = number.lower().split("e")[0]
    if not math.isfinite(value) or (value == 0.0 and any(c in "123456789" for c in mantissa)):
        raise ConfigError("--target", text, f"{number} is outside a float's range (0, or about "
                          "1e-308 to 1e308 in size): it would be compared as "
                          f"{value:g}; give X within that range")
    return m.group(1), m.group(2), value


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


def optimizer_steps_until(run: Run, t_unix: float) -> float:
    """Optimizer steps ended by ``t_unix``, run-wide: as :meth:`Run.optimizer_steps` counts them
    (the ``train`` steps of the rank with the most, over all its segments)."""
    per_rank: dict[tuple[str, int], float] = {}
    for seg in run.segments:
        if "train" not in seg.phases:
            continue
        for r in seg.reader.rows(f"SELECT SUM({seg.reader.step_n}) AS n FROM steps WHERE "
                                 f"{VALID_STEP} AND phase = 'train' AND t1 <= ?",
                                 (t_unix - seg.start_unix,)):
            key = (seg.host, seg.rank)
            per_rank[key] = per_rank.get(key, 0.0) + float(r["n"] or 0.0)
    return max(per_rank.values(), default=0.0)


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
        # the step position run-wide: optimizer steps (one rank's train steps, every segment)
        # ended by each of the two recordings, never the step a segment counted from its own 0
        at_a, at_p = optimizer_steps_until(run, a.t_unix), optimizer_steps_until(run, p.t_unix)
        step = at_a + f * (at_p - at_a) if p.step is not None or at_p else None
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
                        gpu_hours=hours(gpu_s), t_unix=t)
    return ToTarget(name, False, best)
