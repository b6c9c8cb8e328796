"""What ``greentrack inventory`` is asked for: the period, the budgets, codecarbon's rows (and
those rows' own section of the inventory).

Each is checked before any run is read; a bad one is one line naming the setting, the value and
the forms allowed (:class:`greentrack.common.errors.ConfigError`).
"""

from __future__ import annotations

import calendar
import csv
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from greentrack.common.errors import ConfigError
from greentrack.common.files import not_regular
from greentrack.common.units import utc

PERIOD_FORMS = ("a year (2026), a quarter (2026-Q3), a month (2026-07), a day (2026-07-14), or "
                "FROM..TO of those (2026-01..2026-06: from the start of FROM to the end of TO)")


@dataclass(frozen=True)
class Period:
    """``[start_unix, end_unix)`` in UTC, as given (``text``)."""

    text: str
    start_unix: float
    end_unix: float

    def months(self) -> list[tuple[str, float, float]]:
        """``(YYYY-MM, start, end)`` of each calendar month the period touches, cut to it."""
        out = []
        t = self.start_unix
        while t < self.end_unix:
            y, m = _ym(t)
            nxt = _unix(y + (m == 12), m % 12 + 1, 1)
            out.append((f"{y:04d}-{m:02d}", t, min(nxt, self.end_unix)))
            t = nxt
        return out

    def as_dict(self) -> dict[str, object]:
        return {"text": self.text, "start": utc(self.start_unix), "end": utc(self.end_unix),
                "start_unix": self.start_unix, "end_unix": self.end_unix}


def _ym(t: float) -> tuple[int, int]:
    d = datetime.fromtimestamp(t, timezone.utc)
    return d.year, d.month


def _unix(y: int, m: int, d: int) -> float:
    return float(calendar.timegm((y, m, d, 0, 0, 0)))


def _span(token: str, whole: str) -> tuple[float, float]:
    """``[start, end)`` of one year, quarter, month or day."""
    try:
        if m := re.fullmatch(r"(\d{4})", token):
            y = int(m[1])
            return _unix(y, 1, 1), _unix(y + 1, 1, 1)
        if m := re.fullmatch(r"(\d{4})-[Qq]([1-4])", token):
            y, q = int(m[1]), int(m[2])
            return _unix(y, 3 * q - 2, 1), _unix(y + (q == 4), 3 * q % 12 + 1, 1)
        if m := re.fullmatch(r"(\d{4})-(\d{2})", token):
            y, mo = int(m[1]), int(m[2])
            if 1 <= mo <= 12:
                return _unix(y, mo, 1), _unix(y + (mo == 12), mo % 12 + 1, 1)
        if m := re.fullmatch(r"(\d{4})-(\d{2})-(\d{2})", token):
            start = datetime(int(m[1]), int(m[2]), int(m[3]), tzinfo=timezone.utc).timestamp()
            return start, start + 86400.0
    except ValueError:  # 2026-02-30
        pass
    raise ConfigError("--period", whole, f"must be {PERIOD_FORMS}")


def parse_period(text: str) -> Period:
    """``--period``: see :data:`PERIOD_FORMS` (UTC)."""
    raw = text.strip()
    if ".." in raw:
        a, _, b = raw.partition("..")
        start, end = _span(a.strip(), text)[0], _span(b.strip(), text)[1]
        if end <= start:
            raise ConfigError("--period", text, f"ends before it starts: must be {PERIOD_FORMS}")
        return Period(raw, start, end)
    start, end = _span(raw, text)
    return Period(raw, start, end)


#: a budget's unit -> (measure, factor to the measure's unit: kWh of IT energy, g CO2e)
UNITS = {"wh": ("energy_kwh", 1e-3), "kwh": ("energy_kwh", 1.0), "mwh": ("energy_kwh", 1e3),
         "gwh": ("energy_kwh", 1e6), "g": ("emissions_g", 1.0), "kg": ("emissions_g", 1e3),
         "t": ("emissions_g", 1e6), "gco2e": ("emissions_g", 1.0),
         "kgco2e": ("emissions_g", 1e3), "tco2e": ("emissions_g", 1e6)}
