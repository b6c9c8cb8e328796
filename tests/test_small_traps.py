"""Small traps a new user falls into (issue 26, "Noise and small traps"): each one either does
what was meant or says in one line what is wrong, naming the setting. Each test failed on
8a2bbe5. (``greentrack run -- nonexistent-cmd``: tests/test_never_break.py; the warning said
once per cause: tests/test_said_once.py.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import greentrack
from greentrack.carbon.series import read_csv
from greentrack.common.config import Config
from greentrack.common.errors import ConfigError
from greentrack.common.labels import parse_labels
from greentrack.run import parse_target
from greentrack.store import StoreReader, store_paths
from tests.helpers import FAST, clean_env, run_cli


def one_line(e: pytest.ExceptionInfo[ConfigError], setting: str) -> str:
    text = str(e.value)
    assert text.startswith(f"{setting}=") and "\n" not in text, text
    return text


def test_an_empty_run_dir_is_refused_never_the_current_directory(
        no_host_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """8a2bbe5: ``Tracker(os.environ.get("OUT", ""))`` made the current directory the run
    directory (Path("") is "."): run.json and stores among the user's files."""
    monkeypatch.chdir(tmp_path)
    for empty in ("", "   "):
        with pytest.raises(ConfigError) as e:
            greentrack.Tracker(empty)
        assert "is empty" in one_line(e, "run_dir")
        with pytest.raises(ConfigError):
            greentrack.track(run_dir=empty)
        with pytest.raises(ConfigError):
            Config(run_dir=empty)
    with pytest.raises(ConfigError) as e:
        Config.from_env({"GREENTRACK_RUN_DIR": ""})
    assert "is empty" in one_line(e, "GREENTRACK_RUN_DIR")
    code, _, err = run_cli(["run", "--run-dir", "", "--", "true"])
    assert code == 2 and err.count("\n") == 1 and "run_dir=''" in err
    assert list(tmp_path.iterdir()) == []  # nothing written where the user stands
    assert greentrack.Tracker(".").run_dir == Path(".")  # named on purpose: allowed


def test_a_run_dir_that_is_a_file_is_called_a_file(no_host_env: Path, tmp_path: Path) -> None:
    """8a2bbe5: a run_dir that is a file was "not writable by this user" (a root user then
    checks permissions, not the path)."""
    afile = tmp_path / "notes.txt"
    afile.write_text("mine\n")
    with pytest.raises(ConfigError) as e:
        greentrack.Tracker(afile, **FAST).start()
    text = one_line(e, "run_dir")
    assert "is a file, not a directory" in text and "writable" not in text
    with pytest.raises(ConfigError) as e:
        greentrack.Tracker(afile / "run", **FAST).start()
    assert f"is under {afile}, which is a file" in one_line(e, "run_dir")
    assert afile.read_text() == "mine\n"


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


def test_a_label_given_twice_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """8a2bbe5: labels ``a=1,a=2`` silently kept ``a=2``."""
    for given in ("a=1,a=2", ["a=1", "a=2"], "precision=bf16, precision=fp32"):
        with pytest.raises(ConfigError) as e:
            parse_labels(given, "--label")
        assert "given twice" in one_line(e, "--label")
    with pytest.raises(ConfigError) as e:
        Config(labels="a=1,a=2")
    one_line(e, "labels")
    with pytest.raises(ConfigError) as e:
        Config.from_env({"GREENTRACK_LABELS": "a=1,a=2"})
    one_line(e, "GREENTRACK_LABELS")
    with clean_env(monkeypatch, tmp_path):
        code, _, err = run_cli(["run", "--run-dir", str(tmp_path / "r"), "--label", "a=1",
                                "--label", "a=2", "--", "true"])
    assert code == 2 and err.count("\n") == 1 and "given twice" in err
    assert not (tmp_path / "r").exists()
    assert parse_labels("a=1,b=2") == {"a": "1", "b": "2"}  # distinct keys: as before


def _steps(run: Path) -> tuple[list[Any], list[dict[str, Any]]]:
    store = StoreReader(store_paths(run)[0])
    return [r["samples"] for r in store.steps()], \
        [e for e in store.events() if e["kind"] == "bad-step-field"]


def test_one_element_arrays_and_tensors_of_any_shape_are_one_number(no_host_env: Path,
                                                                   tmp_path: Path) -> None:
    """8a2bbe5: ``step(samples=np.array([3]))`` was dropped while ``torch.tensor([[5]])`` was
    recorded. One rule now, NumPy and torch alike: one element, whatever the shape, is that
    number; more is dropped, saying how many."""
    values = [np.array([3]), np.array([[4]]), np.array(5), torch.tensor([6]),
              torch.tensor([[7]]), np.array([[8.5]], dtype=np.float32),
              np.array([1, 2]), torch.tensor([1, 2, 3])]
    with greentrack.Tracker(tmp_path / "run", **FAST) as t:
        for v in values:
            with t.step(samples=v, extra_count=v):
                pass
    samples, bad = _steps(tmp_path / "run")
    assert samples == [3.0, 4.0, 5.0, 6.0, 7.0, 8.5, None, None]
    messages = sorted(e["message"] for e in bad)  # one event per field: its first drop
    assert len(messages) == 2 and all("an array of 2 elements" in m for m in messages), messages
    assert "'extra_count'" in messages[0] and "'samples'" in messages[1]
