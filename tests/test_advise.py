"""``greentrack advise`` and the report's Opportunities: each finding on a run whose true answer
is known (a real Tracker on the fake powercap tree and the fake NVML at known watts)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import greentrack
from tests.fakes.fake_pynvml import FakeGpu, FakeNvml, LiveTrace
from tests.fakes.powercap import LiveCounters, PowercapTree
from tests.helpers import RUN_FAST, clean_env, report_json, run_cli, validate_own_schema


def advise_json(argv: list[str]) -> dict[str, Any]:
    code, out, err = run_cli(["advise", *argv, "--json"])
    assert code == 0, err
    return dict(json.loads(out, parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}")))


def finding(doc: dict[str, Any], kind: str) -> dict[str, Any]:
    found = [f for f in doc["findings"] if f["kind"] == kind]
    assert found, [f["kind"] for f in doc["findings"]]
    return found[0]


@pytest.fixture(scope="module")
def stall_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """CPU 40 W + DRAM 4 W throughout; 6 train steps of 0.25 s, each followed by 0.25 s with
    no step (half the wall time outside steps), then 2 validation steps of 0.25 s."""
    root = tmp_path_factory.mktemp("stall")
    with pytest.MonkeyPatch.context() as mp, clean_env(mp, root):
        tree = PowercapTree(root / "powercap")
        mp.setenv("GREENTRACK_POWERCAP_ROOT", str(tree.root))
        run_dir = root / "run"
        with LiveCounters(tree, {"intel-rapl:0": 40.0, "intel-rapl:0:1": 4.0}):
            with greentrack.Tracker(run_dir, **RUN_FAST) as tracker:
                for _ in range(6):
                    with tracker.step(samples=4):
                        time.sleep(0.25)
                    time.sleep(0.25)
                for _ in range(2):
                    with tracker.step(phase="validation", samples=4):
                        time.sleep(0.25)
        yield run_dir


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Two fake H100s: GPU 0 busy at 400 W for 1.2 s then idle at 80 W for 3 s (idle about 70% of
    the time); GPU 1 idle at 80 W throughout (never worked). The run reports MFU 0.2 on each
    step."""
    root = tmp_path_factory.mktemp("gpu")
    with pytest.MonkeyPatch.context() as mp, clean_env(mp, root):
        tree = PowercapTree(root / "powercap")
        mp.setenv("GREENTRACK_POWERCAP_ROOT", str(tree.root))
        busy, lazy = LiveTrace(idle_w=80.0), LiveTrace(idle_w=80.0)
        fake = FakeNvml([FakeGpu(trace=busy, uuid="GPU-aaaaaaaa-0000-0000-0000-000000000000"),
                         FakeGpu(trace=lazy, uuid="GPU-bbbbbbbb-0000-0000-0000-000000000000")])
        mp.setitem(sys.modules, "pynvml", fake.module())
        run_dir = root / "run"
        with LiveCounters(tree, {"intel-rapl:0": 20.0, "intel-rapl:0:1": 2.0}):
            with greentrack.Tracker(run_dir, **{**RUN_FAST, "resolution_s": 0.2}) as tracker:
                busy.set(400.0)
                t_busy = time.monotonic()
                for _ in range(4):
                    with tracker.step(mfu=0.2, flops=1e12):
                        time.sleep(0.3)
                busy.set(80.0)
                # how long GPU 0 really worked: a loaded host oversleeps (CI-like load saw 1.5 s)
                (root / "busy_s").write_text(str(time.monotonic() - t_busy))
                # idle long enough for 20+ buckets: a misdated NVML refresh early in a run moves
                # energy between two neighbouring buckets (a 46 W one beside a 110 W one), and the
                # GPU's "lowest" (the 10% quantile) must not be such an outlier
                time.sleep(3.0)
        yield run_dir


