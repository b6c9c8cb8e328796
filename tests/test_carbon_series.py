"""Intensity time series: the accepted CSV formats, malformed input named by line, integration."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greentrack.carbon.series import IntensitySeries, integrate, parse_time, read_csv

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()

EM_HEADER = ("Datetime (UTC),Country,Zone Name,Zone Id,Carbon Intensity gCO₂eq/kWh (direct),"
             "Carbon Intensity gCO₂eq/kWh (LCA),Low Carbon Percentage,Renewable Percentage,"
             "Data Source,Data Estimated,Data Estimation Method")


def write(tmp_path: Path, text: str, name: str = "i.csv") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_electricity_maps_export_is_read_as_is_with_the_direct_factor(tmp_path: Path) -> None:
    rows = [EM_HEADER] + [f"2026-01-01 0{h}:00:00,France,France,FR,{50 + h},{80 + h},90,30,"
                          "entsoe.eu,false," for h in range(4)]
    s = read_csv(write(tmp_path, "\n".join(rows) + "\n"))
    assert list(s.values) == [50.0, 51.0, 52.0, 53.0]  # direct, not LCA
    assert list(s.starts) == [T0 + 3600 * h for h in range(4)]
    assert list(s.ends) == [T0 + 3600 * (h + 1) for h in range(4)]  # last row: median spacing
    assert s.zone == "FR" and "direct" in s.column
    assert s.value_at(T0 + 5400) == 51.0 and s.value_at(T0 - 1) is None


def test_lca_column_is_used_when_there_is_no_direct_one(tmp_path: Path) -> None:
    text = "Datetime (UTC),Zone Id,Carbon Intensity gCO₂eq/kWh (LCA)\n2026-01-01T00:00:00Z,DE,300\n"
    s = read_csv(write(tmp_path, text))
    assert list(s.values) == [300.0] and "LCA" in s.column


def test_greentrack_format_with_comments_unix_times_and_explicit_ends(tmp_path: Path) -> None:
    text = (f"# hourly factors from our supplier\nstart,g_per_kwh,end\n{T0},100,{T0 + 1800}\n"
            f"2026-01-01T01:00:00+00:00,200,\n2026-01-01T02:00:00,300,\n")
    s = read_csv(write(tmp_path, text))
    assert list(s.starts) == [T0, T0 + 3600, T0 + 7200]
    assert list(s.ends) == [T0 + 1800, T0 + 7200, T0 + 10800]
    assert s.value_at(T0 + 2000) is None  # the gap left by the explicit end


def test_an_empty_electricity_maps_value_is_a_gap_not_a_stretch(tmp_path: Path) -> None:
    rows = [EM_HEADER, "2026-01-01 00:00:00,F,F,FR,10,1,,,,,", "2026-01-01 01:00:00,F,F,FR,,1,,,,,",
            "2026-01-01 02:00:00,F,F,FR,30,1,,,,,"]
    s = read_csv(write(tmp_path, "\n".join(rows)))
    assert list(s.values) == [10.0, 30.0] and s.ends[0] == T0 + 3600


def test_parse_time_forms() -> None:
    assert parse_time("2026-01-01T00:00:00Z") == T0
    assert parse_time("2026-01-01 02:00:00+02:00") == T0
    assert parse_time(str(T0)) == T0


def _series(values: list[float], step: float = 3600.0) -> IntensitySeries:
    starts = [T0 + step * i for i in range(len(values))]
    return IntensitySeries(starts, [s + step for s in starts], list(values), source="test")


def test_hourly_integration_charges_each_hour_its_own_factor() -> None:
    # 3 hours at 100, 400, 200 g/kWh; energy 1, 3, 2 kWh spread in 5-minute bins
    series = _series([100.0, 400.0, 200.0])
    kwh = [1.0, 3.0, 2.0]
    bins = [(T0 + h * 3600 + k * 300, T0 + h * 3600 + (k + 1) * 300, kwh[h] / 12 * 3.6e6)
            for h in range(3) for k in range(12)]
    r = integrate(series, bins, fallback_g_per_kwh=999.0)
    assert r.emissions_g == pytest.approx(1 * 100 + 3 * 400 + 2 * 200)
    assert r.energy_kwh == pytest.approx(6.0) and r.coverage == pytest.approx(1.0)
    assert r.effective_g_per_kwh == pytest.approx(1700 / 6)
    # multiplying the energy by the plain average of the factors would say 6 x 233.3 = 1400 g
    assert r.emissions_g != pytest.approx(6 * (100 + 400 + 200) / 3)


def test_a_bin_straddling_a_boundary_is_split_by_overlap_and_uncovered_energy_uses_fallback() -> None:
    series = _series([100.0, 300.0])
    # one bin from 00:30 to 01:30 (1 kWh): half at 100, half at 300
    r = integrate(series, [(T0 + 1800, T0 + 5400, 3.6e6)], fallback_g_per_kwh=0.0)
    assert r.emissions_g == pytest.approx(0.5 * 100 + 0.5 * 300)
    # one bin from 01:30 to 02:30: half inside (300), half after the series (fallback 50)
    r = integrate(series, [(T0 + 5400, T0 + 9000, 3.6e6)], fallback_g_per_kwh=50.0)
    assert r.emissions_g == pytest.approx(0.5 * 300 + 0.5 * 50)
    assert r.coverage == pytest.approx(0.5)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1000), min_size=1, max_size=12),
       st.lists(st.tuples(st.floats(-4000, 50000), st.floats(1, 7200), st.floats(0, 1e7)),
                min_size=1, max_size=30))
def test_integration_is_bounded_by_the_extreme_factors(values: list[float], raw: list) -> None:
    series = _series(values)
    bins = [(a, a + w, e) for a, w, e in raw]
    fallback = 123.0
    r = integrate(series, bins, fallback)
    lo, hi = min(values + [fallback]), max(values + [fallback])
    total_kwh = sum(e for *_, e in bins) / 3.6e6
    assert r.energy_kwh == pytest.approx(total_kwh)
    assert lo * total_kwh - 1e-6 <= r.emissions_g <= hi * total_kwh + 1e-6
    assert 0.0 <= r.coverage <= 1.0  # the report schema's bounds: no rounding slack


def test_coverage_never_exceeds_one_by_rounding() -> None:
    # per-interval shares of these bins summed to 1.0000000000000002 of their energy, which the
    # report schema (coverage <= 1) rejected: found when a report of a real run failed validation
    base = 1_700_000_000.0
    starts = [base + i * 3600 for i in range(4)]
    series = IntensitySeries(starts, [s + 3600 for s in starts], [100.0] * 4, source="test")
    edges = [1302.1286328, 1303.4191303, 1304.2061827, 1304.867393, 1306.5631912, 1307.1757817]
    energy = [470.3731876722751, 153.46146899627163, 158.4358999281125, 446.7607727362483,
              167.23326948481585]
    bins = [(base + a, base + b, e) for a, b, e in zip(edges, edges[1:], energy)]
    r = integrate(series, bins, fallback_g_per_kwh=0.0)
    assert r.coverage == 1.0
