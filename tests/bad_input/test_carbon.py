"""Bad input to the carbon layer: intensity CSV files (their columns, and what sits where a
file should), checked before a run starts as well as when a report reads them.

The rule: one clear line naming the setting (``intensity_csv``), the file and, where it is in
the file, its line, and what is allowed; never a guess between two readings, never a read
that waits for ever. (Country, region, PUE and price given to ``report``: test_reports.py; an
intensity CSV's bad values and times: tests/test_untrusted_files.py, tests/test_fuzz_files.py.)"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

import greentrack
from greentrack.carbon.series import read_csv
from greentrack.common.config import Config
from greentrack.common.errors import ConfigError
from greentrack.process.settings import check_settings
from tests.bad_input import one_line
from tests.helpers import FAST


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
