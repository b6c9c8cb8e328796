"""What tracking costs outside the steps: the import, a warm ``start()``, ``stop()`` of a resumed run.

Goals (issue 25): ``from greentrack import Tracker`` at most 60 ms over the bare interpreter; a
warm ``start()`` (the process has started a tracker before) at most 10 ms; ``stop()`` of a resumed
run constant in its number of segments.

* **import**: fresh interpreters, in rounds of three in rotating order: ``python -c pass`` twice
  (the A/A control: their difference is the noise floor) and ``python -c "from greentrack import
  Tracker"``. The figure is the median over rounds of the import's time minus the mean of the
  round's two bare ones, in wall time and in CPU time (user + system, from ``getrusage``: on a
  host shared with other work, wall time also counts waiting for a core). The interpreters read
  compiled bytecode, as an installed package does (pip compiles it at install; an editable
  install compiles at its first import): it is written once, untimed, under a temporary
  ``PYTHONPYCACHEPREFIX``, also where ``PYTHONDONTWRITEBYTECODE`` is set (``--bytecode none``
  times compiling every module from source at every import instead).
* **start**: in one process, after one cold start and stop, ``Tracker(fresh dir).start()`` timed,
  then ``stop()`` untimed; two such trackers per round (A and A') give the A/A ratio.
* **stop**: one run directory resumed ``--segments`` times in this process (each a tracker started
  on the same directory: a new store segment of the same run, as a resumed training job does),
  ``stop()`` timed at each; median per segment count over ``--rounds`` directories. The A/A band
  is the spread of two stops at the same segment count in different directories.

The tracker measures this host as found (on a host without RAPL or a GPU: the labelled CPU and
DRAM estimates), as a user's script would.

    python bench/start_stop.py                  # records bench/RESULTS.md
    python bench/start_stop.py --rounds 5 --no-record
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, QuietGate, md_table, median, quantile, record, section  # noqa: E402

#: Where the timed interpreters keep compiled bytecode (None: each compiles every module).
PYCACHE: list[str | None] = [None]


def interpreter(code: str) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system) of a fresh interpreter running ``code``."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if PYCACHE[0] is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = PYCACHE[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def import_cost(rounds: int, gate: QuietGate) -> dict[str, dict[str, float]]:
    """Per measure (``wall``, ``cpu``): the import's cost over the round's two bare interpreters,
    and the A/A control (the second bare one minus the first)."""
    out: dict[str, dict[str, list[float]]] = {m: {"over": [], "aa": [], "bare": []}
                                              for m in ("wall", "cpu")}
    interpreter("from greentrack import Tracker")  # untimed: writes the bytecode (see PYCACHE)
    for r in range(rounds):
        if r % 10 == 0:
            gate.wait()
        order = ["a", "b", "t"]
        order = order[r % 3:] + order[:r % 3]
        took = {k: interpreter("pass" if k != "t" else "from greentrack import Tracker") for k in order}
        for i, m in enumerate(("wall", "cpu")):
            base = (took["a"][i] + took["b"][i]) / 2
            out[m]["over"].append(took["t"][i] - base)
            out[m]["aa"].append(took["b"][i] - took["a"][i])
            out[m]["bare"].append(base)
    return {m: {"median": median(v["over"]), "p25": quantile(v["over"], 0.25),
                "p75": quantile(v["over"], 0.75), "aa_p25": quantile(v["aa"], 0.25),
                "aa_p75": quantile(v["aa"], 0.75), "bare": median(v["bare"])}
            for m, v in out.items()}


def start_cost(rounds: int, gate: QuietGate) -> dict[str, Any]:
    from greentrack import Tracker

    cpu: list[float] = []

    def one() -> float:
        d = tempfile.mkdtemp(prefix="gt-start-")
        t = Tracker(d)
        a, c = time.perf_counter(), time.thread_time()
        t.start()
        took = time.perf_counter() - a
        cpu.append(time.thread_time() - c)
        t.stop()
        shutil.rmtree(d, ignore_errors=True)
        return took

    cold = one()
    cpu.clear()
    a_s, ratio = [], []
    for r in range(rounds):
        if r % 10 == 0:
            gate.wait()
        x, y = one(), one()
        a_s += [x, y]
        ratio.append(x / y)
    return {"cold": cold, "median": median(a_s), "p25": quantile(a_s, 0.25),
            "p75": quantile(a_s, 0.75), "aa_p25": quantile(ratio, 0.25),
            "aa_p75": quantile(ratio, 0.75), "cpu": median(cpu), "cpu_p25": quantile(cpu, 0.25),
            "cpu_p75": quantile(cpu, 0.75)}


def stop_cost(rounds: int, segments: int, gate: QuietGate) -> dict[int, list[float]]:
    from greentrack import Tracker

    out: dict[int, list[float]] = {k: [] for k in range(1, segments + 1)}
    for r in range(rounds):
        gate.wait()
        d = tempfile.mkdtemp(prefix="gt-stop-")
        for k in range(1, segments + 1):
            t = Tracker(d).start()
            for _ in range(20):
                with t.step():
                    pass
            time.sleep(0.05)  # a few readings, as any segment has
            a = time.perf_counter()
            t.stop()
            out[k].append(time.perf_counter() - a)
        shutil.rmtree(d, ignore_errors=True)
    return out


def ms(x: float) -> str:
    return f"{x * 1e3:.1f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=30, help="rounds of the import and start parts")
    p.add_argument("--stop-rounds", type=int, default=7, help="run directories of the stop part")
    p.add_argument("--segments", type=int, default=12)
    p.add_argument("--no-record", action="store_true")
    p.add_argument("--bytecode", choices=("cached", "none"), default="cached",
                   help="import part: bytecode compiled once (as installed) or at every import")
    args = p.parse_args()
    if args.bytecode == "cached":
        PYCACHE[0] = tempfile.mkdtemp(prefix="gt-pycache-")
    logging.getLogger("greentrack").setLevel(logging.ERROR)
    gate = QuietGate(max_wait_s=10.0)
    load0 = os.getloadavg()[0]
    imp = import_cost(args.rounds, gate)
    start = start_cost(args.rounds, gate)
    stops = stop_cost(args.stop_rounds, args.segments, gate)
    two, last = stops[2], stops[args.segments]
    aa = [a / b for a, b in zip(two, two[1:])]
    rows = [
        [f"`from greentrack import Tracker`, over `python -c pass`: {m}", ms(i["median"]),
         f"{ms(i['p25'])} .. {ms(i['p75'])}",
         f"A/A (bare - bare): {ms(i['aa_p25'])} .. {ms(i['aa_p75'])} ms; bare interpreter "
         f"{ms(i['bare'])} ms", "<= 60 ms"]
        for m, i in (("wall time", imp["wall"]), ("CPU time (user + system)", imp["cpu"]))]
    rows += [
        ["warm `Tracker(dir).start()`", ms(start["median"]),
         f"{ms(start['p25'])} .. {ms(start['p75'])}",
         f"A/A ratio {start['aa_p25']:.2f} .. {start['aa_p75']:.2f}; cold (first) start "
         f"{ms(start['cold'])} ms", "<= 10 ms"],
        ["warm `start()`: the calling thread's CPU time", ms(start["cpu"]),
         f"{ms(start['cpu_p25'])} .. {ms(start['cpu_p75'])}",
         "wall time less waiting (for a core, the disk, the sampler thread's first poll)", ""],
        ["`stop()` of a resumed run, 2 segments", ms(median(two)),
         f"{ms(quantile(two, 0.25))} .. {ms(quantile(two, 0.75))}",
         f"A/A ratio (same count, two directories) {quantile(aa, 0.25):.2f} .. "
         f"{quantile(aa, 0.75):.2f}" if aa else "", "constant"],
        [f"`stop()` of a resumed run, {args.segments} segments", ms(median(last)),
         f"{ms(quantile(last, 0.25))} .. {ms(quantile(last, 0.75))}",
         f"{median(last) / median(two):.2f}x the 2-segment stop", "constant"],
    ]
    table = md_table(["what", "median ms", "p25 .. p75 ms", "control", "goal"], rows)
    per_k = ", ".join(f"{k}: {ms(median(v))}" for k, v in stops.items())
    body = (f"{table}\n\nMedian `stop()` ms by segment count: {per_k}.\n\n{args.rounds} rounds "
            f"(import: three fresh interpreters each, rotating order; start: two warm starts "
            f"each), {args.stop_rounds} run directories resumed {args.segments} times. Load "
            f"average {load0:.2f} at the start, {os.getloadavg()[0]:.2f} at the end "
            f"(`uptime`); {gate.summary()}. Bytecode: "
            f"{'compiled once, untimed' if PYCACHE[0] else 'none (every import compiles)'}.")
    print(body)
    if not args.no_record:
        record("start_stop", section(
            "start_stop", "Import, start and stop (`bench/start_stop.py`)", body))
    if PYCACHE[0] is not None:
        shutil.rmtree(PYCACHE[0], ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
