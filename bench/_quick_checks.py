"""The checks of ``bench/gpu_checks.sh --quick``, each run in its own process by
``bench/gpu_quick.py`` (which owns the goals, the time limits and the summary).

Every check measures on a :class:`Device`: the real GPU 0 (torch on ``cuda:0``, the real NVML), or,
with ``--fake``, the test suite's fake NVML H100 (``tests/fakes``) whose power a :class:`LiveTrace`
follows as the "GPU work" is played on the host, so the same pipeline runs in CI without a GPU.
The measuring code is the full benchmarks' (``nvml_probe``, ``gpu_bursty``, ``overhead_compare``,
``sampler_cost``), called with shorter settings; a check reports each figure as soon as it has it
(:class:`Rows`), so a check stopped at its time limit keeps what it measured.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402

HEAVY_W, LIGHT_W, IDLE_W = 700.0, 250.0, 80.0  # the fake GPU's power while "busy", "light", idle
# The fake plays step sizes at this fraction of their nominal time: on CPU the pipeline, not the
# figure, is what is being checked.
FAKE_STEP_SCALE = 0.25


class Rows:
    """The figures of one check, written to ``path`` (JSON) after each one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: dict[str, dict[str, Any]] = {}

    def add(self, name: str, figure: float | None, **info: Any) -> None:
        self.rows[name] = {"figure": figure, **info}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.rows, indent=1), encoding="utf-8")
        os.replace(tmp, self.path)
        shown = "n/a" if figure is None else f"{figure:.4g}"
        print(f"-- {name}: {shown} {info.get('detail', '')}", flush=True)


# -- the device ---------------------------------------------------------------------------------
class Device:
    """GPU 0 as the checks use it: its NVML module and handle, and work to run on it."""

    fake = False
    timeline = "cuda"  # where training steps are marked (StepMarks device)

    def __init__(self) -> None:
        import pynvml
        pynvml.nvmlInit()
        self.nv, self.handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        self._a: Any = None  # the CUDA context is made on first use: the shared-GPU check's
        # parent must hold none (NVML would list it as a third process on the GPU)

    def busy(self, seconds: float) -> None:
        """Keep the GPU busy for ``seconds`` of wall time (as gpu_bursty does)."""
        import torch
        if self._a is None:
            self._a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self._a @ self._a
            torch.cuda.synchronize()

    def clock(self) -> float:
        return time.perf_counter()

    def bursts(self, stop: threading.Event) -> str:
        """Uneven bursts until ``stop``, so the power changes at every refresh (the probe's)."""
        from nvml_probe import _load
        return _load(stop)

    def kinds(self, step_s: float) -> tuple[Callable[[], None], Callable[[], None]]:
        from _workloads import gpu_kinds
        return gpu_kinds(step_s)

    def workload(self, target_ms: float) -> Any:
        from _workloads import gpu_workload
        return gpu_workload(target_ms)

    def scaled(self, seconds: float) -> float:
        return seconds


