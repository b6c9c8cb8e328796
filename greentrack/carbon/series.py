"""Time-resolved carbon intensity: read a series, integrate it against the run's energy over time.

Accepted CSV (documented in docs/methodology-carbon.md):

* greentrack's own: a header with a time column (``start``, ``datetime``, ``timestamp`` or
  ``time``), one value column (``g_per_kwh``, ``carbon_intensity`` or ``intensity``, gCO2e/kWh;
  two of them are an error) and optionally ``end``. Times are ISO 8601 (``2026-01-01T00:00:00Z``; no offset = UTC) or unix
  seconds. Each row holds from its start to its ``end``, or to the next row's start; the last row
  holds for the median spacing. Lines starting with ``#`` are comments.
* an Electricity Maps history export, as downloaded: ``Datetime (UTC)`` and
  ``Carbon Intensity gCO₂eq/kWh (direct)`` (direct emissions, the GHG Protocol Scope 2 factor;
  the life-cycle column is used only when there is no direct one). ``Zone Id`` is recorded.

Integration: the run's energy is binned over wall time (each bin's energy spread evenly over the
bin, bins no wider than the store's resolution for short runs), each bin split across the
intensity intervals it overlaps, and emissions = sum(E_bin_part x I_interval). Energy outside the
series' span gets the ``fallback`` factor and is reported as uncovered.
"""

from __future__ import annotations

import bisect
import csv
import math
import os
import statistics
import threading
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from greentrack.common.errors import ConfigError
from greentrack.common.files import not_regular
from greentrack.common.units import J_PER_KWH

TIME_COLUMNS = ("start", "datetime", "timestamp", "time", "datetime (utc)")
VALUE_COLUMNS = ("g_per_kwh", "carbon_intensity", "intensity", "carbon_intensity_avg")


@dataclass
class IntensitySeries:
    """Intervals ``[starts[i], ends[i])`` (unix seconds) with ``values[i]`` gCO2e/kWh (lists, or
    float arrays for a file read)."""

    starts: Sequence[float]
    ends: Sequence[float]
    values: Sequence[float]
    source: str
    zone: str | None = None
    column: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def value_at(self, t_unix: float) -> float | None:
        i = bisect.bisect_right(self.starts, t_unix) - 1
        if i >= 0 and t_unix < self.ends[i]:
            return self.values[i]
        return None

    @property
    def span(self) -> tuple[float, float]:
        return self.starts[0], self.ends[-1]


def _bad(path: Path, line: int, why: str) -> ConfigError:
    return ConfigError("intensity_csv", f"{path} line {line}", why)


#: times a series may hold: 1970-01-01 to 9999-12-31 (NaN, infinities and beyond are errors)
MIN_TIME, MAX_TIME = 0.0, 253402300799.0
TIME_HELP = "is not a time from 1970 to 9999 (use ISO 8601 or unix seconds)"


def parse_time(text: str) -> float:
    """ISO 8601 (naive = UTC) or unix seconds -> unix seconds, from 1970 to 9999.

    Raises:
        ValueError: anything else, NaN and infinities included.
    """
    text = text.strip()
    try:
        t = float(text)
    except ValueError:
        iso = text.replace(" ", "T", 1) if "T" not in text and " " in text else text
        if iso.endswith("Z"):
            iso = iso[:-1] + "+00:00"
        dt = datetime.fromisoformat(iso)
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        try:
            t = dt.timestamp()
        except (OverflowError, OSError):
            raise ValueError(f"{text!r}: out of range") from None
    if not (math.isfinite(t) and MIN_TIME <= t <= MAX_TIME):
        raise ValueError(f"{text!r}: out of range")
    return t


