"""The report's figures recomputed from the run's own numbers: E x PUE x I, Scope 2 both ways,
time-resolved integration against the stored energy buckets, embodied M, SCI, cost."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import greentrack
from tests.helpers import (clean_env, expected_integration, make_run, measured_s, report_json, run_cli,
                           samples_by_store, validate_own_schema)

YEAR_S = 365.25 * 86400.0
STEP = {"samples": 4, "tokens": 512, "flops": 2.0e9, "flops_method": "user-given", "mfu": 0.4}


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("gpurun")
    with pytest.MonkeyPatch.context() as mp, clean_env(mp, root):
        yield make_run(root, gpu_w=300.0, cpu_w=40.0, dram_w=4.0, step_info=STEP)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    with clean_env(monkeypatch, tmp_path):
        yield


def fra_g_per_kwh() -> float:
    from codecarbon.input import DataSource
    return float(DataSource().get_global_energy_mix_data()["FRA"]["carbon_intensity"])


def report(run_dir: Path, out: Path, *args: str) -> dict[str, Any]:
    code, _, err = run_cli(["report", str(run_dir), "--format", "json", "--out", str(out), *args])
    assert code == 0, err
    doc = report_json(out)
    validate_own_schema(doc)
    return doc


@pytest.mark.slow
def test_scope2_both_ways_embodied_sci_and_cost_from_the_runs_figures(gpu_run: Path, tmp_path: Path,
                                                                       env: None) -> None:
    doc = report(gpu_run, tmp_path / "o", "--country", "FR", "--pue", "1.2", "--market-factor", "20",
                 "--electricity-price", "0.3", "--gpu-hour-price", "2", "--currency", "EUR",
                 "--sci-unit", "million-tokens")
    s, summ = doc["summary"], greentrack.summarize(gpu_run)
    e_kwh = summ["energy_kwh"]
    # the energy is what the hardware drew: 300 W GPU + 40 W package + 4 W DRAM
    assert summ["energy_j"]["total"] == pytest.approx(344.0 * measured_s(gpu_run), rel=0.15)
    assert s["energy_kwh"] == e_kwh and s["status"] == "completed"
    assert s["pue"] == 1.2 and s["facility_energy_kwh"] == pytest.approx(e_kwh * 1.2)
    i = fra_g_per_kwh()
    assert s["carbon_intensity_g_per_kwh"] == i and s["intensity_method"] == "yearly-average"
    assert s["emissions_location_kg"] == pytest.approx(e_kwh * 1.2 * i / 1000.0)
    assert s["emissions_market_kg"] == pytest.approx(e_kwh * 1.2 * 20 / 1000.0)
    assert doc["intensity"]["market_based"]["g_per_kwh"] == 20.0
    gpu_s = summ["gpu_seconds"]
    assert s["gpu_hours"] == pytest.approx(gpu_s / 3600.0)
    host_s = doc["run"]["hosts"][next(iter(doc["run"]["hosts"]))]
    m_kg = 150.0 * gpu_s / (4 * YEAR_S) + 2500.0 * host_s / (4 * YEAR_S)
    assert s["embodied_kg"] == pytest.approx(m_kg, rel=1e-3)
    assert doc["embodied"]["scope3_note"]["hardware_embodied_kg"] == 150.0 + 2500.0
    tokens, flops = 8 * 512.0, 8 * 2.0e9
    o_g = e_kwh * 1.2 * i
    sci = doc["sci"]
    assert sci["o_g"] == pytest.approx(o_g) and sci["m_g"] == pytest.approx(m_kg * 1000, rel=1e-3)
    assert sci["per_run_g"] == pytest.approx(o_g + m_kg * 1000, rel=1e-3)
    assert sci["per_million_tokens_g"] == pytest.approx((o_g + m_kg * 1000) / tokens * 1e6, rel=1e-3)
    assert sci["per_flop_g"] == pytest.approx((o_g + m_kg * 1000) / flops, rel=1e-3)
    assert s["sci_unit"] == "million-tokens" and s["sci_g"] == sci["per_million_tokens_g"]
    cost = doc["cost"]
    assert cost["electricity"] == pytest.approx(e_kwh * 1.2 * 0.3)
    assert cost["gpu_hours"] == pytest.approx(gpu_s / 3600.0 * 2)
    assert cost["total"] == pytest.approx(cost["electricity"] + cost["gpu_hours"])
    assert cost["per_step"] == pytest.approx(cost["total"] / 8)
    assert cost["per_million_tokens"] == pytest.approx(cost["total"] / tokens * 1e6)
    assert s["currency"] == "EUR" and s["cost_total"] == cost["total"]
    c = doc["compute"]
    assert c["flops"] == flops and s["flops"] == flops and "user-given" in c["flops_method"]
    assert c["mfu"] == pytest.approx(0.4) and c["tokens"] == tokens and c["samples"] == 32
    assert c["joules_per_token"] == pytest.approx(summ["energy_j"]["total"] / tokens)
    assert c["flops_per_joule"] == pytest.approx(flops / summ["energy_j"]["total"])


def test_eu_ai_act_fields(gpu_run: Path, tmp_path: Path, env: None) -> None:
    doc = report(gpu_run, tmp_path / "o", "--country", "FR")
    eu, summ = doc["eu_ai_act"], greentrack.summarize(gpu_run)
    assert eu["training_energy_mwh"] == pytest.approx(summ["energy_kwh"] / 1000.0)
    text = eu["training_energy_mwh_text"]
    assert float(text) == pytest.approx(eu["training_energy_mwh"], rel=0.01)
    digits = text.lower().split("e")[0].replace(".", "").replace("-", "").lstrip("0")
    assert len(digits) >= 2  # at least two significant figures
    assert eu["energy_basis"] == "measured"
    assert eu["training_compute_flops"] == 8 * 2.0e9 and "user-given" in eu["training_compute_method"]
    assert eu["wall_clock_days"] == pytest.approx(summ["duration_s"] / 86400.0)
    assert eu["hardware_days"] == pytest.approx(summ["gpu_seconds"] / 86400.0)
    words = len(eu["methodology"].split())
    assert 60 <= words <= 160, eu["methodology"]
    for needed in ("nvml-energy-counter", "rapl-powercap", "PUE", "FLOP", "Quality band"):
        assert needed.lower() in eu["methodology"].lower()


def _csv(path: Path, rows: list[tuple[float, float, float]]) -> Path:
    path.write_text("start,end,g_per_kwh\n" + "".join(f"{a!r},{b!r},{v}\n" for a, b, v in rows))
    return path


def test_time_resolved_intensity_is_integrated_against_the_stored_energy(gpu_run: Path, tmp_path: Path,
                                                                        env: None) -> None:
    meta = samples_by_store(gpu_run)
    start = meta[0][0]
    end = start + greentrack.summarize(gpu_run)["duration_s"]
    # quarter-second intervals through the run (100..700 g/kWh), dirty hours far outside it
    rows = [(start - 7200 + k * 3600, start - 7200 + (k + 1) * 3600, 5000.0) for k in range(1)]
    t, k = start - 0.5, 0
    while t < end + 0.5:
        rows.append((t, t + 0.25, [100.0, 700.0, 300.0, 500.0][k % 4]))
        t, k = t + 0.25, k + 1
    csv = _csv(tmp_path / "i.csv", rows)
    doc = report(gpu_run, tmp_path / "o", "--intensity-csv", str(csv), "--pue", "1.1")
    g, kwh = expected_integration(gpu_run, rows, fallback=475.0)
    eff = g / kwh
    loc = doc["intensity"]["location_based"]
    assert loc["method"] == "time-resolved" and loc["coverage"] == pytest.approx(1.0)
    assert doc["summary"]["carbon_intensity_g_per_kwh"] == pytest.approx(eff, rel=1e-6)
    e_kwh = doc["summary"]["energy_kwh"]
    assert doc["summary"]["emissions_location_kg"] == pytest.approx(e_kwh * 1.1 * eff / 1000, rel=1e-6)
    plain_mean = sum(v for *_, v in rows) / len(rows)
    assert not math.isclose(eff, plain_mean, rel_tol=0.05)  # not an average times the energy
    assert 100.0 < eff < 700.0
    assert not doc["warnings"]


def test_partial_coverage_charges_the_rest_at_the_yearly_factor_and_warns(gpu_run: Path, tmp_path: Path,
                                                                          env: None) -> None:
    start = samples_by_store(gpu_run)[0][0]
    rows = [(start - 10.0, start + 0.3, 10.0)]  # covers only the first 0.3 s
    csv = _csv(tmp_path / "i.csv", rows)
    doc = report(gpu_run, tmp_path / "o", "--intensity-csv", str(csv), "--country", "FRA")
    g, kwh = expected_integration(gpu_run, rows, fallback=fra_g_per_kwh())
    loc = doc["intensity"]["location_based"]
    assert 0.0 < loc["coverage"] < 1.0
    assert loc["g_per_kwh"] == pytest.approx(g / kwh, rel=1e-6)
    assert any("covers" in w and "yearly-average" in w for w in doc["warnings"])


@pytest.mark.slow
def test_a_series_outside_the_run_falls_back_with_a_warning(gpu_run: Path, tmp_path: Path,
                                                            env: None) -> None:
    csv = _csv(tmp_path / "i.csv", [(1.0e9, 1.0e9 + 3600, 10.0)])
    doc = report(gpu_run, tmp_path / "o", "--intensity-csv", str(csv), "--country", "FR")
    assert doc["summary"]["carbon_intensity_g_per_kwh"] == fra_g_per_kwh()
    assert any("none of the run" in w for w in doc["warnings"])


def test_precedence_and_world_average(gpu_run: Path, tmp_path: Path, env: None) -> None:
    csv = _csv(tmp_path / "i.csv", [(1.0, 4.0e9, 10.0)])
    doc = report(gpu_run, tmp_path / "a", "--carbon-intensity", "42", "--intensity-csv", str(csv),
                 "--country", "FR")
    assert doc["summary"]["carbon_intensity_g_per_kwh"] == 42.0
    assert doc["intensity"]["location_based"]["method"] == "user-setting"
    doc = report(gpu_run, tmp_path / "b")
    assert doc["intensity"]["location_based"]["method"] == "world-average"
    assert doc["summary"]["carbon_intensity_g_per_kwh"] == 475.0
    assert doc["summary"]["emissions_market_kg"] is None and doc["cost"] is None
    assert any("no location set" in w for w in doc["warnings"])


def test_time_series_and_sample_counts_match_the_store(gpu_run: Path, tmp_path: Path, env: None) -> None:
    doc = report(gpu_run, tmp_path / "o", "--country", "FR")
    stores = samples_by_store(gpu_run)
    total_j = sum(r["energy_j"] for _, rows in stores for r in rows)
    ts = doc["timeseries"]
    assert ts["cumulative_kwh"][-1] == pytest.approx(total_j / 3.6e6, rel=1e-6)
    power = {s["label"]: s["power_w"] for s in ts["series"]}
    mid = len(ts["t_s"]) // 2
    assert power["package-0"][mid] == pytest.approx(40.0, rel=0.25)
    assert power["gpu0"][mid] == pytest.approx(300.0, rel=0.25)
    counts = doc["methodology"]["sample_counts"]
    assert sum(counts.values()) == sum(len(rows) for _, rows in stores)
    assert doc["methodology"]["uncertainty"]["band"] == "high"
    steps = doc["steps"]["by_phase"]["train"]
    assert steps["count"] == 8 and sum(doc["steps"]["histogram"]["counts"]) == 8


@pytest.mark.slow
def test_resumed_segments_merge_and_several_runs_get_a_directory_each(gpu_run: Path, tmp_path: Path,
                                                                      env: None) -> None:
    make_run(tmp_path, "seg", cpu_w=40.0, steps=3)
    time.sleep(0.3)  # a pause between segments: not counted as run time
    make_run(tmp_path, "seg", cpu_w=80.0, steps=3)  # resume: a second store in the same directory
    run = tmp_path / "seg"
    stores = samples_by_store(run)
    assert len(stores) == 2
    summ = greentrack.summarize(run)
    code, out, err = run_cli(["report", str(run), str(gpu_run), "--country", "FR", "--format", "json",
                              "--out", str(tmp_path / "o")])
    assert code == 0, err
    doc = report_json(tmp_path / "o" / "seg")
    assert report_json(tmp_path / "o" / "run")["run"]["run_dir"] == str(gpu_run)
    assert doc["summary"]["energy_kwh"] == summ["energy_kwh"]
    assert doc["summary"]["duration_s"] == summ["duration_s"]
    assert doc["run"]["stores"] == 2 and doc["steps"]["count"] == 6
    total_j = sum(r["energy_j"] for _, rows in stores for r in rows)
    assert doc["timeseries"]["cumulative_kwh"][-1] == pytest.approx(total_j / 3.6e6, rel=1e-6)
    span = max(s0 for s0, _ in stores) - min(s0 for s0, _ in stores)
    assert doc["run"]["hosts"][next(iter(doc["run"]["hosts"]))] < span + summ["duration_s"]
    # 100 g/kWh until shortly into the second segment, 400 after: both segments are integrated
    second = max(s0 for s0, _ in stores)
    rows = [(second - 60.0, second + 0.2, 100.0), (second + 0.2, second + 99.0, 400.0)]
    doc = report(run, tmp_path / "o2", "--intensity-csv", str(_csv(tmp_path / "i.csv", rows)))
    g, kwh = expected_integration(run, rows, fallback=475.0)
    assert doc["summary"]["carbon_intensity_g_per_kwh"] == pytest.approx(g / kwh, rel=1e-6)
    assert 100.0 < doc["summary"]["carbon_intensity_g_per_kwh"] < 400.0
