"""The ``greentrack`` command: ``run``, ``doctor``, ``summary``, ``report``, ``compare``.

Every invalid argument ends in one line on stderr naming the setting, the value and what is
allowed, and exit status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from greentrack._text import json_text, printable
from greentrack.errors import ConfigError, GreenTrackError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"greentrack: {message} (see `{self.prog} --help`)\n")


def _settings(ns: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("interval_s", "counter_interval_s", "flush_interval_s", "resolution_s", "mode",
                 "gpus", "cpu_tdp_w", "dram_w_per_gb", "run_id", "prometheus_port",
                 "prometheus_addr", "pushgateway_url", "job", "calibrate_power_limits",
                 "calibration_steps", "calibration_warmup_steps"):
        value = getattr(ns, name, None)
        if value is not None:
            out[name] = value
    if getattr(ns, "run_dir", None):
        out["run_dir"] = ns.run_dir
    if getattr(ns, "labels", None):
        from greentrack.labels import parse_labels
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
    p.add_argument("--flush-interval", dest="flush_interval_s", type=float, metavar="S")
    p.add_argument("--resolution", dest="resolution_s", type=float, metavar="S",
                   help="stored time-series bucket width in seconds (default 1.0)")
    p.add_argument("--mode", choices=["machine", "process"],
                   help="machine: all host CPU/DRAM energy (default); process: the command's share")
    p.add_argument("--gpus", help="comma-separated CUDA ordinals or UUIDs (default: all visible)")
    p.add_argument("--cpu-tdp", dest="cpu_tdp_w", type=float, metavar="W")
    p.add_argument("--dram-w-per-gb", dest="dram_w_per_gb", type=float, metavar="W")
    p.add_argument("--run-id")
    p.add_argument("--prometheus-port", dest="prometheus_port", type=int, metavar="PORT",
                   help="serve Prometheus /metrics on PORT (+ LOCAL_RANK per rank; 0: a free port)")
    p.add_argument("--prometheus-addr", dest="prometheus_addr", metavar="ADDR",
                   help="address the /metrics endpoint binds to (default 127.0.0.1)")
    p.add_argument("--pushgateway", dest="pushgateway_url", metavar="URL",
                   help="push metrics to this Pushgateway (http://HOST:PORT) every "
                        "GREENTRACK_PUSH_INTERVAL_S (15 s) and at the end")
    p.add_argument("--label", dest="labels", action="append", metavar="KEY=VALUE",
                   help="a label of the run, e.g. precision=bf16 or method=lora (repeatable; "
                        "also GREENTRACK_LABELS=KEY=VALUE,...)")
    p.add_argument("--job", metavar="NAME",
                   help="job label of the metrics (default: Slurm job id, Kubernetes pod, "
                        "else greentrack)")


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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="greentrack", description="Energy and carbon tracking for ML training.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="run a command and track its energy",
                         description="Run CMD, track the machine's energy while it runs, exit with "
                                     "CMD's exit status. SIGINT/SIGTERM are forwarded to CMD.")
    _add_settings(run)
    _add_calibration(run)
    run.add_argument("--quiet", action="store_true", help="no summary at the end")
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    doctor = sub.add_parser("doctor", help="what this machine can measure, and how to unlock the rest")
    doctor.add_argument("--json", action="store_true")
    summary = sub.add_parser("summary", help="totals of a run (running, finished or killed)")
    summary.add_argument("run_dir", metavar="RUN_DIR")
    summary.add_argument("--json", action="store_true")
    from greentrack.reports.cli import add_carbon_options, add_commands  # report, compare
    add_carbon_options(run)
    add_commands(sub)
    return parser


def _version() -> str:
    from greentrack import __version__
    return f"greentrack {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    """The entry point of every subcommand. Output cut short by the reader (``| head -1``) ends
    quietly, as it does for other Unix tools."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # inside the try: a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        # Python's documented recipe: point stdout at devnull so the exit-time flush is silent
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 128 + signal.SIGPIPE


