"""How long the test suite takes: `make test` (4 workers) and `make test-fast`, on a quiet host and
beside busy loops that take the cores from it, as a newcomer's loaded laptop or a shared CI runner
would. Each lane runs the way the Makefile runs it, in a fresh process, in this checkout.

    python bench/suite_time.py                 # quiet: full suite and quick lane
    python bench/suite_time.py --busy 4        # the same beside 4 `while :; do :; done` loops
    python bench/suite_time.py --lanes fast    # only the quick lane

Prints and records one row per lane (wall time, outcome line) in bench/RESULTS.md; the section
keeps the rows of earlier runs with other --busy values.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from _common import REPO, RESULTS, md_table, record, section

LANES = {
    "full": ["-n", "4", "--dist", "worksteal"],  # make test
    "fast": ["-n", "4", "-m", "not slow"],  # make test-fast
}
STATE = Path(__file__).with_name(".suite_time.json")  # rows of earlier runs (not committed)


def run_lane(args: list[str]) -> tuple[float, str, int]:
    """Wall seconds, pytest's last line (and the tests that failed) and its exit status."""
    t0 = time.monotonic()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # as make test
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                       cwd=REPO, capture_output=True, text=True, env=env)
    wall = time.monotonic() - t0
    lines = [x for x in p.stdout.splitlines() if re.search(r"\d+ (passed|failed)", x)]
    failed = [x.split()[1] for x in p.stdout.splitlines() if x.startswith(("FAILED ", "ERROR "))]
    outcome = lines[-1].strip("= ") if lines else p.stdout[-300:]
    return wall, outcome + "".join(f"; `{f}`" for f in failed), p.returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--busy", type=int, default=0, help="busy loops beside the suite (default 0)")
    ap.add_argument("--lanes", default="full,fast", help="comma list of full, fast")
    ns = ap.parse_args()
    loops = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(ns.busy)]
    rows: dict[str, list[object]] = json.loads(STATE.read_text()) if STATE.exists() else {}
    status = 0
    try:
        for lane in ns.lanes.split(","):
            wall, outcome, code = run_lane(LANES[lane])
            status = status or code
            print(f"{lane:5s} busy={ns.busy}: {wall:6.1f} s  {outcome}")
            rows[f"{lane}:{ns.busy}"] = [f"`make test{'-fast' if lane == 'fast' else ''}`",
                                        ns.busy, f"{wall:.0f} s", outcome]
    finally:
        for p in loops:
            p.kill()
            p.wait()
    STATE.write_text(json.dumps(rows))
    body = ("Wall time of each lane as the Makefile runs it (pytest-xdist workers: 2 for the full "
            "suite, 4 for the quick lane), beside N busy loops on the same cores. Goal: the full "
            "suite under 4 minutes on a quiet 2-core VM, green under 4 busy loops.\n\n" +
            md_table(["lane", "busy loops", "wall", "outcome"], [rows[k] for k in sorted(rows)]))
    if RESULTS.exists():
        record("suite_time", section("suite_time", "Test suite time (`bench/suite_time.py`)", body))
    return status


if __name__ == "__main__":
    sys.exit(main())
