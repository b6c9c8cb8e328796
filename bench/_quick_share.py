"""The shared-GPU check of ``bench/gpu_checks.sh --quick`` (greentrack/samplers/_gpushare.py on a
real driver): two CUDA processes on GPU 0, a heavy one (matmuls back to back) and a light one
(matmuls a quarter of the time), each measured by its own greentrack ``Tracker``.

What it settles:

* whether each run's share of one common window follows the SM utilization NVML reports for its
  process (time-weighted: the sum of each process's samples over the window), and whether the two
  runs' shares add up to the whole GPU's energy (the counter delta over the window);
* both runs labelled as estimates (``x process share``) with a ``gpu-shared`` warning;
* what NVML's process calls cost on a real driver (``nvmlDeviceGetComputeRunningProcesses``,
  ``nvmlDeviceGetProcessesUtilizationInfo``, ``nvmlDeviceGetProcessUtilization``), how often the
  driver takes a per-process sample, whether it lists a process in a period it left the SMs idle
  (smUtil 0) and which error it raises when no sample is newer than the timestamp asked (greentrack
  and the fake NVML assume NotFound).

The check's own process holds no CUDA context (NVML would list it as a third process): it only reads
NVML. With ``--fake`` the children and the parent each build the fake NVML with the same constant
power, so their counters agree, and list the two children's real PIDs at fixed SM utilization
(heavy 60%, light 20%): the pipeline (the children's real Trackers, leases, PIDs, stores) is the
GPU run's, the figures are known by construction.

    python bench/_quick_share.py --child heavy --sync DIR [--fake]   # started by the check
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402

ROLES = ("heavy", "light")
FAKE_UTIL = {"heavy": 60, "light": 20}  # the fake's SM utilization per role, percent
FAKE_W = 400.0  # the fake GPU's constant power while shared
LIGHT_DUTY = (0.05, 0.15)  # the light process: busy, then idle (s)
READY_S = {False: 45.0, True: 20.0}  # children started and tracking (real: CUDA start-up)
WINDOW_S = {False: 8.0, True: 3.0}
UTIL_APIS = ("nvmlDeviceGetProcessesUtilizationInfo", "nvmlDeviceGetProcessUtilization")


def _wait_file(path: Path, timeout: float) -> str:
    end = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > end:
            raise TimeoutError(f"{path.name} did not appear within {timeout:.0f} s")
        time.sleep(0.02)
    return path.read_text(encoding="utf-8")


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def fake_module(pids: dict[str, int]) -> Any:
    """The fake NVML H100 as every process of the fake check builds it: constant power (so the
    counter reads the same in each), the two children listed at their roles' SM utilization."""
    from tests.fakes.fake_pynvml import FakeProcess

    nv, fake = c.fake_nvml_module(1, counter_cost_s=0.003, idle_w=FAKE_W)
    fake.gpus[0].processes = [FakeProcess(pids[r], FAKE_UTIL[r]) for r in ROLES]
    return nv


# -- a child: one CUDA process with its own tracker ---------------------------------------------
def child(role: str, sync: Path, fake: bool) -> int:
    from _quick_readonly import guard

    pids = json.loads(_wait_file(sync / "pids.json", READY_S[fake]))
    if fake:
        sys.modules["pynvml"] = fake_module(pids)
        step: Any = lambda: time.sleep(0.05)  # noqa: E731
    guard(importlib.import_module("pynvml"))  # the power limit is never set, whatever runs
    if not fake:
        import torch
        a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)

        def step() -> None:
            if role == "heavy":
                a @ a
                torch.cuda.synchronize()
                return
            end = time.monotonic() + LIGHT_DUTY[0]
            while time.monotonic() < end:
                a @ a
                torch.cuda.synchronize()
            time.sleep(LIGHT_DUTY[1])

        for _ in range(5):
            a @ a
        torch.cuda.synchronize()
    c.ensure_integrations()
    import greentrack
    from greentrack.store import StoreReader, store_paths

    run = sync / f"run-{role}"
    tracker = greentrack.Tracker(run, gpus=(0,), host_energy=False).start()
    _write(sync / f"ready-{role}", str(os.getpid()))
    _wait_file(sync / "go", READY_S[fake] + 10)
    stop = sync / "stop"
    while not stop.exists():
        step()
    window = json.loads(_wait_file(sync / "window.json", 30))
    tracker.submit_window("share", window["t0"], window["t1"])
    time.sleep(0.5)
    tracker.stop()
    reader = StoreReader(store_paths(run)[0])
    steps = [s for s in reader.steps() if s["phase"] == "share"] or reader.steps()
    gpus = [ch for ch in reader.channels() if ch["kind"] == "gpu"]
    events = reader.events()
    shared = [e for e in events if e.get("kind") == "gpu-shared"]
    result = {"pid": os.getpid(), "gpu_j": steps[0]["gpu_j"] if steps else None,
              "method": gpus[0]["method"] if gpus else None,
              "measured": gpus[0]["measured"] if gpus else None,
              "shared_events": len(shared), "events": [
                  {k: e.get(k) for k in ("level", "kind", "message")} for e in events
                  if str(e.get("kind", "")).startswith("gpu")][:6]}
    _write(sync / f"result-{role}.json", json.dumps(result))
    print(f"[{role}] {json.dumps(result)}", flush=True)
    return 0


