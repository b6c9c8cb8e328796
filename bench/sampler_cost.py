"""What does each tracker's background work cost? CPU time as % of one core, at defaults.

Each configuration starts one tracker, lets it settle for a second, then measures over a window
while the main thread sleeps (or only submits step windows, for the rows with steps):

* the sampler thread's own CPU time (greentrack: the ``greentrack-sampler`` thread, read through
  psutil per-thread times; cross-checked with the ``sampler_cpu_s`` the engine records, read with
  ``time.thread_time()`` inside the thread);
* all background CPU of the process: process CPU time minus the main thread's (this counts
  codecarbon's ``threading.Timer`` threads, which are new threads at every tick, and greentrack's
  Prometheus endpoint thread);
* CPU of helper processes the tracker started (Zeus spawns one RAPL wrap-around poller process per
  RAPL file).

Hardware: this host as found, then fakes where the host lacks it (``tests/fakes``): a powercap
tree with a package and a DRAM zone whose counters advance at 50 W / 5 W from another process, and
fake NVML H100s whose energy-counter read takes 3 ms (``counter_cost_s=0.003``, the cost measured on
an H100). That 3 ms is a sleep: it models time waiting in the driver, not CPU, so the fake rows
count the sampler's Python work around NVML, plus the fake's own Python code (measured in place and
shown separately; real NVML field reads cost ~3 us). One row makes the read spin 3 ms of CPU
instead, as a busy-waiting driver would: greentrack's slow-read CPU budget then stretches the slow
cadence. Run this script on a GPU host to measure real NVML: its "this host as found" rows then
read the real GPUs, and a probe says whether a counter read costs CPU or only waits.

    python bench/sampler_cost.py              # about 2.5 minutes; records bench/RESULTS.md
    python bench/sampler_cost.py --window 5 --no-record
    python bench/sampler_cost.py --quiet-wait 2 --only "8 GPUs (fake H100, 3 ms"   # one row
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    EnvPatch,
    QuietGate,
    cuda_device,
    fake_nvml_module,
    md_table,
    powercap_tree,
    record,
    section,
)

from greentrack.engine.engine import IDLE_AFTER_S  # noqa: E402

#: past a tracker's fast first seconds (engine.FAST_HOLD_S) and, with no steps, the configured
#: slow cadence before the idle one (engine.IDLE_AFTER_S): the steady state
WARMUP_S = IDLE_AFTER_S + 1.0


class Meter:
    """CPU of the process, its main thread, one named thread and child processes, over a window."""

    def __init__(self, thread_name: str | None = None, exclude_pids: tuple[int, ...] = ()) -> None:
        import psutil
        self._proc = psutil.Process()
        self.thread_name = thread_name
        self.exclude = set(exclude_pids)

    def _thread_cpu(self) -> float | None:
        if self.thread_name is None:
            return None
        ids = {t.native_id for t in threading.enumerate() if t.name == self.thread_name}
        return sum(t.user_time + t.system_time for t in self._proc.threads() if t.id in ids) \
            if ids else None

    def _children_cpu(self) -> float:
        total = 0.0
        for child in self._proc.children(recursive=True):
            if child.pid in self.exclude:
                continue
            try:
                c = child.cpu_times()
                total += c.user + c.system
            except Exception:  # noqa: BLE001 - a child may exit meanwhile
                pass
        return total

    def snapshot(self) -> dict[str, float | None]:
        return {"wall": time.monotonic(), "process": time.process_time(),
                "main": time.thread_time(), "thread": self._thread_cpu(),
                "children": self._children_cpu()}

    @staticmethod
    def diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float | None]:
        wall = b["wall"] - a["wall"]
        out: dict[str, float | None] = {"wall": wall,
                                        "background": (b["process"] - a["process"]) - (b["main"] - a["main"]),
                                        "children": b["children"] - a["children"]}
        out["thread"] = (b["thread"] - a["thread"]) if a["thread"] is not None and \
            b["thread"] is not None else None
        return out


def hold(window_s: float, steps_per_s: float, submit: Callable[[float, float], None] | None) -> None:
    """Keep the main thread idle for ``window_s``, submitting a step window at the given rate."""
    end = time.monotonic() + window_s
    if not steps_per_s or submit is None:
        time.sleep(window_s)
        return
    period = 1.0 / steps_per_s
    t = time.monotonic()
    while t < end:
        time.sleep(max(0.0, t + period - time.monotonic()))
        now = time.monotonic()
        submit(t, now)
        t = now


@contextmanager
def pynvml_as(module: Any) -> Iterator[None]:
    """Make ``import pynvml`` return ``module`` (a fake) for the block; None: leave it alone."""
    if module is None:
        yield
        return
    saved = sys.modules.get("pynvml")
    sys.modules["pynvml"] = module
    try:
        yield
    finally:
        if saved is not None:
            sys.modules["pynvml"] = saved
        else:
            sys.modules.pop("pynvml", None)


# -- the trackers ------------------------------------------------------------------------------
def run_greentrack(window_s: float, nvml: Any, env: dict[str, str | None], steps_per_s: float,
                   prometheus: bool, exclude: tuple[int, ...]) -> dict[str, Any]:
    """One greentrack configuration; ``nvml`` None (this host's), or a fake module (its code's
    CPU is measured in place and returned as ``fake_cpu``)."""
    cost = FakeCost(nvml) if nvml is not None else None  # every module passed here is a fake
    from greentrack.store import StoreReader
    from greentrack.process.tracker import Tracker

    settings: dict[str, Any] = {"prometheus_port": 0} if prometheus else {}
    with tempfile.TemporaryDirectory(prefix="gt-sampler-") as d, EnvPatch(**env), pynvml_as(nvml):
        tracker = Tracker(d, **settings).start()
        assert tracker.engine is not None
        methods = sorted({st.channel.info.method for st in tracker.engine.states})
        time.sleep(WARMUP_S)
        meter = Meter("greentrack-sampler", exclude)
        polls0, cpu0 = tracker.engine.polls, tracker.engine.thread_cpu_s
        a = meter.snapshot()
        fake0 = cost.total if cost else 0.0
        hold(window_s, steps_per_s, lambda t0, t1: tracker.submit_window("train", t0, t1))
        b = meter.snapshot()
        fake_cpu = cost.total - fake0 if cost else None
        polls = tracker.engine.polls - polls0
        engine_cpu = tracker.engine.thread_cpu_s - cpu0
        tracker.stop()
        recorded = StoreReader(tracker.engine._writer.path).meta.get("sampler_cpu_s")
    out = Meter.diff(a, b)
    out.update(polls_per_s=polls / out["wall"], engine_cpu=engine_cpu, recorded_cpu_s=recorded,
               slow_s=tracker.engine.counter_interval_s,
               **({"fake_cpu": fake_cpu} if fake_cpu is not None else {}),
               methods=", ".join(methods), steps=tracker.engine.steps_done)
    return out


def run_codecarbon(window_s: float, exclude: tuple[int, ...]) -> dict[str, Any]:
    from codecarbon import OfflineEmissionsTracker

    tracker = OfflineEmissionsTracker(country_iso_code="FRA", save_to_file=False,
                                      log_level="error", allow_multiple_runs=True)
    tracker.start()
    time.sleep(WARMUP_S)
    meter = Meter(None, exclude)
    a = meter.snapshot()
    time.sleep(window_s)
    b = meter.snapshot()
    tracker.stop()
    out = Meter.diff(a, b)
    hw = [f"{type(h).__name__}:{getattr(h, '_mode', '') or ''}".rstrip(":")
          for h in getattr(tracker, "_hardware", [])]
    out.update(methods=", ".join(hw) + f"; measure every {tracker._measure_power_secs:g} s, "
               "power monitor every 1 s")
    return out


def run_zeus(window_s: float, rapl_dir: Path, exclude: tuple[int, ...]) -> dict[str, Any]:
    import zeus.device.cpu.rapl as zeus_rapl
    zeus_rapl.RAPL_DIR = str(rapl_dir)  # the fake tree, in the nested layout of real sysfs
    zeus_rapl.rapl_is_available.cache_clear()
    from zeus.monitor import ZeusMonitor

    monitor = ZeusMonitor(gpu_indices=[])
    monitor.begin_window("start", sync_execution=False)  # first read starts the helpers
    monitor.end_window("start", sync_execution=False)
    time.sleep(WARMUP_S + 2.0)  # a spawned helper re-imports Python and Zeus: not steady cost
    meter = Meter(None, exclude)
    a = meter.snapshot()
    time.sleep(window_s)
    b = meter.snapshot()
    out = Meter.diff(a, b)
    import psutil
    helpers = [c for c in psutil.Process().children(recursive=True) if c.pid not in exclude]
    pollers = sum("spawn_main" in " ".join(c.cmdline()) for c in helpers)
    rss = sum(c.memory_info().rss for c in helpers) / 2**20
    for cpu in getattr(monitor.cpus, "cpus", []):
        for f in (getattr(cpu, "rapl_file", None), getattr(cpu, "dram", None)):
            # Zeus 0.16 creates it lazily (`_wraparound_tracker`), 0.10.1 eagerly
            attrs = vars(f) if f is not None else {}
            tracker = attrs.get("_wraparound_tracker") or attrs.get("wraparound_tracker")
            if tracker is not None:
                tracker._stop()
    out.update(methods=f"RAPL read in the caller's thread per window; {pollers} spawned wrap-around "
               f"poller processes + {len(helpers) - pollers} multiprocessing helper, {rss:.0f} MB "
               "RSS in all; no GPU here")
    return out


def run_floor(window_s: float, period_s: float, exclude: tuple[int, ...]) -> dict[str, Any]:
    """The cost of waking up alone: a thread that waits on an Event with a timeout, as the
    sampler does, and does nothing else. On a VM a timed wake-up is not free."""
    stop = threading.Event()
    box: dict[str, float] = {}

    def idle() -> None:
        t0 = time.thread_time()
        while not stop.wait(period_s):
            box["cpu"] = time.thread_time() - t0

    th = threading.Thread(target=idle, name="floor", daemon=True)
    th.start()
    time.sleep(WARMUP_S)
    meter = Meter("floor", exclude)
    c0 = box.get("cpu", 0.0)
    a = meter.snapshot()
    time.sleep(window_s)
    b = meter.snapshot()
    c1 = box.get("cpu", 0.0)
    stop.set()
    th.join()
    out = Meter.diff(a, b)
    out.update(engine_cpu=c1 - c0, polls_per_s=1.0 / period_s,
               methods="no channels: `threading.Event().wait(0.05)` in a loop")
    return out


def probe_real_nvml(n: int = 40) -> str | None:
    """On a host with NVIDIA GPUs: wall and CPU time of one energy-counter read. If the ~3 ms is
    CPU (not waiting), the sampler's counter reads cost CPU in proportion to GPUs x reads/s."""
    try:
        import pynvml
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
    except Exception as e:  # noqa: BLE001 - no NVIDIA GPU here: say why
        return None if "Library" in str(e) or "Driver" in str(e) else f"NVML probe failed: {e}"
    walls, cpus = [], []
    for _ in range(n):
        w, c = time.perf_counter(), time.thread_time()
        pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
        cpus.append(time.thread_time() - c)
        walls.append(time.perf_counter() - w)
    walls.sort()
    cpus.sort()
    return (f"NVML energy-counter read on this host ({count} GPU(s)): median {walls[n // 2] * 1e3:.2f} ms "
            f"wall, {cpus[n // 2] * 1e3:.2f} ms CPU per call ({n} calls).")


