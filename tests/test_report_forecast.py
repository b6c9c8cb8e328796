"""Issue 15 items 4 and 5 in the report: the forecast section (checked against runs whose truth is
known), when steps ran, the best start window, and the html pictures whose axes hold every line."""

from __future__ import annotations

import random
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import greentrack
from greentrack.carbon.footprint import NO_SETTINGS, plain_settings
from greentrack.carbon.forecast import Forecast
from greentrack.reports import svg
from greentrack.reports.forecast_table import (MAX_DIGITS, ZERO_WIDTH, forecast_rows,
                                               interval_row, printers)
from greentrack.reports.forecasting import forecast_section
from greentrack.reports.run_data import Channel, RunData
from greentrack.training.meter import TrainingMeter
from tests.fakes.powercap import LiveCounters, PowercapTree
from tests.helpers import RUN_FAST, clean_env, report_json, run_cli, validate_own_schema

SVG = "{http://www.w3.org/2000/svg}"
WATTS = 100.0


# -- the forecast check on constructed runs whose truth is known -----------------------------------

def constructed(seed: int, steps: int = 200, every: int = 2,
                spread: float = 0.5) -> tuple[RunData, float, float]:
    """A run at a constant 100 W (1 s bins) whose steps take U(1 - spread, 1 + spread) s each,
    back to back, marked every ``every`` steps as the read model marks them; its energy and time
    until the last step ended are the truth."""
    rng = random.Random(seed)
    start = 1_800_000_000.0
    ends, t = [], start
    for _ in range(steps):
        t += rng.uniform(1.0 - spread, 1.0 + spread)
        ends.append(t)
    seconds = int(t - start) + 2
    ch = Channel(key="h/r0/cpu", identity="h/0/cpu", kind="cpu", device="cpu", name="cpu",
                 host="h", rank=0, method="rapl", measured=True, uncertainty="", energy_j=0.0,
                 samples=seconds, gap_s=0.0,
                 bins=[(start + k, start + k + 1, WATTS) for k in range(seconds)])
    marks = [(n, ends[n - 1]) for n in range(every, steps + 1, every)]
    data = RunData(run_dir=Path("constructed"), summary={"status": "completed"}, devices=[],
                   start_unix=start, end_unix=start + seconds, bin_s=1.0, channels=[ch],
                   phases={}, step_energies_j={}, flops_methods=[], mfu=None, hosts={},
                   resolution_s=1.0, versions={}, settings={}, warnings=[], step_marks=marks, machines={},
                   main_phase="train")
    return data, WATTS * (ends[-1] - start), ends[-1] - start


def test_the_report_check_reproduces_the_live_forecast_and_knows_the_truth() -> None:
    data, true_j, true_s = constructed(seed=3)
    f = forecast_section(data, plain_settings(400.0 * 1.5), gpus=0)
    assert f is not None and f["kind"] == "check"
    assert f["planned_steps"] == 200 and f["planned_source"] == "the steps the run took"
    assert f["made_at_steps"] == 20  # after the first 10% of the steps
    # the same estimate as the live forecast fed the same observations
    live = Forecast(200, carbon_g_per_kwh=400.0 * 1.5)
    for n, t in data.step_marks:
        if n <= 20:
            live.observe(n, WATTS * (t - data.start_unix), t - data.start_unix, now_unix=t)
    want = live.estimate()
    assert want is not None
    for key in ("energy_j", "energy_j_low", "energy_j_high", "duration_s", "emissions_g_high"):
        assert f["estimate"][key] == pytest.approx(want[key], rel=1e-6), key
    assert f["actual"]["energy_j"] == pytest.approx(true_j, rel=1e-9)
    assert f["actual"]["duration_s"] == pytest.approx(true_s)
    assert f["actual"]["emissions_g"] == pytest.approx(true_j / 3.6e6 * 600.0)
    est = f["estimate"]
    tol = true_j * f["resolution_s"] / true_s  # inside to the time grid's resolution (one cell)
    assert f["resolution_s"] == pytest.approx(data.plot_grid()[1])
    assert f["covered"]["energy_j"] == (est["energy_j_low"] - tol <= true_j
                                        <= est["energy_j_high"] + tol)