# -- the parent: the check -----------------------------------------------------------------------
def _timed(fn: Any, *args: Any) -> tuple[float, Any, BaseException | None]:
    t = time.perf_counter()
    try:
        out, err = fn(*args), None
    except Exception as e:  # noqa: BLE001 - the error is the finding (NotFound, NotSupported)
        out, err = None, e
    return (time.perf_counter() - t) * 1000.0, out, err


class UtilLog:
    """Per-process samples read as greentrack reads them (only those newer than the last seen),
    with the wall time of each call, by API."""

    def __init__(self, nv: Any, handle: Any) -> None:
        self.nv, self.h = nv, handle
        self.last_us = {api: 0 for api in UTIL_APIS}
        self.samples: dict[str, list[tuple[int, int, int]]] = {api: [] for api in UTIL_APIS}
        self.cost_ms: dict[str, list[float]] = {api: [] for api in UTIL_APIS}
        self.errors: dict[str, dict[str, int]] = {api: {} for api in UTIL_APIS}
        self.list_ms: list[float] = []
        self.listed: set[int] = set()

    def read(self) -> None:
        ms, procs, err = _timed(self.nv.nvmlDeviceGetComputeRunningProcesses, self.h)
        if err is None:
            self.list_ms.append(ms)
            self.listed |= {int(p.pid) for p in procs}
        for api in UTIL_APIS:
            fn = getattr(self.nv, api, None)
            if fn is None:
                self.errors[api]["not in this nvidia-ml-py"] = 1
                continue
            ms, got, err = _timed(fn, self.h, self.last_us[api])
            self.cost_ms[api].append(ms)
            if err is not None:
                name = type(err).__name__
                self.errors[api][name] = self.errors[api].get(name, 0) + 1
                continue
            new = [(int(s.pid), int(s.timeStamp), int(s.smUtil)) for s in got
                   if int(s.timeStamp) > self.last_us[api]]
            self.samples[api] += new
            self.last_us[api] = max([self.last_us[api]] + [ts for _, ts, _ in new])

    def api(self) -> str | None:
        """The API greentrack would use: the successor where it returns samples."""
        return next((a for a in UTIL_APIS if self.samples[a]), None)


def _none_newer(nv: Any, h: Any, api: str) -> tuple[int, str]:
    """What the driver answers when no sample is newer than the timestamp asked (an hour ahead):
    the NVML error code, 0 when it raised nothing, -1 for an error that is not NVML's."""
    future = int((time.time() + 3600) * 1e6)
    _, got, err = _timed(getattr(nv, api), h, future)
    if err is None:
        return 0, f"returned {len(got)} samples, no error"
    return int(getattr(err, "value", -1)), f"{type(err).__name__}: {err}"


def _per_call(nv: Any, h: Any, api: str) -> float | None:
    """The most samples of one process in one answer to ``api`` asked for everything buffered."""
    _, got, err = _timed(getattr(nv, api), h, 0)
    if err is not None:
        return None
    counts: dict[int, int] = {}
    for sample in got:
        counts[int(sample.pid)] = counts.get(int(sample.pid), 0) + 1
    return float(max(counts.values())) if counts else 0.0


def _period_ms(samples: list[tuple[int, int, int]]) -> float | None:
    by_pid: dict[int, list[int]] = {}
    for pid, ts, _ in samples:
        by_pid.setdefault(pid, []).append(ts)
    gaps = [(b - a) / 1000.0 for ts in by_pid.values() for a, b in zip(sorted(ts), sorted(ts)[1:])
            if b > a]
    return c.median(gaps) if gaps else None


