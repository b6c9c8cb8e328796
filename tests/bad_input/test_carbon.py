"""Bad input to the carbon layer: intensity CSV files (their header, columns, values and times,
and what sits where a file should), the place (country, region, cloud) an intensity is looked
up for; checked before a run starts as well as when a report reads them.

The rule: one clear line naming the setting (``intensity_csv``, ``country``...), the value and,
for a file, its line, and what is allowed (the close matches of a misspelt place); never a guess
between two readings, never a read that waits for ever. (PUE and prices given to ``report``:
test_reports.py; random intensity CSVs: tests/test_fuzz_files.py.)"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

import greentrack
from greentrack.carbon.location import yearly_factor
from greentrack.carbon.series import read_csv
from greentrack.common.config import Config
from greentrack.common.errors import ConfigError
from greentrack.process.settings import check_settings
from tests.bad_input import one_line, one_line_error
from tests.helpers import FAST, run_cli


def write(tmp_path: Path, text: str, name: str = "i.csv") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_an_intensity_csv_with_two_intensity_columns_is_refused(no_host_env: Path,
                                                               tmp_path: Path) -> None:
    """8a2bbe5: a CSV with both ``intensity`` and ``carbon_intensity`` silently used one."""
    path = tmp_path / "grid.csv"
    path.write_text("start,intensity,carbon_intensity\n"
                    "2026-01-01T00:00:00Z,50,400\n2026-01-01T01:00:00Z,60,410\n")
    with pytest.raises(ConfigError) as e:
        read_csv(path)
    text = one_line(e, "intensity_csv")
    assert "line 1" in text and "2 intensity columns" in text and "carbon_intensity" in text
    with pytest.raises(ConfigError):  # before the run creates anything
        greentrack.Tracker(tmp_path / "run", intensity_csv=str(path), **FAST).start()
    assert not (tmp_path / "run").exists()
    path.write_text("start,intensity\n2026-01-01T00:00:00Z,50\n")  # one column: read as before
    assert list(read_csv(path).values) == [50.0]


def test_a_fifo_as_intensity_csv_is_one_line_not_a_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "intensity.csv"
    os.mkfifo(fifo)
    got: list[BaseException] = []

    def check() -> None:
        try:
            check_settings(Config(run_dir=tmp_path / "run", intensity_csv=str(fifo)))
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            got.append(e)
    t = threading.Thread(target=check, daemon=True)
    t.start()
    t.join(30)
    if t.is_alive():  # unblock the reader so the test process can end
        with open(fifo, "w"):
            pass
        pytest.fail("reading a FIFO as --intensity-csv waited for a writer")
    assert len(got) == 1 and isinstance(got[0], ConfigError)
    assert "is a FIFO (named pipe), not a CSV file" in str(got[0])


# -- country, region, cloud --------------------------------------------------------------------
@pytest.mark.parametrize("kw, setting, hint", [
    ({"country": "Frnace"}, "country", "FRA (France)"),
    ({"country": "Germny"}, "country", "DEU (Germany)"),
    ({"country": "ZZ"}, "country", "alpha-3"),
    ({"country": "USA", "region": "Californa"}, "region", "california"),
    ({"country": "FRA", "region": "Bretagne"}, "region", "no sub-national data for FRA"),
    ({"region": "Atlantis"}, "region", "sub-national data exists"),
    ({"cloud": "gcp:europe-west99"}, "cloud", "gcp:europe-west9"),
    ({"cloud": "aws:us-east-7"}, "cloud", "aws:us-east-1"),
    ({"cloud": "ibm:eu-de"}, "cloud", "known: gcp, aws, azure"),
    ({"cloud": "europe-west9"}, "cloud", "PROVIDER:REGION"),
])
def test_unknown_places_are_one_line_errors_with_close_matches(kw: dict, setting: str, hint: str) -> None:
    with pytest.raises(ConfigError) as e:
        yearly_factor(Config(**kw))
    assert e.value.setting == setting and hint in str(e.value) and "\n" not in str(e.value)


# -- an intensity CSV's lines and files --------------------------------------------------------
@pytest.mark.parametrize("text, line, words", [
    ("start,g_per_kwh\n2026-01-01T00:00:00Z,100\n2026-01-01T01:00:00Z,abc\n", 3, "not a number"),
    ("start,g_per_kwh\nyesterday,100\n", 2, "not a time"),
    ("start,g_per_kwh\n2026-01-01T00:00:00Z,-5\n", 2, ">= 0"),
    ("start,g_per_kwh\n2026-01-01T01:00:00Z,1\n2026-01-01T00:00:00Z,2\n", 3, "increasing"),
    ("start,g_per_kwh\n2026-01-01T01:00:00Z,1\n2026-01-01T01:00:00Z,2\n", 3, "duplicates"),
    ("# c\nstart,g_per_kwh\n\n2026-01-01T00:00:00Z\n", 4, "column"),
    ("when,how_much\n2026-01-01T00:00:00Z,1\n", 1, "header needs"),
    ("start,g_per_kwh,end\n2026-01-01T01:00:00Z,1,2026-01-01T00:00:00Z\n", 2, "end must be after"),
])
def test_malformed_csv_names_the_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        read_csv(write(tmp_path, text))
    msg = str(e.value)
    assert e.value.setting == "intensity_csv" and f"line {line}" in msg and words in msg
    assert "\n" not in msg


def test_missing_empty_and_header_only_files(tmp_path: Path) -> None:
    for path, words in ((tmp_path / "nope.csv", "cannot be read"),
                        (write(tmp_path, "\n# only a comment\n", "e.csv"), "empty"),
                        (write(tmp_path, "start,g_per_kwh\n", "h.csv"), "no intensity rows")):
        with pytest.raises(ConfigError, match=words):
            read_csv(path)


# -- an intensity CSV's times, given to a report -----------------------------------------------
@pytest.mark.parametrize("text, words", [
    ("start,end,g_per_kwh\n2026-01-01T00:00:00Z,2026-01-01T02:00:00Z,50\n"
     "2026-01-01T01:00:00Z,2026-01-01T03:00:00Z,60\n", ("line 3", "overlaps")),
    ("start,g_per_kwh\nnan,50\n", ("line 2", "'nan'")),
    ("start,g_per_kwh\n1767225600,50\ninf,60\n", ("line 3", "'inf'")),
    ("start,g_per_kwh\n-1e300,50\n", ("line 2", "-1e300")),
    ("start,g_per_kwh\n1e300,50\n", ("line 2", "1e300")),
    ("start,g_per_kwh\n9999-12-31T23:59:59+14:00,50\n0001-01-01T00:00:00-14:00,60\n", ("line",)),
    ("start,end,g_per_kwh\n1767225600,nan,50\n", ("line 2", "'nan'")),
    ("start,end,g_per_kwh\n1767225600,1e300,50\n", ("line 2", "1e300")),
])
def test_intensity_csv_overlaps_and_bad_times_name_their_line(
        good_run: Path, tmp_path: Path, env: None, text: str, words: tuple[str, ...]) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    code, out, err = run_cli(["report", str(good_run), "--intensity-csv", str(path),
                              "--out", str(tmp_path / "o")])
    assert code == 2
    one_line_error(code, out, err, "intensity_csv=", *words)
    assert not (tmp_path / "o").exists()
