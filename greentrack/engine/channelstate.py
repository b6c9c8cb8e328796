"""What the engine keeps of each channel: its finalized energy points and its bookkeeping.

A :class:`Timeline` holds a channel's cumulative ``(t, joules)`` points; energy between two times
is an interpolation between final points. :class:`ChannelState` adds the channel's status (gaps,
loss), its slow-read phase and cost, and the intervals handed over to a joined tracker, whose
energy it leaves out.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable
from typing import Any, NamedTuple

from greentrack.samplers.base import Channel, Point

#: Hard cap of points kept per channel (about 80 minutes at the 50 ms default cadence).
MAX_POINTS = 100_000


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

    @property
    def key(self) -> str:
        return channel_key(self.channel)

    def take(self, points: list[Point]) -> None:
        """Add finalized points, leaving out the energy of handed-over intervals."""
        if not self._started:
            points = self._from_origin(points)
        if not points:
            return
        if self.handed_over:
            adjusted = []
            for t, e in points:
                if self.raw_last is not None and any(a <= t < b for a, b in self.handed_over):
                    self.offset += e - self.raw_last
                self.raw_last = e
                adjusted.append((t, e - self.offset))
            if all(t >= b for _, b in self.handed_over):
                self.handed_over.clear()  # every interval ended and passed: the cheap path again
            self.timeline.extend(adjusted)
            return
        self.raw_last = points[-1][1]
        self.timeline.extend(points if not self.offset else [(t, e - self.offset) for t, e in points])

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
            self.raw_last = e0
            return [(self.origin, e0), *points[i:]]
        return []


def channel_key(channel: Channel) -> str:
    """A device's identity across the processes of one machine: the GPU's UUID, or the host's CPU
    or DRAM (whichever method reads it)."""
    info = channel.info
    if info.host_scope:
        return f"host:{info.kind}"
    return f"{info.kind}:{info.details.get('uuid') or info.device}"