def _spawn(sync: Path, fake: bool) -> dict[str, subprocess.Popen[bytes]]:
    env = {**os.environ, "GREENTRACK_LEASE_DIR": str(sync / "leases"), "PYTHONUNBUFFERED": "1"}
    (sync / "leases").mkdir()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--sync", str(sync)]
    procs = {r: subprocess.Popen(cmd + ["--child", r] + (["--fake"] if fake else []), env=env,
                                 cwd=c.REPO) for r in ROLES}
    _write(sync / "pids.json", json.dumps({r: p.pid for r, p in procs.items()}))
    return procs


def _await(procs: dict[str, subprocess.Popen[bytes]], paths: dict[str, Path],
           timeout: float) -> None:
    end = time.monotonic() + timeout
    while not all(p.exists() for p in paths.values()):
        for r, p in procs.items():
            if p.poll() is not None and not paths[r].exists():
                raise RuntimeError(f"the {r} process exited with status {p.returncode} "
                                   f"before writing {paths[r].name} (see the log above)")
        if time.monotonic() > end:
            raise TimeoutError(f"children not done within {timeout:.0f} s: waiting for "
                               + ", ".join(n.name for n in paths.values() if not n.exists()))
        time.sleep(0.05)


CALL_ROWS = ("proc_list_wall", "proc_util_info_wall", "proc_util_legacy_wall", "share_update_cost",
             "util_period", "util_zero_samples", "util_samples_per_call", "util_none_code")
SHARE_ROWS = ("share_sum", "share_follows_util", "share_heavy", "share_labelled")


def check(dev: Any, rows: Any) -> None:
    from _quick_checks import _counter, _refresh
    from _quick_readonly import isolated

    fake = dev.fake
    sync = Path(tempfile.mkdtemp(prefix="gt-quick-share-"))
    procs = _spawn(sync, fake)
    pids = {r: p.pid for r, p in procs.items()}
    try:
        nv = fake_module(pids) if fake else dev.nv
        if fake:
            nv.nvmlInit()
        h = nv.nvmlDeviceGetHandleByIndex(0)
        dev_nv = type("D", (), {"nv": nv, "handle": h})()
        read = _counter(dev_nv)  # type: ignore[arg-type]
        _await(procs, {r: sync / f"ready-{r}" for r in ROLES}, READY_S[fake])
        log = UtilLog(nv, h)
        log.read()  # from here on, only samples newer than now
        log.samples = {api: [] for api in UTIL_APIS}
        a = _refresh(read)
        _write(sync / "go", "")
        end = time.monotonic() + WINDOW_S[fake]
        while time.monotonic() < end:
            time.sleep(0.25)
            log.read()
        b = _refresh(read)
        _write(sync / "stop", "")
        _write(sync / "window.json", json.dumps({"t0": a[0], "t1": b[0]}))
        isolated(rows, CALL_ROWS, _report_calls, nv, h, log, pids, rows)
        _await(procs, {r: sync / f"result-{r}.json" for r in ROLES}, 30.0)
        got = {r: json.loads((sync / f"result-{r}.json").read_text()) for r in ROLES}
        isolated(rows, SHARE_ROWS, _report_share, log, pids, got, b[1] - a[1], rows)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()


def _stat(ms: list[float]) -> str:
    return f"median {c.median(ms):.3f} ms, p99 {c.quantile(ms, 0.99):.3f} ms, n={len(ms)}" \
        if ms else "no call succeeded"


