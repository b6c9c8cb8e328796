"""``greentrack run / summary / doctor`` as real processes, with real signals."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import greentrack
from greentrack.store import StoreReader, store_paths
from tests.fakes.powercap import LiveCounters, PowercapTree
from tests.helpers import python_env

FAST_ENV = {"GREENTRACK_INTERVAL_S": "0.02", "GREENTRACK_COUNTER_INTERVAL_S": "0.1",
            "GREENTRACK_FLUSH_INTERVAL_S": "0.2"}


def gt(*args: str, env: dict[str, str] | None = None, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "greentrack", *args], capture_output=True,
                          text=True, env=env or python_env(**FAST_ENV), timeout=120, **kw)  # type: ignore[call-overload]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    tree = PowercapTree(tmp_path / "powercap")
    return python_env(**FAST_ENV, **tree.env)


@pytest.mark.slow
def test_run_passes_exit_code_and_prints_summary(env: dict[str, str], tmp_path: Path) -> None:
    out = gt("run", "--run-dir", str(tmp_path / "ok"), "--", sys.executable, "-c",
             "import time; time.sleep(0.3)", env=env)
    assert out.returncode == 0, out.stderr
    assert "status=completed" in out.stderr and "rapl-powercap" in out.stderr
    failed = gt("run", "--run-dir", str(tmp_path / "bad"), "--", sys.executable, "-c",
                "import sys; sys.exit(3)", env=env)
    assert failed.returncode == 3
    assert greentrack.summarize(tmp_path / "bad")["status"] == "failed"


def test_summary_json_fields(env: dict[str, str], tmp_path: Path) -> None:
    gt("run", "--run-dir", str(tmp_path / "r"), "--", sys.executable, "-c", "pass", env=env)
    out = gt("summary", str(tmp_path / "r"), "--json", env=env)
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
    for key in ("run_id", "status", "duration_s", "energy_j", "gpu_seconds", "steps", "sources"):
        assert key in s
    assert set(s["energy_j"]) == {"total", "gpu", "cpu", "dram"}
    assert all({"method", "measured"} <= set(src) for src in s["sources"])


@pytest.mark.parametrize("args, message", [
    (["summary", "/nonexistent/run"], "RUN_DIR='/nonexistent/run' is invalid: does not exist"),
    (["run", "--interval", "-1", "--", "true"], "interval_s=-1.0 is invalid: must be a number from 0.005 to 60"),
    (["run", "--mode", "node", "--", "true"], "invalid choice: 'node'"),
    (["run"], "CMD='' is invalid: give the command to run"),
    (["run", "--gpus", "0", "--", "true"], "gpus='0' is invalid: NVML unavailable"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_bad_arguments_are_one_line(args: list[str], message: str, env: dict[str, str],
                                    tmp_path: Path) -> None:
    out = gt(*args, env=env, cwd=tmp_path)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("greentrack:")]
    assert len(lines) == 1


def test_summary_of_a_directory_without_run(tmp_path: Path) -> None:
    out = gt("summary", str(tmp_path))
    assert out.returncode == 2 and "holds no greentrack run" in out.stderr


def test_sigterm_is_forwarded_and_run_marked_stopped(env: dict[str, str], tmp_path: Path) -> None:
    child = ("import signal, sys, time\n"
             "signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\n"
             "print('ready', flush=True)\n"
             "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-m", "greentrack", "run", "--run-dir",
                             str(tmp_path / "r"), "--", sys.executable, "-c", child],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 7  # the child's own exit status, after handling the forwarded signal
    assert greentrack.summarize(tmp_path / "r")["status"] == "stopped"


TRACKED = """
import sys, time, greentrack
t = greentrack.Tracker(sys.argv[1]).start()
print(time.monotonic(), flush=True)
while True:
    with t.step():
        time.sleep(0.05)