def _main(argv: Sequence[str] | None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    parser = build_parser()
    try:
        ns = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, argparse's own errors
        return e.code if isinstance(e.code, int) else 2 if e.code else 0
    try:
        if hasattr(ns, "handler"):
            return int(ns.handler(ns))
        if ns.command == "run":
            return cmd_run(ns)
        if ns.command == "doctor":
            return cmd_doctor(ns)
        return cmd_summary(ns)
    except ConfigError as e:
        print(f"greentrack: {printable(e)}", file=sys.stderr)
        return 2
    except GreenTrackError as e:
        print(f"greentrack: {printable(e)}", file=sys.stderr)
        return 1


def cmd_summary(ns: argparse.Namespace) -> int:
    from greentrack.summary import format_summary, summarize
    s = summarize(ns.run_dir)
    print(json_text(s) if ns.json else format_summary(s))
    return 0


def cmd_doctor(ns: argparse.Namespace) -> int:
    from greentrack.doctor import diagnose, format_diagnosis
    d = diagnose()
    print(json_text(d) if ns.json else format_diagnosis(d))
    return 0


def cmd_run(ns: argparse.Namespace) -> int:
    from greentrack.config import Config
    from greentrack.summary import format_summary
    from greentrack.tracker import Tracker

    cmd = list(ns.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise ConfigError("CMD", "", "give the command to run after `--`, e.g. "
                          "`greentrack run -- python train.py`")
    from greentrack.reports.cli import carbon_settings
    settings = {**carbon_settings(ns), **_settings(ns)}
    config = Config.from_env(**settings)
    # Calibration needs training steps: the command's own trackers do it (they join this run and
    # measure the GPUs); this process only checks the limits first.
    calibration = _calibration_env(config)
    if calibration:
        config.check()  # the other settings first, in the order Tracker.start checks them
        _check_calibration(config)
    config = config.replace(calibrate_power_limits=None)
    tracker = Tracker(config=config)
    env = dict(os.environ, **tracker.accept_joins(), **calibration)
    tracker.start()  # checks every setting before it creates anything (Config.check)
    if tracker.status != "running":
        env = dict(os.environ, **calibration)  # tracking is off: the command runs untracked
    try:
        child = subprocess.Popen(cmd, env=env)
    except OSError as e:
        tracker.stop("failed")
        raise ConfigError("CMD", cmd[0], f"cannot be started ({e.strerror or e})") from None
    forwarded: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        forwarded.append(signum)
        try:
            child.send_signal(signum)
        except OSError:
            pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                rc = child.wait()
                break
            except KeyboardInterrupt:  # a second Ctrl-C while forwarding
                continue
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    status = "completed" if rc == 0 else ("stopped" if forwarded or rc < 0 else "failed")
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



def _calibration_env(config: Any) -> dict[str, str]:
    """The calibration settings for the command's trackers (``GREENTRACK_*``); none when off."""
    if not config.calibrate_power_limits:
        return {}
    return {"GREENTRACK_CALIBRATE_POWER_LIMITS": ",".join(f"{w:g}"
                                                          for w in config.calibrate_power_limits),
            "GREENTRACK_CALIBRATION_STEPS": str(config.calibration_steps),
            "GREENTRACK_CALIBRATION_WARMUP_STEPS": str(config.calibration_warmup_steps)}


def _check_calibration(config: Any) -> None:
    """Limits outside a GPU's constraints end ``greentrack run`` before anything is created or
    the command started (the command's trackers check them again, and do the rest)."""
    from greentrack.calibration import check_limits, limit_gpus
    from greentrack.samplers._nvml import open_gpus
    try:
        gpus, _ = open_gpus(config.gpus)
        check_limits(limit_gpus(gpus), config.calibrate_power_limits)
    except ConfigError:
        raise
    except GreenTrackError as e:  # NVML cannot tell the range: the command's tracker says so
        logging.getLogger("greentrack").debug("power limit constraints unknown: %s", e)


def _calibration_outcome(tracker: Any) -> None:
    """One line when no process of the command stored a power-limit curve."""
    from greentrack.run import Run
    try:
        with Run.open(tracker.run_dir) as run:
            if run.power_limit_curves():
                return
    except GreenTrackError:
        return
    print("greentrack: --calibrate-power-limits: no power-limit curve was stored: the command "
          "needs a greentrack Tracker or integration marking its training steps, enough steps, "
          "and the privilege to set the limit (see the run's events)", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
