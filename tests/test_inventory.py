"""``greentrack inventory``: a period's footprint across every run under some roots (issue 27).

Run sets are real stores: a run of a real Tracker (make_run) for the "one run equals its report"
check, and stores written through the store's own writer (write_store) where runs must lie in
given months: several projects, runs across a quarter boundary with power that grows over time
(so a split by energy differs from a split by time), node-local copies, codecarbon rows, measured
and estimated devices. Each split is checked against the run's own stored samples.
"""

from __future__ import annotations

import calendar
import csv
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from greentrack.carbon.runs import run_footprint
from greentrack.common.codecarbon_data import emissions_csv_columns
from greentrack.common.errors import ConfigError
from greentrack.reports.inventory import inventory
from greentrack.reports.inventory_input import parse_budget, parse_period
from greentrack.reports.inventory_text import INDENTED_RUNS, energy, json_of, long_rows, mass
from greentrack.run import Run
from tests.helpers import REPO, make_run, report_json, run_cli, samples_by_store, write_store

SCHEMA = REPO / "greentrack" / "schemas" / "inventory-v1.schema.json"
Q3 = float(calendar.timegm((2026, 7, 1, 0, 0, 0)))  # the Q2/Q3 boundary (and June/July)
H = 3600.0


def close(a: float, b: float, rel: float = 1e-9) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-300)


