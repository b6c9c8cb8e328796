"""The report's forecast section as text: the table whose "inside" column a reader can check.

Correct by construction: every figure of a row is printed in one unit, with as many digits as
its interval needs to show a width (up to :data:`MAX_DIGITS`); an interval that cannot hold a
measured value (zero width, inverted, not finite, or narrower than what can be printed) is not
printed, the row says why instead; and "inside" compares the printed actual with the printed
bounds, so the yes or NO always matches the numbers beside it (digits are added where rounding
would put the actual on the other side of a bound than it is).
"""

from __future__ import annotations

import calendar
import math
import time
from collections.abc import Callable
from typing import Any

from greentrack.common.units import ENERGY_UNITS, MASS_UNITS, sig, unit_for, utc

#: digits tried for an interval's bounds until they print apart
MIN_DIGITS, MAX_DIGITS = 3, 6
DURATION_UNITS = (("h", 3600.0), ("min", 60.0), ("s", 1.0))
ZERO_WIDTH = ("not shown: zero width (the observations before the forecast were too regular to "
              "show a spread; an interval that narrow cannot hold a measured value)")
TOO_NARROW = "not shown: narrower than its printed precision"
UNKNOWN = "not known (fewer than 3 observations)"

#: a figure's printing: ``(text of a value at some digits, the number a text reads as)``
Printer = tuple[Callable[[float, int], str], Callable[[str], float]]


def _number(text: str) -> float:
    return float(text.split(" ")[0].replace(",", ""))


def _scaled(reference: float, units: tuple[tuple[str, float], ...], suffix: str = "") -> Printer:
    unit, per = unit_for(reference, units)
    return (lambda v, d: f"{sig(v / per, d)} {unit}{suffix}"), _number


def _plain(unit: str) -> Printer:
    return (lambda v, d: f"{sig(v, d)}{' ' + unit if unit else ''}"), _number


def _when() -> Printer:
    return (lambda v, d: utc(v)), (lambda t: float(calendar.timegm(
        time.strptime(t, "%Y-%m-%dT%H:%M:%SZ"))))


def printers(est: dict[str, Any], currency: str | None) -> list[tuple[str, str, Printer]]:
    """``(key, row name, printer)`` of each figure the forecast has (no GPU: no GPU-hours)."""
    rows: list[tuple[str, str, Printer]] = []
    for key, name in (("energy_j", "IT energy"), ("duration_s", "duration"), ("end_unix", "end"),
                      ("gpu_hours", "GPU-hours"), ("emissions_g", "emissions (with PUE)"),
                      ("cost", "cost (electricity + GPU-hours)")):
        v = est.get(key)
        if v is None or (key == "gpu_hours" and not v):
            continue
        printer = (_scaled(v, ENERGY_UNITS) if key == "energy_j" else
                   _scaled(v, DURATION_UNITS) if key == "duration_s" else
                   _when() if key == "end_unix" else
                   _scaled(v, MASS_UNITS, "CO2e") if key == "emissions_g" else
                   _plain(currency or "(no currency given)") if key == "cost" else _plain(""))
        rows.append((key, name, printer))
    return rows


def interval_row(est: float, lo: float | None, hi: float | None, actual: float | None,
                 printer: Printer, check: bool) -> list[str]:
    """``[forecast, interval, (actual, inside)]`` as printed (see the module docstring). The
    digits grow (to :data:`MAX_DIGITS`) until the bounds print apart and, for a check, the
    printed actual sits on the same side of them as the actual does."""
    show, read = printer
    digits, interval = MIN_DIGITS, UNKNOWN
    lo_t = hi_t = None
    if lo is not None and hi is not None:
        if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
            interval = ZERO_WIDTH
        else:
            truth = None if actual is None else lo <= actual <= hi
            for digits in range(MIN_DIGITS, MAX_DIGITS + 1):
                lo_t, hi_t = show(lo, digits), show(hi, digits)
                if read(lo_t) >= read(hi_t):
                    continue
                printed = None if actual is None else \
                    read(lo_t) <= read(show(actual, digits)) <= read(hi_t)
                if not check or printed == truth or digits == MAX_DIGITS:
                    interval = f"{lo_t} to {hi_t}"
                    break
            else:
                lo_t = hi_t = None
                digits, interval = MIN_DIGITS, TOO_NARROW
    row = [show(est, digits), interval]
    if check:
        act_t = "n/a" if actual is None else show(actual, digits)
        inside = "n/a" if lo_t is None or hi_t is None or actual is None else \
            "yes" if read(lo_t) <= read(act_t) <= read(hi_t) else "NO"
        row += [act_t, inside]
    return row


def forecast_rows(f: dict[str, Any]) -> list[list[str]]:
    """The forecast table's rows: figure, forecast, interval and, for a check, actual, inside."""
    est, act = f["estimate"], f.get("actual") or {}
    return [[name, *interval_row(est[key], est.get(key + "_low"), est.get(key + "_high"),
                                 act.get(key), printer, f["kind"] == "check")]
            for key, name, printer in printers(est, f.get("currency"))]