@pytest.mark.slow
def test_outside_steps_share_is_the_wall_time_outside_steps(stall_run: Path, env: None) -> None:
    f = finding(advise_json([str(stall_run), "--country", "FR"]), "outside-steps")
    # constant power: the energy outside steps is its share of wall time: 6 x 0.25 s of 3.5 s
    # plus start-up and stop (a few tens of ms)
    share = f["share"]
    assert 0.40 <= share <= 0.55, share
    phases = f["evidence"]["phase_share"]
    assert set(phases) == {"train", "validation", "no step"}
    assert phases["no step"] == pytest.approx(share)
    assert phases["validation"] == pytest.approx(0.5 / 3.5, abs=0.05)
    assert phases["train"] == pytest.approx(1.5 / 3.5, abs=0.06)
    assert sum(phases.values()) == pytest.approx(1.0)
    assert f["joules"] > 0 and f["grams"] > 0 and "suggestion" in f
    assert not f["evidence"]["overlapping_steps"]


@pytest.mark.slow
def test_idle_gpu_share_and_never_worked(gpu_run: Path, env: None) -> None:
    f = finding(advise_json([str(gpu_run), "--country", "FR"]), "idle-gpu")
    gpus = {g["device"]: g for g in f["evidence"]["gpus"]}
    assert set(gpus) == {"gpu0", "gpu1"}
    worked, lazy = gpus["gpu0"], gpus["gpu1"]
    assert not worked["never_worked"] and lazy["never_worked"], (worked, lazy)
    # idle all but the time it worked (about 70%), give or take a 0.2 s bucket at the switch and a
    # 100 ms NVML refresh
    busy_s = float((gpu_run.parent / "busy_s").read_text())
    assert worked["idle_s"] == pytest.approx(worked["seconds"] - busy_s, abs=0.3), (worked, busy_s)
    assert worked["idle_share"] == pytest.approx(worked["idle_s"] / worked["seconds"])
    assert 0.55 <= worked["idle_share"] <= 0.8, worked
    assert worked["lowest_w"] == pytest.approx(80.0, rel=0.1)
    assert worked["peak_w"] == pytest.approx(400.0, rel=0.2)
    assert lazy["idle_share"] == 1.0
    assert lazy["idle_j"] == pytest.approx(80.0 * lazy["seconds"], rel=0.1)
    # joules at stake: the near-idle energy of both GPUs
    assert f["joules"] == pytest.approx(worked["idle_j"] + lazy["idle_j"])
    assert worked["idle_j"] == pytest.approx(80.0 * worked["idle_s"], rel=0.1)
    assert f["evidence"]["never_worked"] == ["gpu1"]
    assert "near-idle" in f["evidence"]["rule"]


def test_low_mfu_only_when_measured(gpu_run: Path, stall_run: Path, env: None) -> None:
    f = finding(advise_json([str(gpu_run), "--country", "FR"]), "low-mfu")
    assert f["evidence"]["mfu"] == pytest.approx(0.2)
    gpu_j = f["evidence"]["steps_energy_j"]
    assert f["joules"] == pytest.approx(gpu_j * (1 - 0.2 / 0.5))
    # no step carried MFU: never guessed
    doc = advise_json([str(stall_run), "--country", "FR"])
    assert "low-mfu" not in [x["kind"] for x in doc["findings"]]