def validate(doc: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    Draft202012Validator(schema).validate(doc)


def own_share(run_dir: Path, a: float, b: float) -> float:
    """The share of a run's joules its raw stored samples put in ``[a, b)`` (each spread
    evenly over its own span): the run's own energy over time, read without the read model."""
    inside = total = 0.0
    for s0, samples in samples_by_store(run_dir):
        for r in samples:
            x, y, e = s0 + r["t"], s0 + r["t"] + r["dt"], r["energy_j"]
            total += e
            inside += e * max(0.0, min(y, b) - max(x, a)) / (y - x)
    return inside / total


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lab's runs: three projects, two runs across the Q2/Q3 boundary (one with an estimated
    CPU), a two-node run, a node-local copy, a run without a location."""
    root = tmp_path_factory.mktemp("lab")
    fra = {"country": "FRA", "electricity_price": 0.2, "currency": "EUR"}
    write_store(root / "nlp" / "a", run_id="a-cross", start_unix=Q3 - 6 * H, duration_s=8 * H,
                ramp=2.0, labels={"project": "nlp", "team": "lang"}, settings=fra,
                channels=(("gpu", 400.0, True), ("cpu", 100.0, False)))
    write_store(root / "nlp" / "b", run_id="b-june", start_unix=Q3 - 48 * H, duration_s=4 * H,
                labels={"project": "nlp", "team": "lang"}, settings=fra)
    write_store(root / "vision" / "c", run_id="c-cross", start_unix=Q3 - 1 * H, duration_s=3 * H,
                ramp=-0.5, labels={"project": "vision", "team": "cv"},
                settings={"country": "DEU", "market_factor_g_per_kwh": 20.0, "pue": 1.2})
    for node in ("n0", "n1"):  # one run on two nodes, each node's directory apart
        write_store(root / node / "d", run_id="d-2node", start_unix=Q3 + 24 * H, duration_s=2 * H,
                    host=node, labels={"project": "vision", "team": "cv"},
                    settings={"country": "DEU", "pue": 1.2})
    write_store(root / "misc" / "e", run_id="e-nowhere", start_unix=Q3 + 5 * 24 * H,
                duration_s=H, labels={"project": "misc"})
    write_store(root / "old" / "f", run_id="f-2025", start_unix=Q3 - 365 * 24 * H,
                duration_s=H, labels={"project": "nlp"})
    shutil.copytree(root / "nlp" / "a", root / "backup" / "a")  # a node-local copy of run a
    shutil.copytree(root / "vision" / "c", root / "rsync" / "c")  # stores copied without run.json
    (root / "rsync" / "c" / "run.json").unlink()
    return root


@pytest.fixture(scope="module")
def q2q3(lab: Path) -> dict[str, dict[str, Any]]:
    now = Q3 + 200 * 24 * H
    return {p: inventory([lab], parse_period(p), now=now)
            for p in ("2026-Q2", "2026-Q3", "2026-04..2026-09")}


def by_id(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["run_id"]: r for r in doc["runs"]}


def test_a_run_across_the_quarter_boundary_is_split_by_its_own_energy(
        lab: Path, q2q3: dict[str, dict[str, Any]]) -> None:
    q2, q3, half = (by_id(q2q3[p]) for p in ("2026-Q2", "2026-Q3", "2026-04..2026-09"))
    for run_id, run_dir, start, dur in (("a-cross", lab / "nlp" / "a", Q3 - 6 * H, 8 * H),
                                        ("c-cross", lab / "vision" / "c", Q3 - H, 3 * H)):
        whole = half[run_id]["figures"]
        share = own_share(run_dir, Q3, Q3 + 92 * 24 * H)
        time_share = (start + dur - Q3) / dur
        assert abs(share - time_share) > 0.05  # power changes over time: energy is not time
        assert close(q3[run_id]["figures"]["it_kwh"], whole["it_kwh"] * share)
        assert close(q3[run_id]["share_in_period"], share)
        for k in ("it_kwh", "facility_kwh", "location_g", "gpu_hours", "measured_kwh",
                  "estimated_kwh", "market_or_location_g"):
            assert close(q2[run_id]["figures"][k] + q3[run_id]["figures"][k], whole[k]), k
        # GPU-hours are time, cut by time
        assert close(q3[run_id]["figures"]["gpu_hours"], dur * time_share / H)
        # the months of the half-year add up to the run
        assert close(sum(m["it_kwh"] for m in half[run_id]["months"].values()), whole["it_kwh"])
        assert set(half[run_id]["months"]) == {"2026-06", "2026-07"}
        assert not q3[run_id]["whole"] and half[run_id]["whole"]
    # the measured and the estimated share of a cut run: each channel by its own samples
    a = q3["a-cross"]["figures"]
    assert close(a["measured_kwh"] / (a["measured_kwh"] + a["estimated_kwh"]), 0.8)
    # a run of another year, and a run wholly in June, are not in Q3
    assert "f-2025" not in q3 and "b-june" not in q3 and "b-june" in q2


def test_one_whole_run_equals_its_footprint_and_totals_add_up(
        lab: Path, q2q3: dict[str, dict[str, Any]]) -> None:
    doc = q2q3["2026-04..2026-09"]
    validate(doc)
    runs = by_id(doc)
    for run_id, dirs in (("a-cross", [lab / "nlp" / "a", lab / "backup" / "a"]),
                         ("c-cross", [lab / "vision" / "c"]),
                         ("d-2node", [lab / "n0" / "d", lab / "n1" / "d"])):
        with Run.open(dirs) as run:
            fp = run_footprint(run)
        f = runs[run_id]["figures"]
        assert close(f["it_kwh"], fp.it_kwh) and close(f["facility_kwh"], fp.facility_kwh)
        assert close(f["location_g"], fp.location_g or 0.0)
        assert close(f["gpu_hours"], fp.gpu_hours)
    t = doc["totals"]
    assert t["runs"] == 5 and t["runs_by_status"] == {"completed": 5}
    for k in ("it_kwh", "facility_kwh", "location_g", "gpu_hours"):
        assert close(t[k], sum(r["figures"][k] for r in doc["runs"]))
        for dim, rows in doc["breakdowns"].items():
            assert close(sum(r[k] for r in rows), t[k]), (dim, k)
        assert close(sum(r.get(k, 0.0) or 0.0 for r in long_rows(doc)), t[k])
    assert {r["value"] for r in doc["breakdowns"]["project"]} == {"nlp", "vision", "misc"}
    assert {r["value"] for r in doc["breakdowns"]["country"]} == {"FRA", "DEU", "unknown"}
    assert close(t["cost"]["EUR"], sum(r["figures"]["cost"].get("EUR", 0.0)
                                      for r in doc["runs"] if r["labels"]["project"] == "nlp"))
    # market-based: a contractual factor for run c only, location-based standing in elsewhere
    c = runs["c-cross"]["figures"]
    assert close(c["market_g"], c["facility_kwh"] * 20.0)
    # each factor with its source, the market-based one too
    market = {f["market_g_per_kwh"]: f["market_source"] for f in doc["factors"]}
    assert market.pop(20.0).startswith("user setting (market_factor_g_per_kwh)")
    assert set(market.values()) == {None}
    assert close(t["market_covered_kwh"], c["facility_kwh"])
    assert close(t["market_or_location_g"], t["location_g"] - c["location_g"] + c["market_g"])
    assert "GHG Protocol" in doc["methodology"] and "world-average" in doc["methodology"]


def test_node_local_copies_count_once_and_nodes_add_up(q2q3: dict[str, dict[str, Any]]) -> None:
    doc = q2q3["2026-Q3"]
    runs = by_id(doc)
    assert len(runs["a-cross"]["run_dirs"]) == 2 and runs["a-cross"]["copies"] == 1
    assert len(runs["c-cross"]["run_dirs"]) == 2 and runs["c-cross"]["copies"] == 1
    assert doc["data_quality"]["copies_counted_once"] == 2
    d = runs["d-2node"]
    assert sorted(d["hosts"]) == ["n0", "n1"] and len(d["run_dirs"]) == 2
    assert close(d["figures"]["it_kwh"], 2 * 300.0 * 2 * H / 3.6e6)  # two nodes, both counted
    hosts = {r["value"]: r for r in doc["breakdowns"]["host"]}
    assert close(hosts["n0"]["it_kwh"], hosts["n1"]["it_kwh"])


def test_data_quality_shares_and_runs_without_a_location(
        q2q3: dict[str, dict[str, Any]]) -> None:
    q = q2q3["2026-Q3"]["data_quality"]
    runs = q2q3["2026-Q3"]["runs"]
    measured = sum(r["figures"]["measured_kwh"] for r in runs)
    estimated = sum(r["figures"]["estimated_kwh"] for r in runs)
    assert estimated > 0 and close(q["measured_share"], measured / (measured + estimated))
    assert close(q["measured_share"] + q["estimated_share"], 1.0)
    assert [r["run_id"] for r in q["missing_location"]] == ["e-nowhere"]
    assert q["missing_location"][0]["run_dirs"][0].endswith("misc/e")
    assert q["cut_at_period_edges"] == 2 and q["runs_outside_period"] == 2  # b-june, f-2025
    assert q["split_across_months"] == 0  # a and c cross June/July, outside Q3's own months
    assert q2q3["2026-04..2026-09"]["data_quality"]["split_across_months"] == 2


def codecarbon_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=emissions_csv_columns(), restval="")
        w.writeheader()
        w.writerows(rows)
    return path


def test_codecarbon_rows_are_their_own_source(lab: Path, tmp_path: Path) -> None:
    cc = codecarbon_csv(tmp_path / "emissions.csv", [
        {"timestamp": "2026-07-10T12:00:00", "project_name": "old-nlp", "run_id": "x1",
         "duration": 3600, "emissions": 0.5, "energy_consumed": 2.0, "codecarbon_version": "2.8"},
        # half of it in June, half in July
        {"timestamp": "2026-07-01T01:00:00", "project_name": "old-nlp", "run_id": "x2",
         "duration": 7200, "emissions": 1.0, "energy_consumed": 4.0, "codecarbon_version": "2.8"},
        {"timestamp": "2025-01-01T00:00:00", "project_name": "older", "run_id": "x3",
         "duration": 60, "emissions": 9.0, "energy_consumed": 9.0, "codecarbon_version": "2.8"}])
    now = Q3 + 200 * 24 * H
    plain = inventory([lab], parse_period("2026-Q3"), now=now)
    doc = inventory([lab], parse_period("2026-Q3"), emissions_csv=[cc], now=now)
    validate(doc)
    assert doc["totals"] == plain["totals"]  # never mixed into the measured figures
    assert len(doc["warnings"]) == 1 and "read as UTC" in doc["warnings"][0]
    c = doc["codecarbon"]["totals"]
    assert close(c["energy_kwh"], 2.0 + 2.0) and close(c["emissions_g"], 500.0 + 500.0)
    assert c["rows"] == 2
    assert [m["value"] for m in doc["codecarbon"]["by_month"]] == ["2026-07"]
    long = [r for r in long_rows(doc) if r["source"] == "codecarbon"]
    assert close(sum(r["facility_kwh"] for r in long), 4.0)
    # one long row per codecarbon run x month, with its project (all files together before)
    assert [(r["run_id"], r["month"], r["facility_kwh"], r["location_g"], r["label_project"],
             r["run_dirs"]) for r in long] == [("x1", "2026-07", 2.0, 500.0, "old-nlp", str(cc)),
                                               ("x2", "2026-07", 2.0, 500.0, "old-nlp", str(cc))]
    half = inventory([lab], parse_period("2026-06..2026-07"), emissions_csv=[cc], now=now)
    assert [(r["run_id"], r["month"]) for r in long_rows(half) if r["source"] == "codecarbon"] \
        == [("x1", "2026-07"), ("x2", "2026-06"), ("x2", "2026-07")]


@pytest.mark.slow
def test_one_real_run_equals_its_report(tmp_path: Path, env: None) -> None:
    root = tmp_path / "runs"
    run_dir = make_run(root, "real", steps=3, country="FR", market_factor_g_per_kwh=30.0,
                       electricity_price=0.25, gpu_hour_price=2.0, currency="EUR", gpu_w=200.0)
    code, _, err = run_cli(["report", str(run_dir), "--format", "json", "--out",
                            str(tmp_path / "rep"), "--emissions-csv", str(tmp_path / "e.csv")])
    assert code == 0, err
    s = report_json(tmp_path / "rep")["summary"]
    year = time.gmtime().tm_year
    code, out, err = run_cli(["inventory", str(root), "--period", f"{year - 1}..{year + 1}",
                              "--format", "json,md,html,csv", "--out", str(tmp_path / "inv"),
                              "--emissions-csv", str(tmp_path / "e.csv")])
    assert code == 0, err
    doc = json.loads((tmp_path / "inv" / "inventory.json").read_text(encoding="utf-8"))
    validate(doc)
    f = doc["runs"][0]["figures"]
    assert close(f["it_kwh"], s["energy_kwh"]) and close(f["facility_kwh"], s["facility_energy_kwh"])
    assert close(f["location_g"], s["emissions_location_kg"] * 1000.0)
    assert close(f["market_g"], s["emissions_market_kg"] * 1000.0)
    assert close(f["cost"]["EUR"], s["cost_total"]) and close(f["gpu_hours"], s["gpu_hours"])
    (factor,) = doc["factors"]  # the report's factors and sources
    intensity = report_json(tmp_path / "rep")["intensity"]
    assert factor["market_source"] == intensity["market_based"]["source"]
    assert (factor["source"], factor["g_per_kwh"]) == (intensity["location_based"]["source"],
                                                       intensity["location_based"]["g_per_kwh"])
    assert doc["data_quality"]["measured_share"] == 1.0
    # greentrack's own emissions.csv row of this run is not counted twice
    assert doc["codecarbon"]["totals"]["rows"] == 0 and len(doc["codecarbon"]["skipped"]) == 1
    for name in ("inventory.md", "inventory.html", "inventory.csv", "inventory-long.csv"):
        assert (tmp_path / "inv" / name).stat().st_size > 0
    html = (tmp_path / "inv" / "inventory.html").read_text(encoding="utf-8")
    assert "<svg" in html and "Facility energy by month" in html


def test_budgets_spent_left_and_the_forecast_of_a_running_run(tmp_path: Path) -> None:
    now = time.time()
    write_store(tmp_path / "done", run_id="done1", start_unix=now - 10 * H, duration_s=2 * H,
                labels={"project": "foo"}, resolution_s=60.0)  # 300 W x 2 h = 600 Wh
    write_store(tmp_path / "going", run_id="going1", start_unix=now - H, duration_s=H,
                labels={"project": "foo"}, status="running", steps=60, planned_steps=240,
                resolution_s=10.0, now=now)
    year = time.gmtime(now).tm_year
    budgets = [parse_budget("project=foo:1kWh"), parse_budget("project=bar:2t")]
    doc = inventory([tmp_path], parse_period(f"{year - 1}..{year + 1}"), budgets=budgets, now=now)
    validate(doc)
    foo, bar = doc["budgets"]
    spent = sum(r["figures"]["it_kwh"] for r in doc["runs"])
    assert close(foo["spent"], spent) and close(foo["left"], 1.0 - spent)
    assert foo["runs"] == 2 and foo["running"] == 1
    fc = foo["forecast"]
    assert fc is not None, foo
    # 60 of 240 steps in 1 h at 300 W: about 3 h more at 300 W, 0.9 kWh
    assert 0.6 < fc["estimate"] - spent < 1.2 and fc["_low"] <= fc["estimate"] <= fc["_high"]
    assert foo["status"] == "forecast over"
    assert [r["run_id"] for r in doc["data_quality"]["running"]] == ["going1"]
    assert bar == {**bar, "spent": 0.0, "runs": 0, "status": "within", "measure": "emissions_g",
                   "amount": 2e6}


@pytest.mark.parametrize("args, setting, shown", [
    (["--period", "2026-13"], "--period", "2026-13"),
    (["--period", "Q3"], "--period", "Q3"),
    (["--period", "2026-09..2026-07"], "--period", "2026-09..2026-07"),
    (["--period", "2026", "--budget", "project=foo"], "--budget", "project=foo"),
    (["--period", "2026", "--budget", "project=foo:2MJ"], "--budget", "project=foo:2MJ"),
    (["--period", "2026", "--budget", "foo:2MWh"], "--budget", "foo:2MWh"),
    (["--period", "2026", "--budget", "project=foo:-1kWh"], "--budget", "project=foo:-1kWh"),
    (["--period", "2026", "--format", "pdf"], "--format", "pdf"),
    (["--period", "2026", "--jobs", "0"], "--jobs", 0),
])
def test_bad_input_is_one_line(tmp_path: Path, args: list[str], setting: str,
                               shown: object) -> None:
    code, out, err = run_cli(["inventory", str(tmp_path), *args, "--out", str(tmp_path / "o")])
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and setting in lines[0] and repr(shown) in lines[0], err
    assert ("2026-Q3" in lines[0]) if setting == "--period" else True
    assert ("project=foo:2MWh" in lines[0]) if setting == "--budget" else True
    assert not (tmp_path / "o").exists()


def test_a_missing_root_and_an_unreadable_run_dir(tmp_path: Path) -> None:
    code, _, err = run_cli(["inventory", str(tmp_path / "nope"), "--period", "2026"])
    assert code == 2 and "ROOT" in err and "does not exist" in err
    (tmp_path / "notes.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    for csv_file, why in (("missing.csv", "is missing"), ("notes.csv", "no column timestamp")):
        code, _, err = run_cli(["inventory", str(tmp_path), "--period", "2026",
                                "--emissions-csv", str(tmp_path / csv_file)])
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "--emissions-csv" in err and why in err, err
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.gtdb").write_bytes(b"not a database at all" * 10)
    write_store(tmp_path / "ok", run_id="ok1", start_unix=Q3, duration_s=H)
    doc = inventory([tmp_path], parse_period("2026-07"))
    assert [r["run_id"] for r in doc["runs"]] == ["ok1"]
    assert doc["data_quality"]["unreadable"][0]["run_dirs"][0].endswith("broken")


def test_periods_and_units() -> None:
    p = parse_period("2026-Q4")
    assert [m[0] for m in p.months()] == ["2026-10", "2026-11", "2026-12"]
    assert p.end_unix == calendar.timegm((2027, 1, 1, 0, 0, 0))
    r = parse_period("2026-02-27..2026-03")
    assert r.start_unix == calendar.timegm((2026, 2, 27, 0, 0, 0))
    assert [m[0] for m in r.months()] == ["2026-02", "2026-03"]
    assert energy(0.012) == "12 Wh" and energy(2500.0) == "2.5 MWh" and energy(3.0) == "3 kWh"
    assert mass(1.5e6) == "1.5 t CO2e" and mass(12.0) == "12 g CO2e"
    b = parse_budget("project=a:b:1.5MWh")
    assert (b.key, b.value, b.amount, b.measure) == ("project", "a:b", 1500.0, "energy_kwh")
    assert parse_budget("team=x:900EUR").currency == "EUR"
    big = {"runs": [{"g": float("nan")}] * (INDENTED_RUNS + 1)}
    assert json_of(big).count("\n") == 1 and json.loads(json_of(big))["runs"][0] == {"g": None}
    assert json_of({"runs": []}).count("\n") > 1


def test_a_time_resolved_intensity_is_integrated_over_each_side_of_the_boundary(
        tmp_path: Path) -> None:
    rows = ["start,g_per_kwh"] + [f"{int(Q3 + k * H)},{100 + 40 * (k % 5)}" for k in range(-8, 8)]
    series = tmp_path / "intensity.csv"
    series.write_text("\n".join(rows) + "\n", encoding="utf-8")
    run_dir = tmp_path / "runs" / "ts"
    write_store(run_dir, run_id="ts1", start_unix=Q3 - 3.5 * H, duration_s=6 * H, ramp=1.5,
                settings={"country": "FRA", "intensity_csv": str(series)})
    with Run.open(run_dir) as run:
        fp = run_footprint(run)
    assert fp.intensity is not None and fp.intensity.method == "time-resolved"
    docs = {p: by_id(inventory([tmp_path / "runs"], parse_period(p)))["ts1"]
            for p in ("2026-Q2", "2026-Q3", "2026-06..2026-07")}
    whole = docs["2026-06..2026-07"]
    assert close(whole["figures"]["location_g"], fp.location_g or 0.0)
    assert close(docs["2026-Q2"]["figures"]["location_g"] + docs["2026-Q3"]["figures"]["location_g"],
                 whole["figures"]["location_g"])
    assert docs["2026-Q3"]["intensity"]["method"] == "time-resolved"
    # each side at its own hours' intensity, not the run's mean
    assert not close(docs["2026-Q3"]["figures"]["location_g"] / docs["2026-Q3"]["figures"]["facility_kwh"],
                     fp.location_g / fp.facility_kwh, 1e-3)


def test_hostile_label_values_stay_text_in_every_format(tmp_path: Path) -> None:
    bad = "<script>x|y</script> #1 =cmd"
    write_store(tmp_path / "runs" / "h", run_id="h1", start_unix=Q3, duration_s=H,
                labels={"project": bad})
    code, _, err = run_cli(["inventory", str(tmp_path / "runs"), "--period", "2026-07",
                            "--out", str(tmp_path / "o")])
    assert code == 0, err
    page = (tmp_path / "o" / "inventory.html").read_text(encoding="utf-8")
    assert "<script>" not in page and "&lt;script&gt;x|y&lt;/script&gt; #1 =cmd</td>" in page
    row = next(r for r in csv.reader((tmp_path / "o" / "inventory-long.csv").open())
               if r[0] == "greentrack")
    assert row[-1] == bad  # text as it is (a formula start would get a quote: to_csv.cell)
    md = (tmp_path / "o" / "inventory.md").read_text(encoding="utf-8")
    assert "\\<script\\>x\\|y" in md


def test_two_processes_give_the_same_document(lab: Path, q2q3: dict[str, dict[str, Any]]) -> None:
    doc = inventory([lab], parse_period("2026-Q3"), now=Q3 + 200 * 24 * H, jobs=2, per_job=1)
    assert doc == q2q3["2026-Q3"]


#: the test process and the reader it replaces (a module-level function: the executor pickles it)
_REAL: list[Any] = []


def _dies_in_a_child(task: Any) -> Any:
    """The inventory's reader, except that it dies in a forked reading process."""
    import os
    parent, real = _REAL
    if os.getpid() != parent:
        os._exit(1)
    return real(task)


