"""One computation per figure: the live metrics, the summary, the integrations' totals and every
report agree on one run. Each disagreement here was seen on 85faba8 (issue 12)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import greentrack
from greentrack.reports import report_document
from greentrack.training.session import run_totals
from tests.fakes.powercap import LiveCounters, PowercapTree
from tests.helpers import RUN_FAST, clean_env, run_cli
from tests.servers import scrape_sums

FRA = 56.039  # codecarbon's global_energy_mix.json, France (the yearly factor reports cite)


def _run(root: Path, name: str = "run", segments: int = 1, steps: int = 3, ranks: int = 1,
         **settings_: Any) -> Path:
    tree = PowercapTree(root / f"{name}-pc")
    run = root / name
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GREENTRACK_POWERCAP_ROOT", str(tree.root))
        with LiveCounters(tree, {"intel-rapl:0": 40.0, "intel-rapl:0:1": 4.0}):
            for _ in range(segments):
                for rank in range(ranks):
                    # rank > 0 is another process of the node: it does not measure the host
                    with greentrack.Tracker(run, rank=rank, host_energy=rank == 0,
                                            **{**RUN_FAST, **settings_}) as t:
                        for _ in range(steps):
                            with t.step(samples=2):
                                time.sleep(0.03)
                        time.sleep(0.1)
    return run


def test_a_report_uses_the_settings_recorded_in_the_run(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """85faba8: `greentrack report RUN` of a run started with country=FRA, electricity_price=0.2
    used the world average (475 g/kWh) and no cost."""
    with clean_env(monkeypatch, tmp_path):
        run = _run(tmp_path, country="FRA", electricity_price=0.2, currency="EUR")
        code, _, err = run_cli(["report", str(run), "--format", "json", "--out", str(tmp_path / "o")])
        assert code == 0, err
        doc = json.loads((tmp_path / "o" / "report.json").read_text())
        assert doc["location"]["country_iso3"] == "FRA"
        assert doc["intensity"]["location_based"]["g_per_kwh"] == pytest.approx(FRA, rel=1e-3)
        assert doc["cost"]["total"] > 0 and doc["cost"]["currency"] == "EUR"
        flagged = report_document(run, {"country": "DEU"})  # an explicit flag wins
        assert flagged["location"]["country_iso3"] == "DEU"
        monkeypatch.setenv("GREENTRACK_COUNTRY", "USA")  # the environment loses to the record
        assert report_document(run, {})["location"]["country_iso3"] == "FRA"


def test_live_emissions_agree_with_the_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """85faba8: live grams used FRA without PUE; the report, the world average with PUE 1.56."""
    with clean_env(monkeypatch, tmp_path):
        tree = PowercapTree(tmp_path / "pc")
        monkeypatch.setenv("GREENTRACK_POWERCAP_ROOT", str(tree.root))
        with LiveCounters(tree, {"intel-rapl:0": 40.0, "intel-rapl:0:1": 4.0}):
            with greentrack.Tracker(tmp_path / "run", country="FRA", prometheus_port=0,
                                    **RUN_FAST) as t:
                for _ in range(5):
                    with t.step():
                        pass
                time.sleep(0.5)
                port = t.sinks[0].port
                live = scrape_sums(f"http://127.0.0.1:{port}/metrics")
        doc = report_document(tmp_path / "run", {})
    live_g_per_j = live["greentrack_emissions_grams_total"] / live["greentrack_energy_joules_total"]
    report_g_per_j = doc["scope2"]["location_based_kg"] * 1000 / (doc["energy"]["it_kwh"] * 3.6e6)
    assert live_g_per_j == pytest.approx(report_g_per_j, rel=0.01)
    assert live["greentrack_pue_ratio"] == doc["pue"]["value"] == 1.56  # one default, stated


def test_a_resumed_run_lists_its_hardware_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """85faba8: two segments gave "CPU ... x 2", BoAmps nbComponent 2, every device twice."""
    with clean_env(monkeypatch, tmp_path):
        run = _run(tmp_path, segments=2)
        s = greentrack.summarize(run)
        assert s["stores"] == 2 and len(s["sources"]) == 2  # package and dram, once each
        assert all(src["stores"] == 2 for src in s["sources"])
        assert sum(src["energy_j"] for src in s["sources"]) == pytest.approx(s["energy_j"]["total"])
        doc = report_document(run, {})
        assert " x 2" not in doc["compute"]["hardware"]["text"]
        assert len(doc["energy"]["devices"]) == 2
        assert all(c["nbComponent"] == 1 for c in _boamps_components(doc) if c["componentType"] == "cpu")


def _boamps_components(doc: dict[str, Any]) -> list[dict[str, Any]]:
    from greentrack.reports.to_boamps import render
    components: list[dict[str, Any]] = render(doc)["infrastructure"]["components"]
    return components


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                HealthCheck.too_slow])
@given(segments=st.integers(1, 2), ranks=st.integers(1, 2), steps=st.integers(0, 4),
       country=st.sampled_from([None, "FRA", "USA"]))
def test_every_output_gives_the_same_figures(segments: int, ranks: int, steps: int,
                                             country: str | None, tmp_path_factory: Any,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path_factory.mktemp("prop")
    with clean_env(monkeypatch, root):
        run = _run(root, segments=segments, ranks=ranks, steps=steps,
                   **({"country": country} if country else {}))
        s = greentrack.summarize(run)
        totals = run_totals(run)
        doc = report_document(run, {})
    n = segments * ranks * steps
    assert s["steps"] == totals["steps"] == doc["steps"]["count"] == n
    assert s["energy_j"]["total"] == totals["energy_j"]["total"] == doc["energy"]["total_j"]
    assert doc["energy"]["it_kwh"] == pytest.approx(s["energy_kwh"])
    assert sum(d["energy_j"] for d in doc["energy"]["devices"]) == pytest.approx(s["energy_j"]["total"])
    g_per_kwh = doc["intensity"]["location_based"]["g_per_kwh"]
    from greentrack.carbon import live_intensity
    from greentrack.carbon.resolve import config_for_run, settings_for
    cfg = config_for_run({"country": country}, {})
    assert live_intensity(cfg)[0] == pytest.approx(g_per_kwh)  # what the exporter would use
    assert doc["scope2"]["location_based_kg"] == pytest.approx(
        s["energy_kwh"] * settings_for(cfg).pue.value * g_per_kwh / 1000)
    json.dumps(s, allow_nan=False)


def test_stop_returns_the_runs_totals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As codecarbon users expect of ``stop()`` (85faba8 returned None)."""
    with clean_env(monkeypatch, tmp_path):
        tree = PowercapTree(tmp_path / "pc")
        monkeypatch.setenv("GREENTRACK_POWERCAP_ROOT", str(tree.root))
        with LiveCounters(tree, {"intel-rapl:0": 40.0, "intel-rapl:0:1": 4.0}):
            t = greentrack.Tracker(tmp_path / "run", country="FRA", **RUN_FAST).start()
            for _ in range(3):
                with t.step():
                    time.sleep(0.05)
            totals = t.stop()
            plain = greentrack.Tracker(tmp_path / "plain", **RUN_FAST).start()
            time.sleep(0.2)
            no_location = plain.stop()
    assert totals is not None and totals is t.result and t.stop() is totals
    s = greentrack.summarize(tmp_path / "run")
    assert totals.steps == s["steps"] == 3 and totals.energy_j == s["energy_j"]
    assert totals.energy_kwh == pytest.approx(s["energy_kwh"]) and totals.status == "completed"
    doc = report_document(tmp_path / "run", {})
    assert totals.intensity_g_per_kwh == pytest.approx(FRA, rel=1e-3)
    assert totals.emissions_g == pytest.approx(doc["scope2"]["location_based_kg"] * 1000)
    assert totals.pue == 1.56 and "global_energy_mix" in str(totals.intensity_source)
    # no location: the world average, named, as every report and the CSV row (issue 20: None here
    # while the report, the CSV, Prometheus and advise used the world average)
    from greentrack.carbon.location import world_average
    assert no_location is not None and "no location was set" in str(no_location.intensity_source)
    assert no_location.intensity_g_per_kwh == pytest.approx(world_average().g_per_kwh)
    assert no_location.emissions_g == pytest.approx(
        report_document(tmp_path / "plain", {})["scope2"]["location_based_kg"] * 1000, rel=1e-9)
    assert any("no location set" in w for w in no_location.warnings)