def test_start_time_finds_the_clean_hour(stall_run: Path, env: None, tmp_path: Path) -> None:
    day = int(time.time() // 86400) * 86400
    # the clean hour is never the one the run is in (a fixed 02:00 failed every day at 02:xx UTC)
    clean = (time.gmtime().tm_hour + 6) % 24
    rows = ["start,g_per_kwh"]
    for h in range(-48, 48):  # four days around the run: 500 g, except 50 g in the clean hour
        t = day + h * 3600
        rows.append(f"{t},{50 if time.gmtime(t).tm_hour == clean else 500}")
    csv = tmp_path / "hourly.csv"
    csv.write_text("\n".join(rows) + "\n")
    f = finding(advise_json([str(stall_run), "--intensity-csv", str(csv)]), "start-time")
    ev = f["evidence"]
    assert ev["best_start_hour_utc"] == f"{clean:02d}:00"
    # a run of seconds fits inside the clean hour: 500 g/kWh -> 50 g/kWh, 90% less
    assert ev["as_run_g"] > 0 and ev["best_g"] == pytest.approx(ev["as_run_g"] / 10, rel=0.02)
    assert f["grams"] == pytest.approx(ev["as_run_g"] - ev["best_g"])
    assert f["joules"] == 0.0


def test_region_finds_the_lowest_factor(stall_run: Path, env: None) -> None:
    from greentrack.carbon.location import cloud_region_factors, country_factors
    from greentrack.reports.advise import REGION_COUNTRIES
    f = finding(advise_json([str(stall_run), "--cloud", "aws:us-east-1"]), "region")
    lowest = min(cloud_region_factors("aws"), key=lambda x: x[1].g_per_kwh)
    assert f["evidence"]["best"][0]["g_per_kwh"] == lowest[1].g_per_kwh
    assert f["evidence"]["best"][0]["region"].startswith("aws:")
    here = f["evidence"]["current_g_per_kwh"]
    kwh = f["evidence"]["best"][0]["grams"] / lowest[1].g_per_kwh
    assert f["grams"] == pytest.approx(kwh * (here - lowest[1].g_per_kwh))
    # no cloud: a stated list of countries, the run's own left out
    f = finding(advise_json([str(stall_run), "--country", "DE"]), "region")
    assert "DEU" not in f["evidence"]["compared"]
    best = min((x for x in country_factors(REGION_COUNTRIES) if x[0] != "DEU"),
               key=lambda x: x[1].g_per_kwh)
    assert f["evidence"]["best"][0]["region"] == best[0]


def test_ranked_with_cost_when_priced(stall_run: Path, env: None) -> None:
    doc = advise_json([str(stall_run), "--country", "DE", "--electricity-price", "0.3",
                       "--currency", "EUR"])
    grams = [f["grams"] for f in doc["findings"]]
    assert grams == sorted(grams, reverse=True)
    f = finding(doc, "outside-steps")
    assert f["cost"] == pytest.approx(f["joules"] / 3.6e6 * 1.56 * 0.3)
    assert f["currency"] == "EUR"
    assert "power-limit" not in [x["kind"] for x in doc["findings"]]


def test_text_output_and_bad_arguments(stall_run: Path, env: None, tmp_path: Path) -> None:
    code, out, err = run_cli(["advise", str(stall_run), "--country", "FR"])
    assert code == 0, err
    assert "outside-steps" in out and "suggestion:" in out
    for argv in (["advise", str(tmp_path / "missing")],
                 ["advise", str(stall_run), "--country", "Atlantis"],
                 ["advise", str(stall_run), "--intensity-csv", str(tmp_path / "none.csv")],
                 ["advise", str(stall_run), "--electricity-price", "-1"],
                 ["advise", str(stall_run), "--cloud", "gcp"]):
        code, out, err = run_cli(argv)
        assert code == 2, (argv, err)
        assert err.startswith("greentrack: ") and err.count("\n") == 1, err
        assert "Traceback" not in err


def test_report_opportunities_are_advise_top(stall_run: Path, env: None, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    code, _, err = run_cli(["report", str(stall_run), "--format", "json,md,html", "--out", str(out),
                            "--country", "FR"])
    assert code == 0, err
    doc = report_json(out)
    validate_own_schema(doc)
    adv = advise_json([str(stall_run), "--country", "FR"])
    assert [f["kind"] for f in doc["opportunities"]] == [f["kind"] for f in adv["findings"]][:3]
    assert doc["opportunities"][0]["joules"] == pytest.approx(adv["findings"][0]["joules"])
    md = (out / "report.md").read_text()
    assert "## Opportunities" in md and "outside-steps" in md
    assert "Opportunities" in (out / "report.html").read_text()


# -- power-limit: only from a measured curve (greentrack.process.calibration) ------------------------------

#: (limit W, J per step, s per step): the reference 400 W; the fewest joules within 5% slower
#: steps is 250 W (84 J, +4.9%); 200 W saves more but is 20% slower.
CURVE = [(400.0, 100.0, 1.000), (350.0, 92.0, 1.02), (300.0, 86.0, 1.04), (250.0, 84.0, 1.049),
         (200.0, 80.0, 1.20)]


def put_curve(run_dir: Path, curve: list[tuple[float, float, float]], sd_j: float = 2.0,
              reference: float | None = 400.0, steps: int = 20) -> None:
    """Write a known curve into the run's store, as the calibration writes it."""
    import sqlite3

    from greentrack.store import store_paths
    (path,) = store_paths(run_dir)
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM power_limits")
        for limit, j, s in curve:
            conn.execute(
                "INSERT INTO power_limits (limit_w, reference, devices, steps, warmup_steps, t0, "
                "t1, j_per_step, j_per_step_sd, gpu_j_per_step, gpu_j_per_step_sd, s_per_step, "
                "s_per_step_sd) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (limit, int(limit == reference), '["gpu0"]', steps, 5, 0.0, 1.0, j, sd_j,
                 j * 0.9, sd_j, s, 0.01))


@pytest.fixture(scope="module")
def curve_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A real run of 8 training steps on a fake GPU, then a known curve in its store."""
    from tests.helpers import make_run
    root = tmp_path_factory.mktemp("curve")
    with pytest.MonkeyPatch.context() as mp, clean_env(mp, root):
        run_dir = make_run(root, gpu_w=300.0, steps=8, step_s=0.05)
    put_curve(run_dir, CURVE)
    yield run_dir


def test_power_limit_is_the_least_energy_within_the_slowdown(curve_run: Path, env: None) -> None:
    doc = advise_json([str(curve_run), "--country", "FR"])
    f = finding(doc, "power-limit")
    (best,) = f["evidence"]["best"]
    assert best["limit_w"] == 250.0 and best["reference_w"] == 400.0
    assert best["saving_j_per_step"] == pytest.approx(16.0)
    assert best["train_steps"] == 8 and f["joules"] == pytest.approx(16.0 * 8)
    assert f["share"] == pytest.approx(f["joules"] / doc["energy_j"])
    assert best["slowdown"] == pytest.approx(0.049) and f["evidence"]["max_slowdown"] == 0.05
    assert "250 W" in f["suggestion"] and f["grams"] > 0
    assert [p["limit_w"] for p in f["evidence"]["curves"][0]["points"]] == [200, 250, 300, 350, 400]
    # the slowdown accepted moves the answer: 20% slower steps allowed -> 200 W
    f = finding(advise_json([str(curve_run), "--country", "FR", "--max-slowdown", "25%"]),
                "power-limit")
    assert f["evidence"]["best"][0]["limit_w"] == 200.0 and f["joules"] == pytest.approx(160.0)
    # none accepted: the reference is the answer, no finding
    doc = advise_json([str(curve_run), "--country", "FR", "--max-slowdown", "0"])
    assert "power-limit" not in [x["kind"] for x in doc["findings"]]


def test_power_limit_never_guessed(curve_run: Path, env: None, tmp_path: Path) -> None:
    import shutil
    noisy = tmp_path / "noisy"
    shutil.copytree(curve_run, noisy)
    # a spread of 40 J per step over 20 steps: 16 J is within two standard errors (12.6 J each)
    put_curve(noisy, CURVE, sd_j=40.0)
    doc = advise_json([str(noisy), "--country", "FR"])
    assert "power-limit" not in [x["kind"] for x in doc["findings"]]
    code, out, _ = run_cli(["advise", str(noisy), "--country", "FR"])
    assert code == 0 and "beyond the measurement's spread" in out
    # no reference point (the calibration was stopped before it): no saving can be stated
    put_curve(noisy, CURVE[1:], reference=None)
    code, out, _ = run_cli(["advise", str(noisy), "--country", "FR"])
    assert code == 0 and "did not reach its reference point" in out
    # no curve at all
    put_curve(noisy, [])
    code, out, _ = run_cli(["advise", str(noisy), "--country", "FR"])
    assert code == 0 and "--calibrate-power-limits" in out and "power-limit:" in out


def test_power_limit_curve_in_the_report(curve_run: Path, env: None, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    code, _, err = run_cli(["report", str(curve_run), "--format", "json,md,html", "--out",
                            str(out), "--country", "FR"])
    assert code == 0, err
    doc = report_json(out)
    validate_own_schema(doc)
    (curve,) = doc["power_limit_curves"]
    assert curve["complete"] and curve["train_steps"] == 8
    assert [p["limit_w"] for p in curve["points"]] == [200, 250, 300, 350, 400]
    assert "power-limit" in [o["kind"] for o in doc["opportunities"]]
    md = (out / "report.md").read_text()
    assert "## Power-limit curve (measured)" in md and "400 (original)" in md
    assert "84 +- 2" in md
    assert "Power-limit curve" in (out / "report.html").read_text()


def test_store_before_the_curve_table_reads_as_no_curve(curve_run: Path, env: None,
                                                         tmp_path: Path) -> None:
    """A schema-2 store (no power_limits table) still reads: no curve, the rest unchanged."""
    import shutil
    import sqlite3

    from greentrack.store import store_paths
    old = tmp_path / "old"
    shutil.copytree(curve_run, old)
    (path,) = store_paths(old)
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE power_limits")
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    doc = advise_json([str(old), "--country", "FR"])
    assert "power-limit" not in [x["kind"] for x in doc["findings"]]
    assert not doc["warnings"]
    out = tmp_path / "rep"
    code, _, err = run_cli(["report", str(old), "--format", "json", "--out", str(out)])
    assert code == 0, err
    assert "power_limit_curves" not in report_json(out)


def test_max_slowdown_bad_values(curve_run: Path, env: None) -> None:
    for bad in ("x", "-0.1", "nan", "2000%", "inf"):
        code, _, err = run_cli(["advise", str(curve_run), "--max-slowdown", bad])
        assert code == 2, (bad, err)
        assert err.startswith("greentrack: --max-slowdown=") and err.count("\n") == 1, err


def test_hostile_curve_rows_are_left_out(curve_run: Path, env: None, tmp_path: Path) -> None:
    import shutil
    import sqlite3

    from greentrack.store import store_paths
    bad = tmp_path / "bad"
    shutil.copytree(curve_run, bad)
    (path,) = store_paths(bad)
    with sqlite3.connect(path) as conn:  # a negative energy, a non-list devices, a NaN limit
        conn.execute("UPDATE power_limits SET j_per_step = -5 WHERE limit_w = 250")
        conn.execute("UPDATE power_limits SET devices = '\"gpu0\"' WHERE limit_w = 300")
        conn.execute("UPDATE power_limits SET limit_w = 'x' WHERE limit_w = 350")
    # with 250 W left out nothing within 5% saves energy: no finding
    doc = advise_json([str(bad), "--country", "FR"])
    assert "power-limit" not in [x["kind"] for x in doc["findings"]]
    assert sum("power_limits row" in w for w in doc["warnings"]) == 3, doc["warnings"]
    f = finding(advise_json([str(bad), "--country", "FR", "--max-slowdown", "0.25"]), "power-limit")
    assert [p["limit_w"] for p in f["evidence"]["curves"][0]["points"]] == [200, 400]
    assert f["evidence"]["best"][0]["limit_w"] == 200.0