def test_a_reading_process_that_dies_neither_hangs_nor_changes_the_document(
        lab: Path, q2q3: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A forked reader that dies (killed, out of memory) left multiprocessing.Pool.map waiting for
    ever (a test worker hung there); the runs are read here instead, to the same document."""
    import os

    from greentrack.reports import inventory as module
    _REAL[:] = [os.getpid(), module._read_all]
    monkeypatch.setattr(module, "_read_all", _dies_in_a_child)
    doc = inventory([lab], parse_period("2026-Q3"), now=Q3 + 200 * 24 * H, jobs=2, per_job=1)
    assert doc == q2q3["2026-Q3"]
    assert any("reading processes failed" in r.message for r in caplog.records)


def test_every_format_states_the_json_figures(tmp_path: Path,
                                             q2q3: dict[str, dict[str, Any]]) -> None:
    """The CSVs, the Markdown and the HTML are the JSON's figures: each breakdown row, each run
    x month row, each table cell of the page (8a2bbe5 checked only that the files were there)."""
    import re
    import xml.etree.ElementTree as ET

    from greentrack.reports.inventory_text import FILES, write
    doc = q2q3["2026-04..2026-09"]
    write(doc, list(FILES), tmp_path)
    assert json.loads((tmp_path / "inventory.json").read_text(encoding="utf-8")) == doc
    figs = ("it_kwh", "facility_kwh", "location_g", "market_g", "market_or_location_g",
            "gpu_hours", "measured_kwh", "estimated_kwh", "runs")
    rows = list(csv.DictReader((tmp_path / "inventory.csv").open(encoding="utf-8")))
    expected = [("total", "total", doc["totals"])] + [
        (dim, r["value"], r) for dim, rs in doc["breakdowns"].items() for r in rs]
    assert [(r["dimension"], r["value"]) for r in rows] == [(d, v) for d, v, _ in expected]
    for row, (_, _, f) in zip(rows, expected):
        assert all(close(float(row[k]), f[k]) for k in figs), row
        assert {c: float(row[f"cost_{c}"]) for c in f["cost"]} == pytest.approx(f["cost"])
    long = list(csv.DictReader((tmp_path / "inventory-long.csv").open(encoding="utf-8")))
    months = {(r["run_id"], m): f for r in doc["runs"] for m, f in r["months"].items()}
    assert len(long) == len(months) and all(r["source"] == "greentrack" for r in long)
    for row in long:
        f = months[(row["run_id"], row["month"])]
        assert all(close(float(row[k]), f[k]) for k in figs if k != "runs"), row
        assert row["label_project"] == by_id(doc)[row["run_id"]]["labels"]["project"]
    md = (tmp_path / "inventory.md").read_text(encoding="utf-8")
    for r in doc["breakdowns"]["project"] + doc["breakdowns"]["month"]:
        line = next(x for x in md.splitlines() if x.startswith(f"| {r['value']} |"))
        assert f"| {energy(r['it_kwh'])} | {energy(r['facility_kwh'])} | " \
               f"{mass(r['location_g'])} |" in line, line
    page = (tmp_path / "inventory.html").read_text(encoding="utf-8")
    md_cells = [[c.strip().replace("\\", "") for c in x.strip()[1:-1].split("|")]
                for x in md.splitlines() if x.startswith("|") and not x.startswith("|---")]
    html_cells = [re.findall(r"<t[hd]>(.*?)</t[hd]>", x) for x in page.splitlines()
                  if x.startswith("<tr>")]
    assert html_cells == md_cells
    # the monthly chart: a bar per month, as tall as the month's facility energy
    svg = ET.fromstring(re.search(r"<svg.*?</svg>", page, re.DOTALL)[0])
    ns = "{http://www.w3.org/2000/svg}"
    bars = [r for r in svg.iter(f"{ns}rect") if r.find(f"{ns}title") is not None]
    by_month = {r["value"]: r["facility_kwh"] for r in doc["breakdowns"]["month"]}
    assert [b.find(f"{ns}title").text.split(":")[0] for b in bars] == list(by_month)
    heights = [float(b.get("height")) for b in bars]
    assert all(close(h / heights[0], kwh / next(iter(by_month.values())), 1e-2)
               for h, kwh in zip(heights, by_month.values()))
    texts = [t.text for t in svg.iter(f"{ns}text")]
    assert {"2026-04", "2026-09", "kWh"} <= set(texts)
    assert not any("run's start" in (t or "") or t == "intensity" for t in texts)


def test_a_cost_budget_names_the_runs_it_cannot_count(tmp_path: Path) -> None:
    """A cost budget in EUR over runs priced in USD or not priced at all stated 0.00 EUR spent,
    "within", as if they had cost nothing; they are named, and a warning says so."""
    eur = {"electricity_price": 0.5, "currency": "EUR"}
    for name, settings in (("eur", eur), ("usd", {"electricity_price": 0.5, "currency": "USD"}),
                           ("free", {})):
        write_store(tmp_path / "runs" / name, run_id=name, start_unix=Q3, duration_s=H,
                    labels={"project": "foo"}, settings=settings)
    doc = inventory([tmp_path / "runs"], parse_period("2026-07"),
                    budgets=[parse_budget("project=foo:1EUR"), parse_budget("project=foo:1kWh")])
    validate(doc)
    money, kwh = doc["budgets"]
    assert close(money["spent"], by_id(doc)["eur"]["figures"]["cost"]["EUR"])
    assert [(u["run_id"], u["currencies"]) for u in money["uncounted"]] == [
        ("free", []), ("usd", ["USD"])]
    assert kwh["uncounted"] == []  # energy counts every run
    (note,) = doc["warnings"]
    assert note.startswith("budget project=foo:1EUR: 2 of its 3 run(s) have no cost in EUR")
    from greentrack.reports.inventory_text import markdown
    assert "- project=foo:1EUR: 2 run(s) not counted, without a cost in EUR:\n  - `" \
        f"{tmp_path / 'runs' / 'free'}` (no price set)\n  - `{tmp_path / 'runs' / 'usd'}` " \
        "(priced in USD)\n" in markdown(doc)


def _shape(line: str) -> str:
    """A line with its numbers as N: what the README's inventory shares with any other run set."""
    import re
    return re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "N", line.rstrip())