class FakeDevice(Device):
    """The fake NVML H100 (3 ms counter reads, modelled as waiting), installed as ``pynvml``, with
    power set by the work played here: ``busy`` draws HEAVY_W for its duration, then idles."""

    fake = True
    timeline = "cpu"

    def __init__(self) -> None:
        from tests.fakes.fake_pynvml import LiveTrace

        self.nv, fake = c.fake_nvml_module(1, counter_cost_s=0.003, idle_w=IDLE_W)
        self.trace = LiveTrace(idle_w=IDLE_W)
        fake.gpus[0].trace = self.trace
        sys.modules["pynvml"] = self.nv  # before greentrack imports it
        self.nv.nvmlInit()
        self.handle = self.nv.nvmlDeviceGetHandleByIndex(0)

    def clock(self) -> float:
        return time.monotonic()  # the fake refreshes on time.monotonic: read on the same clock

    def draw(self, watts: float, seconds: float) -> None:
        self.trace.set(watts)
        time.sleep(seconds)
        self.trace.set(IDLE_W)

    def busy(self, seconds: float) -> None:
        self.draw(HEAVY_W, seconds)

    def bursts(self, stop: threading.Event) -> str:
        while not stop.is_set():  # nvml_probe's 37 ms on / 23 ms off
            self.busy(0.037)
            time.sleep(0.023)
        return "fake: 700 W for 37 ms / 80 W for 23 ms"

    def kinds(self, step_s: float) -> tuple[Callable[[], None], Callable[[], None]]:
        return (lambda: self.draw(HEAVY_W, step_s)), (lambda: self.draw(LIGHT_W, step_s))

    def workload(self, target_ms: float) -> Any:
        from _workloads import gpu_workload
        return gpu_workload(target_ms, on_cpu=True)

    def scaled(self, seconds: float) -> float:
        return seconds * FAKE_STEP_SCALE


def open_device(fake: bool) -> Device:
    return FakeDevice() if fake else Device()


# -- the checks ----------------------------------------------------------------------------------
def check_nvml_probe(dev: Device, rows: Rows) -> None:
    """Counter refresh phase against the power sensor's, and what a counter read costs."""
    from nvml_probe import sample, summarize

    stop = threading.Event()
    load: list[str] = []
    loader = threading.Thread(target=lambda: load.append(dev.bursts(stop)), daemon=True)
    loader.start()
    time.sleep(0.3 if dev.fake else 1.0)  # let the load settle
    s = summarize(sample(dev.nv, dev.handle, 2.0 if dev.fake else 8.0, clock=dev.clock))
    stop.set()
    loader.join(5.0)
    bracket = s["bracket_ms"] or 0.0
    rows.add("counter_phase", s["offset_ms"], limit=max(5.0, bracket), same_tick=s["same_tick"],
             detail=f"periods: power {s['power_period_ms'] or 0:.1f} ms, counter "
                    f"{s['counter_period_ms'] or 0:.1f} ms; refreshes dated to +-{bracket / 2:.1f} ms; "
                    f"load: {load[0] if load else 'still starting'}")
    wall, cpu = s["counter_wall_ms"], s["counter_cpu_ms"]
    rows.add("counter_read_wall", wall[0], detail=f"p99 {wall[1]:.2f} ms")
    rows.add("counter_read_cpu", cpu[0],
             detail=("SPINS (CPU ~ wall): the slow-read budget stretches the cadence"
                     if s["counter_read_spins"] else "waits (little CPU)") + f"; p99 {cpu[1]:.3f} ms")


def _counter(dev: Device) -> Callable[[], tuple[float, float]]:
    def read() -> tuple[float, float]:
        t0 = time.monotonic()
        mj = dev.nv.nvmlDeviceGetTotalEnergyConsumption(dev.handle)
        return (t0 + time.monotonic()) / 2, mj / 1000.0
    return read


def _refresh(read: Callable[[], tuple[float, float]]) -> tuple[float, float]:
    """The next counter refresh: (when the value changed, to within one read; joules). Dated so,
    a counter reading stands for an exactly known moment, not for "some time in the last 100 ms"."""
    _, first = read()
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        t, j = read()
        if j != first:
            return t, j
    return t, j  # no refresh in 0.5 s: the reference will show it


