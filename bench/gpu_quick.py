"""The GPU acceptance check in at most seven minutes, offline: what ``bash bench/gpu_checks.sh
--quick OUT_DIR`` runs. For a GPU that is available only briefly (a short allocation, a spot
instance), on a host with no network and only torch, lightning, nvidia-ml-py, psutil,
prometheus_client and pytest installed: greentrack is used from this checkout as it is (nothing is
installed or downloaded; ``greentrack.integrations`` is mapped from ``integrations/`` in process
when the package is not installed), and codecarbon and Zeus are optional (their rows say "not
installed").

    bash bench/gpu_checks.sh --quick OUT_DIR          # on the GPU host
    bash bench/gpu_checks.sh --quick --fake OUT_DIR   # anywhere: the fake NVML H100, CPU torch

Each check runs in its own process under its own time limit (SIGTERM, then SIGKILL), so a hang
costs that check only; the limits add up to less than the seven minutes. Figures a check reported
before it was stopped are kept; a Python module a check lacks skips that check's goals, naming it.
Writes ``OUT_DIR/summary.md`` and ``OUT_DIR/summary.json`` (every goal, its threshold, the figure,
pass / fail / info / pending / skipped / error, the device and driver), one log per check, and
prints the summary last. ``pending``: deliberately not measured here, with what it needs (a real
power-limit curve needs a machine where changing the limit is allowed: the GPU's settings, power
limit and MIG mode, are only read, and the checks' processes replace NVML's limit setter with a
guard that raises). The benchmarks' record of results is left alone: the full
mode (``bash bench/gpu_checks.sh``) does that.

Exit status: 0 when every check produced its figures (whether or not each met its goal: the
summary says which did, and ``all_goals_met`` in summary.json), 1 when a check crashed or ran out
of time, 2 for a bad command line; 0 on a host without a GPU (without ``--fake``), after saying so.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402
from _quick_checks import MISSING_MODULE  # noqa: E402

# Whole run, real / fake: 7 min of the device's time; with --fake, 150 s of the checks' CPU. A
# fake check's limit is CPU seconds too (RLIMIT_CPU of each of its processes), its wall time only
# a hang guard (FAKE_HANG x the limit): on a loaded CI machine a check's wall time is the host's
# (the 200 ms-step overhead check ran past 60 s of wall beside busy loops), not the check's.
BUDGET_S = {False: 420.0, True: 150.0}
FAKE_HANG = 10.0
GRACE_S = 5.0  # after SIGTERM, before SIGKILL
RESERVE_S = 3.0  # kept back from the last check's limit for the summary


@dataclass(frozen=True)
class Check:
    name: str
    limit_s: float  # on a GPU
    fake_limit_s: float  # with --fake, on a small CI machine


CHECKS = [Check("nvml_probe", 40, 20), Check("nvml_readonly", 20, 15),
          Check("totals_windows", 70, 30), Check("mixed_steps", 55, 30),
          Check("gpu_share", 60, 40), Check("overhead", 120, 60), Check("sampler_cpu", 45, 20)]


@dataclass(frozen=True)
class Goal:
    name: str
    check: str
    goal: str
    threshold: str
    unit: str
    # figure, the row's other values -> met? None: a fact recorded without a goal ("info")
    met: Callable[[float, dict[str, Any]], bool] | None


def _within(limit: float) -> Callable[[float, dict[str, Any]], bool]:
    return lambda figure, row: abs(figure) <= limit


def _overhead_goals(ms: int) -> list[Goal]:
    size = f"~{ms} ms GPU steps"
    head = "head to head, no goal:"
    return [
        Goal(f"overhead_{ms}ms", "overhead",
             f"greentrack's step-time overhead on {size} (CUDA-event marks, no synchronize)",
             "median <= 0.5% + A/A noise floor", "%",
             lambda f, row: f <= 0.5 + float(row.get("noise", 0.0))),
        Goal(f"overhead_{ms}ms_aa", "overhead", f"A/A control on {size}: the noise floor",
             "none", "%", None),
        Goal(f"overhead_{ms}ms_codecarbon", "overhead",
             f"{head} codecarbon started around the block, {size}", "none", "%", None),
        Goal(f"overhead_{ms}ms_codecarbon_task", "overhead",
             f"{head} codecarbon task mode per step, {size}", "none", "%", None),
        Goal(f"overhead_{ms}ms_zeus", "overhead",
             f"{head} Zeus windows per step (synchronizes), {size}", "none", "%", None),
    ]


GOALS = [
    Goal("counter_phase", "nvml_probe",
         "the energy counter refreshes on the power sensor's tick (the per-step figures assume it; "
         "if not, 120-400 ms steps degrade from ~2.8% to ~9%)",
         "|offset| <= max(5 ms, read bracket)", "ms",
         lambda f, row: abs(f) <= float(row.get("limit", 5.0))),
    Goal("counter_read_wall", "nvml_probe", "an energy-counter read costs ~3 ms (README)",
         "median <= 5 ms", "ms", _within(5.0)),
    Goal("counter_read_cpu", "nvml_probe",
         "CPU of one counter read: does it spin or wait? (the slow-read budget copes with either)",
         "none", "ms", None),
    Goal("power_limit", "nvml_readonly",
         "the power limit in force, read by greentrack (never set: the GPU's settings are left "
         "as they are)", "none", "W", None),
    Goal("limit_check", "nvml_readonly",
         "calibration's range check on the real constraints: their ends accepted, 1 W beyond "
         "refused in one line", "2 of 2", "of 2", lambda f, row: f == 2),
    Goal("limit_privilege", "nvml_readonly",
         "may this process ask to set a limit (root or CAP_SYS_ADMIN; not probed by a set call)",
         "none", "yes=1", None),
    Goal("calibration_curve", "nvml_readonly",
         "a power-limit curve measured on a real GPU, and the limit restored on every way out",
         "pending", "", None),
    Goal("calibration_privilege_probe", "nvml_readonly",
         "the driver refuses a non-root set of the limit in force (calibration's probe)",
         "pending", "", None),
    Goal("mig_mode", "nvml_readonly", "MIG mode (current)", "none", "on=1", None),
    Goal("mig_whole_gpu", "nvml_readonly",
         "a MIG slice is reported as the whole GPU's energy, labelled", "pending", "", None),
    Goal("instant_read_wall", "nvml_readonly",
         "an instant-power field read costs ~3 us (README; polled every 50 ms)",
         "median <= 20 us", "us", _within(20.0)),
    Goal("dating_error", "totals_windows",
         "counter values dated within a few ms of their NVML refresh (probe reads narrow the "
         "bracket: docs/methodology.md; assumes the instant-power value changes at each refresh)",
         "<= 10 ms", "ms", _within(10.0)),
    Goal("total_vs_counter", "totals_windows",
         "a run's total GPU energy (bursty trace) equals the NVML counter delta over the run's span",
         "|error| <= 1%", "%", _within(1.0)),
    Goal("long_window", "totals_windows",
         "the whole trace (~25 s) as one window, submitted at its end, equals the counter delta",
         "|error| <= 1%", "%", _within(1.0)),
    Goal("windows_500ms", "totals_windows",
         "500 ms busy windows, each alone between idle gaps, against the counter (replay: 0.4%)",
         "MAE <= 5%", "%", _within(5.0)),
    Goal("windows_200ms", "totals_windows",
         "200 ms busy windows, each alone between idle gaps, against the counter",
         "MAE <= 5%", "%", _within(5.0)),
    *(Goal(f"edges_{kind}", "totals_windows",
           f"{what} of the bursty trace against counter reads at their edges (the reference is "
           "quantized to the 100 ms refresh: replay 15% for 200 ms windows)", "none", "%", None)
      for kind, what in (("1s", "1 s windows"), ("500ms", "500 ms windows"),
                         ("200ms", "200 ms windows"),
                         ("burst", "500 ms windows holding one 50 ms burst"))),
    Goal("mixed_heavy", "mixed_steps",
         "heavy ~200 ms steps interleaved with light ones: mean J against heavy steps alone",
         "|error| <= 5%", "%", _within(5.0)),
    Goal("mixed_light", "mixed_steps",
         "light ~200 ms steps interleaved with heavy ones: mean J against light steps alone",
         "|error| <= 5%", "%", _within(5.0)),
    Goal("share_sum", "gpu_share",
         "two tracked CUDA processes on one GPU: their runs' energy over a common window against "
         "the counter delta (the split neither loses nor doubles energy)",
         "|error| <= 5%", "%", _within(5.0)),
    Goal("share_follows_util", "gpu_share",
         "the heavy run's share of the pair against its share of the SM utilization NVML "
         "sampled over the window (time-weighted)", "|diff| <= 5 points", "points",
         _within(5.0)),
    Goal("share_heavy", "gpu_share", "the heavy run's share (matmuls back to back against "
         "a quarter of the time)", "none", "%", None),
    Goal("share_labelled", "gpu_share",
         "both runs labelled estimated (x process share) with a gpu-shared warning",
         "2 of 2", "of 2", lambda f, row: f == 2),
    Goal("proc_list_wall", "gpu_share", "nvmlDeviceGetComputeRunningProcesses, one call",
         "none", "ms", None),
    Goal("proc_util_info_wall", "gpu_share", "nvmlDeviceGetProcessesUtilizationInfo, one call",
         "none", "ms", None),
    Goal("proc_util_legacy_wall", "gpu_share", "nvmlDeviceGetProcessUtilization, one call",
         "none", "ms", None),
    Goal("share_update_cost", "gpu_share",
         "NVML's part of a share update (process list + utilization), once a second per GPU",
         "median <= 5 ms (0.5% of the second)", "ms", _within(5.0)),
    Goal("util_period", "gpu_share", "the driver's per-process sampling period (fake: 200 ms)",
         "none", "ms", None),
    Goal("util_zero_samples", "gpu_share",
         "samples with smUtil 0 (the fake lists a process only when it used the SMs)",
         "none", "%", None),
    Goal("util_samples_per_call", "gpu_share",
         "one process's samples in one answer, everything buffered asked for (the fake: all of "
         "them; NVML's reference: the latest)", "none", "samples", None),
    Goal("util_none_code", "gpu_share",
         "no sample newer than the timestamp asked raises NVML_ERROR_NOT_FOUND (greentrack and "
         "the fake assume it)", "NotFound", "NVML code",
         lambda f, row: f == row.get("expected")),
    *(g for ms in (10, 50, 200) for g in _overhead_goals(ms)),
    Goal("sampler_cpu", "sampler_cpu",
         "sampler thread CPU at defaults with real NVML, 1 GPU (host energy as found)",
         "< 1% of one core", "% of a core", lambda f, row: f < 1.0),
]


# -- one check in its own process ---------------------------------------------------------------
@dataclass
class Outcome:
    rows: dict[str, dict[str, Any]]
    wall_s: float
    failure: str | None  # why the check's process did not finish cleanly
    missing: str | None = None  # a Python module this host lacks: the check's goals are skipped
    spent_s: float = 0.0  # of the budget: wall seconds on a GPU, CPU seconds with --fake


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the check's process group, then SIGKILL if it is still there."""
    for sig, wait in ((signal.SIGTERM, GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _last_line(log: Path) -> str:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1].strip()[:300] if lines else "no output"


def run_check(check: Check, out: Path, fake: bool, limit: float) -> Outcome:
    rows_path, log = out / "raw" / f"{check.name}.json", out / f"{check.name}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--check", check.name,
           "--rows", str(rows_path)] + (["--fake"] if fake else [])
    t0, cpu0 = time.monotonic(), _children_cpu_s()
    failure = missing = None

    def cpu_limit() -> None:  # in the check's process (and each it starts): SIGXCPU past it
        soft = math.ceil(limit)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, soft + 5))

    with log.open("wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=c.REPO,
                                preexec_fn=cpu_limit if fake else None)
        try:
            rc = proc.wait(proc_limit_s(limit, fake))
            if rc == MISSING_MODULE:
                missing = _last_line(log)
            elif fake and rc in (-signal.SIGXCPU, -signal.SIGKILL):
                failure = f"used its {limit:.0f} CPU-s (stopped)"
            elif rc:
                failure = f"check exited with status {rc}: {_last_line(log)}"
        except subprocess.TimeoutExpired:
            _stop(proc)
            failure = f"timed out after {proc_limit_s(limit, fake):.0f} s (stopped)"
    rows = json.loads(rows_path.read_text()) if rows_path.exists() else {}
    wall = time.monotonic() - t0
    return Outcome(rows, wall, failure, missing, _children_cpu_s() - cpu0 if fake else wall)