def test_the_readme_shows_what_the_inventory_prints(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's inventory: the command as written prints the lines shown, and each stretch of
    `inventory.md` shown (between `[...]`) is a stretch of the Markdown it writes now (numbers
    aside). Its run set: three runs in 2026-Q4, two nlp in France and one vision in Germany,
    CPU estimated, no price. 8a2bbe5's README showed the Markdown as what the command printed."""
    import re
    import shlex
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```\n\$ (greentrack inventory [^\n]*)\n(.*?)\$ cat (\S+)\n(.*?)```",
                      text, re.DOTALL)
    assert block, "the README has no inventory block"
    command, printed, md_name, shown = block.groups()
    start = float(calendar.timegm((2026, 12, 7, 10, 0, 0)))
    for k, (name, project, country) in enumerate((("nlp-bf16", "nlp", "FRA"),
                                                  ("nlp-fp32", "nlp", "FRA"),
                                                  ("vision-base", "vision", "DEU"))):
        write_store(tmp_path / "runs" / name, run_id=name, start_unix=start + k * H,
                    duration_s=2.0, resolution_s=0.1, channels=(("cpu", 15.0, False),),
                    labels={"project": project}, settings={"country": country}, host="vm")
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(shlex.split(command)[1:])
    assert code == 0 and err == "", err
    assert out.splitlines() == printed.splitlines()
    md = [_shape(x) for x in (tmp_path / md_name).read_text(encoding="utf-8").splitlines()]
    at = 0
    for stretch in re.split(r"\n\[\.\.\.\]\n", shown.rstrip("\n")):
        want = [_shape(x) for x in stretch.strip("\n").splitlines()]
        found = next((i for i in range(at, len(md) - len(want) + 1)
                      if md[i:i + len(want)] == want), None)
        assert found is not None, f"not in inventory.md as written now: {want}\n{md}"
        at = found + len(want)