"""


def start_tracked(env: dict[str, str], run_dir: Path) -> tuple[subprocess.Popen[str], float]:
    proc = subprocess.Popen([sys.executable, "-c", TRACKED, str(run_dir)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    return proc, float(proc.stdout.readline())


@pytest.mark.slow
def test_sigkill_loses_at_most_about_a_second(tmp_path: Path) -> None:
    tree = PowercapTree(tmp_path / "powercap")
    env = python_env(**{**FAST_ENV, **tree.env, "GREENTRACK_FLUSH_INTERVAL_S": "0.5"})
    with LiveCounters(tree, {"intel-rapl:0": 50.0, "intel-rapl:0:1": 5.0}):
        proc, t_start = start_tracked(env, tmp_path / "r")
        time.sleep(2.5)
        t_kill = time.monotonic()
        proc.kill()
        proc.wait(10)
    s = greentrack.summarize(tmp_path / "r")
    assert s["status"] == "incomplete"
    lost_s = (t_kill - t_start) - s["energy_j"]["cpu"] / 50.0
    assert -0.1 < lost_s <= 1.0, f"lost {lost_s:.2f} s of energy"
    assert s["steps"] >= 25
    out = gt("summary", str(tmp_path / "r"))  # the CLI reads a killed run too
    assert out.returncode == 0 and "status=incomplete" in out.stdout


@pytest.mark.slow
def test_sigterm_in_tracked_process_flushes_and_keeps_exit_status(env: dict[str, str],
                                                                  tmp_path: Path) -> None:
    proc, _ = start_tracked(env, tmp_path / "r")
    time.sleep(0.8)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == -signal.SIGTERM  # still dies of SIGTERM, as without greentrack
    store = StoreReader(store_paths(tmp_path / "r")[0])
    assert store.meta["status"] == "stopped" and "duration_s" in store.meta


def test_ctrl_c_in_tracked_process(env: dict[str, str], tmp_path: Path) -> None:
    code = ("import sys, time, greentrack\n"
            "with greentrack.Tracker(sys.argv[1]) as t:\n"
            "    print('ready', flush=True)\n"
            "    while True:\n"
            "        with t.step(): time.sleep(0.05)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "r")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    # Python exits by re-raising SIGINT after an uncaught KeyboardInterrupt: kept as it is
    assert proc.returncode == -signal.SIGINT and "KeyboardInterrupt" in err
    assert greentrack.summarize(tmp_path / "r")["status"] == "stopped"


def test_exception_exits_promptly_with_no_thread_left(env: dict[str, str], tmp_path: Path) -> None:
    code = ("import sys, greentrack\n"
            "t = greentrack.Tracker(sys.argv[1]).start()\n"
            "raise SystemExit(5)\n")
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "r")], env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 5 and time.monotonic() - t0 < 10
    assert greentrack.summarize(tmp_path / "r")["status"] in ("completed", "failed")


def test_import_is_lazy() -> None:
    code = ("import sys, greentrack\n"
            "heavy = [m for m in ('torch', 'lightning', 'pynvml', 'prometheus_client', 'pandas',"
            " 'codecarbon', 'psutil') if m in sys.modules]\n"
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=python_env(), timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == ""


def test_doctor_lists_methods(env: dict[str, str]) -> None:
    out = gt("doctor", "--json", env=env)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert {(x["kind"], x["method"]) for x in d["devices"]} == {("cpu", "rapl-powercap"),
                                                              ("dram", "rapl-powercap")}
    assert any("NVML" in n["message"] for n in d["notes"])


def _parsers(parser: argparse.ArgumentParser, path: str = "greentrack"
             ) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """The parser and every subcommand's parser, however deep."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def test_every_option_of_every_subcommand_has_help() -> None:
    """Walks the real parser, so an option added later without help text fails here too."""
    from greentrack.cli.main import build_parser
    missing = []
    seen = 0
    for path, parser in _parsers(build_parser()):
        for action in parser._actions:
            if action.help == argparse.SUPPRESS:
                continue
            seen += 1
            name = "/".join(action.option_strings) or action.metavar or action.dest
            if not (isinstance(action.help, str) and action.help.strip()):
                missing.append(f"{path}: {name}")
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:  # each subcommand's line in --help
                    if not (choice.help or "").strip():
                        missing.append(f"{path}: subcommand {choice.dest}")
        if parser.prog != "greentrack" and not (parser.description or "").strip():
            missing.append(f"{path}: no description")
    assert seen > 60  # the walk reached the subcommands' options
    assert not missing, "options without help text:\n" + "\n".join(missing)


@pytest.mark.slow
def test_doctor_cpu_estimate_line_reads_as_a_sentence(tmp_path: Path) -> None:
    """No RAPL (an empty powercap root): the CPU is estimated and doctor says from what TDP."""
    (tmp_path / "empty").mkdir()
    out = gt("doctor", env=python_env(GREENTRACK_POWERCAP_ROOT=str(tmp_path / "empty")))
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if "W/socket" in x)
    assert re.search(r"TDP [\d.]+ W/socket x \d+ socket\(s\) (from|=) ", line), line
    assert "from not" not in line and "socket(s) not" not in line
    assert "quality band: low (+-50%)" in out.stdout and "uncertainty:" not in out.stdout
    user = gt("doctor", env=python_env(GREENTRACK_POWERCAP_ROOT=str(tmp_path / "empty"),
                                       GREENTRACK_CPU_TDP_W="65"))
    assert "TDP 65 W/socket x" in user.stdout and "from the cpu_tdp_w setting" in user.stdout


def test_cpu_estimate_source_for_a_cpu_outside_codecarbons_table(monkeypatch: pytest.MonkeyPatch) -> None:
    from greentrack.samplers import _estimate
    monkeypatch.setattr(_estimate, "cpu_model", lambda: "Imaginary CPU 9000")
    monkeypatch.setattr(_estimate, "socket_count", lambda: 2)
    est = _estimate.CpuEstimate("machine", os.getpid(), None)
    cores = os.cpu_count() or 1
    assert f"TDP {4.0 * cores / 2:g} W/socket x 2 socket(s) = 4 W per logical core x {cores} " \
           "core(s), codecarbon's default per-core figure, as this CPU is not in codecarbon's " \
           "CPU table;" in est.info.source
    est.close()