BUDGET_FORMS = ("must be KEY=VALUE:AMOUNT, a label and what it may use in the period, AMOUNT in "
                "Wh, kWh, MWh or GWh (IT energy), g, kg or t (CO2e, location-based), or a "
                "3-letter currency code (cost), e.g. project=foo:2MWh, team=nlp:5t, "
                "project=foo:1200EUR")


@dataclass(frozen=True)
class Budget:
    """A label's budget for the period: ``measure`` is ``energy_kwh`` (IT energy, as measured),
    ``emissions_g`` (location-based) or ``cost`` (in ``currency``); ``amount`` in its unit."""

    text: str
    key: str
    value: str
    amount: float
    measure: str
    currency: str | None = None

    @property
    def unit(self) -> str:
        return {"energy_kwh": "kWh", "emissions_g": "gCO2e"}.get(self.measure, self.currency or "")


def parse_budget(text: str) -> Budget:
    """``--budget KEY=VALUE:AMOUNT`` (see :data:`BUDGET_FORMS`)."""
    label, sep, amount = text.rpartition(":")
    key, eq, value = label.partition("=")
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z0-9]+)\s*", amount)
    if not sep or not eq or not key.strip() or not value.strip() or m is None:
        raise ConfigError("--budget", text, BUDGET_FORMS)
    number, unit = float(m[1]), m[2]
    if not math.isfinite(number) or number <= 0:
        raise ConfigError("--budget", text, "the amount must be a number > 0; " + BUDGET_FORMS)
    if unit.lower() in UNITS:
        measure, factor = UNITS[unit.lower()]
        return Budget(text, key.strip(), value.strip(), number * factor, measure)
    if re.fullmatch(r"[A-Z]{3}", unit):
        return Budget(text, key.strip(), value.strip(), number, "cost", unit)
    raise ConfigError("--budget", text, f"unknown unit {unit!r}; " + BUDGET_FORMS)


#: codecarbon's columns an inventory reads (``emissions.csv``, ``EmissionsData``)
CODECARBON_NEEDED = ("timestamp", "duration", "energy_consumed", "emissions")


@dataclass(frozen=True)
class CodecarbonRow:
    """One ``emissions.csv`` row, as codecarbon states it: energy in kWh (its PUE included),
    emissions in kg CO2e, over ``duration`` seconds ending at ``end_unix``."""

    file: str
    line: int
    end_unix: float
    duration_s: float
    energy_kwh: float
    emissions_kg: float
    project: str
    run_id: str
    country: str
    by_greentrack: bool


def _zoneless(text: str) -> bool:
    return datetime.fromisoformat(text.strip().replace("Z", "+00:00")).tzinfo is None


def _time(text: str) -> float:
    d = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return (d if d.tzinfo else d.replace(tzinfo=timezone.utc)).timestamp()


