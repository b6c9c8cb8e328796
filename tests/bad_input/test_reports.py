"""Bad input to the run/reports layer: `greentrack report` / `compare` / `merge` arguments and
settings, targets, the `emissions.csv` a report appends to, damaged rows met while reading.

The rule: one clear line naming the setting, the value and what is allowed, and a non-zero exit
before anything is written; or, for what could be read in part, a report with a warning for what
could not; nothing recorded is lost (inputs unchanged); never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from greentrack.common.errors import ConfigError
from greentrack.reports.emissions_log import append
from greentrack.run import parse_target
from tests.bad_input import one_line, one_line_error
from tests.helpers import digest, gt, report_json, run_cli, validate_own_schema


@pytest.mark.parametrize("args, words", [
    (["--country", "Frnace"], ("country='Frnace'", "did you mean FRA (France)")),
    (["--country", "USA", "--region", "Texs"], ("region='Texs'", "texas")),
    (["--cloud", "aws:eu-west-9"], ("cloud=", "aws:eu-west-1")),
    (["--pue", "0"], ("pue=0.0", "from 1 to 5")),
    (["--pue", "-1.5"], ("pue=-1.5",)),
    (["--electricity-price", "0"], ("electricity_price=0.0", "> 0")),
    (["--electricity-price", "-2"], ("electricity_price=-2.0",)),
    (["--gpu-hour-price", "0"], ("gpu_hour_price=0.0", "> 0")),
    (["--carbon-intensity", "-3"], ("carbon_intensity_g_per_kwh=-3.0", "from 0 to 3000")),
    (["--format", "pdf"], ("--format='pdf'", "json, md")),
    (["--pue", "abc"], ("invalid float value",)),
])
def test_bad_settings(good_run: Path, tmp_path: Path, env: None, args: list[str], words: tuple) -> None:
    code, out, err = run_cli(["report", str(good_run), "--out", str(tmp_path / "o"), *args])
    one_line_error(code, out, err, *words)
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_malformed_intensity_csv_names_its_line(good_run: Path, tmp_path: Path, env: None) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text("start,g_per_kwh\n2026-01-01T00:00:00Z,50\n2026-01-01T01:00:00Z,fifty\n")
    code, out, err = run_cli(["report", str(good_run), "--intensity-csv", str(csv), "--out", str(tmp_path / "o")])
    one_line_error(code, out, err, "line 3", "'fifty' is not a number")
    code, out, err = run_cli(["report", str(good_run), "--intensity-csv", str(tmp_path / "missing.csv"),
                              "--out", str(tmp_path / "o")])
    one_line_error(code, out, err, "cannot be read")


def test_directories_without_a_run(tmp_path: Path, env: None) -> None:
    (tmp_path / "empty").mkdir()
    for target, words in ((tmp_path / "empty", "holds no greentrack run"),
                          (tmp_path / "nope", "does not exist")):
        for cmd in ("report", "compare"):
            code, out, err = run_cli([cmd, str(target), "--out", str(tmp_path / "o")] if cmd == "report"
                                     else [cmd, str(target)])
            one_line_error(code, out, err, words)


def test_bad_config_files(good_run: Path, tmp_path: Path, env: None) -> None:
    cases = {"[greentrack\ncountry = 'FR'": "not valid TOML",
             "colour = 'green'": "unknown setting",
             "pue = 'high'": "pue='high'",
             "[embodied]\ngpu_kg = -1": "embodied.gpu_kg=-1",
             "[embodied]\nshare = 2": "embodied.share=2",
             "[embodied]\nweight = 3": "embodied.weight"}
    for i, (text, words) in enumerate(cases.items()):
        cfg = tmp_path / f"c{i}.toml"
        cfg.write_text(text)
        code, out, err = run_cli(["report", str(good_run), "--config", str(cfg), "--out", str(tmp_path / "o")])
        one_line_error(code, out, err, words)
    code, out, err = run_cli(["report", str(good_run), "--config", str(tmp_path / "none.toml")])
    one_line_error(code, out, err, "cannot be read")


def test_out_path_that_is_a_file(good_run: Path, tmp_path: Path, env: None) -> None:
    (tmp_path / "file").write_text("x")
    code, out, err = run_cli(["report", str(good_run), "--out", str(tmp_path / "file")])
    one_line_error(code, out, err, "not a directory")


def _corrupt_page(store: Path, table: str) -> None:
    with sqlite3.connect(store) as conn:
        page = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    data = bytearray(store.read_bytes())
    data[(page - 1) * size:page * size] = b"\xde\xad\xbe\xef" * (size // 4)
    store.write_bytes(bytes(data))


@pytest.mark.parametrize("table", ["samples", "steps"])
def test_damaged_rows_give_a_report_with_a_warning(good_run: Path, tmp_path: Path, env: None,
                                                   table: str) -> None:
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    _corrupt_page(next(run.glob("*.gtdb")), table)
    code, out, err = run_cli(["report", str(run), "--country", "FR", "--out", str(tmp_path / "o")])
    assert code == 0 and "Traceback" not in err
    doc = report_json(tmp_path / "o")
    validate_own_schema(doc)
    assert any("damaged" in w and "malformed" in w for w in doc["warnings"])
    assert "warning" in err and "damaged" in err
    assert doc["summary"]["energy_kwh"] > 0  # channel totals were still readable


def test_an_unreadable_store_beside_a_good_one_is_a_warning_and_alone_an_error(
        good_run: Path, tmp_path: Path, env: None) -> None:
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    (run / "otherhost-r1-deadbeef.gtdb").write_bytes(b"this is not a database" * 100)
    code, out, err = run_cli(["report", str(run), "--format", "json", "--out", str(tmp_path / "o")])
    assert code == 0 and "not a readable greentrack store" in err
    assert any("otherhost" in w for w in report_json(tmp_path / "o")["warnings"])
    for store in run.glob("*.gtdb"):
        store.write_bytes(b"garbage" * 100)
    code, out, err = run_cli(["report", str(run), "--out", str(tmp_path / "o2")])
    one_line_error(code, out, err, "none of its stores can be read")


# -- targets (`compare --target`) ---------------------------------------------------------------
@pytest.mark.parametrize("text", ["loss<=1e-400", "loss>=1e400", "loss<-2e-999", "loss<=0.5e-330"])
def test_a_target_a_float_cannot_hold_is_refused_not_changed(text: str) -> None:
    """8a2bbe5: ``--target "loss<=1e-400"`` was echoed (and compared) as ``loss<=0``."""
    with pytest.raises(ConfigError) as e:
        parse_target(text)
    assert "outside a float's range" in one_line(e, "--target")


def test_a_target_a_float_holds_is_kept_and_echoed(good_run: Path) -> None:
    assert parse_target("loss<=0") == ("loss", "<=", 0.0)
    assert parse_target("loss<=0.0e-400") == ("loss", "<=", 0.0)  # a zero is a zero
    assert parse_target("loss<=1e-300") == ("loss", "<=", 1e-300)
    assert parse_target("val_loss>5e-324") == ("val_loss", ">", 5e-324)  # the smallest float
    code, out, err = run_cli(["compare", str(good_run), "--target", "loss<=1e-300", "--json"])
    assert code == 0, err
    assert json.loads(out)["target"] == "loss<=1e-300"
    code, _, err = run_cli(["compare", str(good_run), "--target", "loss<=1e-400"])
    assert code == 2 and err.count("\n") == 1 and "--target" in err


# -- greentrack merge ------------------------------------------------------------------------
def test_merge_refuses_an_out_inside_an_input_reached_through_a_link(
        two_runs: list[Path], tmp_path: Path) -> None:
    link = tmp_path / "alink"
    link.symlink_to(two_runs[0].parent)
    before = digest(two_runs[0])
    for out, given in ((link / "run" / "merged", two_runs[0]), (two_runs[0] / "m", link / "run")):
        r = gt("merge", str(out), str(given))
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert "is inside the input" in r.stderr
    assert digest(two_runs[0]) == before


def test_merge_into_an_unwritable_place_is_one_line(two_runs: list[Path]) -> None:
    r = gt("merge", "/proc/greentrack-nowhere/out", str(two_runs[0]))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "OUT='/proc/greentrack-nowhere/out' is invalid: cannot be written" in r.stderr


# -- the emissions.csv a report or a run appends to ----------------------------------------------
def test_a_link_to_the_projects_csv_is_appended_through_never_replaced(
        doc: dict[str, Any], tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    shared = tmp_path / "shared"
    shared.mkdir()
    target = shared / "emissions.csv"
    target.write_text("timestamp,project_name,emissions,my_note\n2025-01-01T00:00:00,old,0.5,a\n")
    link = tmp_path / "emissions.csv"
    link.symlink_to(target)
    append([doc], link)  # other columns: the file is rewritten, through the link
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert len(pd.read_csv(target)) == 2 and pd.read_csv(target)["my_note"].iloc[0] == "a"
    dangling = tmp_path / "new.csv"
    dangling.symlink_to(shared / "new-target.csv")  # the user's link to a file not made yet
    append([doc], dangling)
    assert dangling.is_symlink() and len(pd.read_csv(shared / "new-target.csv")) == 1