def isolated_windows(dev: Device, width: float, n: int) -> dict[str, float]:
    """``n`` busy windows of ``width`` s, each alone between idle gaps: the reference is the
    counter between refreshes dated in the gaps before and after, less the idle power (measured
    the same way) over the gaps. Unlike reads at the window edges, it is not quantized to the
    counter's 100 ms refresh. Returns greentrack's energy-weighted error against it."""
    import greentrack
    from greentrack.store import StoreReader, store_paths

    read = _counter(dev)
    run = Path(tempfile.mkdtemp(prefix="gt-quick-iso-")) / "run"
    refs = []
    with greentrack.Tracker(run, gpus=(0,)) as tracker:
        time.sleep(0.5)
        (ta, ja) = _refresh(read)
        time.sleep(1.0)
        (tb, jb) = _refresh(read)
        idle_w = (jb - ja) / (tb - ta)
        for _ in range(n):
            a = _refresh(read)
            time.sleep(0.15)
            t0 = time.monotonic()
            dev.busy(width)
            t1 = time.monotonic()
            time.sleep(0.15)
            b = _refresh(read)
            tracker.submit_window("iso", t0, t1)
            refs.append((b[1] - a[1]) - idle_w * ((b[0] - a[0]) - (t1 - t0)))
        time.sleep(0.3)
    gots = [r["gpu_j"] or 0.0 for r in StoreReader(store_paths(run)[0]).steps()]
    return {"mae": sum(abs(g - r) for g, r in zip(gots, refs)) / sum(refs),
            "ref": sum(refs), "got": sum(gots), "n": len(refs), "idle_w": idle_w}


def check_totals_windows(dev: Device, rows: Rows) -> None:
    """gpu_bursty's trace (shortened for the fake): the run's total against the counter; then
    200 / 500 ms windows against isolated references."""
    from gpu_bursty import play, plan

    steps = plan(1, 4, 6, 4) if dev.fake else plan()
    run_dir = Path(tempfile.mkdtemp(prefix="gt-quick-")) / "run"
    r = play(run_dir, dev.busy, _counter(dev), steps)
    from greentrack.store import StoreReader, store_paths
    details = next(ch["details"] for ch in StoreReader(store_paths(run_dir)[0]).channels()
                   if ch["kind"] == "gpu")
    rows.add("dating_error", details.get("dating_error_ms"),
             detail=f"the widest a counter value was from its refresh, as the sampler bracketed it; "
                    f"{details.get('deferred_reads')} read(s) left over (a refresh could fall inside)")
    gaps_s, idle_w = r["run_gaps"]
    for name, (ref, got) in (("total_vs_counter", r["run"]), ("long_window", r["total"])):
        rows.add(name, (got / ref - 1) * 100, detail=f"counter {ref:.1f} J, greentrack {got:.1f} J"
                 + (f"; {gaps_s:.2f} s of start-up and shutdown outside the run taken out at "
                    f"{idle_w:.0f} W idle" if name == "total_vs_counter" else ""))
    for kind in ("1s", "500ms", "200ms", "burst"):
        w = r[kind]
        rows.add(f"edges_{kind}", w["mae"] * 100,
                 detail=f"n={w['n']}, counter {w['ref']:.1f} J, greentrack {w['got']:.1f} J, "
                        f"p95 per window {w['p95'] * 100:.1f}%")
    for width, n in ((0.5, 4 if dev.fake else 8), (0.2, 4 if dev.fake else 10)):
        iso = isolated_windows(dev, width, n)
        rows.add(f"windows_{width * 1000:.0f}ms", iso["mae"] * 100,
                 detail=f"n={iso['n']}, reference {iso['ref']:.1f} J, greentrack "
                        f"{iso['got']:.1f} J; idle {iso['idle_w']:.0f} W taken out of the gaps")


def _mixed_run(dev: Device, run_dir: Path, kinds: list[str],
               fns: dict[str, Callable[[], None]]) -> dict[str, float]:
    """Mean joules per kind of step (the first two skipped: clocks ramp up), as
    tests/test_stepmarks.py::test_gpu_mixed_steps_match_each_kind_alone measures them."""
    import greentrack
    from greentrack.store import StoreReader, store_paths
    from greentrack.training.meter import TrainingMeter

    tracker = greentrack.Tracker(run_dir, interval_s=0.01, counter_interval_s=0.1,
                                 host_energy=False).start()
    meter = TrainingMeter(tracker, device=dev.timeline, progress_every_s=None)
    for kind in kinds:
        meter.begin("train")
        fns[kind]()
        meter.end(kind=kind)
    meter.close()
    out: dict[str, list[float]] = {}
    for r in StoreReader(store_paths(run_dir)[0]).steps()[2:]:
        out.setdefault(json.loads(r["extra"])["kind"], []).append(r["gpu_j"])
    return {k: sum(v) / len(v) for k, v in out.items()}


