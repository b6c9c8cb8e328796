"""Units and the checks every figure shares: one place for each, so no two modules disagree.

Energy is stored in joules; humans get kWh through :data:`J_PER_KWH`, and a figure in the unit
that suits its size (mWh, Wh, kWh, MWh; mg, g, kg, t of CO2e) through :func:`energy_text` and
:func:`mass_text`, with its band through :func:`with_band`; numbers are written by :func:`sig`.
Seconds become hours only through :func:`hours`. Wall times are shown as
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


#: (unit, joules in one) and (unit, grams in one), largest first: the units figures are scaled to
ENERGY_UNITS = (("MWh", 3.6e9), ("kWh", J_PER_KWH), ("Wh", J_PER_WH), ("mWh", 3.6))
MASS_UNITS = (("t", 1e6), ("kg", 1e3), ("g", 1.0), ("mg", 1e-3))


def sig(x: float, digits: int = 3, keep_zeros: bool = False) -> str:
    """``x`` to ``digits`` significant figures, as text (``0.0012``, ``1.23e+04`` for big).
    Trailing zeros are dropped (``6e-08``) unless ``keep_zeros``: then the text shows every
    figure it was asked for (``6.00e-08``), as a form asking for two significant figures needs."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    alt = "#" if keep_zeros else ""
    text = f"{x:{alt}.{digits}g}" if abs(x) < 1e6 else f"{x:.{digits - 1}e}"
    return text.rstrip(".")


def scale(value: float, units: tuple[tuple[str, float], ...]) -> tuple[float, str]:
    """``value`` (in the base unit: J, g) in the largest of ``units`` in which it is at least 1,
    else the smallest (zero and non-finite values: the second smallest, Wh or g):
    ``(scaled value, unit)``; ``468 J`` is ``(130, "mWh")``."""
    a = abs(value)
    if a == 0 or not math.isfinite(a):
        return value / units[-2][1], units[-2][0]
    for unit, per in units:
        if a >= per:
            return value / per, unit
    return value / units[-1][1], units[-1][0]


def unit_for(reference: float, units: tuple[tuple[str, float], ...]) -> tuple[str, float]:
    """The unit :func:`scale` picks for ``reference`` (in the base unit) and how many base units
    it holds: ``(unit, per)``. A chart axis or a table row whose figures share one unit takes
    it from their largest value: ``unit_for(216.0, ENERGY_UNITS)`` is ``("mWh", 3.6)``."""
    _, unit = scale(reference, units)
    return unit, dict(units)[unit]


def energy_text(joules: float | None, digits: int = 3) -> str:
    """An energy in the unit that suits it: ``0.468 Wh`` as ``468 mWh``; ``n/a`` for None."""
    if joules is None:
        return "n/a"
    v, unit = scale(float(joules), ENERGY_UNITS)
    return f"{sig(v, digits)} {unit}"


def mass_text(grams: float | None, digits: int = 3, suffix: str = "CO2e") -> str:
    """A mass (of CO2e) in the unit that suits it: ``2.19e-05 kg`` as ``21.9 mgCO2e``."""
    if grams is None:
        return "n/a"
    v, unit = scale(float(grams), MASS_UNITS)
    return f"{sig(v, digits)} {unit}{suffix}"


def with_band(value: float | None, pct: float | None, units: tuple[tuple[str, float], ...],
              suffix: str = "", digits: int = 3) -> str:
    """``value`` and its band of +-``pct`` percent in one unit: ``21.9 ± 11 mgCO2e``; the value
    alone when the band is unknown."""
    if value is None:
        return "n/a"
    v, unit = scale(float(value), units)
    if pct is None or not math.isfinite(pct):
        return f"{sig(v, digits)} {unit}{suffix}"
    return f"{sig(v, digits)} ± {sig(abs(v) * pct / 100.0, 2)} {unit}{suffix}"


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