def test_the_report_checks_interval_holds_the_truth_about_as_often_as_it_says() -> None:
    hits = sum(bool(forecast_section(constructed(seed)[0], NO_SETTINGS, 0)["covered"]  # type: ignore[index]
                    ["energy_j"]) for seed in range(200))
    assert 0.82 <= hits / 200 <= 0.97, hits


def test_a_run_still_going_is_forecast_to_its_planned_steps() -> None:
    data, _, _ = constructed(seed=5)
    data.summary["status"] = "running"
    assert forecast_section(data, NO_SETTINGS, 0) is None  # no planned steps recorded
    data.planned_steps = 1000
    f = forecast_section(data, NO_SETTINGS, 0)
    assert f is not None and f["kind"] == "now" and f["actual"] is None
    assert f["made_at_steps"] == 200 and f["planned_steps"] == 1000
    # 800 more steps of about 1 s at 100 W
    assert f["estimate"]["energy_j"] == pytest.approx(WATTS * 1000, rel=0.1)
    assert f["estimate"]["energy_j_low"] < f["estimate"]["energy_j"] < f["estimate"]["energy_j_high"]


# -- issue 26: the printed check is correct by construction --------------------------------------

UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def _read(cell: str) -> tuple[Any, str]:
    """A printed figure as a sortable value and its unit (times: the ISO text, which sorts)."""
    if UTC.fullmatch(cell):
        return cell, "utc"
    number, _, unit = cell.partition(" ")
    return float(number.replace(",", "")), unit


def assert_printed_check_holds(rows: list[list[str]]) -> None:
    """Each row: the interval, when printed, has a width as printed, in the forecast's unit; the
    yes/NO is what the printed actual and bounds say; an interval not printed says why."""
    for name, forecast, interval, actual, inside in rows:
        if interval.startswith("not "):  # not printed, and said why
            assert inside == "n/a", (name, interval, inside)
            continue
        lo, hi = (_read(t) for t in interval.split(" to "))
        est, act = _read(forecast), _read(actual)
        assert lo[1] == hi[1] == est[1] == act[1], (name, forecast, interval, actual)
        assert lo[0] < hi[0], (name, interval)  # never "0.000149 kWh to 0.000149 kWh"
        assert inside == ("yes" if lo[0] <= act[0] <= hi[0] else "NO"), (name, interval, actual,
                                                                          inside)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), steps=st.integers(20, 240), every=st.integers(1, 4),
       spread=st.sampled_from([0.0, 0.001, 0.05, 0.5, 0.9]))
def test_the_printed_check_matches_the_printed_numbers_over_many_runs(
        seed: int, steps: int, every: int, spread: float) -> None:
    data, _, _ = constructed(seed, steps, every, spread)
    f = forecast_section(data, plain_settings(300.0, 0.2, None, "EUR"), gpus=0)
    if f is None:
        return
    rows = forecast_rows(f)
    assert len(rows) >= 4  # energy, duration, end, emissions (and cost)
    assert_printed_check_holds(rows)


finite = st.floats(min_value=1e-9, max_value=1e9, allow_nan=False)


@settings(max_examples=250, deadline=None)
@given(est=finite, lo=finite, width=st.one_of(st.just(0.0), st.floats(-1e-3, 1.0)),
       actual=st.one_of(st.none(), finite), near=st.floats(-1e-4, 1e-4))
def test_any_interval_is_printed_honestly(est: float, lo: float, width: float,
                                          actual: float | None, near: float) -> None:
    """Rounding edges too: an actual a hair outside a bound, bounds closer than three digits."""
    hi = lo * (1.0 + width)
    if actual is not None and near:
        actual = hi * (1.0 + near)  # straddles the upper bound, below the printed precision
    for key, _, printer in printers({"energy_j": est, "duration_s": est, "end_unix": 1.8e9,
                                     "emissions_g": est, "cost": est, "gpu_hours": est}, "EUR"):
        shift = 1.8e9 if key == "end_unix" else 0.0
        row = interval_row(est + shift, lo + shift, hi + shift,
                           None if actual is None else actual + shift, printer, check=True)
        if actual is None:
            assert row[2] == "n/a" == row[3]
            continue
        assert_printed_check_holds([[key, *row]])


