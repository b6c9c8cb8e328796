"""One footprint: ``stop()``, the summary, every report and the CSV row give the same figures for
one run, whatever its intensity, segments, steps or currency. Each case here was seen on 8a2bbe5
(issue 20); the property test over generated runs is tests/test_oracle.py."""

from __future__ import annotations

import ast
import csv
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import greentrack
from greentrack.carbon.location import world_average
from greentrack.common.units import J_PER_KWH
from greentrack.reports import report_document
from greentrack.reports.compare import compare
from greentrack.reports.compare_format import format_table
from tests.fakes.powercap import LiveCounters, PowercapTree
from tests.helpers import RUN_FAST, clean_env, run_cli

REPO = Path(__file__).resolve().parents[1]
DEU = 381.0  # a rough bound check only: codecarbon's Germany factor is far above France's
WATTS = {"intel-rapl:0": 40.0, "intel-rapl:0:1": 4.0}


def _segment(run_dir: Path, tree: PowercapTree, *, train: int = 3, val: int = 0,
             step_s: float = 0.03, record: list[float] | None = None, rank: int = 0,
             started: Callable[[], object] | None = None, **settings: Any) -> greentrack.Tracker:
    """One segment of a run: a real tracker, ``train`` and ``val`` steps, metrics recorded;
    ``started`` is called once the tracker has started."""
    t = greentrack.Tracker(run_dir, rank=rank, host_energy=rank == 0, **{**RUN_FAST, **settings})
    t.start()
    if started is not None:
        started()
    for i in range(train):
        with t.step():
            time.sleep(step_s)
        if record is not None:
            t.record(loss=record[i])
    for _ in range(val):
        with t.step("validation"):
            time.sleep(step_s / 3)
    time.sleep(0.05)
    return t


def _intensity_csv(path: Path, rows: list[tuple[float, float]]) -> Path:
    path.write_text("start,g_per_kwh\n" + "".join(f"{t},{g}\n" for t, g in rows))
    return path


