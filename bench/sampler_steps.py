"""The sampler thread's cost per attributed step, beside a training thread that holds the GIL.

Every step is resolved on the sampler thread (each channel's joules, a row, the store). With
CPython's one GIL, that thread's Python time is time a Python-bound training loop (Lightning's
~1 ms steps) waits; and each time the thread takes the GIL back (after a SQLite statement, a
read, a sleep) the training thread is asked to let go. Issue 25: a commit of 500 step rows, one
statement each, kept the sampler thread in one flush for up to 0.8 s beside such a loop.

Workloads (a :class:`greentrack.Tracker` on the fake H100 and RAPL tree the step bench uses):

* ``busy``: ``with tracker.step(samples=256)`` around a 1.8 ms busy loop (holds the GIL);
* ``sleep 0.5 ms`` / ``sleep 10 ms``: around a sleep (the GIL free): the sampler's CPU at two step
  rates, whose difference is its cost per step and whose rest is the fast cadence's.

Printed per workload: steps a second, the sampler thread's CPU per step and as % of a core, the
training thread's voluntary context switches per step (waits for the GIL), the longest commit.

    python bench/sampler_steps.py [--steps 3000] [--no-record]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (EnvPatch, fake_nvml_module, md_table, median,  # noqa: E402
                     powercap_tree, record, section)


def _switches() -> int:
    tid = threading.get_native_id()
    with open(f"/proc/self/task/{tid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches"):
                return int(line.split(":")[1])
    return 0


def workload(kind: str, steps: int, env: dict[str, Any]) -> dict[str, float]:
    from greentrack import Tracker
    from greentrack.store import writer

    commits: list[float] = []
    flush = writer.StoreWriter.flush

    def timed_flush(self: Any) -> None:
        t = time.perf_counter()
        try:
            flush(self)
        finally:
            commits.append(time.perf_counter() - t)

    writer.StoreWriter.flush = timed_flush  # type: ignore[method-assign]
    run_dir = tempfile.mkdtemp(prefix="gt-sampler-steps-")
    try:
        with EnvPatch(**env):
            tracker = Tracker(run_dir).start()
        sampler = next(t for t in threading.enumerate() if t.name == "greentrack-sampler")
        clock = time.pthread_getcpuclockid(sampler.ident or 0)
        step_s = {"busy": 0.0018, "sleep 0.5 ms": 0.0005, "sleep 10 ms": 0.010}[kind]
        n = steps if step_s < 0.005 else max(200, steps // 10)
        commits.clear()
        c0, s0, w0 = time.clock_gettime(clock), _switches(), time.perf_counter()
        for _ in range(n):
            with tracker.step(samples=256):
                if kind == "busy":
                    end = time.perf_counter() + step_s
                    while time.perf_counter() < end:
                        pass
                else:
                    time.sleep(step_s)
        wall = time.perf_counter() - w0
        cpu, switches = time.clock_gettime(clock) - c0, _switches() - s0
        longest = max(commits, default=0.0)
        tracker.stop()
    finally:
        writer.StoreWriter.flush = flush  # type: ignore[method-assign]
        shutil.rmtree(run_dir, ignore_errors=True)
    return {"rate": n / wall, "cpu_us": cpu / n * 1e6, "core": cpu / wall * 100,
            "switches": switches / n, "commit_ms": longest * 1e3}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args()
    logging.getLogger("greentrack").setLevel(logging.ERROR)
    work = Path(tempfile.mkdtemp(prefix="gt-sampler-steps-hw-"))
    tree = powercap_tree(work / "powercap")
    nvml, _ = fake_nvml_module(1)
    sys.modules["pynvml"] = nvml
    env = {"GREENTRACK_POWERCAP_ROOT": str(tree.root), "CUDA_VISIBLE_DEVICES": None}
    rows = []
    found: dict[str, dict[str, float]] = {}
    for kind in ("busy", "sleep 0.5 ms", "sleep 10 ms"):
        runs = [workload(kind, args.steps, env) for _ in range(args.repeat)]
        found[kind] = {k: median([r[k] for r in runs]) for k in runs[0]}
        f = found[kind]
        rows.append([kind, f"{f['rate']:.0f}", f"{f['cpu_us']:.1f} us", f"{f['core']:.2f}%",
                     f"{f['switches']:.3f}", f"{f['commit_ms']:.0f} ms"])
    fast, slow = found["sleep 0.5 ms"], found["sleep 10 ms"]
    per_step = (fast["core"] - slow["core"]) / 100 / (fast["rate"] - slow["rate"]) * 1e6
    fixed = slow["core"] - per_step * slow["rate"] / 1e4
    del sys.modules["pynvml"]
    shutil.rmtree(work, ignore_errors=True)
    body = (md_table(["steps", "steps/s", "sampler CPU per step", "sampler, % of a core",
                      "training thread's waits per step", "longest commit"], rows) +
            f"\n\nMedians of {args.repeat} runs of {args.steps} steps ({max(200, args.steps // 10)}"
            " at 10 ms). From the two sleeping rates: the sampler thread costs "
            f"**{per_step:.1f} us per step** and {fixed:.2f}% of a core for its fast cadence "
            "(1 fake H100 + RAPL package and DRAM, polled every 50 ms while short steps run). "
            "A training thread that holds the GIL waits for that Python time; the commit is "
            "multi-row (`store/writer.py`), so it is a few GIL hand-overs a second, not one per "
            "row.")
    print(body)
    if not args.no_record:
        record("sampler_steps", section(
            "sampler_steps", "The sampler thread's cost per step (`bench/sampler_steps.py`)", body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