def test_a_zero_width_interval_is_not_printed_and_not_checked() -> None:
    """The demo's report: "0.000149 kWh to 0.000149 kWh" and every row "NO". Steps exactly 1 s
    apart at a constant 100 W: the spread between observations is zero."""
    data, _, _ = constructed(seed=1, steps=200, every=2, spread=0.0)
    f = forecast_section(data, plain_settings(300.0), gpus=0)
    assert f is not None
    assert f["estimate"]["energy_j_high"] == f["estimate"]["energy_j_low"]
    assert "energy_j" not in f["covered"]  # not "covered: false" for an interval that cannot be
    rows = {r[0]: r for r in forecast_rows(f)}
    assert rows["IT energy"][2] == ZERO_WIDTH and rows["IT energy"][4] == "n/a"
    assert_printed_check_holds(list(rows.values()))


def test_bounds_get_the_digits_they_need_to_print_apart() -> None:
    show = printers({"energy_j": 500.0}, None)[0][2]
    # 500 J and 500.4 J are 138.9 and 139.0 mWh: apart at four digits
    assert interval_row(500.0, 500.0, 500.4, None, show, check=True)[1] == "138.9 mWh to 139 mWh"
    # an actual of 500.41 J, just outside: at four digits it would print 139 mWh, "inside" the
    # printed bounds; it gets the digits that show it outside
    row = interval_row(500.0, 500.0, 500.4, 500.41, show, check=True)
    assert row[1] == "138.889 mWh to 139 mWh" and row[2] == "139.003 mWh" and row[3] == "NO"
    assert_printed_check_holds([["IT energy", *row]])
    assert interval_row(500.0, 500.0, 500.0 * (1 + 1e-12), 500.0, show, True)[1].startswith(
        "not shown: narrower")
    assert MAX_DIGITS <= 6


# -- a real run: report json, md, html -----------------------------------------------------------

@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """CPU 40 W + DRAM 4 W; 40 train steps of 30 ms planned and taken, each followed by 30 ms
    without a step (half the time); an hourly intensity series with a clean minimum 3-5 h ahead."""
    root = tmp_path_factory.mktemp("forecast")
    with pytest.MonkeyPatch.context() as mp, clean_env(mp, root):
        tree = PowercapTree(root / "powercap")
        mp.setenv("GREENTRACK_POWERCAP_ROOT", str(tree.root))
        run_dir = root / "run"
        with LiveCounters(tree, {"intel-rapl:0": 40.0, "intel-rapl:0:1": 4.0}):
            with greentrack.Tracker(run_dir, **RUN_FAST) as tracker:
                meter = TrainingMeter(tracker, planned_steps=40, progress_every_s=None)
                for _ in range(40):
                    meter.begin()
                    time.sleep(0.03)
                    meter.end()
                    time.sleep(0.03)
                meter.close()
        hour = int(time.time()) // 3600 * 3600
        csv = root / "intensity.csv"
        csv.write_text("start,g_per_kwh\n" + "".join(
            f"{hour + 3600 * h},{60.0 if h in (3, 4) else 400.0}\n" for h in range(-6, 24)))
        yield run_dir, csv


@pytest.mark.slow
def test_report_has_forecast_coverage_and_start_window(run: tuple[Path, Path],
                                                       tmp_path: Path) -> None:
    run_dir, csv = run
    out = tmp_path / "out"
    code, _, err = run_cli(["report", str(run_dir), "--format", "json,md,html", "--out", str(out),
                            "--intensity-csv", str(csv)])
    assert code == 0, err
    doc = report_json(out)
    validate_own_schema(doc)
    f = doc["forecast"]
    assert f["kind"] == "check" and f["planned_steps"] == 40
    assert f["planned_source"] == "recorded by the training integration"
    assert f["actual"]["steps"] == 40 and f["made_at_steps"] < 40
    est = f["estimate"]
    assert est["energy_j_low"] <= est["energy_j"] <= est["energy_j_high"]
    # when steps ran: the covered seconds are the steps' windows (about half the run)
    ts = doc["timeseries"]
    covered_s = sum(c * ts["step_s"] for c in ts["steps_coverage"])
    union_s = next(o for o in _findings(run_dir, csv) if o["kind"] == "outside-steps")[
        "evidence"]["steps_union_s"]
    assert covered_s == pytest.approx(union_s, rel=0.02)
    assert 0.3 < covered_s / doc["run"]["duration_s"] < 0.7
    # the best start: the clean minimum, 3 h ahead (from the hour's start)
    w = doc["start_window"]
    hour = int(doc["timeseries"]["t0_unix"]) // 3600 * 3600
    assert w["best_start"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(hour + 3 * 3600))
    assert w["start_s"] == pytest.approx(hour + 3 * 3600 - doc["timeseries"]["t0_unix"])
    assert len(w["series_start_s"]) == len(w["series_g_per_kwh"]) > 0
    html = (out / "report.html").read_text()
    assert html.count("<svg") == 5 and "Power over time and when steps ran" in html
    md = (out / "report.md").read_text()
    assert "the run as it ran and the best start" in html and "## Forecast" in md
    # the Markdown table as a reader sees it: each yes/NO agrees with the numbers beside it
    table = md[md.index("## Forecast"):md.index("Method: ")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()
            if line.startswith("| ") and not line.startswith("| figure")]
    assert len(rows) >= 3
    assert_printed_check_holds(rows)
    for name in ("timeline", "start_window"):
        assert_inside(ET.parse(out / f"report-{name}.svg").getroot())


