"""Issue 26, report pages: figures in the unit that suits them (one formatting function), every
energy and emission with its band beside it, no "FLOPs per J" row without FLOPs, BoAmps with the
RAM size the run recorded, compare without a FLOPs row nobody recorded."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from greentrack.common.units import (ENERGY_UNITS, MASS_UNITS, energy_text, mass_text, sig,
                                     with_band)
from tests.helpers import (REPO, boamps_validator, clean_env, make_lossy_run, make_run,
                           report_json, run_cli)


@pytest.mark.parametrize(("joules", "text"), [
    (0.000468 * 3.6e6, "468 mWh"), (3.6e3, "1 Wh"), (0.5 * 3.6e6, "500 Wh"),
    (2.5 * 3.6e6, "2.5 kWh"), (1234.0 * 3.6e6, "1.23 MWh"), (1.0, "0.278 mWh"), (0.0, "0 Wh")])
def test_energy_is_written_in_the_unit_that_suits_it(joules: float, text: str) -> None:
    assert energy_text(joules) == text


@pytest.mark.parametrize(("grams", "text"), [
    (2.19e-2, "21.9 mgCO2e"), (0.5, "500 mgCO2e"), (1.0, "1 gCO2e"), (2190.0, "2.19 kgCO2e"),
    (2.5e6, "2.5 tCO2e"), (0.0, "0 gCO2e")])
def test_mass_is_written_in_the_unit_that_suits_it(grams: float, text: str) -> None:
    assert mass_text(grams) == text


def test_a_band_is_written_in_its_figures_unit() -> None:
    assert with_band(2.19e-2, 50.0, MASS_UNITS, "CO2e") == "21.9 ± 11 mgCO2e"
    assert with_band(1684.8, 10.0, ENERGY_UNITS) == "468 ± 47 mWh"
    assert with_band(1684.8, None, ENERGY_UNITS) == "468 mWh"


def test_units_are_scaled_in_one_place() -> None:
    """No report module writes its own kWh or kgCO2e figure: they go through common/units."""
    for path in (REPO / "greentrack" / "reports").glob("*.py"):
        text = path.read_text()
        assert not re.search(r"""_n\([^)]*["'](k?Wh|kWh|kgCO2e|gCO2e)["']\)""", text), path.name


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """A run of a few tenths of a second, no FLOPs recorded; its md, html, json and BoAmps."""
    root = tmp_path_factory.mktemp("pages")
    with pytest.MonkeyPatch.context() as mp, clean_env(mp, root):
        run = make_run(root, steps=4, step_s=0.05, step_info={"samples": 4}, country="FR")
        code, _, err = run_cli(["report", str(run), "--format", "json,md,html,boamps",
                                "--out", str(root / "out")])
        assert code == 0, err
        yield run, root / "out"


def _cells(md: str, section: str) -> list[list[str]]:
    """The table rows of a Markdown section (``## section`` to the next ``## ``)."""
    body = md.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return [[c.strip() for c in line.strip("|").split("|")] for line in body.splitlines()
            if line.startswith("| ") and not line.startswith("|---")]


MASS = re.compile(r"\d (mg|g|kg|t)CO2e\b(?!/)")
ENERGY = re.compile(r"\d (mWh|Wh|kWh|MWh)\b")


def test_tiny_figures_read_in_small_units_with_their_band(tiny: tuple[Path, Path]) -> None:
    _, out = tiny
    md = (out / "report.md").read_text()
    doc = report_json(out)
    pct = doc["methodology"]["uncertainty"]["pct"]
    summary = {r[0]: r[1] for r in _cells(md, "Summary")}
    kwh = doc["summary"]["energy_kwh"]
    assert kwh < 0.001  # the "0.000468 kWh": now in mWh
    assert re.fullmatch(r"[\d.]+ ± [\d.]+ mWh", summary["IT energy"]), summary["IT energy"]
    value, band = (float(x) for x in re.findall(r"[\d.]+", summary["IT energy"]))
    assert value == pytest.approx(kwh * 1e6, rel=5e-3)
    assert band == pytest.approx(value * pct / 100, rel=0.05)
    loc = summary["Scope 2, location-based"]
    assert re.fullmatch(r"[\d.]+ ± [\d.]+ mgCO2e", loc), loc
    assert float(loc.split()[0]) == pytest.approx(doc["summary"]["emissions_location_kg"] * 1e6,
                                                  rel=5e-3)
    assert "e-0" not in summary["IT energy"] + loc
    # every operational emission and energy beside its band
    for section in ("Summary", "Carbon: GHG Protocol Scope 2, both methods",
                    "Software Carbon Intensity (ISO/IEC 21031:2024)", "Compute and efficiency"):
        for row in _cells(md, section):
            for cell in row:
                if (MASS.search(cell) or ENERGY.search(cell)) and "Embodied" not in row[0]:
                    assert "±" in cell, (section, row)
    assert "no band: catalogue figures" in md  # embodied: says why it has none


#: a figure and its unit as the pages write it (``93.67 mWh``, ``2.5 tCO2e``; not ``g/kWh``)
FIGURE = re.compile(r"(?<![\w.])(\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?) (mWh|Wh|kWh|MWh|mg|g|kg|t)"
                    r"(?:CO2e)?\b(?!/)")


def _unscaled(text: str) -> list[str]:
    """Figures not written in the unit that suits them: under 1 of a unit above the smallest,
    or 1000 and more of a unit below the largest."""
    out = []
    for m in FIGURE.finditer(text):
        v, unit = float(m.group(1).replace(",", "")), m.group(2)
        if v and ((v < 1 and unit not in ("mWh", "mg")) or (v >= 1000 and unit not in ("MWh", "t"))):
            out.append(m.group(0))
    return out


def test_every_figure_of_a_page_is_in_the_unit_that_suits_it(
        tiny: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """8a2bbe5's pages kept a few figures out of the scaling: the region finding's "the run's
    9.367e-05 kWh ... is 0.005249 g" among mWh and mgCO2e rows, the Scope 3 note's "2,500 kgCO2e"
    beside the embodied table's "2.5 tCO2e". (The EU AI Act's field is asked for in MWh.)"""
    run, out = tiny
    md = (out / "report.md").read_text()
    assert "| region |" in md  # the finding whose evidence carried kWh and g
    pages = [md.replace(md.split("## EU AI Act")[1].split("\n## ")[0], "")]
    for device in report_json(out)["embodied"]["devices"]:  # a source quotes its own figures
        pages[0] = pages[0].replace(device["source"], "")
    with clean_env(monkeypatch, tmp_path):
        code, text, err = run_cli(["advise", str(run)])
    assert code == 0, err
    pages.append(text)
    assert [_unscaled(p) for p in pages] == [[], []]
    assert _unscaled("0.005249 g, 9.367e-05 kWh, 2,500 kgCO2e; 5 mg, 2.5 t, 56 g/kWh") == [
        "0.005249 g", "9.367e-05 kWh", "2,500 kgCO2e"]


def _axis_texts(svg_text: str) -> tuple[list[str], list[str], list[str]]:
    """A chart's tick labels on x, on y, and its axis titles, as drawn."""
    texts = [(t.get("text-anchor"), t.get("transform"), t.text or "")
             for t in ET.fromstring(svg_text).iter("{http://www.w3.org/2000/svg}text")]
    number = re.compile(r"[\d.e+-]+")
    x = [text for anchor, turn, text in texts if anchor == "middle" and number.fullmatch(text)]
    y = [text for anchor, turn, text in texts if anchor == "end"]
    titles = [text for anchor, turn, text in texts
              if anchor == "middle" and not number.fullmatch(text)]
    return x, y, titles


def test_the_energy_charts_are_drawn_in_the_unit_of_their_figures(
        tiny: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """8a2bbe5 wrote the tables in mWh and drew the same run's cumulative energy against an
    "energy (kWh)" axis ticked 2e-05, 4e-05...; compare's loss-against-energy chart likewise."""
    run, out = tiny
    kwh = report_json(out)["summary"]["energy_kwh"]
    _, ticks, titles = _axis_texts((out / "report-cumulative.svg").read_text())
    assert "energy (mWh)" in titles, titles
    assert not [t for t in ticks if "e" in t], ticks
    # the top tick reads in mWh: at or above the run's energy, within one tick step of it
    assert kwh * 1e6 <= float(ticks[-1]) <= 2.5 * kwh * 1e6, (ticks, kwh)
    with clean_env(monkeypatch, tmp_path):
        lossy = make_lossy_run(tmp_path / "lossy", [3.0, 2.0, 1.0], {}, 40.0, tmp_path)
        code, page, err = run_cli(["compare", str(run), str(lossy), "--format", "html"])
    assert code == 0, err
    chart = page[page.index("<svg"):page.index("</svg>") + 6]
    ticks, _, titles = _axis_texts(chart)
    assert "cumulative IT energy (mWh)" in titles, titles
    assert not [t for t in ticks if "e-" in t], ticks
    assert "kgCO2e" not in page  # nothing in this comparison is a kilogram


def test_the_eu_ai_act_energy_keeps_the_figures_the_form_asks_for(tiny: tuple[Path, Path]) -> None:
    """The form asks for the energy in MWh "to at least two significant figures"; 8a2bbe5 wrote
    the demo's 6.0047e-08 MWh as "6e-08" (the trailing zeros of %g dropped: one figure)."""
    assert sig(6.0047e-8, 3, keep_zeros=True) == "6.00e-08" and sig(6.0047e-8, 3) == "6e-08"
    assert sig(2.0, 3, keep_zeros=True) == "2.00" and sig(0.1, 2, keep_zeros=True) == "0.10"
    _, out = tiny
    eu = report_json(out)["eu_ai_act"]
    text = eu["training_energy_mwh_text"]
    mantissa = text.lower().split("e")[0].replace(".", "").lstrip("0")
    assert len(mantissa) == 3 and float(text) == pytest.approx(eu["training_energy_mwh"], rel=5e-3)
    assert f"| training energy | {text} MWh" in (out / "report.md").read_text()


def test_the_summary_writes_emissions_as_the_report_does(tiny: tuple[Path, Path]) -> None:
    """8a2bbe5's summary (``greentrack summary``, the end of ``greentrack run`` and of the demo)
    wrote "0.006792 gCO2e" without a band and "(0.0777 Wh)" beside the report's "6.79 ± 3.4
    mgCO2e" and "77.7 mWh"."""
    run, out = tiny
    code, text, err = run_cli(["summary", str(run)])
    assert code == 0, err
    summary = {r[0]: r[1] for r in _cells((out / "report.md").read_text(), "Summary")}
    line = next(ln for ln in text.splitlines() if ln.lstrip().startswith("emissions"))
    assert f"emissions  {summary['Scope 2, location-based']} (location-based" in line, line
    energy = next(ln for ln in text.splitlines() if ln.lstrip().startswith("energy"))
    assert re.search(r"J \([\d.]+ mWh\)", energy), energy
    assert summary["IT energy"].split(" ±")[0] in energy
    assert not _unscaled(text)


def test_flops_per_joule_is_absent_without_flops(tiny: tuple[Path, Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    run, out = tiny
    doc = report_json(out)
    assert doc["compute"]["flops"] is None and doc["compute"]["flops_per_joule"] is None
    assert "FLOPs per J" not in (out / "report.md").read_text()
    assert "FLOPs per J" not in (out / "report.html").read_text()
    boamps = json.loads((out / "boamps-report.json").read_text())
    assert "0 FLOP" not in boamps["task"]["taskDescription"]
    with clean_env(monkeypatch, tmp_path):
        other = make_run(tmp_path, "other", steps=2, step_s=0.02, step_info={"samples": 4})
        code, text, err = run_cli(["compare", str(run), str(other)])
        assert code == 0, err
        assert "FLOPs per joule" not in text
        flopped = make_run(tmp_path, "flopped", steps=2, step_s=0.02)
        code, text, err = run_cli(["compare", str(run), str(flopped)])
    assert code == 0, err
    assert any(line.startswith("FLOPs per joule") for line in text.splitlines())


def test_boamps_has_the_ram_size_the_run_recorded(tiny: tuple[Path, Path]) -> None:
    _, out = tiny
    doc = report_json(out)
    gib = doc["compute"]["hardware"]["ram_total_gb"]
    assert gib and gib > 0  # the machine record: psutil's total / 2**30
    report = json.loads((out / "boamps-report.json").read_text())
    boamps_validator().validate(report)
    ram = [c for c in report["infrastructure"]["components"] if c["componentType"] == "ram"]
    assert len(ram) == 1 and ram[0]["nbComponent"] == 1
    assert ram[0]["memorySize"] == pytest.approx(gib * 2**30 / 1e9, abs=0.01)


def test_the_screenshots_are_in_docs_and_made_by_the_script() -> None:
    """Done-when of issue 26: the demo's report and a compare page, shown in docs/reports.md,
    each a real PNG under 300 KB, both written by docs/screenshots.sh."""
    script = (REPO / "docs" / "screenshots.sh").read_text()
    doc = (REPO / "docs" / "reports.md").read_text()
    for name in ("report.png", "compare.png"):
        png = REPO / "docs" / "screenshots" / name
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < 300 * 1024, (name, len(data))
        assert f"docs/screenshots/{name}" in script.replace("$repo/", "") \
            and f"](screenshots/{name})" in doc
    assert "examples/demo.py" in script and "-m greentrack compare" in script
