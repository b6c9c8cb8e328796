"""The HTML report's charts: axes that cover every line, figures that say what they include, and
the page rendered by a real headless Chromium (no console errors, the plots on the screenshot)."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greentrack.reports import svg
from tests.browser import color_counts, read_png, render, require_chromium
from tests.helpers import clean_env, make_lossy_run, make_run, report_json, run_cli

#: a real headless browser: out of `make test-fast`
pytestmark = pytest.mark.slow

NS = "{http://www.w3.org/2000/svg}"


def y_axis(chart: str) -> tuple[list[tuple[float, float]], list[float], float]:
    """``(ticks as (value, y), every plotted y, the x axis' y)`` of a chart from svg.py."""
    root = ET.fromstring(chart)
    ticks = []
    for text in root.iter(f"{NS}text"):
        if text.get("text-anchor") == "end":  # the y tick labels
            ticks.append((float(text.text.replace(",", "")), float(text.get("y")) - svg.TICK_LABEL_DY))
    ys = [float(p.split(",")[1]) for line in root.iter(f"{NS}polyline")
          for p in line.get("points", "").split()]
    ys += [float(r.get("y")) for r in root.iter(f"{NS}rect")
           if r.get("fill") == "#1b9e77" and r.get("height") and float(r.get("x")) < svg.W - svg.RIGHT]
    axis_y = float(root.find(f"{NS}line").get("y1"))
    return ticks, ys, axis_y


def test_tick_labels_read_as_their_ticks() -> None:
    ticks, _, _ = y_axis(svg.xy_lines("q", [("a", [0.0, 1.0], [0.0, 1200001.0])], "J", "W"))
    assert max(ticks)[0] == 1250000.0  # was labelled "1.2e+06", below the line it covers


def assert_covered(chart: str, values: list[float]) -> None:
    ticks, ys, axis_y = y_axis(chart)
    top_value, top_y = max(ticks)
    assert top_value >= max(values), f"ticks stop at {top_value}, a value is {max(values)}"
    assert all(top_y - 0.11 <= y <= axis_y + 0.11 for y in ys), (top_y, min(ys), axis_y)


def test_the_power_chart_of_the_issue_has_a_tick_above_its_9_4_w_line() -> None:
    chart = svg.lines("Power", [0.5, 1.5, 2.5], [("gpu0", [9.0, 9.4, 8.7]), ("cpu", [2.0, 2.1, 2.2])],
                      "power (W)")
    ticks, ys, _ = y_axis(chart)
    assert max(v for v, _ in ticks) == 10.0  # not 8, with the line on the border
    assert min(ys) > max(ticks)[1] + 5  # the 9.4 W line sits below the top tick, inside the axes
    assert_covered(chart, [9.4])


values = st.lists(st.floats(min_value=0.0, max_value=1e7, allow_nan=False), min_size=2, max_size=30)


@settings(max_examples=400, deadline=None)
@given(values, values)
def test_every_line_is_inside_its_axes(a: list[float], b: list[float]) -> None:
    n = min(len(a), len(b))
    t = [i + 0.5 for i in range(n)]
    assert_covered(svg.lines("t", t, [("a", a[:n]), ("b", b[:n])], "W"), a[:n] + b[:n] + [0.0])
    chart = svg.xy_lines("q", [("a", a[:n], b[:n])], "J", "loss")
    ticks, ys, axis_y = y_axis(chart)
    top_value, top_y = max(ticks)
    assert top_value >= max(b[:n]) and min(ticks)[0] <= min(b[:n])
    assert all(top_y - 0.11 <= y <= axis_y + 0.11 for y in ys)
    counts = [int(v) % 50 for v in a]
    edges = [float(i) for i in range(len(counts) + 1)]
    assert_covered(svg.histogram("h", edges, counts, "J"), [float(c) for c in counts])


@pytest.fixture(scope="module")
def html_report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("html")
    with pytest.MonkeyPatch.context() as mp, clean_env(mp, root):
        run = make_run(root, gpu_w=250.0, steps=12, step_s=0.05, country="FR")
        code, _, err = run_cli(["report", str(run), "--format", "all", "--out", str(root / "out")])
        assert code == 0, err
        yield root / "out"


def test_figures_say_what_they_include(html_report: Path) -> None:
    html = (html_report / "report.html").read_text()
    doc = report_json(html_report)
    own = doc["steps"]["by_phase"]["train"]["energy_per_step_j"]
    assert "J per step (all the run&#x27;s energy / optimizer steps)" in html
    assert re.search(r"idle time, data loading, evaluation and checkpoints included\) by the steps\. "
                     r"The histogram below shows each train step&#x27;s own energy", html)
    assert "median " in html and own["median"] < doc["compute"]["joules_per_step"]
    assert "Cumulative IT energy: all devices summed, before PUE" in html
    md = (html_report / "report.md").read_text()
    assert "J per step (all the run's energy / optimizer steps)" in md


def test_the_report_renders_in_headless_chromium_without_errors(html_report: Path) -> None:
    require_chromium()
    page = html_report / "report.html"
    whole = render(page.as_uri(), html_report / "whole.png", 1000, 900)
    assert whole.console == [], whole.console
    doc = report_json(html_report)
    n_series = len(doc["timeseries"]["series"])
    for name, colors in (("power", list(svg.PALETTE[:n_series])), ("cumulative", [svg.PALETTE[0]]),
                         ("steps", ["#1b9e77", "#d95f02"])):
        # the page as written, with everything but this chart hidden: the chart at the top of a
        # small screenshot (a #plot-NAME fragment scrolls, but headless screenshots the top)
        alone = html_report / f"only-{name}.html"
        alone.write_text(page.read_text().replace(
            "</style>", f"body>:not(#plot-{name}){{display:none}}</style>", 1))
        shot = render(alone.as_uri(), html_report / f"{name}.png", 900, 340)
        assert shot.console == [], shot.console
        width, height, rows = read_png(shot.png)
        assert (width, height) == (900, 340)
        counts = color_counts(rows, colors)
        # each line (legend swatch 10 x 10 = 100 pixels, plus the line itself) or the bars and
        # the median/p95 marks are on the screenshot
        assert all(n > 100 for n in counts.values()), (name, counts)


def test_the_browser_check_sees_a_broken_page(tmp_path: Path, html_report: Path) -> None:
    """The check above can fail: a script error and a chart-less page are caught."""
    require_chromium()
    broken = tmp_path / "broken.html"
    broken.write_text((html_report / "report.html").read_text().replace(
        "</body>", "<script>console.error('chart failed'); undefinedCall();</script></body>"))
    page = render(broken.as_uri(), tmp_path / "broken.png")
    assert any("chart failed" in m for m in page.console)
    assert any("undefinedCall is not defined" in m for m in page.console)
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body><p>no charts</p></body></html>")
    shot = render(blank.as_uri(), tmp_path / "blank.png")
    _, _, rows = read_png(shot.png)
    assert max(color_counts(rows, list(svg.PALETTE[:3])).values()) == 0


# -- issue 26: readable charts and scaled units, as the browser lays them out ------------------------

#: measures the laid-out page: each chart's size and tick-label height in CSS pixels, and the
#: first two cells of each table row (figure, value; a figure's first row, the Summary's), logged
#: as one JSON console message
MEASURE = """<script>
const charts = {};
for (const fig of document.querySelectorAll('figure, body > svg')) {
  const svg = fig.tagName === 'svg' ? fig : fig.querySelector('svg');
  const box = svg.getBoundingClientRect();
  const tick = [...svg.querySelectorAll('text')].find(t => t.getAttribute('text-anchor') === 'end');
  charts[fig.id || 'chart'] = {width: box.width, height: box.height,
    tick_px: tick.getBoundingClientRect().height,
    legend: [...svg.querySelectorAll('text')].map(t => t.textContent)};
}
const cells = {};
for (const tr of document.querySelectorAll('tr')) {
  const td = tr.querySelectorAll('td');
  if (td.length > 1 && !(td[0].textContent in cells)) cells[td[0].textContent] = td[1].textContent;
}
console.log(JSON.stringify({charts, cells}));
</script>"""


def measured(page: Path, shot: Path, width: int = 1000, height: int = 700) -> dict[str, Any]:
    """``page`` laid out by Chromium in a ``width``-px window: :data:`MEASURE`'s findings."""
    probe = page.with_name(f"measure-{page.name}")
    probe.write_text(page.read_text().replace("</body>", MEASURE + "</body>", 1))
    result = render(probe.as_uri(), shot, width, height)
    message = next(m for m in result.console if m.startswith('"{"charts"'))
    return dict(json.loads(message[1:message.rindex('", source:')]))


#: a chart reads at arm's length: it spans the text column and its labels are body-text sized
MIN_CHART_PX, MIN_LABEL_PX = 880, 13


def test_the_report_charts_are_readable_and_its_units_scaled(html_report: Path) -> None:
    require_chromium()
    found = measured(html_report / "report.html", html_report / "measure.png")
    charts = found["charts"]
    assert {"plot-power", "plot-cumulative", "plot-steps", "plot-timeline"} <= set(charts)
    for name, chart in charts.items():
        assert chart["width"] >= MIN_CHART_PX, (name, chart["width"])
        assert chart["tick_px"] >= MIN_LABEL_PX, (name, chart["tick_px"])
    # the energy axis in the tables' unit, its ticks plain numbers (8a2bbe5: kWh, 2e-05...)
    drawn = charts["plot-cumulative"]["legend"]
    assert "energy (mWh)" in drawn and not [t for t in drawn if re.fullmatch(r"[\d.]+e-\d+", t)]
    cells = found["cells"]
    # a run of about a second: milliwatt-hours and milligrams, each with its band
    assert re.fullmatch(r"[\d.]+ ± [\d.]+ mWh", cells["IT energy"]), cells["IT energy"]
    assert re.fullmatch(r"[\d.]+ ± [\d.]+ (mg|g)CO2e", cells["Scope 2, location-based"]), \
        cells["Scope 2, location-based"]
    # the power chart alone: its lines span most of the window's width on the screenshot
    page = html_report / "report.html"
    alone = html_report / "wide-power.html"
    alone.write_text(page.read_text().replace(
        "</style>", "body>:not(#plot-power){display:none}</style>", 1))
    shot = render(alone.as_uri(), html_report / "wide-power.png", 1000, 460)
    _, _, rows = read_png(shot.png)
    green = bytes.fromhex(svg.PALETTE[0][1:])
    columns = {x // 3 for row in rows[:380] for x in range(0, len(row) - 2, 3)
               if all(abs(row[x + i] - green[i]) <= 24 for i in range(3))}
    assert max(columns) - min(columns) >= 560, (min(columns), max(columns))


@pytest.fixture(scope="module")
def compare_page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("compare-page")
    losses = [3.0, 2.4, 1.9, 1.5, 1.2, 1.0]
    with pytest.MonkeyPatch.context() as mp, clean_env(mp, root):
        runs = [make_lossy_run(root / name / "greentrack", losses, {"precision": precision}, watts,
                               root)
                for name, precision, watts in (("fp32", "32-true", 80.0),
                                               ("bf16", "bf16-mixed", 40.0))]
        code, out, err = run_cli(["compare", *map(str, runs), "--target", "loss<=1.4",
                                  "--format", "html"])
        assert code == 0, err
    page = root / "compare.html"
    page.write_text(out)
    yield page


def test_the_compare_page_draws_named_runs_and_the_target(compare_page: Path) -> None:
    require_chromium()
    found = measured(compare_page, compare_page.with_name("measure.png"))
    chart = found["charts"]["chart"]
    assert chart["width"] >= MIN_CHART_PX and chart["tick_px"] >= MIN_LABEL_PX, chart
    assert {"precision=32-true", "precision=bf16-mixed", "target loss<=1.4",
            "cumulative IT energy (mWh)"} <= set(chart["legend"])
    only = compare_page.with_name("only-chart.html")
    only.write_text(compare_page.read_text().replace(
        "</style>", "body>:not(svg){display:none}</style>", 1))
    shot = render(only.as_uri(), compare_page.with_name("chart.png"), 1000, 460)
    assert shot.console == [], shot.console
    _, _, rows = read_png(shot.png)
    counts = color_counts(rows, [svg.LEVEL_COLOR, svg.PALETTE[0], svg.PALETTE[1]])
    assert all(n > 150 for n in counts.values()), counts  # the target line and both runs
