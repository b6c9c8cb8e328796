"""The ``greentrack`` command: ``run``, ``doctor``, ``summary``, ``merge``, ``report``, ``compare``.

Every invalid argument ends in one line on stderr naming the setting, the value and what is
allowed, and exit status 2; never a traceback. Ctrl-C or SIGTERM to any command but ``run`` (which
forwards them to its command) ends it with one line and 128 + the signal, its staged files removed.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from greentrack import __version__
from greentrack.cli import EARLY
from greentrack.cli.doctor import diagnose, format_diagnosis
from greentrack.cli.inventory import add_inventory
from greentrack.cli.reports import (CARBON_OPTIONS, add_carbon_options, add_commands,
                                    add_project_name, add_training_type, carbon_settings)
from greentrack.common.config import Config
from greentrack.common.errors import ConfigError, GreenTrackError
from greentrack.common.labels import parse_labels
from greentrack.common.text import json_text, printable
from greentrack.common.units import parse_duration
from greentrack.process.calibration import check_limits, limit_gpus
from greentrack.process.greener import plan_start, wait_for
from greentrack.process.lifecycle import status_of_exit
from greentrack.process.settings import check_settings
from greentrack.process.tracker import Tracker
from greentrack.reports.summary import format_summary, summarize
from greentrack.run import Run
from greentrack.run.merge import merge_runs
from greentrack.samplers._nvml import open_gpus

#: How long at most ``greentrack run`` keeps /metrics up after its command ended, for the scrape
#: that reads the final totals (it waits at most two of the scrape intervals it saw, plus 1 s).
FINAL_SCRAPE_WAIT_S = 60.0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"greentrack: {message} (see `{self.prog} --help`)\n")


def _settings(ns: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("interval_s", "counter_interval_s", "flush_interval_s", "resolution_s", "mode",
                 "gpus", "cpu_tdp_w", "dram_w_per_gb", "run_id", "prometheus_port",
                 "prometheus_addr", "pushgateway_url", "final_scrape_wait_s", "job",
                 "emissions_csv",
                 "calibrate_power_limits", "calibration_steps", "calibration_warmup_steps",
                 "budget_kwh", "budget_grams", "budget_cost", "on_budget"):
        value = getattr(ns, name, None)
        if value is not None:
            out[name] = value
    if getattr(ns, "run_dir", None) is not None:  # "" too: refused by Config, not the default
        out["run_dir"] = ns.run_dir
    if getattr(ns, "labels", None):
        env = os.environ.get("GREENTRACK_LABELS")
        out["labels"] = {**parse_labels(env, "GREENTRACK_LABELS"),
                         **parse_labels(ns.labels, "--label")}
    return out


def _add_settings(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", help="run directory (default: greentrack-runs/<job id> under a "
                                     "launcher, else greentrack-runs/<UTC time>-<pid>)")
    p.add_argument("--interval", dest="interval_s", type=float, metavar="S",
                   help="fast poll period in seconds (default 0.05)")
    p.add_argument("--counter-interval", dest="counter_interval_s", type=float, metavar="S",
                   help="NVML energy counter period in seconds (default 0.2)")
    p.add_argument("--flush-interval", dest="flush_interval_s", type=float, metavar="S",
                   help="how often the store commits, in seconds: bounds what a SIGKILL can lose "
                        "(default 0.5)")
    p.add_argument("--resolution", dest="resolution_s", type=float, metavar="S",
                   help="stored time-series bucket width in seconds (default 1.0)")
    p.add_argument("--mode", choices=["machine", "process"],
                   help="machine: all host CPU/DRAM energy (default); process: the command's share")
    p.add_argument("--gpus", help="comma-separated CUDA ordinals or UUIDs (default: all visible)")
    p.add_argument("--cpu-tdp", dest="cpu_tdp_w", type=float, metavar="W",
                   help="CPU TDP in watts per socket for the estimate used when RAPL is unreadable "
                        "(default: codecarbon's CPU table)")
    p.add_argument("--dram-w-per-gb", dest="dram_w_per_gb", type=float, metavar="W",
                   help="memory power in W per GB when no DRAM zone is readable (default 0.3725, "
                        "Green Algorithms)")
    p.add_argument("--run-id", help="identifier shared by every process of the run, 1-64 of "
                                    "A-Z a-z 0-9 . _ - (default: the launcher's job id, else "
                                    "from the run directory)")
    p.add_argument("--prometheus-port", dest="prometheus_port", type=int, metavar="PORT",
                   help="serve Prometheus /metrics on PORT (+ LOCAL_RANK per rank; 0: a free port)")
    p.add_argument("--prometheus-addr", dest="prometheus_addr", metavar="ADDR",
                   help="address the /metrics endpoint binds to (default 127.0.0.1)")
    p.add_argument("--pushgateway", dest="pushgateway_url", metavar="URL",
                   help="push metrics to this Pushgateway (http://HOST:PORT) every "
                        "GREENTRACK_PUSH_INTERVAL_S (15 s) and at the end")
    p.add_argument("--final-scrape-wait", dest="final_scrape_wait_s", type=float, metavar="S",
                   help="after the run, keep /metrics up until Prometheus has scraped the final "
                        "totals: at most 2 scrape intervals + 1 s, never more than S seconds "
                        "(greentrack run: 60; 0: close at once)")
    p.add_argument("--label", dest="labels", action="append", metavar="KEY=VALUE",
                   help="a label of the run, e.g. precision=bf16 or method=lora (repeatable; "
                        "also GREENTRACK_LABELS=KEY=VALUE,...)")
    p.add_argument("--job", metavar="NAME",
                   help="job label of the metrics (default: Slurm job id, Kubernetes pod, "
                        "else greentrack)")
    p.add_argument("--emissions-csv", dest="emissions_csv", metavar="FILE",
                   help="append the run's row to FILE in codecarbon's emissions.csv columns "
                        "(created if missing; also GREENTRACK_EMISSIONS_CSV)")
    add_project_name(p)
    add_training_type(p)


def _add_calibration(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("power-limit calibration (changes the run while it calibrates)")
    g.add_argument("--calibrate-power-limits", dest="calibrate_power_limits", metavar="W,W...",
                   help="measure joules and seconds per training step at each GPU power limit "
                        "(watts) over the first steps, then restore the original limit; done by "
                        "the command's greentrack Tracker (it needs steps) and needs root or "
                        "CAP_SYS_ADMIN (without: one line, nothing changes)")
    g.add_argument("--calibration-steps", dest="calibration_steps", type=int, metavar="N",
                   help="training steps measured at each limit (default 20)")
    g.add_argument("--calibration-warmup-steps", dest="calibration_warmup_steps", type=int,
                   metavar="N", help="steps discarded after each limit change (default 5)")


def _add_budget(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("budget (applied by the command's greentrack trackers: an "
                             "integration or a Tracker, which see its steps and can stop them)")
    g.add_argument("--budget-kwh", dest="budget_kwh", type=float, metavar="KWH",
                   help="budget of IT energy in kWh (the summary's energy, before the PUE)")
    g.add_argument("--budget-grams", dest="budget_grams", type=float, metavar="G",
                   help="budget of location-based emissions in grams CO2e")
    g.add_argument("--budget-cost", dest="budget_cost", type=float, metavar="COST",
                   help="budget of cost (electricity and GPU-hours) in --currency")
    g.add_argument("--on-budget", dest="on_budget", metavar="ACTION",
                   help="warn (default): warnings when the forecast passes a budget and at it; "
                        "stop: also stop training gracefully at the budget")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="greentrack", description="Energy and carbon tracking for ML training.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser,
                                metavar="COMMAND", help="run `greentrack COMMAND --help` for its options")
    run = sub.add_parser("run", help="run a command and track its energy",
                         description="Run CMD, track the machine's energy while it runs, exit with "
                                     "CMD's exit status. SIGINT/SIGTERM are forwarded to CMD.")
    _add_settings(run)
    _add_calibration(run)
    _add_budget(run)
    run.add_argument("--quiet", action="store_true", help="no summary at the end")
    green = run.add_argument_group("carbon-aware start")
    green.add_argument("--start-when-greener", action="store_true",
                       help="wait (countdown on stderr; Ctrl-C cancels, exit 130) for the start "
                            "within --max-delay that gives --expected-duration the fewest "
                            "forecast grams in --intensity-csv, then run CMD")
    green.add_argument("--max-delay", metavar="DURATION",
                       help="longest wait for --start-when-greener, e.g. 6h, 90m, 1h30m")
    green.add_argument("--expected-duration", metavar="DURATION",
                       help="how long CMD is expected to run, e.g. 3h (for --start-when-greener)")
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    doctor = sub.add_parser("doctor", help="what this machine can measure, and how to unlock the rest",
                            description="Open every device once as a tracker would, and say how "
                                        "each is measured (or estimated, and from what), with its "
                                        "quality band and how to unlock what is missing.")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    summary = sub.add_parser("summary", help="totals of a run (running, finished or killed)",
                             description="Energy by kind, duration, steps and sources of a run, "
                                         "read from its stores (all ranks and segments). Several "
                                         "RUN_DIRs are read as one run (node-local directories of "
                                         "a multi-node job): each store counts once; directories "
                                         "of different runs are refused.")
    summary.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                         help="the run's directory, or its node-local directories (apart, or "
                              "joined by '+' as report and compare take them)")
    summary.add_argument("--json", action="store_true", help="machine-readable output")
    merge = sub.add_parser("merge", help="merge node-local directories of one run into one",
                           description="Copy the stores of RUN_DIRs (directories of one run: the "
                                       "same run id, else refused) into OUT, each store once "
                                       "(host, boot id, rank and segment: a directory copied "
                                       "twice adds nothing). Inputs are never changed.")
    merge.add_argument("out", metavar="OUT", help="new directory (must not exist, or be empty)")
    merge.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                       help="node-local directories of the run (apart, or joined by '+')")
    add_carbon_options(run)
    add_commands(sub)
    add_inventory(sub)
    return parser


def _version() -> str:
    return f"greentrack {__version__}"


def run_command(argv: Sequence[str] | None) -> int:
    """Parse ``argv`` and run its command (:func:`greentrack.cli.main`, the entry point, takes
    the signals first)."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    parser = build_parser()
    try:
        ns = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, argparse's own errors
        return e.code if isinstance(e.code, int) else 2 if e.code else 0
    got: list[int] = list(EARLY)
    previous = None
    if ns.command != "run":  # `run` forwards signals to its command (cmd_run)
        def on_term(signum: int, _frame: Any) -> None:
            got.append(signum)
            raise KeyboardInterrupt  # unwinds like Ctrl-C: staged files removed, locks released
        try:
            previous = signal.signal(signal.SIGTERM, on_term)
        except ValueError:  # not the main thread (an embedding caller): leave signals alone
            previous = None
    try:
        if hasattr(ns, "handler"):
            return int(ns.handler(ns))
        if ns.command == "run":
            return cmd_run(ns)
        if ns.command == "doctor":
            return cmd_doctor(ns)
        if ns.command == "merge":
            return cmd_merge(ns)
        return cmd_summary(ns)
    except KeyboardInterrupt:  # one line, as for any other way the command ends
        if ns.command == "run":  # its tracker's own exit paths record the run: unchanged
            raise
        signum = got[0] if got else signal.SIGINT
        print(f"greentrack: {ns.command} interrupted by {signal.Signals(signum).name}; nothing "
              "half-written was left", file=sys.stderr)
        return 128 + signum
    except ConfigError as e:
        print(f"greentrack: {printable(e)}", file=sys.stderr)
        return 2
    except GreenTrackError as e:
        print(f"greentrack: {printable(e)}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def cmd_summary(ns: argparse.Namespace) -> int:
    s = summarize(ns.run_dirs)
    print(json_text(s) if ns.json else format_summary(s))
    return 0


def cmd_merge(ns: argparse.Namespace) -> int:
    result = merge_runs(ns.out, ns.run_dirs)
    print(f"greentrack: merged run {printable(result.run_id)}: {result.stores} store(s) from "
          f"{result.directories} director{'y' if result.directories == 1 else 'ies'} into "
          f"{printable(result.out)}"
          + (f"; {result.duplicates} store(s) found in more than one input, each counted once"
             if result.duplicates else ""))
    for line in result.skipped:
        print(f"greentrack: warning: not merged: {printable(line)}", file=sys.stderr)
    for path in result.live:
        print(f"greentrack: warning: {printable(path)} was still being written: merged as far as "
              "it had committed (it reads as incomplete); merge again when the run has ended",
              file=sys.stderr)
    return 0


def cmd_doctor(ns: argparse.Namespace) -> int:
    d = diagnose()
    print(json_text(d) if ns.json else format_diagnosis(d))
    return 0


def cmd_run(ns: argparse.Namespace) -> int:
    """``greentrack run -- CMD``. Until CMD runs, SIGINT and SIGTERM cancel the start: one line,
    128 + the signal, nothing left behind (no run directory of a command that never ran); once
    it runs, they are passed on to it, and its exit decides the run's status
    (:func:`greentrack.process.lifecycle.status_of_exit`)."""
    got = EARLY  # one list: a signal while the command line was read cancels too

    def cancel(signum: int, _frame: Any) -> None:
        got.append(signum)

    early = {s: signal.signal(s, cancel) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _run(ns, got)
    finally:
        for s, h in early.items():
            signal.signal(s, h)


def _cancelled(got: list[int], tracker: Any = None) -> int:
    if tracker is not None:
        tracker.discard()
    name = signal.Signals(got[0]).name
    print(f"greentrack: run cancelled by {name} before the command started; nothing was left "
          "behind", file=sys.stderr)
    return 128 + got[0]


def _run(ns: argparse.Namespace, got: list[int]) -> int:
    cmd = list(ns.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise ConfigError("CMD", "", "give the command to run after `--`, e.g. "
                          "`greentrack run -- python train.py`")
    settings = {**carbon_settings(ns), **_settings(ns)}
    config = Config.from_env(**settings)
    missing = _not_runnable(cmd[0])
    if missing is not None:  # as a shell says it, before any run directory exists
        print(f"greentrack: {printable(cmd[0])}: {missing[1]}; nothing was run or tracked",
              file=sys.stderr)
        return missing[0]
    if config.final_scrape_wait_s is None:  # the command has ended: Prometheus reads its end
        config = config.replace(final_scrape_wait_s=FINAL_SCRAPE_WAIT_S)
    # Calibration needs training steps: the command's own trackers do it (they join this run and
    # measure the GPUs); this process only checks the limits first.
    calibration = _calibration_env(config)
    if calibration:
        check_settings(config)  # the other settings first, in the order Tracker.start checks them
        _check_calibration(config)
    config = config.replace(calibrate_power_limits=None)
    # Budgets need steps too: the command's trackers apply them (they can stop its training)
    budget = _budget_env(config)
    config = config.replace(budget_kwh=None, budget_grams=None, budget_cost=None)
    plan = _start_plan(ns, config)
    waited_s = 0.0
    if plan is not None:
        import time
        code = wait_for(plan)
        if code is not None:
            return code  # cancelled: nothing started, no run directory
        waited_s = max(0.0, time.time() - plan.asked_unix)
    if got:
        return _cancelled(got)
    tracker = Tracker(config=config)
    # the command's own trackers join this run: they price and place it as this run does
    env = dict(os.environ, **tracker.accept_joins(), **calibration, **budget, **_child_env(config))
    tracker.start()  # checks every setting before it creates anything (Config.check)
    if tracker.status != "running":
        env = dict(os.environ, **calibration, **budget)  # tracking is off (a full disk...): the command runs untracked
    elif plan is not None and tracker.engine is not None:
        tracker.engine.event("info", "start-when-greener", plan.text(),
                             **plan.details(waited_s=waited_s))
    forwarded: list[int] = []
    child: Any = None

    def forward(signum: int, _frame: Any) -> None:
        forwarded.append(signum)
        if child is None:
            return  # passed on once the command exists (below)
        try:
            child.send_signal(signum)
        except OSError:
            pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if got:  # a signal came while the tracker started
            return _cancelled(got, tracker)
        try:
            child = subprocess.Popen(cmd, env=env)
        except OSError as e:  # checked above; gone or changed since
            tracker.discard()  # a command that cannot start leaves no run behind
            print(f"greentrack: {printable(cmd[0])}: {e.strerror or e}; nothing was run or "
                  "tracked", file=sys.stderr)
            return COMMAND_NOT_FOUND if isinstance(e, FileNotFoundError) else COMMAND_NOT_EXECUTABLE
        for signum in forwarded:  # one that came while it was being started
            try:
                child.send_signal(signum)
            except OSError:
                pass
        while True:
            try:
                rc: int = child.wait()
                break
            except KeyboardInterrupt:  # a second Ctrl-C while forwarding
                continue
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    status, why = status_of_exit(rc, bool(forwarded))
    if tracker.engine is not None and tracker.status == "running":
        tracker.engine.event("info" if status == "completed" else "warning", "process-exit", why,
                             returncode=rc)
    tracker.stop(status)
    if calibration and tracker.status != "disabled":
        _calibration_outcome(tracker)
    if not ns.quiet and tracker.status != "disabled":
        try:
            print(format_summary(tracker.summary()), file=sys.stderr)
        except GreenTrackError as e:  # the command's exit status matters more than our summary
            print(f"greentrack: no summary: {e}", file=sys.stderr)
    # A child killed by signal N: exit like the shell does (128 + N).
    return 128 - rc if rc < 0 else rc


#: A shell's exit statuses for a command it cannot run (POSIX, "Command Search and Execution"):
#: not found, and found but not executable.
COMMAND_NOT_FOUND, COMMAND_NOT_EXECUTABLE = 127, 126


def _not_runnable(name: str) -> tuple[int, str] | None:
    """Why ``name`` cannot be run, as a shell says it, with the shell's exit status; None when it
    can be: a path is checked as it is, a bare name looked up in ``PATH``."""
    if os.sep not in name:
        if shutil.which(name) is None:
            return COMMAND_NOT_FOUND, "command not found (not in PATH)"
        return None
    if not os.path.exists(name):
        return COMMAND_NOT_FOUND, "No such file or directory"
    if os.path.isdir(name):
        return COMMAND_NOT_EXECUTABLE, "Is a directory"
    if not os.access(name, os.X_OK):
        return COMMAND_NOT_EXECUTABLE, "Permission denied"
    return None


def _child_env(config: Config) -> dict[str, str]:
    """This run's settings that its command's trackers must share, as ``GREENTRACK_*`` variables:
    carbon, price and model-card settings (their live emissions, cost and forecast use what
    ``greentrack run`` was given), the mode (a joined tracker splits the host as this run does)
    and the labels. A setting the command's own code passes still wins over the environment."""
    out = {}
    for name in [dest for dest, _, _ in CARBON_OPTIONS.values()] + ["training_type", "mode"]:
        value = getattr(config, name, None)
        if value is not None:
            out[f"GREENTRACK_{name.upper()}"] = value if isinstance(value, str) else repr(value)
    if config.labels:
        out["GREENTRACK_LABELS"] = ",".join(f"{k}={v}" for k, v in config.labels.items())
    return out


def _budget_env(config: Config) -> dict[str, str]:
    """The budget settings for the command's trackers (``GREENTRACK_*``); none when unset."""
    out = {f"GREENTRACK_{name.upper()}": repr(float(getattr(config, name)))
           for name in ("budget_kwh", "budget_grams", "budget_cost")
           if getattr(config, name) is not None}
    if out:
        out["GREENTRACK_ON_BUDGET"] = config.on_budget
    return out


def _calibration_env(config: Config) -> dict[str, str]:
    """The calibration settings for the command's trackers (``GREENTRACK_*``); none when off."""
    if not config.calibrate_power_limits:
        return {}
    return {"GREENTRACK_CALIBRATE_POWER_LIMITS": ",".join(f"{w:g}"
                                                          for w in config.calibrate_power_limits),
            "GREENTRACK_CALIBRATION_STEPS": str(config.calibration_steps),
            "GREENTRACK_CALIBRATION_WARMUP_STEPS": str(config.calibration_warmup_steps)}


def _check_calibration(config: Config) -> None:
    """Limits outside a GPU's constraints end ``greentrack run`` before anything is created or
    the command started (the command's trackers check them again, and do the rest)."""
    try:
        gpus, _ = open_gpus(config.gpus)
        check_limits(limit_gpus(gpus), config.calibrate_power_limits or ())
    except ConfigError:
        raise
    except GreenTrackError as e:  # NVML cannot tell the range: the command's tracker says so
        logging.getLogger("greentrack").debug("power limit constraints unknown: %s", e)


def _calibration_outcome(tracker: Any) -> None:
    """One line when no process of the command stored a power-limit curve."""
    try:
        with Run.open(tracker.run_dir) as run:
            if run.power_limit_curves():
                return
    except GreenTrackError:
        return
    print("greentrack: --calibrate-power-limits: no power-limit curve was stored: the command "
          "needs a greentrack Tracker or integration marking its training steps, enough steps, "
          "and the privilege to set the limit (see the run's events)", file=sys.stderr)


def _start_plan(ns: argparse.Namespace, config: Config) -> Any:
    """The carbon-aware start of ``--start-when-greener`` (checked settings first), or None."""
    if not ns.start_when_greener:
        for flag, value in (("--max-delay", ns.max_delay),
                            ("--expected-duration", ns.expected_duration)):
            if value is not None:
                raise ConfigError(flag, value, "is used only with --start-when-greener")
        return None
    for flag, value in (("--max-delay", ns.max_delay), ("--expected-duration", ns.expected_duration)):
        if value is None:
            raise ConfigError(flag, None, "--start-when-greener needs --max-delay and "
                              "--expected-duration, e.g. --max-delay 6h --expected-duration 3h")
    max_delay = parse_duration("--max-delay", ns.max_delay, allow_zero=True)
    duration = parse_duration("--expected-duration", ns.expected_duration)
    check_settings(config)  # the intensity CSV and the location, before planning on them
    return plan_start(config, max_delay, duration)

