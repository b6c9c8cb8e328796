"""Bad input on the command line (cli): the options of ``greentrack run`` and of the commands
that read runs (``advise --max-slowdown``), parsed before any setting reaches the layers below.

The rule: a value argparse or greentrack refuses is one line on stderr starting
``greentrack:``, naming the option, the value and what is allowed, and exit 2, before a run
directory is made or the command started; never a traceback. (The same settings given to
``report`` and ``compare``: test_reports.py; ``greentrack run -- nonexistent-cmd``:
tests/test_never_break.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greentrack.cli.reports import parse_slowdown
from greentrack.common.errors import ConfigError
from tests.bad_input import one_line_error
from tests.helpers import run_cli

OPTS = ["--interval", "--counter-interval", "--resolution", "--mode", "--gpus", "--cpu-tdp",
        "--dram-w-per-gb", "--flush-interval"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(opts=st.lists(st.tuples(st.sampled_from(OPTS), st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=8)),
    max_size=3))
def test_cli_run_options_never_traceback(opts: list, tmp_path: Path) -> None:
    argv = ["run", "--run-dir", str(tmp_path / "r"), "--quiet"]
    for name, value in opts:
        argv += [f"{name}={value}"]
    argv += ["--", "true"]
    code, _, err = run_cli(argv)
    assert "Traceback" not in err
    if code != 0:
        assert code == 2 and err.count("\n") == 1 and err.startswith("greentrack:"), err


# -- greentrack advise --max-slowdown ---------------------------------------------------------
def test_a_bare_max_slowdown_above_one_is_not_taken_as_hundreds_of_percent() -> None:
    """``--max-slowdown 5`` (meant: 5%) was taken as 500% slower steps: the advice then picked
    the lowest limit whatever it cost in time."""
    with pytest.raises(ConfigError) as e:
        parse_slowdown("5")
    assert str(e.value) == ("--max-slowdown='5' is invalid: reads as 500% slower steps: for 5% "
                            "write 5% or 0.05; a slowdown above 100% is given with its % sign")
    assert parse_slowdown("150%") == pytest.approx(1.5) and parse_slowdown("1") == 1.0
    assert parse_slowdown("0.05") == 0.05 and parse_slowdown("5%") == pytest.approx(0.05)


def test_greentrack_run_refuses_a_bad_budget_before_any_run(tmp_path: Path) -> None:
    for option, value, words in (("--on-budget", "explode", ("on_budget=", "warn, stop")),
                                 ("--budget-kwh", "-3", ("budget_kwh=-3.0", "> 0"))):
        code, out, err = run_cli(["run", "--run-dir", str(tmp_path / "r"), "--quiet", option,
                                  value, "--", "true"])
        one_line_error(code, out, err, *words)
    assert not (tmp_path / "r").exists()