def test_data_quality_lists_running_and_incomplete_runs_with_their_directories(
        tmp_path: Path) -> None:
    """A run still writing, and one whose process died without closing its store (its heartbeat
    stale), each listed with its directories in the JSON and the Markdown."""
    from greentrack.reports.inventory_text import markdown
    now = Q3 + 10 * 24 * H
    write_store(tmp_path / "going", run_id="going", start_unix=now - H, duration_s=H,
                status="running", now=now)
    write_store(tmp_path / "died", run_id="died", start_unix=now - 5 * H, duration_s=H,
                status="running", now=now - 4 * H)
    write_store(tmp_path / "done", run_id="done", start_unix=now - 3 * H, duration_s=H)
    doc = inventory([tmp_path], parse_period("2026-07"), now=now)
    validate(doc)
    q = doc["data_quality"]
    assert [(r["run_id"], r["run_dirs"]) for r in q["running"]] == [
        ("going", [str(tmp_path / "going")])]
    assert [(r["run_id"], r["run_dirs"], r["status"]) for r in q["incomplete"]] == [
        ("died", [str(tmp_path / "died")], "incomplete")]
    assert doc["totals"]["runs_by_status"] == {"running": 1, "incomplete": 1, "completed": 1}
    text = markdown(doc)
    assert f"- Runs still running: 1\n  - `{tmp_path / 'going'}` (going)\n" in text
    assert f"- Runs incomplete or failed: 1\n  - `{tmp_path / 'died'}` (died)\n" in text