def _report_calls(nv: Any, h: Any, log: UtilLog, pids: dict[str, int], rows: Any) -> None:
    """What the process calls cost and how the driver samples, from the window's reads."""
    rows.add("proc_list_wall", c.median(log.list_ms) if log.list_ms else None,
             detail=f"nvmlDeviceGetComputeRunningProcesses: {_stat(log.list_ms)}; listed PIDs "
                    f"{sorted(log.listed)} (children {pids})")
    for api, name in zip(UTIL_APIS, ("proc_util_info_wall", "proc_util_legacy_wall")):
        ms = log.cost_ms[api]
        errs = ", ".join(f"{k} x{v}" for k, v in log.errors[api].items()) or "none"
        rows.add(name, c.median(ms) if ms else None,
                 detail=f"{api}: {_stat(ms)}; {len(log.samples[api])} new samples; errors: {errs}")
    api = log.api()
    if api is None:
        for name in CALL_ROWS[3:]:
            rows.add(name, None, detail="no per-process samples from either API")
        return
    update = c.median(log.list_ms) + c.median(log.cost_ms[api]) if log.list_ms else None
    rows.add("share_update_cost", update,
             detail=f"process list + {api}, medians (a share update runs once a second per GPU; "
                    "greentrack's own CPU is bench/gpu_share_cost.py's)")
    samples = log.samples[api]
    period = _period_ms(samples)
    rows.add("util_period", period,
             detail=f"{api}: median gap between one process's sample timestamps over "
                    f"{len(samples)} samples read every 250 ms (the fake assumes 200 ms; if the "
                    "driver answers only its latest sample, gaps under 250 ms are not seen)")
    zeros = sum(1 for _, _, sm in samples if sm == 0)
    rows.add("util_zero_samples", zeros / len(samples) * 100,
             detail=f"{zeros} of {len(samples)} samples have smUtil 0 (the fake lists a process "
                    "only in periods it used the SMs)")
    per_call = _per_call(nv, h, api)
    rows.add("util_samples_per_call", per_call,
             detail=f"{api}(lastSeenTimeStamp=0): the most samples of one process in one answer "
                    "(1: only the latest, as NVML's reference describes it; the fake returns every "
                    "buffered sample, 10 periods)")
    code, what = _none_newer(nv, h, api)
    rows.add("util_none_code", float(code),
             expected=float(nv.NVML_ERROR_NOT_FOUND), detail=f"{api} asked for samples newer than "
             f"an hour ahead: {what} (NVML_ERROR_NOT_FOUND is {nv.NVML_ERROR_NOT_FOUND})")


def _report_share(log: UtilLog, pids: dict[str, int], got: dict[str, dict[str, Any]],
                  ref_j: float, rows: Any) -> None:
    api = log.api() or UTIL_APIS[0]
    samples = log.samples[api]
    util_sum = {r: sum(sm for pid, _, sm in samples if pid == pids[r]) for r in ROLES}
    n = {r: sum(1 for pid, _, _ in samples if pid == pids[r]) for r in ROLES}
    util_mean = {r: util_sum[r] / n[r] if n[r] else 0.0 for r in ROLES}
    joules = {r: got[r]["gpu_j"] for r in ROLES}
    util = ", ".join(f"{r} {util_sum[r]} over {n[r]} samples (mean {util_mean[r]:.1f}%)"
                     for r in ROLES)
    if any(j is None for j in joules.values()):
        for name in ("share_sum", "share_follows_util", "share_heavy", "share_labelled"):
            rows.add(name, None, detail=f"a run has no window energy: {got}")
        return
    total = sum(joules.values())
    rows.add("share_sum", (total / ref_j - 1) * 100 if ref_j > 0 else None,
             detail=f"heavy {joules['heavy']:.1f} J + light {joules['light']:.1f} J against the "
                    f"counter's {ref_j:.1f} J over the same window")
    heavy = joules["heavy"] / total if total > 0 else 0.0
    expect_sum = util_sum["heavy"] / max(1, util_sum["heavy"] + util_sum["light"])
    expect_mean = util_mean["heavy"] / max(1e-9, util_mean["heavy"] + util_mean["light"])
    rows.add("share_follows_util", (heavy - expect_sum) * 100,
             detail=f"heavy run's share {heavy:.1%} against its time-weighted SM utilization "
                    f"share {expect_sum:.1%} (by the mean of its samples, as greentrack takes "
                    f"them each second: {expect_mean:.1%}); {util}")
    rows.add("share_heavy", heavy * 100,
             detail=f"light {joules['light'] / total:.1%}" if total > 0 else "no energy")
    labelled = sum(1 for r in ROLES if got[r]["measured"] is False and "process share"
                   in str(got[r]["method"]) and got[r]["shared_events"] >= 1)
    rows.add("share_labelled", float(labelled),
             detail="; ".join(f"{r}: {got[r]['method']}, measured={got[r]['measured']}, "
                              f"{got[r]['shared_events']} gpu-shared" for r in ROLES))


def main() -> int:
    ap = argparse.ArgumentParser(description="a child of the shared-GPU quick check")
    ap.add_argument("--child", choices=ROLES, required=True, help="which load this process runs")
    ap.add_argument("--sync", type=Path, required=True, help="the check's exchange directory")
    ap.add_argument("--fake", action="store_true", help="the fake NVML, no CUDA")
    args = ap.parse_args()
    return child(args.child, args.sync, args.fake)


if __name__ == "__main__":
    sys.exit(main())