def _pick(header: list[str], path: Path) -> tuple[int, int, int | None, int | None, str]:
    low = [h.strip().lower() for h in header]
    t_col = next((low.index(c) for c in TIME_COLUMNS if c in low), None)
    values = [h for h in low if h in VALUE_COLUMNS]
    if len(values) > 1:  # which one is meant is the user's to say, never a silent pick
        raise _bad(path, 1, f"the header has {len(values)} intensity columns "
                   f"({', '.join(values)}); keep one of them")
    v_col = low.index(values[0]) if values else None
    kind = "greentrack"
    if v_col is None:  # Electricity Maps export: prefer direct, then life-cycle
        em = [i for i, h in enumerate(low) if h.startswith("carbon intensity")]
        direct = [i for i in em if "direct" in low[i]]
        lca = [i for i in em if "lca" in low[i] or "life cycle" in low[i] or "lifecycle" in low[i]]
        v_col = (direct + lca)[0] if direct or lca else None
        kind = "electricitymaps"
    if t_col is None or v_col is None:
        raise _bad(path, 1, "the header needs a time column (" + ", ".join(TIME_COLUMNS) +
                   ") and an intensity column (" + ", ".join(VALUE_COLUMNS) +
                   ", or an Electricity Maps 'Carbon Intensity gCO₂eq/kWh (direct)')")
    end_col = low.index("end") if "end" in low else None
    zone_col = low.index("zone id") if "zone id" in low else (low.index("zone") if "zone" in low else None)
    return t_col, v_col, end_col, zone_col, f"{kind}:{header[v_col].strip()}"


#: Series parsed, by file identity: one command (a report, a greener start, a run's stop) parses
#: a file once however many figures need it; a changed file (size, mtime, inode) is read again.
_PARSED: dict[tuple[str, int, int, int], IntensitySeries] = {}
_PARSED_MAX = 4
_PARSED_LOCK = threading.Lock()


def read_csv(path: str | Path) -> IntensitySeries:
    """Read an intensity CSV (see the module docstring); a file already parsed and unchanged
    since is not parsed again.

    Raises:
        ConfigError: missing file, unknown header, or a malformed line (named by number).
    """
    path = Path(path)
    what = not_regular(path)
    if what is not None:  # /dev/zero would be read forever, a FIFO waits for a writer
        raise ConfigError("intensity_csv", str(path), f"is {what}, not a CSV file")
    try:
        st = path.stat()
        key: tuple[str, int, int, int] | None = (os.path.realpath(path), st.st_ino, st.st_size,
                                                 st.st_mtime_ns)
    except OSError:
        key = None  # the read below says why, in one line
    with _PARSED_LOCK:
        hit = _PARSED.get(key) if key is not None else None
    if hit is not None:
        return hit
    series = _parse_csv(path)
    if key is not None:
        with _PARSED_LOCK:
            while len(_PARSED) >= _PARSED_MAX:
                _PARSED.pop(next(iter(_PARSED)))
            _PARSED[key] = series
    return series


def _parse_csv(path: Path) -> IntensitySeries:
    """Parse a series, streaming: the file is read line by line and the series kept as three
    float arrays (8 bytes a value), so a year of minutes (500,000 rows) costs megabytes."""
    try:
        f = path.open(encoding="utf-8-sig", newline="")
    except OSError as e:
        raise ConfigError("intensity_csv", str(path), f"cannot be read ({e.strerror or e})") from None
    at = [0]  # the number of the line the reader is on (errors name it)

    def content() -> Iterator[str]:
        for n, line in enumerate(f, 1):
            if line.strip() and not line.lstrip().startswith("#"):
                at[0] = n
                yield line

    with f:
        try:
            return _parse_rows(path, csv.reader(content()), at)
        except UnicodeDecodeError as e:
            raise ConfigError("intensity_csv", str(path), f"cannot be read ({e})") from None