def _findings(run_dir: Path, csv: Path) -> list[dict[str, Any]]:
    import json
    code, out, err = run_cli(["advise", str(run_dir), "--json", "--intensity-csv", str(csv)])
    assert code == 0, err
    return list(json.loads(out)["findings"])


# -- the pictures: every line and shape inside the axes -------------------------------------------

def assert_inside(root: ET.Element) -> None:
    """Every polyline point and every shape of the plot area lies within the axes (legend
    swatches, right of the plot, excepted)."""
    x0, x1, y0, y1 = svg.LEFT, svg.W - svg.RIGHT, svg.TOP, svg.H - svg.BOTTOM
    lines = root.findall(f"{SVG}polyline")
    assert lines
    for line in lines:
        for pair in line.get("points", "").split():
            x, y = map(float, pair.split(","))
            assert x0 - 0.1 <= x <= x1 + 0.1 and y0 - 0.1 <= y <= y1 + 0.1, (x, y)
    for rect in root.findall(f"{SVG}rect")[1:]:  # the first is the background
        x, w = float(rect.get("x", 0)), float(rect.get("width", 0))
        if x > x1:
            continue  # a legend swatch
        y, h = float(rect.get("y", 0)), float(rect.get("height", 0))
        assert x0 - 0.1 <= x and x + w <= x1 + 0.6 and y0 - 0.1 <= y and y + h <= y1 + 0.1, \
            rect.attrib


@pytest.mark.parametrize("best_start_s", [-30_000.0, 0.0, 50_000.0])
def test_the_start_window_chart_holds_the_series_and_both_windows(best_start_s: float) -> None:
    starts = [-40_000.0 + 3600 * k for k in range(30)]
    chart = svg.windows("t", starts, [s + 3600 for s in starts], [300.0 + k for k in range(30)],
                        [("as run", 0.0, 7200.0), ("best", best_start_s, best_start_s + 7200.0)],
                        "gCO2e/kWh")
    root = ET.fromstring(chart)
    assert_inside(root)
    shaded = [r for r in root.findall(f"{SVG}rect") if r.get("fill-opacity") == "0.2"]
    assert len(shaded) == 2


def test_the_timeline_holds_power_and_steps() -> None:
    t = [0.5 + k for k in range(100)]
    chart = svg.timeline("t", [x * 0.136 for x in t], 0.136,
                         [("cpu", [50.0 + (k % 7) for k in range(100)]),
                          ("gpu", [float(k * 3) for k in range(100)])],
                         [1.0 if k % 2 else 0.25 for k in range(100)])
    root = ET.fromstring(chart)
    assert_inside(root)
    strip = [r for r in root.findall(f"{SVG}rect") if r.get("fill") == "#7570b3"
             and float(r.get("x", 0)) < svg.W - svg.RIGHT]
    assert len(strip) == 100
    # no time tick past the run's end (the demo's 13.6-s run had a "15.0" beyond the axis)
    ticks = [float(t.get("x")) for t in root.iter(f"{SVG}text")
             if t.get("text-anchor") == "middle" and t.get("y") == str(svg.H - svg.BOTTOM + 20)]
    assert ticks and max(ticks) <= svg.W - svg.RIGHT + 0.1
