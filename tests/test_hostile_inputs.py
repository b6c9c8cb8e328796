"""A hostile and careless user against what landed with issues 15-17: devices, FIFOs and links
where a file goes, a symlinked input, two merges at once, '+' in a path, a decorated generator or
coroutine. Each test failed before its fix; real files, real processes, real trackers."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

import greentrack
from greentrack.config import Config
from greentrack.errors import ConfigError
from greentrack.reports.emissions_log import append
from tests.conftest import FAST
from tests.test_codecarbon_habits import doc  # noqa: F401 - the fixture

pd = pytest.importorskip("pandas")


# -- --emissions-csv / emissions_csv -----------------------------------------------------------
def test_a_link_to_the_projects_csv_is_appended_through_never_replaced(
        doc: dict[str, Any], tmp_path: Path) -> None:  # noqa: F811
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


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_fifo_or_device_as_emissions_csv_is_refused_before_the_run(
        no_host_env: Path, tmp_path: Path, kind: str) -> None:
    """Reading /dev/zero whole at stop never ended (memory grew until killed); a FIFO held the
    stop, and with it the end of training, until a writer came."""
    if kind == "fifo":
        path = tmp_path / "emissions.csv"
        os.mkfifo(path)
    else:
        path = Path("/dev/zero")
    tracker = greentrack.Tracker(tmp_path / "run", emissions_csv=str(path), **FAST)
    with pytest.raises(ConfigError) as e:
        tracker.start()
    what = "a FIFO" if kind == "fifo" else "a character device"
    assert f"emissions_csv='{path}' is invalid: is {what}" in str(e.value)
    assert not (tmp_path / "run").exists()


def test_a_fifo_as_intensity_csv_is_one_line_not_a_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "intensity.csv"
    os.mkfifo(fifo)
    got: list[BaseException] = []

    def check() -> None:
        try:
            Config(run_dir=tmp_path / "run", intensity_csv=str(fifo)).check()
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