def _parse_rows(path: Path, reader: Iterator[list[str]], at: list[int]) -> IntensitySeries:
    header = next(reader, None)
    if header is None:
        raise ConfigError("intensity_csv", str(path), "is empty")
    t_col, v_col, end_col, zone_col, column = _pick(header, path)
    starts, ends, values = array("d"), array("d"), array("d")  # an unknown end is NaN
    zones: set[str] = set()
    for row in reader:
        n = at[0]
        try:
            cell = row[t_col]
        except IndexError:
            raise _bad(path, n, f"has {len(row)} column(s), the header has {len(header)}") from None
        try:
            t = parse_time(cell)
        except ValueError:
            raise _bad(path, n, f"{cell.strip()!r} {TIME_HELP}") from None
        if v_col >= len(row):
            raise _bad(path, n, f"has {len(row)} column(s), the header has {len(header)}")
        raw = row[v_col].strip()
        if raw == "":  # Electricity Maps leaves a gap empty: nothing is known for that interval
            if ends and math.isnan(ends[-1]) and t > starts[-1]:
                ends[-1] = t
            continue
        try:
            v = float(raw)
        except ValueError:
            raise _bad(path, n, f"{raw!r} is not a number of gCO2e/kWh") from None
        if not math.isfinite(v) or v < 0:
            raise _bad(path, n, f"{raw!r}: intensity must be a number >= 0")
        if ends and not math.isnan(ends[-1]) and t < ends[-1]:
            raise _bad(path, n, f"starts at {cell.strip()!r}, before the previous row's end: it "
                       "overlaps the previous interval (intervals must not overlap)")
        if starts and t <= starts[-1]:
            raise _bad(path, n, f"{cell!r} is not after the previous row's time (rows must be in "
                       "increasing time order, without duplicates)")
        end = math.nan
        if end_col is not None and end_col < len(row) and row[end_col].strip():
            try:
                end = parse_time(row[end_col])
            except ValueError:
                raise _bad(path, n, f"end {row[end_col].strip()!r} {TIME_HELP}") from None
            if end <= t:
                raise _bad(path, n, "end must be after start")
        if zone_col is not None and zone_col < len(row) and row[zone_col].strip():
            zones.add(row[zone_col].strip())
        starts.append(t)
        ends.append(end)
        values.append(v)
    if not starts:
        raise ConfigError("intensity_csv", str(path), "has a header but no intensity rows")
    spacing = statistics.median(array("d", (b - a for a, b in zip(starts, starts[1:])))) \
        if len(starts) > 1 else 3600.0
    last = len(starts) - 1
    for i in range(len(ends)):  # an open interval holds to the next row, the last one a spacing
        if math.isnan(ends[i]):
            ends[i] = starts[i + 1] if i < last else starts[i] + spacing
    zone = ",".join(sorted(zones)) or None
    return IntensitySeries(starts, ends, values, source=f"{path.name} ({column})", zone=zone,
                           column=column, extra={"rows": len(starts), "interval_s": spacing})


@dataclass
class Integration:
    """Result of integrating energy against a series."""

    emissions_g: float           # for the binned energy (IT energy; PUE applied by the caller)
    energy_kwh: float            # binned energy integrated
    covered_kwh: float           # part that fell inside the series' span
    effective_g_per_kwh: float   # emissions_g / energy_kwh
    intervals_used: int

    @property
    def coverage(self) -> float:
        # covered_kwh sums per-interval shares of each bin: float rounding can exceed the whole
        return min(1.0, self.covered_kwh / self.energy_kwh) if self.energy_kwh > 0 else 1.0


def integrate(series: IntensitySeries, bins: list[tuple[float, float, float]],
              fallback_g_per_kwh: float) -> Integration:
    """Integrate ``bins`` of ``(start_unix, end_unix, energy_j)`` against ``series``.

    Each bin's energy is spread uniformly over its span and split across the series' intervals by
    overlap; a part outside every interval is charged at ``fallback_g_per_kwh``.
    """
    starts, ends, values = series.starts, series.ends, series.values
    total_g = covered_j = energy_j = 0.0
    used: set[int] = set()
    for a, b, e in bins:
        if e == 0.0:
            continue
        energy_j += e
        width = b - a
        if width <= 0:  # an instant: charge at the interval containing it
            v = series.value_at(a)
            total_g += e / J_PER_KWH * (fallback_g_per_kwh if v is None else v)
            covered_j += e if v is not None else 0.0
            continue
        i = max(bisect.bisect_right(starts, a) - 1, 0)
        inside_j = 0.0
        while i < len(starts) and starts[i] < b:
            lo, hi = max(a, starts[i]), min(b, ends[i])
            if hi > lo:
                part = e * (hi - lo) / width
                inside_j += part
                total_g += part / J_PER_KWH * values[i]
                used.add(i)
            i += 1
        inside_j = min(inside_j, e)  # the parts' rounding may pass the whole by an ulp
        covered_j += inside_j
        total_g += (e - inside_j) / J_PER_KWH * fallback_g_per_kwh
    kwh = energy_j / J_PER_KWH
    return Integration(total_g, kwh, covered_j / J_PER_KWH,
                       total_g / kwh if kwh > 0 else fallback_g_per_kwh, len(used))
