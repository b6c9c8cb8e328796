"""Bad input to the settings (common/process): ``Config`` and its fields, ``GREENTRACK_*``
environment variables, run_dir, labels, planned steps, power limits, config files, and the files
a setting names (``emissions_csv``), checked where the run starts or a decorator is applied.

The rule: one clear line naming the setting, the value and what is allowed (a ``ConfigError``
whose text starts ``SETTING=``), raised before anything is created: no run directory, no file
among the user's; a value that means what was meant (a NumPy or tensor number) is taken as that
number. Several of these failed on 8a2bbe5 (issue 26, "Noise and small traps")."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import greentrack
from greentrack.common.config import RANGES, Config
from greentrack.common.errors import ConfigError
from greentrack.common.labels import parse_labels
from tests.bad_input import one_line
from tests.fakes.fake_pynvml import FakeNvml
from tests.helpers import FAST, clean_env, make_run, python_env, run_cli

values = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                   st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                   st.lists(st.integers(-2, 9), max_size=3))
FIELDS = ["interval_s", "counter_interval_s", "flush_interval_s", "resolution_s", "mode", "gpus",
          "cpu_tdp_w", "dram_w_per_gb", "rank", "prometheus_port", "push_interval_s", "pue",
          "carbon_intensity_g_per_kwh", "electricity_price", "budget_kwh", "budget_grams",
          "budget_cost", "on_budget"]


# -- Config and the environment (hypothesis) ---------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), values, max_size=3))
def test_config_accepts_or_explains_in_one_line(changes: dict) -> None:
    try:
        cfg = Config(**changes)
    except ConfigError as e:
        text = str(e)
        assert "\n" not in text and text.startswith(f"{e.setting}=") and "is invalid:" in text
        return
    for name, (low, high) in RANGES.items():  # every numeric setting accepted is in its range
        value = getattr(cfg, name)
        assert value is None or (math.isfinite(value) and low <= value <= high)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from([f"GREENTRACK_{f.upper()}" for f in FIELDS]),
                       st.text(max_size=10), max_size=3))
def test_environment_settings_accept_or_explain(env: dict) -> None:
    try:
        Config.from_env(env)
    except ConfigError as e:
        assert "\n" not in str(e)


# -- run_dir -------------------------------------------------------------------------------------
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


# -- labels --------------------------------------------------------------------------------------
def test_a_label_given_twice_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """8a2bbe5: labels ``a=1,a=2`` silently kept ``a=2``."""
    for given_ in ("a=1,a=2", ["a=1", "a=2"], "precision=bf16, precision=fp32"):
        with pytest.raises(ConfigError) as e:
            parse_labels(given_, "--label")
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


# -- files a setting names: emissions_csv, config --------------------------------------------------
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


def test_track_checks_file_settings_when_decorating_and_runs_a_call_it_cannot_record(
        no_host_env: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ConfigError) as e:  # before: only when the first call started
        greentrack.track(emissions_csv=str(tmp_path / "no-such-dir" / "e.csv"))
    assert "emissions_csv" in str(e.value) and "does not exist" in str(e.value)
    blocker = tmp_path / "file"
    blocker.write_text("")  # the run directory's parent is a file: it cannot be made

    @greentrack.track(run_dir=blocker / "run", **FAST)
    def train() -> int:
        return 42

    assert train() == 42  # before: ConfigError, and the function never ran
    assert train.last_totals is None
    assert any("this call is not tracked" in r.getMessage() for r in caplog.records)


def test_a_fifo_or_device_as_config_file_is_one_line(tmp_path: Path) -> None:
    """``--config`` (or GREENTRACK_CONFIG) naming a FIFO waited for a writer for ever."""
    fifo = tmp_path / "settings.toml"
    os.mkfifo(fifo)
    for path, what in ((fifo, "a FIFO (named pipe)"), (Path("/dev/zero"), "a character device")):
        try:
            r = subprocess.run([sys.executable, "-m", "greentrack", "advise", str(tmp_path),
                                "--config", str(path)], capture_output=True, text=True,
                               env=python_env(), timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"--config {path} did not end")
        assert r.returncode == 2 and r.stderr == (f"greentrack: config='{path}' is invalid: is "
                                                  f"{what}, not a TOML file\n")


# -- planned_steps (the forecast's horizon) ---------------------------------------------------
@pytest.mark.parametrize("bad", ["1000", -5, 0, float("nan"), float("inf"), 2.5, 1e30])
def test_a_bad_planned_steps_is_one_line_before_anything_starts(no_host_env: Path, tmp_path: Path,
                                                                 bad: Any) -> None:
    """Before: taken as is; '1000' made every forecast raise TypeError, -5 forecast the run as
    already over, 1e30 forecast an end in the year 10^21."""
    torch = pytest.importorskip("torch")
    from greentrack.integrations.torch import track_optimizer
    opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    with pytest.raises(ConfigError) as e:
        track_optimizer(opt, tmp_path / "run", planned_steps=bad, **FAST)
    assert str(e.value).startswith(f"planned_steps={bad!r} is invalid: must be a whole number")
    assert not (tmp_path / "run").exists()


def test_planned_steps_as_a_tensor_or_numpy_integer_is_a_plain_count(no_host_env: Path,
                                                                     tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    np = pytest.importorskip("numpy")
    from greentrack.integrations.torch import track_optimizer
    for i, given_ in enumerate((torch.tensor(40), np.int64(40), 40.0)):
        opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
        tracking = track_optimizer(opt, tmp_path / f"run{i}", planned_steps=given_,
                                   progress_every_s=None, **FAST)
        try:
            planned = tracking.meter.forecast.planned_steps
            assert planned == 40 and type(planned) is int  # before: the tensor itself
            tracking.meter.plan(-1)  # a framework's "unknown" inside a hook: left out, no raise
            tracking.meter.plan("n/a")
            assert tracking.meter.forecast.planned_steps == 40
        finally:
            tracking.close()


# -- calibrate_power_limits given as NumPy, a tensor, one number ------------------------------
def test_power_limits_from_numpy_a_tensor_or_one_number(tmp_path: Path) -> None:
    """Before: ``np.array([250, 300])``, ``[np.int64(250)]``, ``torch.tensor([...])`` and ``250``
    were all refused as 'not a list'; the bad ones stay refused."""
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    for given_ in (np.array([250, 300]), [np.int64(250), 300.0], torch.tensor([250.0, 300.0]),
                   [torch.tensor(250), 300]):
        assert Config(run_dir=tmp_path, calibrate_power_limits=given_).calibrate_power_limits \
            == (250.0, 300.0)
    assert Config(run_dir=tmp_path, calibrate_power_limits=250).calibrate_power_limits == (250.0,)
    for bad in (np.array([np.nan]), [torch.tensor([1.0, 2.0])], True, [np.True_], np.array([0]),
                "300,,400", [None]):
        with pytest.raises(ConfigError) as e:
            Config(run_dir=tmp_path, calibrate_power_limits=bad)
        assert str(e.value).startswith("calibrate_power_limits=") and "\n" not in str(e.value)


# -- Tracker settings --------------------------------------------------------------------------
@pytest.mark.parametrize("settings, message", [
    ({"interval_s": 0}, "interval_s=0 is invalid: must be a number from 0.005 to 60"),
    ({"interval_s": float("nan")}, "interval_s=nan is invalid"),
    ({"counter_interval_s": 0.01}, "counter_interval_s=0.01 is invalid: must be >= interval_s"),
    ({"mode": "node"}, "mode='node' is invalid: must be one of machine, process"),
    ({"gpus": "first"}, "gpus='first' is invalid"),
    ({"pue": 0.5}, "pue=0.5 is invalid: must be a number from 1 to 5"),
    ({"prometheus_port": 70000}, "prometheus_port=70000 is invalid"),
    ({"frobnicate": 1}, "frobnicate=1 is invalid: unknown setting"),
])
def test_bad_settings_are_one_line_errors(settings: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        greentrack.Tracker(tmp_path / "run", **settings)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_bad_environment_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GREENTRACK_INTERVAL_S", "fast")
    with pytest.raises(ConfigError, match="GREENTRACK_INTERVAL_S='fast' is invalid: must be a number"):
        Config.from_env()


def test_unwritable_run_dir(no_host_env: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="run_dir=.* is invalid: is under .*, which is a file"):
        greentrack.Tracker(blocker / "run").start()


def test_a_start_refused_by_its_settings_leaves_no_run_behind(fake_nvml: FakeNvml,
                                                             tmp_path: Path) -> None:
    """A GPU named that does not exist is one line before training, and no run directory (an empty
    run would be summarized, merged and reported as if it had run). A run directory that already
    held a run (a resume refused the same way) keeps it."""
    with pytest.raises(ConfigError, match="^gpus=3 is invalid: no such GPU"):
        greentrack.Tracker(tmp_path / "new" / "run", gpus=(3,), **FAST).start()
    assert not (tmp_path / "new" / "run").exists()
    with greentrack.Tracker(tmp_path / "old", **FAST) as tracker:
        with tracker.step():
            pass
    before = sorted(p.name for p in (tmp_path / "old").iterdir())
    with pytest.raises(ConfigError):
        greentrack.Tracker(tmp_path / "old", gpus=(3,), **FAST).start()
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == before
    assert greentrack.summarize(tmp_path / "old")["steps"] == 1


# -- every numeric setting's range -------------------------------------------------------------
@pytest.mark.slow  # as in its first module, tests/test_runs_meet.py
@pytest.mark.parametrize("name,value", [
    ("resolution_s", 1e-9), ("resolution_s", 1e-5), ("interval_s", 1e-4), ("flush_interval_s", 0.001),
    ("counter_interval_s", 0.001), ("push_interval_s", 0.01), ("pue", 0.5),
    ("carbon_intensity_g_per_kwh", 1e9), ("electricity_price", -1), ("cpu_tdp_w", 1e7),
    ("currency", "EURO\x1b[31m"), ("run_id", "../../etc"), ("job", "x" * 500)])
def test_every_setting_has_a_range_named_in_one_line(name: str, value: object) -> None:
    with pytest.raises(ConfigError) as e:
        Config(**{name: value})
    text = str(e.value)
    assert text.startswith(f"{name}=") and "\n" not in text and len(text) < 300


# -- labels' form ------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["Precision=bf16", "x" * 40 + "=1", "precision=" + "v" * 65,
                                 "precision", ",".join(f"k{i}=v" for i in range(17)),
                                 "precision=a\tb"])
def test_bad_labels_are_one_line(bad: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        Config.from_env({"GREENTRACK_LABELS": bad})
    assert "\n" not in str(e.value) and "GREENTRACK_LABELS" in str(e.value)
    code, out, err = run_cli(["run", "--run-dir", str(tmp_path / "r"), "--label", bad, "--", "true"])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--label" in err


# -- @track and emissions_csv ------------------------------------------------------------------
def test_track_checks_settings_when_decorating() -> None:
    with pytest.raises(ConfigError) as e:
        greentrack.track(pue=0.5)
    assert "pue" in str(e.value) and "0.5" in str(e.value)


def test_a_missing_directory_is_refused_before_the_run(no_host_env: Path, tmp_path: Path) -> None:
    tracker = greentrack.Tracker(tmp_path / "run", emissions_csv=str(tmp_path / "nope" / "e.csv"),
                                 **FAST)
    with pytest.raises(ConfigError) as e:
        tracker.start()
    assert "emissions_csv" in str(e.value) and "does not exist" in str(e.value)
    assert not (tmp_path / "run").exists() and not (tmp_path / "nope").exists()


# -- a config file nested too deeply -----------------------------------------------------------
@pytest.mark.slow  # as in its first module, tests/test_never_break.py
def test_a_config_nested_5000_deep_is_one_line(tmp_path: Path) -> None:
    """8a2bbe5: a --config TOML nested 5000 deep: RecursionError traceback."""
    with pytest.MonkeyPatch.context() as mp, clean_env(mp, tmp_path):
        run = make_run(tmp_path, steps=1)
    deep = tmp_path / "deep.toml"
    deep.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    code, _, err = run_cli(["report", str(run), "--config", str(deep), "--out", str(tmp_path / "o")])
    assert code == 2 and err.count("\n") == 1 and "nested too deeply" in err


@pytest.mark.parametrize("changes, setting", [
    ({"budget_kwh": -1.0}, "budget_kwh"),
    ({"budget_kwh": 0}, "budget_kwh"),
    ({"budget_grams": float("nan")}, "budget_grams"),
    ({"budget_cost": "ten"}, "budget_cost"),
    ({"on_budget": "explode"}, "on_budget"),
])
def test_a_bad_budget_is_one_line_naming_it(changes: dict[str, Any], setting: str,
                                            tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        greentrack.Tracker(tmp_path / "run", **changes)
    assert "is invalid:" in one_line(e, setting)
    assert not (tmp_path / "run").exists()


def test_a_bad_budget_from_the_environment_is_one_line() -> None:
    with pytest.raises(ConfigError) as e:
        Config.from_env({"GREENTRACK_BUDGET_KWH": "lots"})
    one_line(e, "GREENTRACK_BUDGET_KWH")
    assert Config.from_env({"GREENTRACK_BUDGET_GRAMS": "250",
                            "GREENTRACK_ON_BUDGET": "stop"}).budget_grams == 250.0
