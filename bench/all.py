"""Every figure the README quotes, from one command: each benchmark script in turn, each figure
with its A/A band (the scripts interleave their controls) and the machine it ran on.

    python bench/all.py              # every script at its recorded settings (~25 min on 2 cores)
    python bench/all.py --quick      # fewer rounds and shorter windows (~8 min): wider A/A bands
    python bench/all.py --only step_overhead,start_stop --no-record

Each script records its section in the results file beside it (unless ``--no-record``) and this
command prints the sections it produced, then one line per script: its wall time and whether it
ran. A script that fails does not stop the others; the exit status says whether all ran. The GPU
figures come from ``bash bench/gpu_checks.sh --quick OUT`` on a GPU host (not run here).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, machine, recorded  # noqa: E402


@dataclass(frozen=True)
class Bench:
    script: str
    what: str
    full: tuple[str, ...] = ()
    quick: tuple[str, ...] = ()


#: In the README's order; quick settings shorten the windows and rounds, never the method.
BENCHES = (
    Bench("step_overhead.py", "hooks: tracker.step(), track_optimizer, Lightning, HF, per step",
          quick=("--rounds", "5")),
    Bench("overhead_compare.py", "step time against untracked, codecarbon and Zeus",
          ("--device", "cpu"), ("--device", "cpu", "--rounds", "3")),
    Bench("sampler_cost.py", "sampler CPU, % of a core, against codecarbon and Zeus",
          quick=("--window", "5", "--codecarbon-window", "16", "--quiet-wait", "2")),
    Bench("lightning_windows.py", "the ~1 ms Lightning row: one Trainer, greentrack on and off in "
          "alternating epochs", quick=("--rounds", "2", "--pairs", "30")),
    Bench("sampler_steps.py", "the sampler thread's CPU per attributed step, beside a GIL-bound loop",
          quick=("--repeat", "1")),
    Bench("sampler_interference.py", "what the sampler thread costs a GIL-bound loop, parked "
          "and beside a tracker process", quick=("--rounds", "6")),
    Bench("flush_cost.py", "one commit of the store: CPU, statements, GIL hand-overs"),
    Bench("start_stop.py", "import, warm start(), stop() by segment count",
          quick=("--rounds", "10", "--stop-rounds", "3")),
    Bench("memory_week.py", "memory over a virtual week", quick=("--days", "2")),
    Bench("store_scale.py", "store size per GPU-day and per step", quick=("--hours", "2")),
    Bench("report_scale.py", "reports of a 7-day, 8-GPU run", quick=("--repeat", "1")),
    Bench("inventory_scale.py", "inventory of a year of 10,000 runs", quick=("--repeat", "1")),
    Bench("sampling_defaults.py", "GPU energy accuracy on a replay of H100 NVML behaviour"),
    Bench("idle_steps.py", "the first steps after an idle gap: the idle cadence's price, the wake"),
)


def _sections(names: list[str]) -> str:
    return "\n\n".join(text for text in map(recorded, names) if text)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds, shorter windows")
    p.add_argument("--only", default="", help="comma-separated script names (without .py)")
    p.add_argument("--no-record", action="store_true", help="print only; the results file untouched")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per script")
    args = p.parse_args()
    only = {s.strip().removesuffix(".py") for s in args.only.split(",") if s.strip()}
    unknown = only - {b.script.removesuffix(".py") for b in BENCHES}
    if unknown:
        p.error(f"--only {','.join(sorted(unknown))}: not a benchmark; one of "
                + ", ".join(b.script.removesuffix(".py") for b in BENCHES))
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f} at the start", flush=True)
    ran: list[tuple[str, float, str]] = []
    for bench in BENCHES:
        if only and bench.script.removesuffix(".py") not in only:
            continue
        script = REPO / "bench" / bench.script
        if not script.exists():
            ran.append((bench.script, 0.0, "missing"))
            continue
        argv = [sys.executable, str(script), *(bench.quick if args.quick else bench.full)]
        if args.no_record:
            argv.append("--no-record")
        print(f"\n=== {bench.script}: {bench.what}\n$ {' '.join(argv[1:])}", flush=True)
        t0 = time.monotonic()
        try:
            proc = subprocess.run(argv, cwd=REPO, text=True, capture_output=True,
                                  timeout=args.timeout)
        except subprocess.TimeoutExpired:
            ran.append((bench.script, time.monotonic() - t0, f"timed out after {args.timeout:g} s"))
            continue
        wall = time.monotonic() - t0
        names = re.findall(r"recorded section '([^']+)'", proc.stdout)
        if proc.returncode != 0:
            print((proc.stdout + proc.stderr)[-3000:])
            ran.append((bench.script, wall, f"failed (exit {proc.returncode})"))
            continue
        print(_sections(names) if names else proc.stdout[-6000:], flush=True)
        ran.append((bench.script, wall, "ok" + (f", recorded {', '.join(names)}"
                                               if names else "")))
    print("\n=== summary")
    for script, wall, status in ran:
        print(f"{script:24s} {wall:7.1f} s  {status}")
    print(f"load average {os.getloadavg()[0]:.2f} at the end (figures under load: see each "
          "section's A/A band)")
    return 0 if ran and all(s.startswith("ok") for _, _, s in ran) else 1


if __name__ == "__main__":
    raise SystemExit(main())