def proc_limit_s(limit: float, fake: bool) -> float:
    """A check's wall-time limit: its limit on a GPU (the device's time), a hang guard with --fake."""
    return limit * FAKE_HANG if fake else limit


def _children_cpu_s() -> float:
    """CPU seconds of the checks run so far (each waited for, with every process it waited for)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def judge(goal: Goal, row: dict[str, Any] | None, failure: str | None) -> dict[str, Any]:
    """One summary entry: the goal, the figure, and pass / fail / info / skipped / error."""
    entry: dict[str, Any] = {"name": goal.name, "check": goal.check, "goal": goal.goal,
                             "threshold": goal.threshold, "figure": None, "unit": goal.unit}
    if row is None:
        return {**entry, "result": "error", "reason": failure or "the check did not report it"}
    entry["figure"] = row["figure"]
    if row.get("detail"):
        entry["detail"] = row["detail"]
    if row.get("skipped"):
        return {**entry, "result": "skipped", "reason": row["skipped"]}
    if row.get("pending"):  # deliberately not measured here: what it needs is stated
        return {**entry, "result": "pending", "reason": row["pending"]}
    if row["figure"] is None:
        return {**entry, "result": "error" if goal.met else "info",
                "reason": "nothing measured (see detail)"}
    if goal.met is None:
        return {**entry, "result": "info"}
    return {**entry, "result": "pass" if goal.met(row["figure"], row) else "fail"}


# -- the run ------------------------------------------------------------------------------------
def device_info(fake: bool) -> tuple[dict[str, str], str | None]:
    """(device, driver, NVML version), and why there is no usable GPU (None: there is one)."""
    try:
        if fake:
            nv, _ = c.fake_nvml_module(1)
        else:
            import pynvml as nv
        nv.nvmlInit()
        if nv.nvmlDeviceGetCount() < 1:
            raise RuntimeError("NVML found no GPU")
        name = nv.nvmlDeviceGetName(nv.nvmlDeviceGetHandleByIndex(0))
        info = {"device": name.decode() if isinstance(name, bytes) else str(name),
                "driver": str(nv.nvmlSystemGetDriverVersion()),
                "nvml_version": str(getattr(nv, "nvmlSystemGetNVMLVersion", lambda: "n/a")())}
    except ModuleNotFoundError as e:  # a bare host: greentrack reads NVIDIA GPUs through it
        return ({"device": "unknown", "driver": "n/a", "nvml_version": "n/a"},
                f"nvidia-ml-py is not installed ({e}): greentrack reads NVIDIA GPUs through it; "
                "on a host without network, carry its wheel (`pip download nvidia-ml-py`) and "
                "put it on PYTHONPATH")
    except Exception as e:  # noqa: BLE001 - any failure means: no usable GPU here
        return ({"device": "none", "driver": "n/a", "nvml_version": "n/a"},
                f"no NVIDIA GPU with NVML here ({type(e).__name__}: {e})")
    if fake:
        return {k: f"{v} (fake NVML)" for k, v in info.items()}, None
    ok, why = c.cuda_device()
    return info, None if ok else why


def greentrack_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=c.REPO, text=True,
                              capture_output=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=c.REPO, text=True, capture_output=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git checkout)"
    return head + ("-dirty" if dirty.strip() else "")


def run_all(out: Path, fake: bool, no_gpu: str | None) -> list[dict[str, Any]]:
    """Every check in turn, each limited by its own limit and by what is left of the budget."""
    entries: list[dict[str, Any]] = []
    spent = 0.0
    for check in CHECKS:
        goals = [g for g in GOALS if g.check == check.name]
        left = BUDGET_S[fake] - spent - RESERVE_S
        limit = min(check.fake_limit_s if fake else check.limit_s, left)
        if no_gpu or limit < 5.0:
            why = "no GPU here" if no_gpu else "no time left in the budget"
            entries += [{**judge(g, {"figure": None, "skipped": why}, None), "wall_s": 0.0}
                        for g in goals]
            continue
        unit = "CPU-s" if fake else "s"
        print(f"== {check.name}: running (limit {limit:.0f} {unit}, log {out / check.name}.log)",
              flush=True)
        o = run_check(check, out, fake, limit)
        spent += o.spent_s
        for g in goals:
            row = o.rows.get(g.name)
            if row is None and o.missing:
                row = {"figure": None, "skipped": o.missing}
            entries.append({**judge(g, row, o.failure), "wall_s": round(o.wall_s, 1)})
        verdicts = ", ".join(f"{e['name']} {e['result']}" for e in entries[-len(goals):])
        print(f"== {check.name}: {o.wall_s:.0f} s; {verdicts}"
              + (f"; {o.failure}" if o.failure else ""), flush=True)
    return entries


def _figure(e: dict[str, Any]) -> str:
    f = e["figure"]
    if f is None:
        return "-"
    return f"{f:+.2f} {e['unit']}" if e["unit"] == "%" else f"{f:.3g} {e['unit']}"


def markdown(s: dict[str, Any]) -> str:
    rows = [[cell.replace("|", "\\|") for cell in  # a literal | would split the cell
             (e["name"], e["goal"], e["threshold"], _figure(e), f"**{e['result']}**",
              f"{e['wall_s']:g}", e.get("reason") or e.get("detail") or "")]
            for e in s["checks"]]
    counts = {r: sum(e["result"] == r for e in s["checks"])
              for r in ("pass", "fail", "info", "pending", "skipped", "error")}
    return (f"# GPU quick check{' (FAKE NVML: a logic check, not a measurement)' if s['fake'] else ''}\n\n"
            f"Device: {s['device']}; driver {s['driver']}; NVML {s['nvml_version']}.  \n"
            f"greentrack {s['greentrack_commit']} ({s['greentrack_from']}); {s['versions']}.  \n"
            f"Mode: {s['mode']}; {s['wall_s']:.0f} s in all; "
            + ", ".join(f"{n} {r}" for r, n in counts.items()) + ".\n"
            + (f"\n**{s['no_gpu']}**: nothing measured.\n" if s.get("no_gpu") else "")
            + "\n" + c.md_table(["check", "goal", "threshold", "figure", "result", "wall s",
                                 "detail / reason"], rows) + "\n")


def summarize(out: Path, fake: bool, info: dict[str, str], no_gpu: str | None,
              entries: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    goals_met = all(e["result"] in ("pass", "info", "pending", "skipped") for e in entries)
    s: dict[str, Any] = {
        **info, "greentrack_commit": greentrack_commit(), "greentrack_from": c.ensure_integrations(),
        "versions": c.versions(), "mode": "quick", "fake": fake, "no_gpu": no_gpu,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "checks": entries,
        "complete": not any(e["result"] == "error" for e in entries),
        "all_goals_met": goals_met and not no_gpu, "wall_s": round(wall_s, 1)}
    (out / "summary.json").write_text(json.dumps(s, indent=1) + "\n", encoding="utf-8")
    (out / "summary.md").write_text(markdown(s), encoding="utf-8")
    return s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", default="gpu-checks", help="where summaries and logs go")
    ap.add_argument("--fake", action="store_true", help="the fake NVML H100 and CPU torch")
    ap.add_argument("--check", choices=[ch.name for ch in CHECKS], help=argparse.SUPPRESS)
    ap.add_argument("--rows", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.check:  # one check, in the process run_check started
        from _quick_checks import run
        return run(args.check, args.rows, args.fake)
    t0 = time.monotonic()
    out = Path(args.out).resolve()
    (out / "raw").mkdir(parents=True, exist_ok=True)
    info, no_gpu = device_info(args.fake)
    if no_gpu:
        print(f"{no_gpu}: nothing to measure here (exit 0). On a GPU host run "
              "`bash bench/gpu_checks.sh --quick OUT_DIR`; `--fake` runs the same pipeline on the "
              "fake NVML.", flush=True)
    else:
        print(f"GPU 0: {info['device']}, driver {info['driver']}; budget "
              f"{BUDGET_S[args.fake]:.0f} s; logs in {out}", flush=True)
    entries = run_all(out, args.fake, no_gpu)
    s = summarize(out, args.fake, info, no_gpu, entries, time.monotonic() - t0)
    print("\n" + (out / "summary.md").read_text(encoding="utf-8"), end="", flush=True)
    return 0 if s["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
