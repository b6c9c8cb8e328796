"""What the multi-node gather costs at the end of a stage: one node's part for a large store.

At stage end, each rank sends rank 0 compact copies of its node's stores
(:func:`greentrack.training.gathering.node_part`: meta, channel totals, events, one step row per phase; no
samples) through ``torch.distributed.gather_object``. This times building that part for the
7-day, 8-GPU store of ``bench/report_scale.py`` (6.05 M sample rows, 302,400 steps), its size
against the store's, and rank 0's read of it as a run (:func:`greentrack.training.gathering.job_totals`
with the part as the only other node), against reading the full store.

    python bench/gather_part.py              # generate (cached in /tmp), time, record in RESULTS.md
    python bench/gather_part.py --no-record  # time only
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from _common import record  # noqa: E402
from report_scale import generate  # noqa: E402

from greentrack.training.gathering import job_totals, node_part  # noqa: E402
from greentrack.run import Run  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--no-record", action="store_true", help="print only, leave RESULTS.md")
    p.add_argument("--cache", default="/tmp/greentrack-bench-7d8gpu/run",
                   help="where the synthetic store is generated (reused when complete)")
    args = p.parse_args()
    store = generate(Path(args.cache))
    run_dir = store.parent
    build = []
    for _ in range(3):
        t0 = time.perf_counter()
        part = node_part(run_dir, [], rank=1, local_zero=True, tracked=True)
        build.append(time.perf_counter() - t0)
    assert not part.errors, part.errors
    part_bytes = sum(len(d) for _, d in part.stores)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as empty:  # rank 0 with no store of its own
        totals = job_totals(Path(empty), part, main=True, store=None, gather=lambda p: [p])
    gathered_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with Run.open(run_dir) as run:
        full = run.summary()
    full_s = time.perf_counter() - t0
    assert totals is not None and totals["energy_j"] == full["energy_j"], (totals, full)
    with sqlite3.connect(store) as conn:
        rows = conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
    body = f"""## Multi-node gather: one node's part of a 7-day, 8-GPU store (`bench/gather_part.py`)

Machine: {os.cpu_count()} logical CPUs ({platform.machine()}), Linux {platform.release()}, Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}. Measured {time.strftime('%Y-%m-%d')}.
Store: {rows:,} sample rows, {store.stat().st_size / 1e6:,.0f} MB (`bench/report_scale.py`'s).
Command: `python bench/gather_part.py`.

| what | figure |
| --- | --- |
| build the part (compact copy), 3 runs | {', '.join(f'{t:.3f}' for t in build)} s |
| part size sent to rank 0 | {part_bytes:,} bytes ({part_bytes / store.stat().st_size:.5%} of the store) |
| rank 0 reads the part as a run | {gathered_s:.3f} s (the full store: {full_s:.3f} s) |
| totals, part vs full store | equal (energy by kind) |
"""
    print(body)
    if not args.no_record:
        record("gather_part", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