def test_the_long_format_in_parquet_is_the_csvs_rows(tmp_path: Path,
                                                     q2q3: dict[str, dict[str, Any]]) -> None:
    """``--format parquet``: the long CSV's rows and columns, numbers as float64 and text as
    strings, a blank as null (what pandas, DuckDB or Spark load, typed)."""
    import pyarrow.parquet as pq  # a dev dependency: missing, this fails (never skips)
    from greentrack.reports.inventory_text import write
    doc = q2q3["2026-04..2026-09"]
    write(doc, ["csv", "parquet"], tmp_path)
    table = pq.read_table(tmp_path / "inventory-long.parquet")
    long = list(csv.DictReader((tmp_path / "inventory-long.csv").open(encoding="utf-8")))
    assert table.column_names == list(long[0])
    assert str(table.schema.field("it_kwh").type) == "double"
    assert str(table.schema.field("run_id").type) == "string"
    got = table.to_pylist()
    assert len(got) == len(long) > 0
    for g, row in zip(got, long):
        for k, v in row.items():
            if v == "":
                assert g[k] is None, (k, g)
            elif isinstance(g[k], float):
                assert close(g[k], float(v)), (k, g[k], v)
            else:
                assert g[k] == v, (k, g[k], v)


def test_parquet_without_pyarrow_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from greentrack.cli.inventory import _formats
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "pyarrow" else real(name, *a))
    with pytest.raises(ConfigError) as e:
        _formats("csv,parquet")
    assert "pip install 'greentrack[parquet]'" in str(e.value) and "\n" not in str(e.value)
    assert _formats("json,csv") == ["json", "csv"]