class FakeCost:
    """CPU the fake NVML's own Python code takes, measured in place: every fake read is timed with
    ``time.thread_time()`` in the thread that makes it (the sampler's, with its cold caches), less
    the modelled driver spin (``counter_cpu_s``), which stands for the driver, not the fake. The
    two clock reads per call are counted in too (about 1 us each)."""

    def __init__(self, module: Any) -> None:
        self.total = 0.0
        for name in ("nvmlDeviceGetFieldValues", "nvmlDeviceGetTotalEnergyConsumption"):
            setattr(module, name, self._timed(getattr(module, name), name.endswith("Consumption")))

    def _timed(self, fn: Callable[..., Any], spins: bool) -> Callable[..., Any]:
        def timed(handle: Any, *args: Any) -> Any:
            c = time.thread_time()
            try:
                return fn(handle, *args)
            finally:
                self.total += time.thread_time() - c - (handle.counter_cpu_s if spins else 0.0)
        return timed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--window", type=float, default=12.0, help="seconds measured per configuration")
    ap.add_argument("--codecarbon-window", type=float, default=31.0,
                    help="codecarbon measures every 15 s: a window that covers two of them")
    ap.add_argument("--quiet-wait", type=float, default=5.0,
                    help="before each configuration, wait up to this long for other processes to idle")
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument("--only", metavar="TEXT", help="run only the configurations whose name contains "
                    "TEXT (e.g. '8 GPUs (fake H100, 3 ms'); implies --no-record")
    args = ap.parse_args()
    if args.only:
        args.no_record = True

    from tests.fakes.powercap import LiveCounters

    has_cuda, gpu = cuda_device()
    rows: list[list[str]] = []
    results: list[tuple[str, dict[str, Any]]] = []
    work = Path(tempfile.mkdtemp(prefix="gt-sampler-cost-"))
    tree = powercap_tree(work / "powercap")
    rapl_env = {"GREENTRACK_POWERCAP_ROOT": str(tree.root)}
    no_gpu, _ = fake_nvml_module(0)
    with LiveCounters(tree, {"intel-rapl:0": 50.0, "intel-rapl:0:1": 5.0}, period_s=0.02) as live:
        assert live.proc is not None
        exclude = (live.proc.pid,)
        W = args.window
        configs: list[tuple[str, Callable[[], dict[str, Any]], Any]] = [
            ("floor: an idle thread waking 20 times/s", lambda: run_floor(W, 0.05, exclude), None),
            ("greentrack, this host as found", lambda: run_greentrack(W, None, {}, 0, False, exclude), None),
            ("greentrack, RAPL (fake powercap), no GPU",
             lambda: run_greentrack(W, no_gpu, rapl_env, 0, False, exclude), None),
        ]
        for n in (1, 8):
            mod, fake = fake_nvml_module(n)
            configs.append((f"greentrack, {n} GPU{'s' if n > 1 else ''} (fake H100, 3 ms counter) + RAPL",
                            (lambda m=mod: run_greentrack(W, m, rapl_env, 0, False, exclude)), fake))
        modc, fakec = fake_nvml_module(8, counter_cost_s=0.0, counter_cpu_s=0.003)
        configs.append(("greentrack, 8 GPUs (fake H100, counter read spins 3 ms of CPU) + RAPL",
                        lambda: run_greentrack(W, modc, rapl_env, 0, False, exclude), fakec))
        mod0, fake0 = fake_nvml_module(8, counter_cost_s=0.0)
        configs.append(("greentrack, 8 GPUs (fake, counter read instantaneous) + RAPL",
                        lambda: run_greentrack(W, mod0, rapl_env, 0, False, exclude), fake0))
        mod8, fake8 = fake_nvml_module(8)
        configs.append(("greentrack, 8 GPUs + RAPL + 10 steps/s + Prometheus endpoint",
                        lambda: run_greentrack(W, mod8, rapl_env, 10, True, exclude), fake8))
        configs.append(("greentrack, RAPL, no GPU, 200 steps/s (5 ms CPU steps)",
                        lambda: run_greentrack(W, no_gpu, rapl_env, 200, False, exclude), None))
        configs.append(("codecarbon 3 (OfflineEmissionsTracker defaults), this host as found",
                        lambda: run_codecarbon(args.codecarbon_window, exclude), None))
        configs.append(("Zeus (ZeusMonitor), RAPL (fake powercap), no GPU",
                        lambda: run_zeus(W, tree.root / "intel-rapl", exclude), None))
        if args.only:
            configs = [c for c in configs if args.only in c[0]]
        gate = QuietGate(max_wait_s=args.quiet_wait)
        for name, fn, fake in configs:
            gate.wait()
            print(f"{name} ...", flush=True)
            try:
                r = fn()
            except Exception as e:  # noqa: BLE001 - one tool failing is a row, not a crash
                r = {"error": f"{type(e).__name__}: {e}"}
            if fake is None:
                r.pop("fake_cpu", None)  # no GPU: nothing of the fake ran
            results.append((name, r))
            rows.append(_row(name, r))
            print("  " + " | ".join(rows[-1][1:]), flush=True)

    shutil.rmtree(work, ignore_errors=True)
    headers = ["configuration", "sampler thread, % of a core", "all background threads, %",
               "helper processes, %", "of which inside the fake NVML, %", "polls/s",
               "slow cadence at the end, s", "methods"]
    probe = probe_real_nvml()
    table = md_table(headers, rows)
    print("\n" + table)
    check = [(n, r) for n, r in results if r.get("recorded_cpu_s") is not None]
    cross = "; ".join(f"{n.split(',', 1)[1].strip()}: {r['engine_cpu']:.3f} s by "
                      f"`time.thread_time()`, {r['thread']:.2f} s by psutil (10 ms ticks), "
                      f"{r['recorded_cpu_s']:.3f} s for the whole run in the store's meta"
                      for n, r in check if r.get("thread") is not None)
    if probe:
        print(probe)
    if args.no_record:
        return
    body = (f"Each row: one tracker alone, {W:g} s measured after a {WARMUP_S:g} s settle "
            f"(codecarbon: {args.codecarbon_window:g} s, to include its 15 s measurement; Zeus: "
            "after its helper processes finished starting). Main thread idle, or only submitting "
            "step windows. % of one core = CPU seconds / wall seconds. \"All background threads\" = "
            "process CPU minus the main thread's (includes codecarbon's per-tick Timer threads and "
            "greentrack's Prometheus thread). Fake NVML: the 3 ms counter read is a sleep (time "
            "waiting in the driver, not CPU), except in the row where it spins (CPU, as a driver "
            "that busy-waits would; which one a real H100 does is what the probe below measures "
            "there): greentrack then stretches its slow cadence to keep slow reads within 0.5% "
            "of a core, up to 1 s (\"slow cadence at the end\"). \"Inside the fake NVML\" is "
            "measured in place (each fake read timed in the sampler thread, cold caches and all): "
            "the fake's Python code and the kernel's cost of waking from its modelled 3 ms wait "
            "(on this VM a wake costs ~0.1-0.2 ms of CPU, which is why slow reads that only wait "
            "still nudge the slow cadence up); the modelled spin is left out. Subtract it to get "
            "greentrack's own cost; real NVML's Python binding does similar ctypes work per call, "
            "plus the driver's. "
            "(Real NVML field reads cost ~3 us on an H100 80GB HBM3, driver 580.159.04, 2026-11-22, binding included.) "
            + ("" if has_cuda else f"This host has {gpu}: GPU rows use the fake. ")
            + "Zeus reads GPU energy counters only inside `begin_window`/`end_window`, on the "
            "training thread (see the overhead table), so it has no GPU sampler thread to measure. "
            "codecarbon is not run on the fake GPUs: its NVML layer calls about ten NVML "
            "functions the fake does not model; its GPU cost is for the H100 run of this script.\n\n"
            f"{table}\n\n" + (f"{probe}\n\n" if probe else "") +
            "Sampler thread CPU is the engine's own `time.thread_time()` (what it records as "
            "`sampler_cpu_s`); cross-check over the same windows: " + cross + ".\n\n"
            f"Conditions: {gate.summary('configuration')}.\n")
    record("sampler_cost", section("sampler_cost",
                                   "Sampler cost at defaults, % of one core: sampler_cost.py",
                                   body, gpu if has_cuda else None))


def _row(name: str, r: dict[str, Any]) -> list[str]:
    if "error" in r:
        return [name, "failed", "", "", "", "", "", r["error"]]
    wall = r["wall"]

    def p(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x / wall:.2f}"

    return [name, p(r.get("engine_cpu")), p(r["background"]), p(r["children"]),
            p(r.get("fake_cpu")) if "fake_cpu" in r else "",
            f"{r['polls_per_s']:.1f}" if "polls_per_s" in r else "",
            f"{r['slow_s']:g}" if "slow_s" in r else "", r.get("methods", "")]


if __name__ == "__main__":
    main()
