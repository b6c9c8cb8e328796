"""What the sampler thread costs a Python-bound training loop, and what a sampler in another
process would: the evidence for where issue 25's ~1 ms Lightning row goes.

A training step that is interpreter work (Lightning's ~1 ms steps are mostly its own Python) holds
CPython's one GIL; the sampler thread's Python (polls, step resolution, the store's commit) runs
only when the training thread lets go. ``bench/sampler_steps.py`` measures that thread's CPU; this
bench measures what the *training loop* loses, in interleaved blocks on the fake H100 and RAPL tree
the step bench uses (no Trainer: a fresh Lightning ``Trainer`` per block varies by several percent
on its own, which hides effects of this size):

* ``untracked`` and ``untracked again``: the A/A control;
* ``tracked``: a :class:`greentrack.Tracker`, ``with tracker.step(samples=32)`` around each step;
* ``tracked, sampler parked`` (a diagnostic, not a mode): the same, with the sampler thread
  sleeping until ``stop()`` (the steps are resolved there): the hooks alone, i.e. the floor of any
  design that keeps the sampler's Python out of the training process;
* ``parked + a tracker process beside it``: that, plus another process running a tracker on the
  same fake devices that resolves as many steps a second: the load an out-of-process sampler would
  put on the host, on the other core;
* ``tracked, a host of estimates``: tracked where no counter can be read (no RAPL, no GPU: CPU
  and DRAM estimated), the default of a CPU-only machine or a container without powercap; the
  sampler polls on the slow cadence only.

    python bench/sampler_interference.py [--rounds 16] [--steps 1000] [--no-record]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (EnvPatch, QuietGate, band_verdict, fake_nvml_module, md_table,  # noqa: E402
                     median, powercap_tree, quantile, record, sampler_parked, section,
                     tracker_beside, voluntary_switches)

STEP_S = 0.0018  # an untracked step, once sized: Lightning's ~1 ms rows run 1.8-2.1 ms here
ESTIMATES = "tracked, a host of estimates (no RAPL, no GPU)"
VARIANTS = ("untracked", "untracked again", "tracked", "tracked, sampler parked",
            "parked + a tracker process beside it", ESTIMATES)
_DATA = list(range(64))


def python_step(n: int) -> int:
    """Interpreter work, holding the GIL throughout (``n`` iterations)."""
    s, data = 0, _DATA
    for i in range(n):
        s += data[i & 63] * 3 ^ i
    return s


def size_step() -> int:
    """Iterations for an untracked step of about :data:`STEP_S`."""
    n = 2000
    for _ in range(30):
        t = time.perf_counter()
        for _ in range(50):
            python_step(n)
        took = (time.perf_counter() - t) / 50
        if abs(took / STEP_S - 1) < 0.03:
            break
        n = max(1, int(n * STEP_S / took))
    return n


def block(variant: str, steps: int, n: int, env: dict[str, Any], work: Path
          ) -> tuple[float, float, float, float]:
    """One block: wall and training-thread CPU per step, the sampler thread's CPU as a share of a
    core (0 where none runs), and the training thread's waits for the GIL a second."""
    from greentrack import Tracker

    tracker = None
    with ExitStack() as stack:
        if variant.startswith("parked +"):
            stack.enter_context(tracker_beside(STEP_S))
        if "parked" in variant:
            stack.enter_context(sampler_parked())
        if variant == ESTIMATES:
            env = {"GREENTRACK_POWERCAP_ROOT": str(work / "no-powercap"), "CUDA_VISIBLE_DEVICES": ""}
        if variant.startswith(("tracked", "parked")):
            with EnvPatch(**env):
                tracker = Tracker(str(work / f"run-{time.monotonic_ns()}")).start()
            stack.callback(tracker.stop)
            time.sleep(0.3)  # past the start-up reads
        sampler = next((t for t in threading.enumerate() if t.name == "greentrack-sampler"), None)
        clock = time.pthread_getcpuclockid(sampler.ident) if sampler and sampler.ident else None
        s0 = time.clock_gettime(clock) if clock is not None else 0.0
        t0, c0, w0 = time.perf_counter(), time.thread_time(), voluntary_switches()
        if tracker is None:
            for _ in range(steps):
                python_step(n)
        else:
            for _ in range(steps):
                with tracker.step(samples=32):
                    python_step(n)
        wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
        waits = voluntary_switches() - w0
        sampler_cpu = (time.clock_gettime(clock) - s0) if clock is not None else 0.0
    return wall / steps, cpu / steps, sampler_cpu / wall, waits / wall


