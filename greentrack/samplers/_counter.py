"""Energy from a hardware counter, shaped by power samples: what the NVML and AMD SMI samplers
share.

A counter (NVML's total energy, AMD SMI's energy count) is exact over an interval between two reads
but says nothing about when inside it the energy went; power samples polled between the reads do.
:func:`shape_points` spreads an interval's energy over them, and :class:`CounterShaping` keeps a
device's cumulative energy and its power samples since the last read.
"""

from __future__ import annotations

from greentrack.common.errors import SamplerError
from greentrack.samplers.base import Point


def shape_points(t0: float, t1: float, samples: list[tuple[float, float]],
                 total_j: float | None) -> list[Point]:
    """Distribute energy over (t0, t1] following the power samples, as a step function.

    GPU power moves in steps at kernel boundaries, so between two samples the power is taken to
    switch from one value to the next at their midpoint (power before the first sample and after
    the last is held). Returns cumulative points relative to t0 (joules since t0) at each switch,
    each sample time and t1. With ``total_j`` the points are scaled so the last equals it (counter
    mode); without, they are the integral itself (power-polling mode).
    """
    inside = [(t, w) for t, w in samples if t0 < t < t1]
    before = [w for t, w in samples if t <= t0]
    w_start = before[-1] if before else (inside[0][1] if inside else (samples[-1][1] if samples else 0.0))
    w_end = inside[-1][1] if inside else w_start
    knots = [(t0, w_start), *inside, (t1, w_end)]
    pts: list[Point] = []
    acc = 0.0
    for (ta, wa), (tb, wb) in zip(knots, knots[1:]):
        mid = (ta + tb) / 2.0
        if wa != wb and ta < mid < tb:
            acc += wa * (mid - ta)
            pts.append((mid, acc))
            acc += wb * (tb - mid)
        else:
            acc += wa * (tb - ta)
        pts.append((tb, acc))
    if total_j is None:
        return pts
    if acc <= 0:  # no power information: spread evenly in time
        span = max(t1 - t0, 1e-9)
        return [(t, total_j * (t - t0) / span) for t, _ in pts]
    scale = total_j / acc
    return [(t, e * scale) for t, e in pts]


class CounterShaping:
    """A device's cumulative energy (``_energy_j``) and its power samples since the last counter
    read (``_shape``, ``(t, W)``), as a sampler class keeps them."""

    _energy_j: float
    _shape: list[tuple[float, float]]

    def _spread(self, t0: float, t1: float, total_j: float | None) -> list[Point]:
        """The interval ``(t0, t1]`` as cumulative points that follow the power samples: scaled to
        the counter's ``total_j``, or (None) the power integral itself, where the counter cannot
        be used (it went backwards; no counter). Only the last sample is kept for the next
        interval."""
        pts = shape_points(t0, t1, self._shape, total_j)
        self._shape = self._shape[-1:]
        start = self._energy_j
        self._energy_j += total_j if total_j is not None else (pts[-1][1] if pts else 0.0)
        return [(t, start + e) for t, e in pts]


class CounterReset(SamplerError):
    """The counter went backwards (a driver reload, a GPU reset, no plausible wrap); ``points``
    still carry an estimate of the interval from the power samples."""

    def __init__(self, message: str, points: list[Point]) -> None:
        super().__init__(message)
        self.points = points


__all__ = ["CounterReset", "CounterShaping", "shape_points"]
