"""What one commit of the store costs: CPU, statements, and GIL hand-overs beside a loop that
holds the GIL (issue 25).

A flush of the sampler thread commits the meta keys, every channel's running total, the samples
and the steps resolved since the last (``greentrack/store/writer.py``). Python's sqlite3 lets go of
the GIL at every statement it steps and at its reset, and takes it back after; beside a training
thread that holds the GIL (a Python-bound loop) each take-back is a hand-over that thread waits
out. This bench commits such batches (9 meta keys, 3 channels, 2 samples and N step rows) with a
real ``StoreWriter`` on this disk, and prints per batch size:

* the flushing thread's CPU with nothing else running (SQLite's work is most of it, done with the
  GIL released), median of 15 flushes;
* the statements SQLite ran (its trace callback) and the flushing thread's voluntary context
  switches while a second thread spins holding the GIL: its waits for the GIL, one per hand-over.

``--baseline DIR`` also measures the writer of another checkout (``git worktree add DIR REV``)
with this same script, in a process of its own, so two commits compare in one session:

    python bench/flush_cost.py [--baseline DIR] [--no-record]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

SIZES = (0, 10, 100, 600, 1000)


def _batch(writer: Any, step_row: Any, n: int, k: int) -> None:
    writer.set_meta({f"key{j}": j * k for j in range(9)})
    for c in range(1, 4):
        writer.update_channel(c, float(k), float(k), 0.0, "ok")
    writer.add_sample(1, float(k), 1.0, 0.5)
    writer.add_sample(2, float(k), 1.0, 0.5)
    writer.add_steps([step_row(k * 10_000 + i, "train", i * 1e-3, i * 1e-3 + 9e-4, 9e-4, 0.01,
                               0.02, 0.003, 0.0, None, 32.0, None, "host", {}, 1)
                      for i in range(n)])


def measure(n: int, flushes: int = 15) -> dict[str, float]:
    from greentrack.store import StoreWriter  # first: with --import-from, that checkout's
    from greentrack.store.layout import StepRow

    from _common import voluntary_switches  # (it puts this checkout on sys.path)

    info = {"kind": "gpu", "device": "gpu", "name": "H100", "method": "nvml-energy-counter",
            "measured": True, "source": "NVML", "uncertainty": "+-5%", "host_scope": False,
            "details": {}}
    writer = StoreWriter(Path(tempfile.mkdtemp(prefix="gt-flush-")), 0, {"run_id": "bench"})
    for c in range(1, 4):
        writer.add_channel(c, {**info, "device": f"gpu{c}"})
    writer.flush()
    cpu = []
    for k in range(flushes + 3):  # the first three: statement cache and pages warm
        _batch(writer, StepRow, n, k)
        t0 = time.thread_time()
        writer.flush()
        if k >= 3:
            cpu.append(time.thread_time() - t0)
    statements: list[str] = []
    # a trigger's run is traced as its statement again, once per row: repeats are one statement
    writer._conn.set_trace_callback(lambda sql: None if statements and statements[-1] == sql
                                    else statements.append(sql))
    _batch(writer, StepRow, n, flushes + 3)
    writer.flush()
    writer._conn.set_trace_callback(None)
    spinning = True

    def spin() -> None:  # a Python-bound training loop: holds the GIL but at switch intervals
        while spinning:
            pass

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    time.sleep(0.05)
    waits, own = [], []
    for k in range(5):
        _batch(writer, StepRow, n, flushes + 4 + k)
        w0 = voluntary_switches()
        writer.flush()
        waits.append(voluntary_switches() - w0)
        w0 = voluntary_switches()  # what reading the count costs (its own file read lets go of the GIL)
        own.append(voluntary_switches() - w0)
    spinning = False
    spinner.join()
    writer.close()
    cpu.sort()
    waits.sort()
    own.sort()
    return {"cpu_ms": cpu[len(cpu) // 2] * 1e3, "statements": len(statements),
            "waits": max(0, waits[len(waits) // 2] - own[len(own) // 2])}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--import-from", type=Path, metavar="DIR",
                   help="measure the greentrack of this checkout instead of this one's (JSON out)")
    p.add_argument("--baseline", type=Path, metavar="DIR",
                   help="also measure the writer of this checkout, in a process of its own")
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args()
    if args.import_from is not None:
        sys.path.insert(0, str(args.import_from.resolve()))
        print(json.dumps({n: measure(n) for n in SIZES}))
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import md_table, record, section

    here = {n: measure(n) for n in SIZES}
    base, rev = None, None
    if args.baseline is not None:
        out = subprocess.run([sys.executable, __file__, "--import-from", str(args.baseline)],
                             capture_output=True, text=True, check=True).stdout
        base = {int(k): v for k, v in json.loads(out.splitlines()[-1]).items()}
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=args.baseline,
                             capture_output=True, text=True).stdout.strip() or str(args.baseline)
    rows = []
    for n in SIZES:
        f = here[n]
        row = [f"{n}", f"{f['cpu_ms']:.2f} ms", f"{f['cpu_ms'] * 1e3 / n:.2f} us" if n else "-",
               f"{f['statements']}", f"{f['waits']}"]
        if base is not None:
            b = base[n]
            row += [f"{b['cpu_ms']:.2f} ms", f"{b['statements']}", f"{b['waits']}"]
        rows.append(row)
    headers = ["step rows in the flush", "flush CPU (median of 15)", "per step row",
               "SQLite statements", "waits for the GIL beside a spinning thread"]
    if base is not None:
        headers += [f"{rev}: flush CPU", f"{rev}: statements", f"{rev}: waits"]
    body = (md_table(headers, rows) +
            "\n\nEach flush also holds 9 meta keys, 3 channels' totals and 2 samples; a real "
            "`StoreWriter` (WAL, synchronous=NORMAL) on this host's disk; the waits are the "
            "flushing thread's voluntary context switches while another thread spins holding the "
            "GIL (median of 5, less what reading the count costs). A steady flush is one "
            "statement (rows of a TEMP view whose triggers write each table; more than 1,024 rows "
            "go as several in one transaction): two GIL hand-overs, where BEGIN, a statement a "
            "table and COMMIT took a dozen or more. The triggers cost SQLite some CPU per row, "
            "spent with the GIL released" +
            (f"; {rev} measured by this script in a process of its own (`--baseline`), in the "
             "same session." if base is not None else "."))
    print(body)
    if not args.no_record:
        record("flush_cost", section("flush_cost", "What one commit costs (`bench/flush_cost.py`)",
                                     body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