def beside(step_s: float, env: dict[str, Any], work: Path) -> None:
    """The tracker process of :func:`_common.tracker_beside`: a step every ``step_s`` (a sleep)
    until its stdin closes."""
    from greentrack import Tracker

    with EnvPatch(**env):
        tracker = Tracker(str(work / "beside")).start()
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    print("ready", flush=True)
    while not done.is_set():
        with tracker.step(samples=32):
            time.sleep(step_s)
    tracker.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=16)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--no-record", action="store_true")
    p.add_argument("--beside", type=float, metavar="STEP_S", help=argparse.SUPPRESS)
    args = p.parse_args()
    logging.getLogger("greentrack").setLevel(logging.ERROR)
    os.environ["GREENTRACK_PROGRESS"] = "0"
    work = Path(tempfile.mkdtemp(prefix="gt-interference-"))
    tree = powercap_tree(work / "powercap")
    nvml, _ = fake_nvml_module(1)
    sys.modules["pynvml"] = nvml
    env = {"GREENTRACK_POWERCAP_ROOT": str(tree.root), "CUDA_VISIBLE_DEVICES": None}
    try:
        if args.beside is not None:
            beside(args.beside, env, work)
            return 0
        return measure(args, env, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(args: argparse.Namespace, env: dict[str, Any], work: Path) -> int:
    n = size_step()
    gate = QuietGate()
    got: dict[str, list[tuple[float, float, float, float]]] = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        gate.wait()
        # each round's untracked block first, the others in a turning order over the rounds
        rest = list(VARIANTS[1:])
        k = r % len(rest)
        order = rest[k:] + rest[:k]
        for variant in ["untracked"] + (order if r % 2 == 0 else order[::-1]):
            got[variant].append(block(variant, args.steps, n, env, work))
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
    base = got["untracked"]
    over = {v: [a[0] / b[0] - 1 for a, b in zip(got[v], base)] for v in VARIANTS}
    band = (quantile(over["untracked again"], 0.25), quantile(over["untracked again"], 0.75))
    rows = []
    for variant in VARIANTS:
        wall = over[variant]
        cpu = [a[1] / b[1] - 1 for a, b in zip(got[variant], base)]
        core = median([x[2] for x in got[variant]])
        mine = variant not in ("untracked", "untracked again")
        rows.append([variant, f"{median([x[0] for x in got[variant]]) * 1e3:.3f}",
                     f"{median(wall):+.2%}" if variant != "untracked" else "-",
                     f"{quantile(wall, 0.25):+.2%} .. {quantile(wall, 0.75):+.2%}"
                     if variant != "untracked" else "-",
                     f"{median(cpu):+.2%}" if variant != "untracked" else "-",
                     f"{core:.2%}" if core else "-",
                     f"{median([x[3] for x in got[variant]]):.0f}",
                     band_verdict(median(wall), band) if mine else "-"])
    sampler = median(over["tracked"]) - median(over["tracked, sampler parked"])
    own = median([x[2] for x in got["tracked"]])
    body = (md_table(["loop", "ms/step", "overhead (median)", "p25 .. p75",
                      "training-thread CPU/step", "sampler thread, % of a core",
                      "training thread's waits for the GIL a second", "within the A/A band"],
                     rows) +
            f"\n\n{args.rounds} rounds of {args.steps}-step blocks of interpreter work sized to "
            f"{STEP_S * 1e3:.1f} ms a step before the rounds (holding the GIL; a stand-in for "
            "Lightning's Python-bound ~1 ms steps, without a fresh Trainer's block-to-block "
            "spread); each round's untracked block first, the others in a turning order; each "
            f"block over its round's untracked block. A/A band {band[0]:+.2%} .. {band[1]:+.2%}. "
            f"{gate.summary()}.\n\n"
            f"The sampler thread's cost to this loop, tracked over parked (medians): "
            f"**{sampler:+.2%}** of its step time; that thread's own CPU: {own:.2%} of a core. "
            f"On a host of estimates the training thread waits "
            f"{median([x[3] for x in got[ESTIMATES]]):.0f} times a second for the GIL (sampler "
            f"thread {median([x[2] for x in got[ESTIMATES]]):.2%} of a core). "
            "Parked, what is left is the hooks; with a tracker process beside it, what a sampler "
            "outside the training process would add. The waits (the training thread's voluntary "
            "context switches: it makes no blocking call of its own) count each time the sampler "
            "thread took the GIL from it; they do not depend on the VM's speed as the times do.")
    print(body)
    if not args.no_record:
        record("sampler_interference", section(
            "sampler_interference", "What the sampler thread costs a GIL-bound loop "
            "(`bench/sampler_interference.py`)", body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
