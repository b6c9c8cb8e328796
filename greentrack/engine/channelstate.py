"""What the engine keeps of each channel: its finalized energy points and its bookkeeping.

A :class:`Timeline` holds a channel's cumulative ``(t, joules)`` points; energy between two times
is an interpolation between final points. :class:`ChannelState` adds the channel's status (gaps,
loss), its slow-read phase and cost, and the intervals handed over to a joined tracker, whose
energy it leaves out.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable
from typing import Any, NamedTuple

from greentrack.samplers.base import Channel, Point

#: Hard cap of points kept per channel (about 80 minutes at the 50 ms default cadence).
MAX_POINTS = 100_000
#: Poll intervals left out while a hand-over is open, kept at either end of it (the first ones
#: and the latest ones: 40-100 s of polls each at the default cadences), to give back the energy
#: that falls outside the span the other tracker turns out to have measured (see
#: :meth:`ChannelState.end_hand_over`).
HAND_OVER_PIECES = 2048
INF = float("inf")


class ChannelSnapshot(NamedTuple):
    """One channel as live outputs (the exporter, ``Tracker.totals``) see it."""

    id: int
    kind: str
    device: str
    measured: bool
    method: str
    energy_j: float
    power_w: float | None
    status: str
    gap_s: float
    #: the time of the reading ``energy_j`` is at (None before any): one pair, read together
    until: float | None = None


class Timeline:
    """Finalized cumulative-energy points of one channel; energy at any time by interpolation."""

    def __init__(self) -> None:
        self.t: deque[float] = deque(maxlen=MAX_POINTS)
        self.e: deque[float] = deque(maxlen=MAX_POINTS)
        #: the latest point, replaced in one assignment: other threads read ``(until, last)`` as
        #: a pair (a scrape's energy and the emissions charged on it are of one reading)
        self.point: tuple[float, float] | None = None

    def extend(self, points: list[Point]) -> None:
        for t, e in points:
            if self.t and t <= self.t[-1]:
                continue  # points are strictly increasing in time
            self.t.append(t)
            self.e.append(e)
            self.point = (t, e)

    @property
    def until(self) -> float | None:
        point = self.point
        return None if point is None else point[0]

    @property
    def last(self) -> float:
        point = self.point
        return 0.0 if point is None else point[1]

    def at(self, t: float) -> float:
        """Energy at ``t``: clamped to the first/last point outside the timeline."""
        return self.energies_at((t,))[0]

    def energies_at(self, times: Iterable[float]) -> list[float]:
        """Energy at each of ``times`` (:meth:`at`'s one interpolation, over many in one call)."""
        t, e = self.t, self.e
        if not t:
            return [0.0 for _ in times]
        t_first, t_last, e_first, e_last = t[0], t[-1], e[0], e[-1]
        bisect_left = bisect.bisect_left
        out = []
        lo = 1  # times come mostly in order (step boundaries): search on from the last one found
        for x in times:
            if x <= t_first:
                out.append(e_first)
            elif x >= t_last:
                out.append(e_last)
            else:
                if t[lo - 1] >= x:
                    lo = 1
                lo = i = bisect_left(t, x, lo)  # the first point at or after x: t[i-1] < x
                ta, ea = t[i - 1], e[i - 1]
                out.append(ea + (e[i] - ea) * (x - ta) / (t[i] - ta))
        return out

    def between(self, t0: float, t1: float) -> float:
        """Energy from ``t0`` to ``t1``. The points are cumulative and never decrease, so a
        difference below zero is floating-point rounding of the interpolation (-7e-15 J was seen
        from a process joined to `greentrack run`): within 1e-9 of the values, it is 0. A larger
        negative is returned as is, for the store's checks to flag."""
        a, b = self.at(t0), self.at(t1)
        d = b - a
        return 0.0 if -1e-9 * max(1.0, abs(a), abs(b)) <= d < 0.0 else d

    def steps_between(self, spans: list[Any]) -> list[float]:
        """``max(0, between(s.t0, s.t1))`` for each span, in one call: the sampler thread
        resolves every step of every channel here (at 500 steps a second, calls per boundary
        were most of its CPU, issue 25)."""
        ends = self.energies_at([x for span in spans for x in (span.t0, span.t1)])
        return [d if (d := b - a) > 0.0 else 0.0 for a, b in zip(ends[::2], ends[1::2])]

    def prune(self, before: float) -> None:
        while len(self.t) > 2 and self.t[1] < before:
            self.t.popleft()
            self.e.popleft()


class ChannelState:
    """Bookkeeping of one channel inside the engine."""

    def __init__(self, cid: int, channel: Channel, origin: float) -> None:
        self.id = cid
        self.channel = channel
        self.origin = origin
        #: The last raw point at or before ``origin``, until a point after it arrives
        #: (:meth:`_from_origin`); None once the timeline has started.
        self._pre: Point | None = None
        self._started = False
        self.kind = channel.info.kind
        self.timeline = Timeline()
        self.status = "ok"  # ok | failing | lost
        self.fail_since: float | None = None
        self.gap_s = 0.0
        self.next_bucket = origin
        self.next_slow = origin  # this channel's next slow read (staggered between channels)
        self.slow_cpu_s: float | None = None  # moving mean of the CPU time of one slow read
        self.slow_reads = 0  # slow reads measured
        self.pending_cpu_s = 0.0  # CPU of a slow read's attempts so far, while it is left over
        self.slow_wall_s = 0.0  # moving mean of the wall time of one slow poll (when reads start)
        #: Handed over to a joined tracker (another process measures this device): intervals
        #: ``[a, b)`` of monotonic time whose energy this engine leaves out (b = inf while held).
        self.handed_over: list[list[float]] = []
        self.offset = 0.0  # energy left out so far
        self.raw_last: float | None = None
        self.raw_last_t = -INF
        #: ``(t0, t1, joules)`` of the poll intervals left out while a hand-over is open: the
        #: first HAND_OVER_PIECES, then the latest (the middle of a long hand-over is dropped)
        self._head: list[tuple[float, float, float]] = []
        self._tail: deque[tuple[float, float, float]] = deque(maxlen=HAND_OVER_PIECES)
        #: the time of this channel's first point in the run (where its energy starts)
        self.measured_from: float | None = None

    @property
    def key(self) -> str:
        return channel_key(self.channel)

    def take(self, points: list[Point]) -> None:
        """Add finalized points, leaving out the energy of handed-over intervals."""
        if not self._started:
            points = self._from_origin(points)
        if not points:
            return
        if self.measured_from is None:
            self.measured_from = points[0][0]
        if self.handed_over:
            adjusted = []
            for t, e in points:
                if self.raw_last is not None:
                    self.offset += self._left_out(self.raw_last_t, t, e - self.raw_last)
                self.raw_last, self.raw_last_t = e, t
                adjusted.append((t, e - self.offset))
            if all(self.raw_last_t >= b for _, b in self.handed_over):
                self.handed_over.clear()  # every interval ended and passed: the cheap path again
            self.timeline.extend(adjusted)
            return
        self.raw_last_t, self.raw_last = points[-1]
        self.timeline.extend(points if not self.offset else [(t, e - self.offset) for t, e in points])

    def _left_out(self, t0: float, t1: float, joules: float) -> float:
        """The part of the energy ``joules`` drawn over ``[t0, t1]`` that falls in handed-over
        intervals (linear over the interval: a hand-over between two polls splits it)."""
        if t1 <= t0:  # no width: all or nothing
            out = joules if any(a <= t1 < b for a, b in self.handed_over) else 0.0
            t0 = t1
        else:
            out = sum(joules * (min(b, t1) - max(a, t0)) / (t1 - t0)
                      for a, b in self.handed_over if min(b, t1) > max(a, t0))
        if out and self.handed_over[-1][1] == INF:  # open: the end may give some of it back
            (self._head if len(self._head) < HAND_OVER_PIECES else self._tail).append(
                (t0, t1, joules))
        return out

    def start_hand_over(self, t: float) -> bool:
        """Leave out this channel's energy from ``t`` until :meth:`end_hand_over`; False if a
        hand-over is open already."""
        if any(b == INF for _, b in self.handed_over):
            return False
        self.handed_over.append([t, INF])
        self._head.clear()
        self._tail.clear()
        return True

    def end_hand_over(self, t: float, measured: tuple[float, float] | None = None) -> None:
        """Count this channel again from ``t``. ``measured``: the span the other tracker measured
        (its first and last points): the energy left out before its start or after its end is
        given back (it appears at this channel's next point), so a hand-over loses nothing to
        either side's polling cadence or to a late notice of its end."""
        for span in self.handed_over:
            if span[1] != INF:
                continue
            a0 = span[0]
            # never before the hand-over began (a lock released before this tracker waited on
            # it), and an unknown end (no time written: the owner was killed) is now, the notice
            t = max(t, a0) if math.isfinite(t) else max(a0, self.raw_last_t)
            a, b = a0, t
            if measured is not None and all(math.isfinite(x) for x in measured):
                a = min(max(measured[0], a0), t)  # within what was handed over
                b = min(max(measured[1], a), t)
            span[0], span[1] = a, b
            back = 0.0
            for t0, t1, joules in (*self._head, *self._tail):
                if t1 <= t0:  # a jump at one instant: all or nothing
                    back += joules if a0 <= t1 < a or t1 >= b else 0.0
                    continue
                for lo, hi in ((a0, a), (b, INF)):
                    lo, hi = max(lo, t0), min(hi, t1)
                    if hi > lo:
                        back += joules * (hi - lo) / (t1 - t0)
            self.offset -= back
            self._head.clear()
            self._tail.clear()

    def _from_origin(self, points: list[Point]) -> list[Point]:
        """The points from the run's start on. A counter's first value is dated at the device's
        last refresh, which can precede the start (NVML refreshes every 100 ms): the energy
        between that refresh and the start was drawn before the run and is not the run's. The
        energy at the start is interpolated between the points around it and left out (as
        ``offset``), so the timeline starts at (origin, 0)."""
        for i, (t, e) in enumerate(points):
            if t <= self.origin:
                self._pre = (t, e)
                continue
            self._started = True
            if self._pre is None:
                return points[i:]
            (ta, ea), self._pre = self._pre, None
            e0 = ea + (e - ea) * (self.origin - ta) / (t - ta)
            self.offset += e0
            self.raw_last, self.raw_last_t = e0, self.origin
            return [(self.origin, e0), *points[i:]]
        return []


def channel_key(channel: Channel) -> str:
    """A device's identity across the processes of one machine: the GPU's UUID, or the host's CPU
    or DRAM (whichever method reads it)."""
    info = channel.info
    if info.host_scope:
        return f"host:{info.kind}"
    return f"{info.kind}:{info.details.get('uuid') or info.device}"
