"""Bad input to `greentrack report` / `compare`: one clear line and a non-zero exit, or a report with
a warning for what could not be read; never a traceback."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from tests.helpers import report_json, run_cli, validate_own_schema


def one_line_error(code: int, out: str, err: str, *words: str) -> None:
    assert code == 2, (code, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("greentrack: "), err
    assert "Traceback" not in err and not out
    for w in words:
        assert w in lines[0], (w, lines[0])


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
