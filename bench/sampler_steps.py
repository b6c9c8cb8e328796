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
    python bench/sampler_steps.py --baseline DIR [--pairs 7]   # against a checkout of an earlier commit
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import subprocess
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
    p.add_argument("--baseline", type=Path, metavar="DIR",
                   help="a checkout of an earlier commit (git worktree add DIR REV): run its own "
                        "copy of this bench and this one alternately, and compare")
    p.add_argument("--pairs", type=int, default=7, help="with --baseline: alternations")
    args = p.parse_args()
    if args.baseline is not None:
        return compare(args)
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


_PER_STEP = re.compile(r"costs \*\*([\d.]+) us per step\*\* and ([\d.]+)% of a core")
_BUSY = re.compile(r"^\| busy \| (\d+) \| ([\d.]+) us \| [\d.]+% \| ([\d.]+) \|", re.M)


def _one(root: Path) -> dict[str, float]:
    """One run (``--repeat 1``) of ``root``'s copy of this bench, in a process of its own that
    imports ``root``'s greentrack: its figures, read from what it prints."""
    out = subprocess.run([sys.executable, str(root / "bench" / "sampler_steps.py"), "--no-record",
                          "--repeat", "1"], cwd=root, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(root)}).stdout
    step, busy = _PER_STEP.search(out), _BUSY.search(out)
    if step is None or busy is None:
        raise SystemExit(f"unexpected output from {root}: {out[-500:]}")
    return {"per_step": float(step.group(1)), "cadence": float(step.group(2)),
            "busy_rate": float(busy.group(1)), "busy_cpu": float(busy.group(2)),
            "busy_waits": float(busy.group(3))}


def compare(args: argparse.Namespace) -> int:
    """This code against ``--baseline``, alternating (A B, then B A, ...) so the VM's drift falls on
    both: on a noisy VM one run of each tells nothing smaller than the drift between them."""
    here, base = Path(__file__).resolve().parents[1], args.baseline.resolve()
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=base, capture_output=True,
                         text=True).stdout.strip() or str(base)
    got: dict[str, list[dict[str, float]]] = {"base": [], "here": []}
    for k in range(args.pairs):
        for who in (("base", "here") if k % 2 == 0 else ("here", "base")):
            got[who].append(_one(base if who == "base" else here))
    names = {"per_step": "sampler CPU per resolved step (us)",
             "cadence": "fast cadence, % of a core",
             "busy_cpu": "sampler CPU per step beside a GIL-holding 1.8 ms loop (us)",
             "busy_waits": "training thread's waits for the GIL per step",
             "busy_rate": "that loop's steps per second (higher is better)"}
    rows = []
    for key, name in names.items():
        b, h = [r[key] for r in got["base"]], [r[key] for r in got["here"]]
        better = sum((x > y) if key != "busy_rate" else (x < y) for x, y in zip(b, h))
        rows.append([name, f"{median(b):g} ({min(b):g}-{max(b):g})",
                     f"{median(h):g} ({min(h):g}-{max(h):g})",
                     f"{median(h) / median(b) - 1:+.1%}", f"{better} of {args.pairs}"])
    body = (md_table(["figure (median, range)", f"baseline {rev}", "this code", "change",
                      "pairs where this code is better"], rows) +
            f"\n\n{args.pairs} pairs of one run each (3,000 steps; 300 at 10 ms), the two "
            "alternating; run with `--baseline DIR` (a `git worktree` of the earlier commit).")
    print(body)
    if not args.no_record:
        record("sampler_steps_ab", section(
            "sampler_steps_ab", f"The sampler thread's cost per step against {rev} "
            "(`bench/sampler_steps.py --baseline`)", body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