def read_codecarbon(path: str | Path) -> tuple[list[CodecarbonRow], list[str]]:
    """The rows of a codecarbon ``emissions.csv`` and notes on those left out (a row whose
    figures are not numbers). Times without a zone are read as UTC (codecarbon writes local
    time without one: a note says so).

    Raises:
        ConfigError: the file cannot be read or lacks codecarbon's columns.
    """
    p = Path(path)
    what = not_regular(p) if p.exists() else "missing"
    if what is not None:
        raise ConfigError("--emissions-csv", str(path), f"is {what}, not a codecarbon emissions.csv")
    rows: list[CodecarbonRow] = []
    notes: list[str] = []
    zoneless = False
    try:
        with p.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in CODECARBON_NEEDED if c not in (reader.fieldnames or [])]
            if missing:
                raise ConfigError("--emissions-csv", str(path), "is not a codecarbon emissions.csv "
                                  f"(no column {', '.join(missing)})")
            for i, r in enumerate(reader, start=2):
                try:
                    row = CodecarbonRow(
                        str(path), i, _time(r["timestamp"]), float(r["duration"]),
                        float(r["energy_consumed"]), float(r["emissions"]),
                        (r.get("project_name") or "").strip(), (r.get("run_id") or "").strip(),
                        (r.get("country_iso_code") or "").strip(),
                        (r.get("codecarbon_version") or "").startswith("greentrack-"))
                except (TypeError, ValueError, AttributeError):
                    notes.append(f"{path}:{i}: not a row of figures, left out")
                    continue
                if not all(math.isfinite(v) and v >= 0 for v in
                           (row.duration_s, row.energy_kwh, row.emissions_kg)):
                    notes.append(f"{path}:{i}: negative or non-finite figures, left out")
                    continue
                rows.append(row)
                zoneless = zoneless or _zoneless(r["timestamp"])
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ConfigError("--emissions-csv", str(path), f"cannot be read ({e})") from None
    if zoneless:
        notes.append(f"{path}: timestamps without a time zone, read as UTC (codecarbon writes "
                     "its machine's local time): rows near a month's edge may fall in the "
                     "neighbouring month")
    return rows, notes


def codecarbon_section(rows: list[CodecarbonRow], period: Period, ours: set[str]) -> dict[str, Any]:
    """codecarbon's rows, spread evenly over each row's own duration (the file holds no finer
    record), kept apart from the measured runs; greentrack's own rows of an inventoried run
    (``greentrack report --emissions-csv``) are left out: that run counts from its stores."""
    totals = {"energy_kwh": 0.0, "emissions_g": 0.0, "rows": 0}
    months: dict[str, dict[str, float]] = {}
    #: (file, project, run id, country, month): the long format's rows
    runs: dict[tuple[str, str, str, str, str], dict[str, float]] = {}
    projects: dict[str, dict[str, float]] = {}
    skipped = []
    for r in rows:
        if r.by_greentrack and r.run_id in ours:
            skipped.append(f"{r.file}:{r.line}: greentrack's row of run {r.run_id}, counted "
                           "from its stores")
            continue
        a = r.end_unix - r.duration_s
        counted = False
        for label, lo, hi in period.months():
            share = (1.0 if r.duration_s <= 0 and lo <= r.end_unix < hi else
                     max(0.0, min(hi, r.end_unix) - max(lo, a)) / r.duration_s
                     if r.duration_s > 0 else 0.0)
            if share <= 0:
                continue
            counted = True
            month = months.setdefault(label, {"energy_kwh": 0.0, "emissions_g": 0.0, "rows": 0})
            month["rows"] += 1
            run = runs.setdefault((r.file, r.project, r.run_id, r.country, label),
                                  {"energy_kwh": 0.0, "emissions_g": 0.0, "rows": 0})
            run["rows"] += 1
            for bucket in (totals, month, run, projects.setdefault(r.project or "(none)", {
                    "energy_kwh": 0.0, "emissions_g": 0.0, "rows": 0})):
                bucket["energy_kwh"] += r.energy_kwh * share
                bucket["emissions_g"] += r.emissions_kg * 1000.0 * share
        if counted:
            for bucket in (totals, projects[r.project or "(none)"]):
                bucket["rows"] += 1
    return {"files": sorted({r.file for r in rows}), "totals": totals,
            "by_month": [{"value": k, **v} for k, v in sorted(months.items())],
            "by_project": [{"value": k, **v} for k, v in sorted(projects.items())],
            "by_run_month": [{"file": f, "project": p, "run_id": i, "country": c, "month": m,
                              **v} for (f, p, i, c, m), v in sorted(runs.items())],
            "skipped": skipped}


__all__ = ["BUDGET_FORMS", "Budget", "CodecarbonRow", "PERIOD_FORMS", "Period",
           "codecarbon_section", "parse_budget", "parse_period", "read_codecarbon"]
