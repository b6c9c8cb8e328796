"""What codecarbon users expect, checked with their own tools: ``@greentrack.track`` around a
function, and a per-project ``emissions.csv`` read with pandas and appended to by codecarbon's own
``FileOutput`` (its column check), safe under concurrent appends and damaged files."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import greentrack
from greentrack.common.errors import ConfigError
from greentrack.reports.emissions_log import append
from tests.helpers import FAST, clean_env, make_run, python_env, run_cli

pd = pytest.importorskip("pandas")
psutil = pytest.importorskip("psutil")


def codecarbon_fields() -> list[str]:
    """codecarbon's own EmissionsData fields, from the imported package (not from greentrack's
    reading of its source)."""
    from codecarbon.output_methods.emissions_data import EmissionsData
    return [f.name for f in dataclasses.fields(EmissionsData)]


def test_the_header_kept_here_is_the_installed_codecarbons() -> None:
    """greentrack writes codecarbon's columns without importing codecarbon (its import prints to
    stdout): the list it keeps must be the installed package's dataclass, field for field."""
    from greentrack.common.codecarbon_data import (EMISSIONS_CSV_COLUMNS, EMISSIONS_CSV_VERSION,
                                                   version)
    assert list(EMISSIONS_CSV_COLUMNS) == codecarbon_fields(), (
        f"codecarbon {version()} changed EmissionsData: update EMISSIONS_CSV_COLUMNS (taken from "
        f"{EMISSIONS_CSV_VERSION})")


# -- the decorator ---------------------------------------------------------------------------------

def test_track_returns_the_result_and_exposes_the_totals(no_host_env: Path, tmp_path: Path) -> None:
    @greentrack.track(run_dir=None, country="FR", **FAST)
    def train(n: int, *, scale: float = 1.0) -> list[float]:
        time.sleep(0.3)
        return [i * scale for i in range(n)]

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        assert train(3, scale=2.0) == [0.0, 2.0, 4.0]
        first = train.last_totals
        assert train(1) == [0.0]
    assert train.__name__ == "train" and train.__wrapped__ is not None  # functools.wraps
    assert first is not None and train.last_totals is not None
    assert first.status == "completed" and first.energy_j["total"] and first.energy_j["total"] > 0
    assert first.emissions_g is not None and first.emissions_g > 0  # FR intensity was set
    assert first.duration_s >= 0.3
    assert first.run_dir != train.last_totals.run_dir  # each call is its own run
    assert first.run_id != train.last_totals.run_id
    assert Path(tmp_path / first.run_dir).is_dir() or Path(first.run_dir).is_dir()


def test_track_never_swallows_the_functions_exception(no_host_env: Path, tmp_path: Path) -> None:
    boom = ValueError("diverged")

    @greentrack.track(run_dir=tmp_path / "run", **FAST)
    def train() -> None:
        raise boom

    with pytest.raises(ValueError) as e:
        train()
    assert e.value is boom
    assert train.last_totals is not None and train.last_totals.status == "failed"
    assert train.last_tracker is not None and not train.last_tracker.running