def check_mixed_steps(dev: Device, rows: Rows) -> None:
    """Heavy and light ~200 ms steps: each kind's mean joules, interleaved at random, against
    the same kind alone."""
    import random

    heavy, light = dev.kinds(0.2)
    fns = {"heavy": heavy, "light": light}
    n_alone, n_mixed = (5, 12) if dev.fake else (14, 40)
    work = Path(tempfile.mkdtemp(prefix="gt-quick-mixed-"))
    alone = {**_mixed_run(dev, work / "heavy", ["heavy"] * n_alone, fns),
             **_mixed_run(dev, work / "light", ["light"] * n_alone, fns)}
    rng = random.Random(1)
    mixed = _mixed_run(dev, work / "mixed", [rng.choice(["heavy", "light"]) for _ in range(n_mixed)],
                       fns)
    for kind in ("heavy", "light"):
        got = mixed.get(kind)
        rows.add(f"mixed_{kind}", None if got is None else (got / alone[kind] - 1) * 100,
                 detail=f"alone {alone[kind]:.2f} J/step, mixed "
                        + ("none drawn" if got is None else f"{got:.2f} J/step")
                        + f"; heavy/light alone {alone['heavy'] / alone['light']:.2f}x")


class _NoGate:
    """QuietGate's interface without its half-second waits (the fake run is a logic check)."""

    def wait(self) -> float:
        return 0.0

    def summary(self, unit: str = "round") -> str:
        return "not gated (fake run)"


def _stats(ratios: list[float]) -> dict[str, float]:
    return {"median": c.median(ratios) * 100, "p25": c.quantile(ratios, 0.25) * 100,
            "p75": c.quantile(ratios, 0.75) * 100}


def check_overhead(dev: Device, rows: Rows) -> None:
    """overhead_compare's GPU part, shortened: 10/50/200 ms steps, greentrack and the A/A control
    (and codecarbon, Zeus where installed) interleaved with untracked blocks."""
    import logging

    from overhead_compare import GREENTRACK_GPU, gpu_variants, interleave

    logging.getLogger("codecarbon").setLevel(logging.ERROR)
    rounds = 2 if dev.fake else 3
    for nominal in (10, 50, 200):
        work = dev.workload(dev.scaled(nominal))
        variants, missing = gpu_variants(work, on_cpu=dev.fake)
        for tool in missing:  # codecarbon has two rows: around the block, and task mode
            for row in ((tool, "codecarbon_task") if tool == "codecarbon" else (tool,)):
                rows.add(f"overhead_{nominal}ms_{row}", None, skipped=f"{tool} not installed")
        if dev.fake and nominal != 200 and "codecarbon" not in missing:
            # the fake run checks the pipeline: codecarbon's blocks (seconds each to start its
            # tracker) are timed at one width; on a GPU at every width
            variants = [v for v in variants if "codecarbon" not in v.name.lower()]
            for row in ("codecarbon", "codecarbon_task"):
                rows.add(f"overhead_{nominal}ms_{row}", None,
                         skipped="fake run: codecarbon is timed at 200 ms only")
        blocks_per_round = 2 * len(variants) - 1
        block_s = dev.scaled(5.0 / blocks_per_round)  # ~1 s blocks with greentrack alone
        # steps from the time a step took when sized: a loaded host's slower steps must not
        # stretch the blocks past the check's limit
        step_s = max(dev.scaled(nominal) / 1000, work.step_s)
        steps = max(6, round(block_s / step_s))
        for v in variants:
            v.prepare()
        gate = _NoGate() if dev.fake else c.QuietGate(max_wait_s=1.0)
        _, ratios = interleave(work, variants, rounds, steps, gate)  # type: ignore[arg-type]
        aa = _stats(ratios["no tracker (A/A control)"]["median"])
        noise = max(abs(aa["median"]), (aa["p75"] - aa["p25"]) / 2)
        what = f"{work.describe}; {steps} steps/block, {rounds} rounds"
        for v in variants[1:]:
            st = _stats(ratios[v.name]["median"])
            name = (f"overhead_{nominal}ms" if v.name == GREENTRACK_GPU else
                    f"overhead_{nominal}ms_aa" if v.name.endswith("(A/A control)") else
                    f"overhead_{nominal}ms_" + ("zeus" if v.name.startswith("Zeus") else
                                               "codecarbon_task" if "task" in v.name else
                                               "codecarbon"))
            rows.add(name, st["median"], noise=noise,
                     detail=f"IQR {st['p25']:+.2f}% .. {st['p75']:+.2f}%; A/A noise floor "
                            f"{noise:.2f}%; {what}")