@pytest.mark.slow
def test_stop_summary_and_every_report_integrate_a_time_varying_series_alike(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """8a2bbe5: with an intensity CSV stepping from 100 to 900 g/kWh during the run, stop()
    charged the whole run at 900 (the value at stop), 59% above the report's 585."""
    with clean_env(monkeypatch, tmp_path):
        tree = PowercapTree(tmp_path / "pc")
        monkeypatch.setenv("GREENTRACK_POWERCAP_ROOT", str(tree.root))
        now = time.time()
        series = _intensity_csv(tmp_path / "i.csv", [(now - 60, 100.0), (now + 3600, 900.0)])

        def step_in_the_run() -> None:  # 0.6 s into the steps, however long the start took
            t0 = time.time()  # (a loaded host's start took longer than a step at now + 0.8)
            _intensity_csv(series, [(t0 - 60, 100.0), (t0 + 0.6, 900.0), (t0 + 3600, 900.0)])

        out = tmp_path / "emissions.csv"
        with LiveCounters(tree, WATTS):
            t = _segment(tmp_path / "run", tree, train=25, step_s=0.06, started=step_in_the_run,
                         intensity_csv=str(series), emissions_csv=str(out))
            totals = t.stop()
    assert totals is not None and totals.emissions_g is not None
    doc = report_document(tmp_path / "run", {})
    s = greentrack.summarize(tmp_path / "run")
    row = next(csv.DictReader(out.open()))
    report_g = doc["scope2"]["location_based_kg"] * 1000
    assert 150.0 < totals.intensity_g_per_kwh < 850.0  # the run's own mix, not the value at stop
    assert totals.emissions_g == pytest.approx(report_g, rel=1e-9)
    assert s["footprint"]["emissions_location_g"] == pytest.approx(report_g, rel=1e-9)
    assert float(row["emissions"]) * 1000 == pytest.approx(report_g, rel=1e-9)
    assert doc["intensity"]["location_based"]["method"] == "time-resolved"


@pytest.mark.slow
def test_per_step_figures_share_one_named_divisor(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """8a2bbe5: with 6 train and 18 validation steps, J per step divided by 6 and cost per step
    by 24; under 3 ranks x 4 steps, `steps` said 12 while J per step divided by 4."""
    with clean_env(monkeypatch, tmp_path):
        tree = PowercapTree(tmp_path / "pc")
        monkeypatch.setenv("GREENTRACK_POWERCAP_ROOT", str(tree.root))
        with LiveCounters(tree, WATTS):
            _segment(tmp_path / "one", tree, train=6, val=18, electricity_price=0.3,
                     currency="EUR").stop()
            for rank in range(3):  # three ranks of one job, one directory
                _segment(tmp_path / "ddp", tree, train=4, rank=rank).stop()
    doc = report_document(tmp_path / "one", {})
    c, cost = doc["compute"], doc["cost"]
    assert (c["optimizer_steps"], c["step_rows"], c["per_step_divisor"]) == (6, 24, "optimizer_steps")
    assert cost["per_step_divisor"] == "optimizer_steps"
    assert c["joules_per_step"] * 6 == pytest.approx(doc["energy"]["total_j"], rel=1e-12)
    assert cost["per_step"] * 6 == pytest.approx(cost["total"], rel=1e-12)
    assert c["emissions_g_per_step"] * 6 == pytest.approx(doc["scope2"]["location_based_kg"] * 1000)
    ddp = report_document(tmp_path / "ddp", {})["compute"]
    assert (ddp["optimizer_steps"], ddp["step_rows"]) == (4, 12)
    totals = greentrack.summarize(tmp_path / "ddp")["footprint"]
    assert totals["per_step"]["divisor"] == "optimizer_steps" and totals["per_step"]["count"] == 4
    text = "\n".join(line for kind, *rest in _blocks(tmp_path / "one") for line in map(str, rest))
    assert "optimizer steps" in text


def _blocks(run: Path) -> list[Any]:
    from greentrack.reports.content import blocks
    return blocks(report_document(run, {}))


def test_a_resumed_run_counts_each_segment_at_the_settings_it_recorded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """8a2bbe5: segments at FR x PUE 1.2 then DE x PUE 1.8: the CSV row, stop() and Prometheus
    charged the whole run at DE x 1.8, the report at FR x 1.2, with no warning."""
    with clean_env(monkeypatch, tmp_path):
        tree = PowercapTree(tmp_path / "pc")
        monkeypatch.setenv("GREENTRACK_POWERCAP_ROOT", str(tree.root))
        out = tmp_path / "emissions.csv"
        run = tmp_path / "run"
        with LiveCounters(tree, WATTS):
            _segment(run, tree, country="FR", pue=1.2, emissions_csv=str(out)).stop()
            first = greentrack.summarize(run)["footprint"]
            totals = _segment(run, tree, country="DE", pue=1.8, emissions_csv=str(out)).stop()
    assert totals is not None
    doc = report_document(run, {})
    parts = doc["parts"]
    assert len(parts) == 2 and [p["pue"] for p in parts] == [1.2, 1.8]
    fr, de = parts[0]["g_per_kwh"], parts[1]["g_per_kwh"]
    assert fr < 100 < de
    want = sum(p["it_kwh"] * p["pue"] * p["g_per_kwh"] for p in parts)
    assert first["emissions_location_g"] == pytest.approx(parts[0]["it_kwh"] * 1.2 * fr, rel=1e-9)
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2  # one per stop: they add up to the run (the file is never rewritten)
    assert float(rows[0]["emissions"]) * 1000 == pytest.approx(first["emissions_location_g"])
    for grams in (totals.emissions_g, doc["scope2"]["location_based_kg"] * 1000,
                  greentrack.summarize(run)["footprint"]["emissions_location_g"],
                  sum(float(r["emissions"]) for r in rows) * 1000):
        assert grams == pytest.approx(want, rel=1e-9)
    assert any("different carbon or price settings" in w for w in doc["warnings"])
    assert any("different carbon or price settings" in w for w in totals.warnings)
    flagged = report_document(run, {"country": "FR"})  # a flag overrides every segment
    assert flagged["parts"][1]["g_per_kwh"] == pytest.approx(fr)
    assert [p["pue"] for p in flagged["parts"]] == [1.2, 1.8]  # PUE not flagged: each its own


def test_no_location_is_the_world_average_in_every_output(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """8a2bbe5: stop().emissions_g was None while the report, the CSV row, Prometheus and advise
    used the world average: a codecarbon port (emissions in kg from stop()) failed."""
    with clean_env(monkeypatch, tmp_path):
        tree = PowercapTree(tmp_path / "pc")
        monkeypatch.setenv("GREENTRACK_POWERCAP_ROOT", str(tree.root))
        out = tmp_path / "emissions.csv"
        with LiveCounters(tree, WATTS):
            totals = _segment(tmp_path / "run", tree, emissions_csv=str(out)).stop()
    assert totals is not None and totals.emissions_g is not None
    kg = float(totals)  # codecarbon's stop() returns kilograms
    assert kg == pytest.approx(totals.emissions_g / 1000) and kg > 0
    doc = report_document(tmp_path / "run", {})
    assert doc["intensity"]["location_based"]["method"] == "world-average"
    assert totals.intensity_g_per_kwh == pytest.approx(world_average().g_per_kwh)
    row = next(csv.DictReader(out.open()))
    assert float(row["emissions"]) == pytest.approx(kg, rel=1e-9)
    assert greentrack.summarize(tmp_path / "run")["footprint"]["emissions_location_g"] == \
        pytest.approx(totals.emissions_g, rel=1e-9)
    code, text, _ = run_cli(["advise", str(tmp_path / "run"), "--json"])
    assert code == 0 and json.loads(text)["footprint"]["emissions_location_g"] == \
        pytest.approx(totals.emissions_g, rel=1e-9)


def test_compare_never_compares_costs_in_two_currencies(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """8a2bbe5: a USD run's cost was printed in the 'cost (EUR)' row, 'x0.808, better'."""
    with clean_env(monkeypatch, tmp_path):
        tree = PowercapTree(tmp_path / "pc")
        monkeypatch.setenv("GREENTRACK_POWERCAP_ROOT", str(tree.root))
        with LiveCounters(tree, WATTS):
            _segment(tmp_path / "eur", tree, electricity_price=0.3, currency="EUR").stop()
            _segment(tmp_path / "usd", tree, electricity_price=0.3, currency="USD").stop()
            _segment(tmp_path / "eur2", tree, electricity_price=0.3, currency="EUR").stop()
    result = compare([tmp_path / "eur", tmp_path / "usd", tmp_path / "eur2"], {})
    usd, eur2 = result["runs"][1], result["runs"][2]
    assert usd["ratios"]["cost_total"] is None and "cost_total" in usd["not_compared"]
    assert eur2["ratios"]["cost_total"] is not None
    table = format_table(result)
    cost_row = next(line for line in table.splitlines() if line.startswith("cost"))
    assert "USD" in cost_row and "EUR" in cost_row and "x0." not in cost_row.split("USD")[0][-12:]
    assert "costs in different currencies are not compared" in table


def test_compare_target_gives_the_run_wide_step_of_a_resumed_run(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """8a2bbe5: a target reached in the second segment gave the step within that segment
    (5.5 where the run-wide figure was 25.5)."""
    with clean_env(monkeypatch, tmp_path):
        tree = PowercapTree(tmp_path / "pc")
        monkeypatch.setenv("GREENTRACK_POWERCAP_ROOT", str(tree.root))
        run = tmp_path / "run"
        losses = [10.0 - 0.2 * i for i in range(40)]
        with LiveCounters(tree, WATTS):
            _segment(run, tree, train=20, step_s=0.005, record=losses[:20]).stop()
            _segment(run, tree, train=20, step_s=0.005, record=losses[20:]).stop()
    # loss 10 - 0.2 i after step i + 1: 4.9 is crossed between steps 26 and 27 (4.8 after 27)
    result = compare([run], {}, target=("loss", "<=", 4.9))
    t = result["runs"][0]["to_target"]
    assert t["reached"] and t["steps"] == pytest.approx(26.5, abs=0.01)


def test_one_module_holds_each_formula() -> None:
    """8a2bbe5: kWh x PUE x intensity was written at 8 sites, PUE applied at 9, seconds to hours
    converted at 6. Now: the footprint applies PUE and intensity, units.hours converts."""
    pue_sites, hour_sites = [], []
    # the only other places an intensity meets a number: the time-series integral the footprint
    # calls (series.integrate, also the start-time search's), and a factor's unit conversion
    intensity_ok = {"greentrack/carbon/footprint.py", "greentrack/carbon/series.py",
                    "greentrack/carbon/location.py"}

    def name_of(node: ast.AST) -> str:
        return (node.attr if isinstance(node, ast.Attribute) else
                node.id if isinstance(node, ast.Name) else
                name_of(node.value) if isinstance(node, ast.Subscript) else "").lower()

    for path in sorted((REPO / "greentrack").rglob("*.py")):
        rel = str(path.relative_to(REPO))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.BinOp):
                continue
            right = node.right
            # x / 3600 (seconds to hours), x / 86400 (to days), hours * 3600 (back to seconds)
            if isinstance(node.op, ast.Div) and isinstance(right, ast.Constant) \
                    and right.value in (3600, 3600.0, 86400, 86400.0) and rel != "greentrack/common/units.py":
                hour_sites.append(f"{rel}:{node.lineno}")
            if isinstance(node.op, ast.Mult) and any(
                    isinstance(a, ast.Constant) and a.value in (3600, 3600.0) and "hour" in name_of(b)
                    for a, b in ((node.left, node.right), (node.right, node.left))):
                hour_sites.append(f"{rel}:{node.lineno}")
            # a PUE applied (or an intensity multiplied in) anywhere but the footprint
            if isinstance(node.op, ast.Mult) and rel not in intensity_ok and any(
                    "pue" in name_of(side) or "g_per_kwh" in name_of(side)
                    for side in (node.left, node.right)):
                pue_sites.append(f"{rel}:{node.lineno}")
    assert not hour_sites, hour_sites
    assert not pue_sites, pue_sites


def test_energy_of_an_untracked_kind_is_none_live_and_stored(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """8a2bbe5: Tracker.totals() gave 0.0 for a kind with no device, Run.energy_j() None."""
    with clean_env(monkeypatch, tmp_path):
        tree = PowercapTree(tmp_path / "pc")
        monkeypatch.setenv("GREENTRACK_POWERCAP_ROOT", str(tree.root))
        with LiveCounters(tree, WATTS):
            t = _segment(tmp_path / "run", tree)
            live = t.totals()
            t.stop()
    stored = greentrack.summarize(tmp_path / "run")["energy_j"]
    assert live["gpu"] is None and stored["gpu"] is None  # no GPU here: not a silent 0
    assert live["cpu"] is not None and stored["cpu"] is not None
    assert stored["total"] == pytest.approx(sum(v for k, v in stored.items()
                                                if k != "total" and v is not None))
    assert stored["total"] / J_PER_KWH == pytest.approx(
        greentrack.summarize(tmp_path / "run")["footprint"]["it_kwh"])