def test_track_bare_and_on_methods(no_host_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GREENTRACK_FLUSH_INTERVAL_S", "0.1")

    @greentrack.track
    def plain() -> str:
        return "ok"

    class Model:
        def __init__(self) -> None:
            self.calls = 0

        @greentrack.track(**FAST)
        def fit(self, epochs: int) -> int:
            self.calls += epochs
            return self.calls

    assert plain() == "ok" and plain.last_totals is not None
    m = Model()
    assert m.fit(2) == 2 and m.fit(3) == 5


def test_nested_tracked_calls_are_one_run(no_host_env: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A recursive decorated function, and one decorated function calling another, measure the
    same devices: the inner calls join the outer run (one run, one row), they do not count it
    again as runs of their own."""
    monkeypatch.chdir(tmp_path)

    csv = tmp_path / "emissions.csv"

    @greentrack.track(emissions_csv=str(csv), **FAST)
    def step(k: int) -> int:
        return k

    @greentrack.track(emissions_csv=str(csv), **FAST)
    def fact(n: int) -> int:
        time.sleep(0.05)
        return 1 if n <= 1 else n * fact(n - 1) + step(0)

    assert fact(3) == 6
    outer = fact.last_totals
    assert outer is not None and outer.status == "completed"
    assert step.last_totals is None and step.last_tracker is fact.last_tracker
    runs = [p for p in tmp_path.rglob("run.json")]
    assert len(runs) == 1, runs
    rows = pd.read_csv(csv)
    assert len(rows) == 1 and rows["run_id"].iloc[0] == outer.run_id
    assert fact(1) == 1 and fact.last_totals is not None
    assert fact.last_totals.run_id != outer.run_id  # the next top-level call is a run again
    assert len(pd.read_csv(csv)) == 2


def test_track_checks_settings_when_decorating() -> None:
    with pytest.raises(ConfigError) as e:
        greentrack.track(pue=0.5)
    assert "pue" in str(e.value) and "0.5" in str(e.value)


# -- emissions.csv ---------------------------------------------------------------------------------

def test_runs_append_one_row_each_in_codecarbons_columns(no_host_env: Path, tmp_path: Path) -> None:
    csv_path = tmp_path / "emissions.csv"

    @greentrack.track(run_dir=None, country="FR", emissions_csv=str(csv_path), **FAST)
    def train() -> None:
        time.sleep(0.2)

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        train()
        first = train.last_totals
        train()
    df = pd.read_csv(csv_path)
    assert list(df.columns) == codecarbon_fields()
    assert len(df) == 2 and df["run_id"].tolist() == [first.run_id, train.last_totals.run_id]
    assert (df["cpu_count"] == psutil.cpu_count()).all()
    assert df["ram_total_size"].tolist() == pytest.approx([psutil.virtual_memory().total / 2**30] * 2)
    for unknown in ("water_consumed", "wue", "longitude", "latitude"):
        assert df[unknown].isna().all(), unknown  # empty, not 0.0
    assert df["energy_consumed"].gt(0).all() and df["emissions"].gt(0).all()
    assert df["country_iso_code"].tolist() == ["FRA", "FRA"]
    assert df["emissions"].iloc[0] * 1000.0 == pytest.approx(first.emissions_g, rel=1e-6)


def test_calls_on_one_run_directory_add_rows_that_sum_to_the_whole_run(no_host_env: Path,
                                                                        tmp_path: Path) -> None:
    """Every call on one ``run_dir`` adds a segment to one run. The file is never rewritten (a
    rewrite loses what codecarbon appends meanwhile): each stop appends what of the run is not
    there yet, so a sum over the file (what codecarbon's dashboards do) counts the run once."""
    csv_path = tmp_path / "emissions.csv"

    @greentrack.track(run_dir=tmp_path / "run", country="FR", emissions_csv=str(csv_path), **FAST)
    def train() -> None:
        time.sleep(0.2)

    @greentrack.track(run_dir=tmp_path / "other", country="FR", emissions_csv=str(csv_path), **FAST)
    def other() -> None:
        time.sleep(0.1)

    train()
    first = train.last_totals
    other()
    train()
    assert first is not None and train.last_totals is not None and other.last_totals is not None
    assert train.last_totals.run_id == first.run_id
    df = pd.read_csv(csv_path)
    assert df["run_id"].tolist() == [first.run_id, other.last_totals.run_id, first.run_id]
    whole = train.last_totals  # Tracker.stop's totals: every segment of the run
    assert whole.emissions_g is not None and first.emissions_g is not None
    assert whole.emissions_g > first.emissions_g and whole.energy_kwh > first.energy_kwh
    mine = df[df["run_id"] == first.run_id]
    assert mine["emissions"].sum() * 1000.0 == pytest.approx(whole.emissions_g, rel=1e-6)
    assert mine["emissions"].iloc[0] * 1000.0 == pytest.approx(first.emissions_g, rel=1e-6)
    # the second row is the second call's own part: durations and energies add up to the run's
    assert mine["duration"].sum() == pytest.approx(whole.duration_s, rel=1e-6)
    assert mine["energy_consumed"].sum() == pytest.approx(whole.facility_energy_kwh, rel=1e-6)


def test_codecarbons_own_file_output_keeps_appending_to_it(doc: dict[str, Any], tmp_path: Path) -> None:
    """codecarbon's FileOutput backs a file up and starts anew when its header differs: it must
    find ours valid and append its row after ours."""
    from codecarbon.output_methods.emissions_data import EmissionsData
    from codecarbon.output_methods.file import FileOutput
    path = tmp_path / "emissions.csv"
    assert append([doc], path) == []
    theirs = pd.read_csv(path).iloc[0].to_dict()
    theirs.update(run_id="codecarbon-run", water_consumed=0.0, wue=0.0)
    FileOutput("emissions.csv", str(tmp_path)).out(EmissionsData(**theirs), None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emissions.csv"]  # no lock file beside
    doc["run"]["run_id"] = "another-run"
    assert append([doc], path) == []
    df = pd.read_csv(path)
    assert len(df) == 3 and df["run_id"].tolist()[1] == "codecarbon-run"


APPENDER = """
import json, sys, time
from pathlib import Path
from greentrack.reports.emissions_log import append
doc = json.loads(Path(sys.argv[1]).read_text())
while not Path(sys.argv[3]).exists():
    time.sleep(0.005)
for i in range(int(sys.argv[4])):
    doc["run"]["run_id"] = f"{sys.argv[5]}-{i}"
    append([doc], sys.argv[2])
"""


def test_concurrent_appends_keep_one_header_and_every_row(doc: dict[str, Any], tmp_path: Path) -> None:
    source = tmp_path / "doc.json"
    source.write_text(json.dumps(doc))
    path, go = tmp_path / "emissions.csv", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", APPENDER, str(source), str(path), str(go), "5",
                               f"p{k}"], env=python_env()) for k in range(4)]
    time.sleep(0.5)  # let them all import and wait
    go.touch()
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    lines = path.read_text().splitlines()
    assert sum(line.startswith("timestamp,") for line in lines) == 1
    df = pd.read_csv(path)
    assert sorted(df["run_id"]) == sorted(f"p{k}-{i}" for k in range(4) for i in range(5))


def test_damaged_file_is_kept_aside_never_lost(doc: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "emissions.csv"
    damaged = b"timestamp,project_name\n2026-01-01,a\n\xff\xfe\x00garbage,,,,\n"
    path.write_bytes(damaged)
    warnings = append([doc], path)
    assert len(warnings) == 1 and "could not be read as a CSV" in warnings[0]
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("emissions.csv.damaged-")]
    assert len(aside) == 1 and aside[0].read_bytes() == damaged and str(aside[0]) in warnings[0]
    assert len(pd.read_csv(path)) == 1


def test_other_columns_are_merged_and_old_rows_kept(doc: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "emissions.csv"
    path.write_text("timestamp,project_name,emissions,my_note\n"
                    "2025-01-01T00:00:00,old,0.5,first\n2025-01-02T00:00:00,old,0.25,second\n")
    warnings = append([doc], path)
    assert len(warnings) == 1 and "my_note" in warnings[0] and "2 old row(s) kept" in warnings[0]
    df = pd.read_csv(path)
    assert list(df.columns) == codecarbon_fields() + ["my_note"]
    assert df["my_note"].tolist()[:2] == ["first", "second"] and pd.isna(df["my_note"].iloc[2])
    assert df["emissions"].tolist()[:2] == [0.5, 0.25]
    assert df["project_name"].tolist() == ["old", "old", "greentrack"]  # the default: unset


def test_report_appends_each_run_once_and_says_so_in_its_help(tmp_path: Path) -> None:
    with pytest.MonkeyPatch.context() as mp, clean_env(mp, tmp_path):
        runs = [make_run(tmp_path, name=f"r{i}", steps=2, project_name=f"p{i}") for i in range(2)]
        for _ in range(2):
            code, _, err = run_cli(["report", *map(str, runs), "--format", "json", "--out",
                                    str(tmp_path / "out"), "--emissions-csv",
                                    str(tmp_path / "all.csv")])
            assert code == 0, err
    df = pd.read_csv(tmp_path / "all.csv")
    # asked twice, each run is in the file once: the second report adds nothing; each row's
    # project_name is the one its run recorded
    assert len(df) == 2 and df["project_name"].tolist() == ["p0", "p1"]
    code, _, err = run_cli(["report", str(runs[0]), "--emissions-csv",
                            str(tmp_path / "missing-dir" / "e.csv"), "--format", "json",
                            "--out", str(tmp_path / "o2")])
    assert code == 2 and err.count("\n") == 1 and "emissions_csv" in err


def test_greentrack_run_appends_its_row(tmp_path: Path) -> None:
    from tests.fakes.powercap import PowercapTree
    tree = PowercapTree(tmp_path / "powercap")
    env = python_env(GREENTRACK_INTERVAL_S="0.02", GREENTRACK_COUNTER_INTERVAL_S="0.1",
                     GREENTRACK_FLUSH_INTERVAL_S="0.2", **tree.env)
    out = subprocess.run([sys.executable, "-m", "greentrack", "run", "--run-dir",
                          str(tmp_path / "run"), "--emissions-csv", str(tmp_path / "e.csv"),
                          "--project-name", "bert-sweep", "--quiet", "--", sys.executable, "-c",
                          "pass"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    df = pd.read_csv(tmp_path / "e.csv")
    assert len(df) == 1 and df["project_name"].iloc[0] == "bert-sweep"
    assert df["cpu_count"].iloc[0] == psutil.cpu_count()


@pytest.mark.slow
@pytest.mark.parametrize("end", ["sigterm", "exit-without-stop"])
def test_a_run_ended_by_sigterm_or_exit_still_appends_its_row(tmp_path: Path, end: str) -> None:
    """A Slurm preemption (SIGTERM) or a script that never calls stop(): the run is stopped by
    greentrack's hooks, and its row reaches the project's CSV as at a normal stop."""
    import signal

    from tests.fakes.powercap import LiveCounters, PowercapTree
    tree = PowercapTree(tmp_path / "powercap")
    env = python_env(GREENTRACK_INTERVAL_S="0.02", GREENTRACK_COUNTER_INTERVAL_S="0.1",
                     GREENTRACK_FLUSH_INTERVAL_S="0.2", GREENTRACK_COUNTRY="FRA",
                     GREENTRACK_EMISSIONS_CSV=str(tmp_path / "e.csv"), **tree.env)
    body = ("while True:\n    with t.step(): time.sleep(0.02)\n" if end == "sigterm" else
            "for _ in range(5):\n    with t.step(): time.sleep(0.02)\n")
    code = ("import sys, time, greentrack\nt = greentrack.Tracker(sys.argv[1]).start()\n"
            "print('ready', flush=True)\n" + body)
    with LiveCounters(tree, {"intel-rapl:0": 50.0}):
        proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "run")], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        if end == "sigterm":
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == -signal.SIGTERM  # still dies of SIGTERM
        else:
            assert proc.wait(30) == 0
    assert proc.stderr is not None and "Traceback" not in proc.stderr.read()
    df = pd.read_csv(tmp_path / "e.csv")
    run_id = greentrack.summarize(tmp_path / "run")["run_id"]
    assert list(df["run_id"]) == [run_id] and df["country_iso_code"].iloc[0] == "FRA"
    assert df["energy_consumed"].iloc[0] > 0 and df["duration"].iloc[0] > 0


def test_a_slow_row_at_a_signal_stop_is_given_up_with_how_to_append_it(
        no_host_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """At SIGTERM the row gets ``EXIT_CSV_BUDGET_S``, not the grace period: a row that takes
    longer (a week-long run, a held lock) is left with one warning naming the command."""
    import threading

    from greentrack.process import tracker as tracker_mod
    from greentrack.reports import document
    release = threading.Event()
    monkeypatch.setattr(document, "append_run", lambda *a: release.wait(30))
    monkeypatch.setattr(tracker_mod, "EXIT_CSV_BUDGET_S", 0.3)
    tracker = greentrack.Tracker(tmp_path / "run", emissions_csv=str(tmp_path / "e.csv"), **FAST)
    tracker.start()
    t0 = time.monotonic()
    try:
        tracker._stop("stopped", read_totals=False)  # what the SIGTERM hook calls
        took = time.monotonic() - t0
    finally:
        release.set()
    assert took < 0.3 + 2.0  # the budget, plus the stop itself on a loaded host
    assert "greentrack report" in caplog.text and "--emissions-csv" in caplog.text
    assert greentrack.summarize(tmp_path / "run")["status"] == "stopped"


def test_a_missing_directory_is_refused_before_the_run(no_host_env: Path, tmp_path: Path) -> None:
    tracker = greentrack.Tracker(tmp_path / "run", emissions_csv=str(tmp_path / "nope" / "e.csv"),
                                 **FAST)
    with pytest.raises(ConfigError) as e:
        tracker.start()
    assert "emissions_csv" in str(e.value) and "does not exist" in str(e.value)
    assert not (tmp_path / "run").exists() and not (tmp_path / "nope").exists()


@pytest.mark.slow
def test_a_trainer_run_appends_one_row_for_the_whole_run(no_host_env: Path, tmp_path: Path) -> None:
    """The integration's trackers leave the row to the end of the run (rank 0, after the
    barrier): one row, though the callback stops at the final log and again at train end."""
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from transformers import GPT2LMHeadModel

    from greentrack.integrations.transformers import GreenTrackTrainerCallback
    from tests.tiny_models import hf_trainer, tiny_gpt2_config
    cb = GreenTrackTrainerCallback(tmp_path / "run", emissions_csv=str(tmp_path / "e.csv"), **FAST)
    hf_trainer(tmp_path / "out", GPT2LMHeadModel(tiny_gpt2_config()), cb).train()
    df = pd.read_csv(tmp_path / "e.csv")
    assert len(df) == 1 and df["project_name"].iloc[0] == "greentrack"
    assert df["run_id"].iloc[0] == cb.run.summary["run_id"]
    assert df["energy_consumed"].iloc[0] > 0


def test_run_ids_never_read_as_numbers(tmp_path: Path) -> None:
    """A random 12-hex-digit id reads as a number about 1 time in 120 (``81028e107769`` is inf to
    pandas, which codecarbon's dashboard and most readers of emissions.csv use): a trainer run's
    one-row file once failed this way. Generated ids are drawn again until they do not."""
    from greentrack.store.layout import new_run_id

    def read_back(run_id: str) -> object:
        (tmp_path / "one.csv").write_text(f"run_id,energy_consumed\n{run_id},0.1\n")
        return pd.read_csv(tmp_path / "one.csv")["run_id"].iloc[0]

    assert read_back("81028e107769") == float("inf")  # the trap itself
    ids = [new_run_id() for _ in range(20_000)]
    assert all(len(i) == 12 and int(i, 16) >= 0 for i in ids)
    for run_id in ids:
        with pytest.raises(ValueError):
            float(run_id)
    assert all(read_back(i) == i for i in ids[:50])


# -- what a codecarbon user reads in the rows (issue 26) ------------------------------------------

def test_project_name_is_the_setting_never_the_run_id(no_host_env: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """8a2bbe5: every row's project_name was the run directory's name (the run id, e.g.
    ``20261206-232747-3501``, for a default directory). Now it is codecarbon's setting of that
    name, from the decorator, the environment, or ``greentrack`` when unset."""
    csv_path = tmp_path / "emissions.csv"

    @greentrack.track(run_dir=None, country="FR", emissions_csv=str(csv_path),
                      project_name="bert-sweep", **FAST)
    def named() -> None:
        time.sleep(0.05)

    @greentrack.track(run_dir=None, country="FR", emissions_csv=str(csv_path), **FAST)
    def unnamed() -> None:
        time.sleep(0.05)

    monkeypatch.chdir(tmp_path)
    named()
    unnamed()
    monkeypatch.setenv("GREENTRACK_PROJECT_NAME", "from-env")
    unnamed()
    df = pd.read_csv(csv_path)
    assert df["project_name"].tolist() == ["bert-sweep", "greentrack", "from-env"]
    assert not set(df["project_name"]) & set(df["run_id"])
    for bad in ("", "  ", "x" * 129, "tab\there"):
        with pytest.raises(ConfigError) as e:
            greentrack.Tracker(tmp_path / "r", project_name=bad)
        assert str(e.value).startswith("project_name=") and "\n" not in str(e.value)


def test_world_average_rows_name_the_world_and_every_row_states_its_pue(tmp_path: Path) -> None:
    """8a2bbe5: a run without a location (charged the world average) had empty country cells,
    and greentrack's rows at PUE 1.56 sat beside codecarbon's at 1.0 with nothing saying so.
    Now country_name says World, and the pue column holds the PUE each row's energies include,
    so ``energy_consumed / pue`` is the IT energy whatever wrote the row."""
    from greentrack.reports import report_document
    from greentrack.reports.to_csv import row
    with pytest.MonkeyPatch.context() as mp, clean_env(mp, tmp_path):
        docs = [report_document(make_run(tmp_path, name="world", steps=2), {}),
                report_document(make_run(tmp_path, name="fr", steps=2, country="FR", pue=1.0), {})]
    rows = [row(d) for d in docs]
    assert (rows[0]["country_name"], rows[0]["country_iso_code"]) == ("World", "")
    assert docs[0]["summary"]["intensity_method"] == "world-average"
    assert (rows[1]["country_name"], rows[1]["country_iso_code"]) == ("France", "FRA")
    assert [r["pue"] for r in rows] == [1.56, 1.0]
    for r, d in zip(rows, docs):
        assert r["energy_consumed"] / r["pue"] == pytest.approx(d["summary"]["energy_kwh"])
    path = tmp_path / "emissions.csv"
    assert append(docs, path) == []
    df = pd.read_csv(path)
    assert df["country_name"].tolist() == ["World", "France"] and df["pue"].tolist() == [1.56, 1.0]
    assert pd.isna(df["country_iso_code"].iloc[0])
    # codecarbon's reader of the file sees no lock file or other leftover beside it
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("emissions.csv") and
                p.name != "emissions.csv"]