def check_sampler_cpu(dev: Device, rows: Rows) -> None:
    """sampler_cost's greentrack row on this host's NVML, one GPU: the sampler thread's CPU."""
    from sampler_cost import run_greentrack

    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or "0"
    window = 3.0 if dev.fake else 15.0
    r = run_greentrack(window, dev.nv if dev.fake else None, {"CUDA_VISIBLE_DEVICES": visible},
                       0, False, ())
    own = r["engine_cpu"] - r.get("fake_cpu", 0.0)  # the fake's own Python is not greentrack's
    rows.add("sampler_cpu", own / r["wall"] * 100,
             detail=f"{r['polls_per_s']:.1f} polls/s, slow cadence {r['slow_s']:g} s, "
                    f"{r['methods']}; over {r['wall']:.0f} s"
                    + (f"; the fake NVML's own code left out ({r['fake_cpu'] / r['wall'] * 100:.2f}%)"
                       if "fake_cpu" in r else ""))


def check_nvml_readonly(dev: Device, rows: Rows) -> None:
    """The power limit and its constraints, MIG mode, the instant-power read: read, never set."""
    from _quick_readonly import check
    check(dev, rows)


def check_gpu_share(dev: Device, rows: Rows) -> None:
    """Two CUDA processes on the GPU, each with its tracker: the split against the counter."""
    from _quick_share import check
    check(dev, rows)


CHECKS: dict[str, Callable[[Device, Rows], None]] = {
    "nvml_probe": check_nvml_probe,
    "nvml_readonly": check_nvml_readonly,
    "totals_windows": check_totals_windows,
    "mixed_steps": check_mixed_steps,
    "gpu_share": check_gpu_share,
    "overhead": check_overhead,
    "sampler_cpu": check_sampler_cpu,
}


#: Exit status of a check whose Python module is missing: its goals are skipped, not errors.
MISSING_MODULE = 3


def run(name: str, rows_path: Path, fake: bool) -> int:
    """One check in this process: open the device, measure, write the figures. A module that is
    not installed here (torch, nvidia-ml-py, psutil...) ends the check with MISSING_MODULE and a
    last line naming it; figures reported before are kept."""
    rows = Rows(rows_path)
    try:
        dev = open_device(fake)  # the fake's pynvml must be in place before greentrack loads
        from _quick_readonly import guard
        guard(dev.nv)  # no check changes the GPU's power limit, whatever it calls
        print(f"greentrack: {c.ensure_integrations()}", flush=True)
        CHECKS[name](dev, rows)
    except ModuleNotFoundError as e:
        print(f"{e.name or e} is not installed", flush=True)
        return MISSING_MODULE
    return 0
