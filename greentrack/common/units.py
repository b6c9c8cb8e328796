"""Units and the checks every figure shares: one place for each, so no two modules disagree.

Energy is stored in joules; humans get kWh through :data:`J_PER_KWH`; seconds become hours only
through :func:`hours`. Wall times are shown as
UTC ISO 8601 by :func:`utc`. A value counts as a number only when :func:`is_number` says so.
"""

from __future__ import annotations

import math
import time
from typing import Any

from greentrack.common.errors import ConfigError

#: Joules in one kilowatt-hour and in one watt-hour (exact).
J_PER_KWH = 3.6e6
J_PER_WH = 3.6e3
#: Seconds in one hour.
S_PER_HOUR = 3600.0


def hours(seconds: float) -> float:
    """``seconds`` in hours (GPU-seconds to GPU-hours, a duration for display)."""
    return seconds / S_PER_HOUR


def days(seconds: float) -> float:
    """``seconds`` in days (wall-clock and hardware days of the EU AI Act's documentation)."""
    return seconds / (24.0 * S_PER_HOUR)


def quantile(sorted_vals: list[float], q: float) -> float:
    """The ``q`` quantile of ascending ``sorted_vals`` by linear interpolation between the two
    closest ranks (NumPy's default, ``statistics.quantiles(method="inclusive")``): the one
    definition every figure uses. NaN for no values."""
    if not sorted_vals:
        return float("nan")
    pos = q * (len(sorted_vals) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def utc(t: float) -> str:
    """``t`` (Unix seconds) as ``YYYY-MM-DDTHH:MM:SSZ``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def is_number(value: Any, lo: float = -math.inf, hi: float = math.inf) -> bool:
    """A real, finite number (never a bool) with ``lo <= value <= hi``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) and lo <= value <= hi


def check_number(name: str, value: Any, lo: float, hi: float = math.inf,
                 allowed: str | None = None) -> float:
    """``value`` as a float, or a one-line :class:`~greentrack.common.errors.ConfigError` naming ``name``,
    the value and the range (or ``allowed``)."""
    if not is_number(value, lo, hi):
        raise ConfigError(name, value, allowed or (f"must be a number from {lo:g} to {hi:g}"
                                                   if hi != math.inf else f"must be a number >= {lo:g}"))
    return float(value)


_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
DURATION_HELP = "must be a duration {sign} like 90s, 15m, 6h, 1h30m or 1.5d (s, m, h, d; a bare number: s)"


def parse_duration(setting: str, text: str, allow_zero: bool = False) -> float:
    """``text`` (``90``, ``90s``, ``15m``, ``6h``, ``1h30m``, ``1.5d``) in seconds, or a one-line
    :class:`~greentrack.common.errors.ConfigError` naming ``setting``. Negative, non-finite and (unless
    ``allow_zero``) zero durations are refused."""
    import re

    raw = str(text).strip().lower()
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhd]?)", raw)
    allowed = DURATION_HELP.format(sign=">= 0" if allow_zero else "> 0")
    if not raw or re.fullmatch(r"(?:\d+(?:\.\d+)?[smhd])+|\d+(?:\.\d+)?", raw) is None:
        raise ConfigError(setting, text, allowed)
    seconds = sum(float(n) * _DURATION_UNITS[u or "s"] for n, u in parts)
    if not math.isfinite(seconds) or (seconds == 0 and not allow_zero):
        raise ConfigError(setting, text, allowed)
    return seconds
