"""The start time that gives a power profile the fewest grams in an intensity series.

One computation for ``greentrack advise``'s ``start-time`` finding (the run's own measured profile
moved to other starts) and for ``greentrack run --start-when-greener`` (a flat profile of the
expected duration, before the run). Both integrate with :func:`greentrack.carbon.series.integrate`,
the function every report uses, so a start chosen here is charged the same grams a report would
charge it.

A profile is a list of ``(offset_a_s, offset_b_s, energy_j)`` relative to the start. Grams are of
IT energy (the caller applies the PUE, which does not change which start is best).

Example:
    >>> from greentrack.carbon.series import IntensitySeries
    >>> s = IntensitySeries([0.0, 10.0, 20.0], [10.0, 20.0, 30.0], [500.0, 100.0, 400.0], "demo")
    >>> choice = best_start(s, flat_profile(10.0), window_starts(s, 0.0, 20.0, 10.0), 0.0)
    >>> choice.start_unix, round(choice.saving_share, 2)
    (10.0, 0.8)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from greentrack.carbon.series import IntensitySeries, integrate
from greentrack.common.units import J_PER_KWH

Profile = list[tuple[float, float, float]]


@dataclass(frozen=True)
class StartChoice:
    """The best of the starts tried, against the first one tried (as run, or now).

    Attributes:
        start_unix: the best start.
        grams: the profile's grams (IT energy) from the best start.
        first_unix: the first start tried (the reference: when the run started, or now).
        first_grams: the profile's grams from the first start.
        tried: how many starts were tried.
    """

    start_unix: float
    grams: float
    first_unix: float
    first_grams: float
    tried: int

    @property
    def saving_g(self) -> float:
        """Grams saved by the best start against the first (>= 0)."""
        return max(0.0, self.first_grams - self.grams)

    @property
    def saving_share(self) -> float:
        """The saving as a share of the first start's grams (0 when those are 0)."""
        return self.saving_g / self.first_grams if self.first_grams > 0 else 0.0


def flat_profile(duration_s: float, energy_j: float = J_PER_KWH) -> Profile:
    """A constant power for ``duration_s``: with the default 1 kWh, grams read as the mean
    gCO2e/kWh over the window (what a run of unknown energy is charged per kWh)."""
    return [(0.0, duration_s, energy_j)]


def emissions_at(series: IntensitySeries, profile: Profile, start_unix: float,
                 fallback_g_per_kwh: float) -> float:
    """Grams of ``profile`` started at ``start_unix`` (parts outside the series at the fallback)."""
    return integrate(series, [(start_unix + a, start_unix + b, e) for a, b, e in profile],
                     fallback_g_per_kwh).emissions_g


def best_start(series: IntensitySeries, profile: Profile, candidates: list[float],
               fallback_g_per_kwh: float) -> StartChoice | None:
    """The candidate start with the fewest grams; on a tie, the earliest (no wait for nothing).
    ``candidates[0]`` is the reference (``first_*``). None without candidates."""
    if not candidates:
        return None
    first_g = emissions_at(series, profile, candidates[0], fallback_g_per_kwh)
    best_t, best_g = candidates[0], first_g
    for t in candidates[1:]:
        g = emissions_at(series, profile, t, fallback_g_per_kwh)
        # a later start must be better by more than float noise to be worth the wait
        if g < best_g - 1e-9 * max(abs(best_g), 1.0) or (g <= best_g and t < best_t):
            best_t, best_g = t, g
    return StartChoice(best_t, best_g, candidates[0], first_g, len(candidates))


def window_starts(series: IntensitySeries, now_unix: float, max_delay_s: float,
                  duration_s: float) -> list[float]:
    """Every start in ``[now, now + max_delay]`` where a flat window of ``duration_s`` may be
    best, ``now`` first: a flat window's grams are piecewise linear in its start, with corners
    where its start or end meets an interval edge, so the minimum is at one of those corners or
    at the ends of the range. Only starts whose whole window lies inside the series are kept
    (beyond it nothing is known)."""
    lo_s, hi_s = series.span
    lo, hi = max(now_unix, lo_s), min(now_unix + max_delay_s, hi_s - duration_s)
    if hi < lo or not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    edges = set(series.starts) | set(series.ends)
    found = {lo, hi} | {t for e in edges for t in (e, e - duration_s) if lo <= t <= hi}
    return sorted(found)


__all__ = ["StartChoice", "best_start", "emissions_at", "flat_profile", "window_starts"]
